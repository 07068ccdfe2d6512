"""The dashboard's web application (Starlette): pages, JSON API, live streams, one action.

Security rules (issue 17), all enforced here and tested in ``tests/test_ui_server.py``:

- Every request's ``Host`` header must name the bound address (``host:port``;
  ``localhost:port`` too when bound to a loopback address), else 421: a page
  on another site cannot reach the dashboard through DNS rebinding.
- Read-only by default: no route writes anything.  With ``allow_actions`` one
  POST (re-run from a task) exists; it needs the per-session CSRF token that
  pages carry in a ``<meta>`` tag, sent back as the ``X-CSRF-Token`` header.
- Everything shown is escaped: templates autoescape, and the scripts write
  data with ``textContent`` only.  A Content-Security-Policy allows scripts
  from this origin only (no inline script runs even if markup slipped in).

Live updates: ``/api/runs/ID/stream`` is a Server-Sent Events stream of the
run's audit events; each event's id is the byte offset in ``audit.jsonl``
just after its line, so a reconnecting browser (``Last-Event-ID``) resumes
exactly there and no line is sent twice.  The stream polls the file's size
and the store's :meth:`~flowdeco.ui.data.StateReader.stamp`, every 0.1 s
after a change, backing off to 0.8 s while nothing happens.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, AsyncIterator

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response, \
    StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..errors import FlowError, StateError
from ..runid import validate_run_id
from ..timefmt import seconds, when
from .data import RUN_FILTERS, StateReader, day_bounds, read_audit
from .model import run_model, task_detail

HERE = Path(__file__).parent
PAGE_SIZE = 50
#: poll intervals of the live streams (seconds): right after a change, and the slowest
FAST, SLOW = 0.1, 0.8
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
       "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")


def templates() -> Environment:
    """Jinja2 with autoescaping on for everything (a task name is never markup)."""
    env = Environment(loader=FileSystemLoader(str(HERE / "templates")),
                      autoescape=select_autoescape(["html", "svg"], default=True),
                      trim_blocks=True, lstrip_blocks=True)
    env.filters["when"] = when
    env.filters["secs"] = seconds
    return env


def cell(key: str, value: Any) -> tuple[str, str | None]:
    """A schedules table cell: (text, run id to link or None) from any value the data layer
    or a serve state file gives (ticks are POSIX seconds, claims and schedules mappings)."""
    if value is None:
        return "-", None
    if isinstance(value, bool):
        return ("yes" if value else "no"), None
    if isinstance(value, (int, float)) and "tick" in key and key != "missed":
        return when(float(value)), None
    if isinstance(value, dict):
        link = value.get("run_id") if isinstance(value.get("run_id"), str) else None
        return ", ".join(f"{k}={cell(k, v)[0]}" for k, v in value.items()), link
    if isinstance(value, (list, tuple)):
        return "; ".join(cell(key, v)[0] for v in value) or "-", None
    link = value if key.endswith("run") and isinstance(value, str) else None
    return str(value), link


def _wake(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_result(None)


def unspecified(host: str) -> bool:
    """``0.0.0.0`` or ``::``: bound to every address of the machine."""
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


def ip_host(value: str) -> bool:
    """Whether a ``Host`` header names an IP address (with a port), not a DNS name."""
    name = value.rpartition(":")[0] if value.count(":") == 1 or value.startswith("[") \
        else value
    name = name.strip("[]")
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def allowed_hosts(host: str, port: int) -> set[str]:
    """The ``Host`` header values that name the bound address."""
    names = {host}
    try:
        ip = ipaddress.ip_address(host)
        if ip.version == 6:
            names = {f"[{host}]"}
        if ip.is_loopback:
            names |= {"localhost", "127.0.0.1", "[::1]"}
    except ValueError:
        if host == "localhost":
            names |= {"127.0.0.1", "[::1]"}
    return {f"{n}:{port}" for n in names} | ({n for n in names} if port == 80 else set())


class HostGuard:
    """ASGI middleware: 421 unless ``Host`` names the bound address; security headers."""

    def __init__(self, app: Any, hosts: set[str], port: int | None = None):
        self.app = app
        self.hosts = {h.lower() for h in hosts}
        #: bound to every address (0.0.0.0): any IP literal with our port names us; a DNS
        #: name other than localhost still does not (DNS rebinding needs a name)
        self.any_ip_port = port

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        host = ""
        for k, v in scope.get("headers", ()):
            if k == b"host":
                host = v.decode("latin-1").lower()
                break
        if host not in self.hosts and not (
                self.any_ip_port is not None and host.endswith(f":{self.any_ip_port}")
                and ip_host(host)):
            resp = PlainTextResponse("misdirected request: the Host header does not name this "
                                     "server's address", status_code=421)
            await resp(scope, receive, send)
            return

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [(b"content-security-policy", CSP.encode()),
                            (b"x-content-type-options", b"nosniff"),
                            (b"referrer-policy", b"no-referrer"),
                            (b"x-frame-options", b"DENY")]
                message = dict(message, headers=headers)
            await send(message)

        await self.app(scope, receive, send_with_headers)


class Dashboard:
    """The routes over one state dir (one instance per ``flowdeco ui``)."""

    def __init__(self, state_dir: str | os.PathLike, allow_actions: bool = False,
                 cwd: str | None = None):
        self.state_dir = str(state_dir)
        self.reader = StateReader(state_dir)
        self.allow_actions = allow_actions
        self.csrf = secrets.token_urlsafe(32)
        self.env = templates()
        self.cwd = cwd or os.getcwd()
        self.stream_seconds = 300.0  # a stream ends after this; the browser reconnects
        #: set when the server shuts down (Ctrl-C, :meth:`stop`): live streams end
        self.stopping = False
        #: live streams between two polls: (their loop, the future their pause waits on)
        self._pauses: set[tuple[asyncio.AbstractEventLoop, asyncio.Future]] = set()
        self._pauses_lock = threading.Lock()

    def stop(self) -> None:
        """The server shuts down: every live stream ends now, not at its next poll
        (any thread; a stream stuck writing to a client that stopped reading is the
        server's to drop, see ui/cli.py)."""
        self.stopping = True
        with self._pauses_lock:
            pauses = list(self._pauses)
        for loop, fut in pauses:
            try:
                loop.call_soon_threadsafe(_wake, fut)
            except RuntimeError:  # that loop is closed: nothing waits there any more
                pass

    async def _pause(self, seconds: float) -> None:
        """A live stream's wait between polls: ``seconds``, or until :meth:`stop`."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        timer = loop.call_later(seconds, _wake, fut)
        key = (loop, fut)
        with self._pauses_lock:
            self._pauses.add(key)
        try:
            if not self.stopping:
                await fut
        finally:
            timer.cancel()
            with self._pauses_lock:
                self._pauses.discard(key)

    # -- helpers
    def page(self, name: str, **ctx: Any) -> HTMLResponse:
        ctx.update(csrf=self.csrf, actions=self.allow_actions, state_dir=self.state_dir)
        return HTMLResponse(self.env.get_template(name).render(**ctx))

    def not_found(self, message: str) -> HTMLResponse:
        return HTMLResponse(self.env.get_template("error.html").render(message=message),
                            status_code=404)

    def _run_id(self, request: Request) -> str:
        run_id = request.path_params["run_id"]
        validate_run_id(run_id)
        return run_id

    def _filters(self, request: Request) -> dict:
        q = request.query_params
        status = q.get("status") or None
        if status is not None and status not in RUN_FILTERS:
            raise StateError(f"unknown status {status[:40]!r}: one of {', '.join(RUN_FILTERS)}")
        try:
            page = max(int(q.get("page") or 1), 1)
        except ValueError:
            raise StateError("page must be a number") from None
        return {"flow": q.get("flow") or None, "status": status, "text": q.get("text") or None,
                "since": q.get("since") or None, "until": q.get("until") or None, "page": page}

    def _list(self, f: dict) -> tuple[list[dict], int]:
        return self.reader.list_runs(
            flow=f["flow"], status=f["status"], text=f["text"], since=day_bounds(f["since"]),
            until=day_bounds(f["until"], end=True), limit=PAGE_SIZE,
            offset=(f["page"] - 1) * PAGE_SIZE)

    # -- pages
    async def runs_page(self, request: Request) -> Response:
        try:
            f = self._filters(request)
            rows, total = await asyncio.to_thread(self._list, f)
            flows = await asyncio.to_thread(self.reader.flows)
            error = None
        except FlowError as exc:
            f, rows, total, flows, error = {"page": 1}, [], 0, [], str(exc)
        pages = max((total + PAGE_SIZE - 1) // PAGE_SIZE, 1)
        return self.page("runs.html", runs=rows, total=total, f=f, flows=flows,
                         statuses=RUN_FILTERS, pages=pages, error=error,
                         query=dict(request.query_params))

    async def run_page(self, request: Request) -> Response:
        try:
            run_id = self._run_id(request)
        except FlowError as exc:
            return self.not_found(str(exc))
        try:
            run = await asyncio.to_thread(self.reader.run, run_id)
        except FlowError as exc:  # a damaged or foreign state.db: say so, in one line
            return self.not_found(str(exc))
        if run is None:
            return self.not_found(f"unknown run id {run_id!r} in {self.state_dir}")
        return self.page("run.html", run=run, run_id=run_id)

    async def schedules_page(self, request: Request) -> Response:
        rows = await asyncio.to_thread(self.reader.schedules)
        columns: list[str] = []
        for r in rows:
            columns += [k for k in r if k not in columns]
        shown = [{c: cell(c, r.get(c)) for c in columns} for r in rows]
        return self.page("schedules.html", rows=shown, columns=columns,
                         flows=[str(r.get("flow", "")) for r in rows])

    # -- API
    async def api_runs(self, request: Request) -> Response:
        try:
            f = self._filters(request)
            rows, total = await asyncio.to_thread(self._list, f)
        except FlowError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse({"runs": rows, "total": total, "page": f["page"],
                             "page_size": PAGE_SIZE})

    async def api_run(self, request: Request) -> Response:
        try:
            run_id = self._run_id(request)
            model = await asyncio.to_thread(run_model, self.reader, run_id)
        except FlowError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        if model is None:
            return JSONResponse({"error": f"unknown run id {run_id!r}"}, status_code=404)
        return JSONResponse(model)

    async def api_task(self, request: Request) -> Response:
        try:
            run_id = self._run_id(request)
            detail = await asyncio.to_thread(task_detail, self.reader, run_id,
                                             request.path_params["name"])
        except FlowError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        if detail is None:
            return JSONResponse({"error": "no such task in this run"}, status_code=404)
        return JSONResponse(detail)

    async def api_audit(self, request: Request) -> Response:
        """The trail's history, page by page: events after byte ``from`` (at most 1 MB of
        them), or the ``limit`` (<= 1000) events whose lines end before byte ``before``."""
        q = request.query_params
        try:
            run_id = self._run_id(request)
            start = _whole(q, "from", 0)
            before = _whole(q, "before", None)
            limit = min(max(_whole(q, "limit", 300), 1), 1000)  # type: ignore[type-var]
        except (FlowError, ValueError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        path = self.reader.audit_file(run_id)
        if before is not None:
            events, _ = await asyncio.to_thread(read_audit, path, 0, max(before, 0))
            earlier = [(o, e) for o, e in events if o < before]
            return JSONResponse({"events": [[o, e] for o, e in earlier[-limit:]],
                                 "more": len(earlier) > limit})
        events, offset = await asyncio.to_thread(read_audit, path, max(start, 0), 1 << 20)
        return JSONResponse({"events": [[o, e] for o, e in events], "offset": offset})

    async def run_stream(self, request: Request) -> Response:
        try:
            run_id = self._run_id(request)
            event_id = request.headers.get("last-event-id")
            start = _whole({"Last-Event-ID": event_id}, "Last-Event-ID", 0) if event_id \
                else _whole(request.query_params, "from", 0)
        except (FlowError, ValueError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        limit = self._stream_limit(request)
        return StreamingResponse(self._tail(run_id, max(start, 0), limit),
                                 media_type="text/event-stream",
                                 headers={"cache-control": "no-store"})

    async def changes_stream(self, request: Request) -> Response:
        limit = self._stream_limit(request)
        return StreamingResponse(self._changes(limit), media_type="text/event-stream",
                                 headers={"cache-control": "no-store"})

    def _stream_limit(self, request: Request) -> float:
        try:
            return min(float(request.query_params.get("seconds") or self.stream_seconds),
                       self.stream_seconds)
        except ValueError:
            return self.stream_seconds

    async def _tail(self, run_id: str, offset: int, seconds: float) -> AsyncIterator[str]:
        path = self.reader.audit_file(run_id)
        yield "retry: 500\n\n"
        deadline = time.monotonic() + seconds
        interval = FAST
        stamp = await asyncio.to_thread(self.reader.stamp)
        size = -1
        while time.monotonic() < deadline and not self.stopping:
            try:
                now_size = os.stat(path).st_size
            except OSError:
                now_size = 0
            changed = False
            if now_size != size:
                size = now_size
                events, new = await asyncio.to_thread(read_audit, path, offset, 1 << 20)
                if events:  # one write per poll, not one per event (a busy run has hundreds)
                    yield "".join(f"id: {end}\nevent: audit\ndata: {json.dumps(event)}\n\n"
                                  for end, event in events)
                changed = new != offset
                offset = new
                if events:  # more may wait beyond the 1 MB read: look again at once
                    size = -1
            now_stamp = await asyncio.to_thread(self.reader.stamp)
            if now_stamp != stamp:  # a commit without an audit line (e.g. the run's status)
                stamp = now_stamp
                changed = True
                yield "event: store\ndata: {}\n\n"
            interval = FAST if changed else min(interval * 1.5, SLOW)
            if not changed:
                yield ": idle\n\n"  # finds a closed connection
            await self._pause(interval)

    async def _changes(self, seconds: float) -> AsyncIterator[str]:
        yield "retry: 1000\n\n"
        deadline = time.monotonic() + seconds
        stamp = await asyncio.to_thread(self.reader.stamp)
        interval = FAST
        while time.monotonic() < deadline and not self.stopping:
            await self._pause(interval)
            if self.stopping:
                break
            now = await asyncio.to_thread(self.reader.stamp)
            if now != stamp:
                stamp = now
                interval = FAST
                yield "event: changed\ndata: {}\n\n"
            else:
                interval = min(interval * 1.5, SLOW)
                yield ": idle\n\n"

    async def rerun(self, request: Request) -> Response:
        """Start ``python -m flowdeco TARGET --resume ID --rerun TASK`` (actions allowed only)."""
        if not self.allow_actions:
            return JSONResponse({"error": "actions are off: start the UI with --allow-actions"},
                                status_code=403)
        token = request.headers.get("x-csrf-token", "")
        if not secrets.compare_digest(token, self.csrf):
            return JSONResponse({"error": "missing or wrong CSRF token: reload the page"},
                                status_code=403)
        try:
            run_id = self._run_id(request)
            body = await request.json()
        except (FlowError, ValueError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        task = body.get("task") if isinstance(body, dict) else None
        run = await asyncio.to_thread(self.reader.run, run_id)
        if run is None:
            return JSONResponse({"error": f"unknown run id {run_id!r}"}, status_code=404)
        target = (body.get("target") or run["flow"]) if isinstance(body, dict) else run["flow"]
        if not isinstance(task, str) or not task or not isinstance(target, str) \
                or target.startswith("-"):
            return JSONResponse({"error": "give the task to re-run (and the target)"},
                                status_code=400)
        argv = [sys.executable, "-m", "flowdeco", target, "--state-dir", self.state_dir,
                "--resume", run_id, "--rerun", task, "-p", "no:progress"]
        log = tempfile.NamedTemporaryFile(prefix=f"flowdeco-rerun-{run_id}-", suffix=".log",
                                          delete=False)
        proc = subprocess.Popen(argv, cwd=self.cwd, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        return JSONResponse({"started": True, "pid": proc.pid, "argv": argv[1:],
                             "log": log.name}, status_code=202)


def create_app(state_dir: str | os.PathLike, host: str = "127.0.0.1", port: int = 8765,
               allow_actions: bool = False, cwd: str | None = None) -> Any:
    """The ASGI application for ``state_dir``, accepting requests for ``host:port`` only."""
    d = Dashboard(state_dir, allow_actions=allow_actions, cwd=cwd)
    routes = [
        Route("/", d.runs_page),
        Route("/runs/{run_id}", d.run_page),
        Route("/schedules", d.schedules_page),
        Route("/api/runs", d.api_runs),
        Route("/api/stream", d.changes_stream),
        Route("/api/runs/{run_id}", d.api_run),
        Route("/api/runs/{run_id}/tasks/{name:path}", d.api_task),
        Route("/api/runs/{run_id}/audit", d.api_audit),
        Route("/api/runs/{run_id}/stream", d.run_stream),
        Route("/api/runs/{run_id}/rerun", d.rerun, methods=["POST"]),
        Mount("/static", app=StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    app = Starlette(routes=routes)
    app.state.dashboard = d
    return HostGuard(app, allowed_hosts(host, port) | (
        {f"localhost:{port}"} if unspecified(host) else set()),
        port if unspecified(host) else None)


def _whole(params: Any, name: str, default: Any) -> Any:
    """A whole-number request parameter (a byte offset, a count), or ``default``."""
    text = params.get(name)
    if not text:
        return default
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{name} must be a whole number (a byte offset or a count), "
                         f"got {text[:40]!r}") from None
