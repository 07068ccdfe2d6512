"""The audit trail: every event of a run, as JSON lines and on the console.

File: ``STATE_DIR/runs/RUN_ID/audit.jsonl``, one JSON object per line with
``event``, ``timestamp`` (ISO 8601 UTC), ``run_id`` and ``task``/``attempt``
where relevant (contract §6).  The folder and file are created readable by
their owner only; a resumed run appends to the same file.  ``--no-state``
writes nothing.

Console: ``--log-format console`` (the CLI's default) renders one line per
finished task and every warning or error; ``--log-format json`` prints the
same JSON objects to stderr (without ``run_id``, which the summary shows); ``-q`` keeps warnings and errors only, ``-qq`` nothing.

Durability: with the state plugin on, ``task_succeeded`` is written to the
file only once the task's completion is committed (the state plugin confirms
it through ``flowdeco_report_durable``, see :mod:`flowdeco.hookspecs`), so a
task the trail shows as succeeded never runs again after a crash.  Events
reported after a success that waits wait behind it, so the file keeps the
order of the events (typically a few milliseconds late); the console shows
them at once.  Everything is written by ``run_finished``; a success whose
commit failed is written with ``"durable": false``.

A failed write (full disk) stops the run like a failed commit of the store:
nothing new starts, ``audit_write_failed`` says what happened and what to do
(on the console; the file gets nothing more), the run ends ``failed``.  A
line torn by such a write (or by a crash) is cut off when the file is
opened again, and :func:`read_events` skips a line it cannot parse.

Both go through private structlog processor chains (structlog's global
configuration belongs to the application).  Every :class:`~flowdeco.Secret`
in an event is replaced by ``***``; exceptions are recorded with type,
message and traceback, never with the task's arguments.
"""

from __future__ import annotations

import json
import os
import sys
from collections import deque
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Iterator

from ..errors import engine_decided
from ..manager import hookimpl
from ..outcome import Event
from ..secret import mask

if TYPE_CHECKING:  # pragma: no cover
    from ..config import Config, Parser
    from ..engine.scheduler import Run
    from ..outcome import RunResult

NAME = "audit"

#: events shown on the console at the default verbosity (others go to the file only)
_CONSOLE_EVENTS = {"run_started", "run_finished", "task_succeeded", "task_failed",
                   "task_retrying", "task_skipped", "task_restored", "task_interrupted",
                   "circuit_opened", "circuit_half_open", "circuit_closed", "run_interrupted"}
_LEVELS = {"task_failed": "error", "task_interrupted": "warning", "task_retrying": "warning",
           "circuit_opened": "warning", "task_skipped": "info", "run_interrupted": "warning"}
_RANK = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}
#: captured task output (the capture plugin): in the file only; the console shows it for
#: failed tasks (the capture plugin does)
_FILE_ONLY = frozenset({"task_log", "task_output"})


#: exact types that cannot hold a Secret: passed as they are (most fields of most events)
_PLAIN = frozenset({str, int, float, bool, type(None)})


def _mask_secrets(logger: Any, method: str, event_dict: dict) -> dict:
    """Replace every Secret (also nested) by ``***``, and put ``event`` first."""
    out = {"event": event_dict.pop("event")}
    plain = _PLAIN
    for k, v in event_dict.items():
        out[k] = v if type(v) in plain else mask(v)
    return out


def stopping_line(fields: dict) -> str:
    """The console's sentence for ``run_interrupted`` (the first Ctrl-C or SIGTERM, or
    ``--run-timeout``)."""
    n = fields.get("running", 0)
    why = ""
    if fields.get("reason") == "run_timeout":  # --run-timeout, not a signal
        why = f"run timeout ({fields.get('run_timeout')}s) reached: "
        again = "Ctrl-C"
    else:
        again = "Ctrl-C" if fields.get("signal", "SIGINT") == "SIGINT" else fields["signal"]
    if not n:
        return why + "stopping: no task is running"
    return (f"{why}stopping: waiting for {n} running task{'s' if n != 1 else ''} to finish; "
            f"{again} {'again ' if not why else ''}to abandon {'it' if n == 1 else 'them'}")


def _json() -> Any:
    import structlog  # (imported when a run starts: commands like `ui` never need it)
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


_ESCAPING: Any = None


def _escaping_print_logger(stream: IO[str]) -> Any:
    """A structlog ``PrintLogger`` that prints a line the stream cannot encode (a lone
    surrogate on a strict UTF-8 stream) with backslash escapes instead of failing the run.
    (The class is made on first use: importing structlog is left to runs that log.)"""
    global _ESCAPING
    if _ESCAPING is None:
        import structlog

        class _EscapingPrintLogger(structlog.PrintLogger):
            def msg(self, message: str) -> None:
                try:
                    super().msg(message)
                except UnicodeEncodeError:
                    super().msg(message.encode("utf-8", "backslashreplace").decode("utf-8"))

            log = debug = info = warn = warning = err = error = critical = exception = \
                failure = fatal = msg

        _ESCAPING = _EscapingPrintLogger
    return _ESCAPING(stream)


def _open_private(path: Path) -> IO[str]:
    make_private_dirs(path.parent)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        _cut_torn_line(fd)
        # backslashreplace: a message with a lone surrogate (bytes decoded with
        # surrogateescape) is written as its JSON escape instead of failing the write
        return os.fdopen(fd, "a", encoding="utf-8", errors="backslashreplace", buffering=1)
    except BaseException:
        os.close(fd)
        raise


def _cut_torn_line(fd: int) -> None:
    """Truncate the file after its last newline: an event cut short by a full disk or a
    crash is dropped, so that the next one starts on a line of its own."""
    size = end = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return
    while end > 0:
        start = max(0, end - 65536)
        chunk = os.pread(fd, end - start, start)
        cut = chunk.rfind(b"\n")
        if cut >= 0:
            os.ftruncate(fd, start + cut + 1)
            return
        end = start
    os.ftruncate(fd, 0)


def read_events(path: str | os.PathLike, names: tuple[str, ...] | None = None
                ) -> Iterator[dict]:
    """The events of an audit trail, skipping a line that is not a JSON object (torn).

    ``names``: only events of these names (other lines are not even parsed).
    """
    prefixes = None if names is None else tuple(f'{{"event": "{n}"' for n in names)
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if prefixes is not None and not line.startswith(prefixes):
                continue
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict) and isinstance(event.get("event"), str):
                yield event


@hookimpl
def flowdeco_addoption(parser: Parser) -> None:
    parser.addoption("--log-format", dest="log_format", default=None,
                     choices=("console", "json"), group="state and output",
                     help="how events are shown on the console (default: console; "
                          "from Python: nothing unless given)")


@hookimpl
def flowdeco_configure(config: Config) -> None:
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
def flowdeco_unconfigure(config: Config) -> None:
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
        #: events not written yet, in order: from the first task_succeeded whose
        #: completion is not durable yet (see flowdeco_report_durable)
        self._held: deque[Event] = deque()
        #: tasks whose task_succeeded in ``_held`` waits for its confirmation
        self._unconfirmed: set[str] = set()
        #: the file could not be opened or written (reported once)
        self.error: OSError | None = None

    @hookimpl
    def flowdeco_run_start(self, run: Run) -> None:
        import structlog
        if run.state_dir is not None:
            self.path = audit_path(run.state_dir, run.run_id)
            try:
                self.file = _open_private(self.path)
            except OSError as exc:  # reported with run_started (other plugins are ready then)
                self.error = exc
                run.stop()
            else:
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
                _escaping_print_logger(stream),
                processors=[_mask_secrets, renderer], context_class=dict,
                cache_logger_on_first_use=True)

    @hookimpl
    def flowdeco_report(self, run: Run, event: Event) -> None:
        name = event.name
        file_log = self._file_log
        data = None
        if file_log is not None:
            success = name == "task_succeeded" and run.durable_later
            if success or self._held:
                if success:  # written once flowdeco_report_durable names it
                    self._unconfirmed.add(event.task)
                self._held.append(event)
                if name == "run_finished":  # all confirmed, except commits that failed
                    self._write_held(run, everything=True)
            else:
                data = event.to_dict()
                del data["event"]
                try:
                    file_log.msg(name, **data)  # (structlog copies data)
                except OSError as exc:
                    self._file_failed(run, exc)
        elif self.error is not None and name == "run_started":
            self._report_failure(run)
        if self._console_log is not None:
            if data is None:
                data = event.to_dict()
                del data["event"]
            level = data.get("level") or _LEVELS.get(name, "info")
            if name == "task_retrying" and "error" not in data:
                level = "info"  # a result retry (retry_if) is polling, not trouble: not in -q
            if name not in _CONSOLE_EVENTS and ("level" not in data or name in _FILE_ONLY):
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
    def flowdeco_report_durable(self, run: Run, tasks: list[str]) -> None:
        unconfirmed = self._unconfirmed
        if unconfirmed:
            if len(tasks) == 1:
                unconfirmed.discard(tasks[0])
            else:
                unconfirmed.difference_update(tasks)
            self._write_held(run)

    def _write_held(self, run: Any, everything: bool = False) -> None:
        """Write held events up to the first success still waiting for its commit (all
        of them with ``everything``: a success whose commit failed gets ``durable: false``)."""
        held, unconfirmed = self._held, self._unconfirmed
        while held:
            event = held[0]
            if event.name == "task_succeeded" and event.task in unconfirmed:
                if not everything:
                    return
                unconfirmed.discard(event.task)
                held.popleft()
                self._write_event(run, event, durable=False)
            else:
                held.popleft()
                self._write_event(run, event)

    def _write_event(self, run: Any, event: Event, **extra: Any) -> None:
        if self._file_log is None:
            return
        data = event.to_dict()
        del data["event"]
        data.update(extra)
        try:
            self._file_log.msg(event.name, **data)
        except OSError as exc:
            self._file_failed(run, exc)

    def _file_failed(self, run: Any, exc: OSError) -> None:
        """A write failed (full disk): stop the run, like a failed commit of the store."""
        self.error = exc
        self._drop_file()
        try:  # cut the line the failed write tore (this also gives its space back)
            fd = os.open(self.path, os.O_RDWR)  # type: ignore[arg-type]
            try:
                _cut_torn_line(fd)
            finally:
                os.close(fd)
        except OSError:
            pass  # it is cut when the trail is opened again
        if run is not None:
            run.stop()  # nothing new starts while its events cannot be recorded
            self._report_failure(run)

    def _report_failure(self, run: Any) -> None:
        exc = self.error
        event = Event("audit_write_failed", run.now(), run.run_id, None,
                      {"level": "error", "error": f"{type(exc).__name__}: {exc}",
                       "file": str(self.path),
                       "hint": f"free space, then resume with --resume {run.run_id}"})
        run.hook.flowdeco_report(run=run, event=event)

    def _drop_file(self) -> None:
        f, self.file = self.file, None
        self._file_log = None
        self._held.clear()
        self._unconfirmed.clear()
        if f is not None:
            try:
                f.close()  # (flushes what is buffered: may fail the same way)
            except OSError:
                pass

    @hookimpl
    def flowdeco_report_flush(self, run: Run) -> None:
        if self.file is not None:
            try:
                self.file.flush()
            except OSError as exc:
                self._file_failed(run, exc)

    @hookimpl
    def flowdeco_run_finish(self, run: Run, result: RunResult) -> None:
        self.close()

    def close(self) -> None:
        if self.file is not None:
            self._write_held(None, everything=True)  # (the run never got to run_finished)
            f = self.file
            if f is not None:
                try:
                    f.close()
                except OSError as exc:
                    self.error = exc
            self._drop_file()
