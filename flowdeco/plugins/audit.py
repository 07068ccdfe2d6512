"""The audit trail: every event of a run, as JSON lines and on the console.

File: ``STATE_DIR/runs/RUN_ID/audit.jsonl``, one JSON object per line with
``event``, ``timestamp`` (ISO 8601 UTC), ``run_id`` and ``task``/``attempt``
where relevant (contract §6).  The folder and file are created readable by
their owner only; a resumed run appends to the same file.  ``--no-state``
writes nothing.

Console: ``--log-format console`` (the CLI's default) renders one line per
finished task and every warning or error; ``--log-format json`` prints the
same JSON objects to stderr (without ``run_id``, which the summary shows); ``-q`` keeps warnings and errors only, ``-qq`` nothing.

Both go through private structlog processor chains (structlog's global
configuration belongs to the application).  Every :class:`~flowdeco.Secret`
in an event is replaced by ``***``; exceptions are recorded with type,
message and traceback, never with the task's arguments.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import IO, Any

import structlog

from ..errors import engine_decided
from ..manager import hookimpl
from ..secret import mask

NAME = "audit"

#: events shown on the console at the default verbosity (others go to the file only)
_CONSOLE_EVENTS = {"run_started", "run_finished", "task_succeeded", "task_failed",
                   "task_retrying", "task_skipped", "task_restored", "task_interrupted",
                   "circuit_opened", "circuit_half_open", "circuit_closed", "run_interrupted"}
_LEVELS = {"task_failed": "error", "task_interrupted": "warning", "task_retrying": "warning",
           "circuit_opened": "warning", "task_skipped": "info", "run_interrupted": "warning"}
_RANK = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}


def _mask_secrets(logger: Any, method: str, event_dict: dict) -> dict:
    """Replace every Secret (also nested) by ``***``, and put ``event`` first."""
    out = {"event": event_dict.pop("event")}
    for k, v in event_dict.items():
        out[k] = mask(v)
    return out


def stopping_line(fields: dict) -> str:
    """The console's sentence for ``run_interrupted`` (the first Ctrl-C or SIGTERM)."""
    n = fields.get("running", 0)
    again = "Ctrl-C" if fields.get("signal", "SIGINT") == "SIGINT" else fields["signal"]
    if not n:
        return "stopping: no task is running"
    return (f"stopping: waiting for {n} running task{'s' if n != 1 else ''} to finish; "
            f"{again} again to abandon {'it' if n == 1 else 'them'}")


def _json() -> Any:
    return structlog.processors.JSONRenderer(serializer=json.dumps, default=repr,
                                             ensure_ascii=False)


def audit_path(state_dir: str | os.PathLike, run_id: str) -> Path:
    """Where the audit trail of ``run_id`` lives."""
    return Path(state_dir) / "runs" / run_id / "audit.jsonl"


def make_private_dirs(folder: Path) -> None:
    """Create ``folder`` and any missing parents, each readable by its owner only."""
    missing = []
    while not folder.exists():
        missing.append(folder)
        if folder.parent == folder:
            break
        folder = folder.parent
    for f in reversed(missing):
        f.mkdir(mode=0o700, exist_ok=True)


def _open_private(path: Path) -> IO[str]:
    make_private_dirs(path.parent)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    return os.fdopen(fd, "a", encoding="utf-8", buffering=1)


@hookimpl
def flowdeco_addoption(parser: Any) -> None:
    parser.addoption("--log-format", dest="log_format", default=None,
                     choices=("console", "json"), group="state and output",
                     help="how events are shown on the console (default: console; "
                          "from Python: nothing unless given)")


@hookimpl
def flowdeco_configure(config: Any) -> None:
    fmt = config.getoption("log_format")
    if fmt is None and config.from_cli:
        fmt = "console"
    quiet = config.getoption("quiet", 0) or 0
    if quiet >= 2:
        fmt = None
    if fmt is None and config.getoption("no_state"):
        return  # nothing to write anywhere: register nothing, cost nothing
    config.pluginmanager.register(AuditTrail(fmt, quiet), "audit-trail")


@hookimpl
def flowdeco_unconfigure(config: Any) -> None:
    plugin = config.pluginmanager.get_plugin("audit-trail")
    if plugin is not None:
        plugin.close()
        config.pluginmanager.unregister(plugin)


class AuditTrail:
    """Writes a run's events; registered only when there is somewhere to write them."""

    def __init__(self, console: str | None, quiet: int, stream: IO[str] | None = None):
        self.console = console
        self.min_rank = _RANK["warning"] if quiet else _RANK["info"]
        self.stream = stream
        self.file: IO[str] | None = None
        self.path: Path | None = None
        self._file_log: Any = None
        self._console_log: Any = None

    @hookimpl
    def flowdeco_run_start(self, run: Any) -> None:
        if run.state_dir is not None:
            self.path = audit_path(run.state_dir, run.run_id)
            self.file = _open_private(self.path)
            self._file_log = structlog.wrap_logger(
                structlog.WriteLogger(self.file),
                processors=[_mask_secrets, _json()],
                context_class=dict, cache_logger_on_first_use=True)
        if self.console is not None:
            stream = self.stream or sys.stderr
            renderer: Any
            if self.console == "json":
                renderer = _json()
            else:
                renderer = structlog.dev.ConsoleRenderer(
                    colors=stream.isatty() and "NO_COLOR" not in os.environ,
                    exception_formatter=structlog.dev.plain_traceback, sort_keys=False,
                    pad_event_to=0)
            self._console_log = structlog.wrap_logger(
                structlog.PrintLogger(stream),
                processors=[_mask_secrets, renderer], context_class=dict,
                cache_logger_on_first_use=True)

    @hookimpl
    def flowdeco_report(self, run: Any, event: Any) -> None:
        data = event.to_dict()
        name = data.pop("event")
        if self._file_log is not None:
            self._file_log.msg(name, **data)
        if self._console_log is not None:
            level = data.get("level") or _LEVELS.get(name, "info")
            if name not in _CONSOLE_EVENTS and "level" not in data:
                return
            if _RANK.get(level, 20) < self.min_rank:
                return
            data.pop("run_id", None)
            if self.console == "console":
                if name == "run_interrupted":
                    name, data = stopping_line(data), {"timestamp": data["timestamp"]}
                ts = data.pop("timestamp")
                tb = data.pop("traceback", None)
                data = {"timestamp": ts[11:23], "level": level, **data}
                if "duration" in data:
                    data["duration"] = f"{data['duration']:.3f}s"
                if tb and not (event.outcome is not None
                               and engine_decided(event.outcome.exception)):
                    # the task's own traceback; a failure the engine decided (timeout,
                    # open breaker, unstorable result) stays one line, its
                    # traceback is in the file only
                    data["exception"] = tb  # ConsoleRenderer prints it below the line
            self._console_log.msg(name, **data)

    @hookimpl
    def flowdeco_report_flush(self, run: Any) -> None:
        if self.file is not None:
            self.file.flush()

    @hookimpl
    def flowdeco_run_finish(self, run: Any, result: Any) -> None:
        self.close()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
            self._file_log = None
