"""``python -m flowdeco ui [--state-dir D] [--host H] [--port P] [--open] [--allow-actions]``.

Binds ``127.0.0.1`` unless told otherwise; a port that is taken falls back to a
free one (the URL printed says which).  Without the server dependencies the
command names the extra to install and exits 4.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import os
import socket
import sys
from typing import Any, Sequence

from ..errors import UsageError
from ..outcome import ExitCode

#: seconds after Ctrl-C before unfinished responses are dropped (a page or an API answer
#: finishes well within it; a live stream ends at once unless its client stopped reading)
DROP_AFTER = 0.5

#: the modules ``flowdeco[ui]`` provides
SERVER_MODULES = ("starlette", "uvicorn", "jinja2")
INSTALL = "pip install 'flowdeco[ui]'"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:
        raise UsageError(f"ui: {message} (see python -m flowdeco ui --help)")


def parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="flowdeco ui", description="A live dashboard of the saved runs of a "
                 "state dir, in the browser (read-only unless --allow-actions).")
    ap.add_argument("--state-dir", default=".flowdeco", metavar="DIR",
                    help="where runs are kept (default: .flowdeco)")
    ap.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    ap.add_argument("--port", type=int, default=8765, help="port (default: 8765; a taken "
                    "port falls back to a free one)")
    ap.add_argument("--open", action="store_true", help="open the dashboard in a browser")
    ap.add_argument("--allow-actions", action="store_true",
                    help="enable the 're-run from this task' button (POST, CSRF-protected)")
    return ap


def missing_modules() -> list[str]:
    import importlib.util
    return [m for m in SERVER_MODULES if importlib.util.find_spec(m) is None]


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port``, or on a free port when that one is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for p in (port, 0):
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, p))
        except OSError as exc:
            sock.close()
            if exc.errno in (errno.EADDRINUSE, errno.EACCES) and p != 0:
                continue
            raise UsageError(f"ui: cannot listen on {host}:{p}: {exc.strerror}") from None
        sock.listen(128)
        sock.set_inheritable(True)
        return sock
    raise AssertionError("unreachable")


def _drop_unfinished(server: Any) -> None:
    """Close the connections of ``server`` (a uvicorn Server shutting down) whose
    response is not finished: a live stream to a client that stopped reading."""
    for conn in list(server.server_state.connections):
        cycle = getattr(conn, "cycle", None)
        transport = getattr(conn, "transport", None)
        if cycle is not None and not cycle.response_complete and transport is not None:
            transport.abort()


def main(argv: Sequence[str], pluginmanager: Any = None) -> int:
    """Entry point of ``python -m flowdeco ui``; returns the exit code."""
    try:
        ns = parser().parse_args(list(argv))
    except UsageError as exc:
        print(f"flowdeco: error: {exc}", file=sys.stderr)
        return ExitCode.USAGE_ERROR
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else ExitCode.OK
    missing = missing_modules()
    if missing:
        print(f"flowdeco: error: ui needs {', '.join(missing)}: {INSTALL}", file=sys.stderr)
        return ExitCode.USAGE_ERROR
    if not 0 <= ns.port <= 65535:
        print(f"flowdeco: error: ui: --port must be 0-65535, got {ns.port}", file=sys.stderr)
        return ExitCode.USAGE_ERROR
    if os.path.exists(ns.state_dir) and not os.path.isdir(ns.state_dir):
        print(f"flowdeco: error: ui: --state-dir {ns.state_dir} is not a directory",
              file=sys.stderr)
        return ExitCode.USAGE_ERROR
    try:
        sock = bind(ns.host, ns.port)
    except UsageError as exc:
        print(f"flowdeco: error: {exc}", file=sys.stderr)
        return ExitCode.USAGE_ERROR
    import uvicorn

    from .app import create_app
    host, port = sock.getsockname()[:2]
    app = create_app(ns.state_dir, host=ns.host, port=port, allow_actions=ns.allow_actions)
    shown = f"[{ns.host}]" if ":" in ns.host else ns.host
    url = f"http://{shown}:{port}/"
    mode = "actions allowed" if ns.allow_actions else "read-only"
    print(f"flowdeco ui: {url} (state dir {ns.state_dir}, {mode}; Ctrl-C to stop)", flush=True)
    if ns.open:
        import webbrowser
        webbrowser.open(url)
    dashboard = app.app.state.dashboard

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            dashboard.stop()  # live streams end now
            super().handle_exit(sig, frame)

        async def shutdown(self, sockets: Any = None) -> None:
            # A stream whose client stopped reading waits in its write (the socket is
            # full) and never sees stop(); uvicorn would wait out its graceful timeout,
            # then cancel it with a traceback.  Drop what is still unfinished shortly
            # after Ctrl-C instead: the write returns, the stream ends quietly.
            asyncio.get_running_loop().call_later(DROP_AFTER, _drop_unfinished, self)
            await super().shutdown(sockets)

    # last resort (never reached unless dropping fails): cancel after 3 s
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                            timeout_graceful_shutdown=3)
    server = Server(config)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        pass
    return ExitCode.OK
