"""Capture: what tasks print and log becomes audit events of their attempts.

On by default, like pytest's capture; ``-s`` / ``--capture=no`` (``run(capture=False)``)
or ``-p no:capture`` turns it off, and then nothing is installed and nothing
costs anything.

While an attempt runs, on the thread that runs it:

- a ``logging`` record from any logger that reaches the root logger becomes
  a ``task_log`` event (``task``, ``attempt``, ``level``, ``logger``,
  ``message``, and ``exception`` with the traceback text when the record
  carries one).  Which records exist is your logging configuration's
  business (the root logger's level is WARNING unless configured);
  ``--log-level INFO`` lowers the root logger's level for the run.  Your own
  handlers still receive every record.
- each line written to ``sys.stdout`` / ``sys.stderr`` (``print``) becomes a
  ``task_output`` event (``stream``, ``text``); a last line without a newline
  is reported when the attempt ends.  Output written to file descriptors
  (subprocesses, C extensions, ``sys.stdout.buffer``) is not captured.

Everything goes to the audit trail; the console shows the captured output of
failed tasks only, after their failure line (like pytest's "Captured stdout
call" section).  Outside attempts (the scheduler, other threads) output and
records pass through untouched.

How: ``sys.stdout``/``sys.stderr`` are replaced by a proxy and a handler is
added to the root logger once per run (shared by concurrent runs, undone when
the last one ends), and the run asks the engine to mark each attempt's thread
(``run.track_attempts``, :mod:`flowdeco.engine.tracking`): a task that prints
and logs nothing costs one tuple store per attempt.  Records travel like
``ctx.log`` records: posted to the scheduler from threads, shipped back with
the attempt's result from worker processes (where the same proxy and handler
are installed before the first attempt).
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import traceback
from collections import deque
from functools import partial
from typing import IO, TYPE_CHECKING, Any

from ..engine import tracking
from ..errors import UsageError
from ..manager import hookimpl
from ..stash import StashKey

if TYPE_CHECKING:  # pragma: no cover
    from flowdeco import Event, Run, RunResult
    from flowdeco.config import Config, Parser

NAME = "capture"
_CONSOLE = "capture-console"

#: audit events this plugin reports
TASK_LOG = "task_log"
TASK_OUTPUT = "task_output"

#: captured events kept per task for the console's failure section (the rest are counted)
KEEP = 200

_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


# --------------------------------------------------------------------------- process-wide parts


class StreamProxy:
    """Stands in for ``sys.stdout``/``sys.stderr``: lines written inside an attempt become
    ``task_output`` events of it, anything else goes to the original stream."""

    def __init__(self, original: IO[str], name: str):
        self._original = original
        self._name = name

    def write(self, text: str) -> int:
        slot = tracking.current()
        if slot is None:
            return self._original.write(text)
        data = slot.data
        if data is None:
            data = slot.data = {}
        name = self._name
        tail = data.get(name)
        if tail is None:  # first write of this attempt to this stream
            slot.at_end(partial(self._flush, slot))
            tail = ""
        if "\n" not in text:
            data[name] = tail + text
            return len(text)
        lines = (tail + text).split("\n")
        data[name] = lines.pop()
        for line in lines:
            slot.emit("info", TASK_OUTPUT, {"stream": name, "text": line})
        return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def _flush(self, slot: tracking.Slot) -> None:
        """The attempt ended: report its last line if it had no newline."""
        tail = (slot.data or {}).pop(self._name, None)
        if tail:
            slot.emit("info", TASK_OUTPUT, {"stream": self._name, "text": tail})

    def flush(self) -> None:
        if tracking.current() is None:
            self._original.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._original, name)


class CaptureHandler(logging.Handler):
    """On the root logger: a record emitted inside an attempt becomes a ``task_log`` event.

    A record outside attempts is left to the other handlers; when there is
    none, Python's last-resort handler gets it, as it would without this one.
    """

    def emit(self, record: logging.LogRecord) -> None:
        slot = tracking.current()
        if slot is None:
            last = logging.lastResort
            if last is not None and record.levelno >= last.level and not self._others(record):
                last.handle(record)
            return
        try:
            fields: dict[str, Any] = {"logger": record.name, "message": record.getMessage()}
            if record.exc_info and record.exc_info[0] is not None:
                fields["exception"] = "".join(traceback.format_exception(*record.exc_info))
            elif record.exc_text:
                fields["exception"] = record.exc_text
            if record.stack_info:
                fields["stack"] = record.stack_info
        except Exception:  # noqa: BLE001 - a bad format string: logging's own report
            self.handleError(record)
            return
        slot.emit(record.levelname.lower(), TASK_LOG, fields)

    def _others(self, record: logging.LogRecord) -> bool:
        """Whether another handler saw ``record`` on its way to the root logger."""
        logger: Any = logging.getLogger(record.name) if record.name != "root" else logging.root
        while logger is not None:
            if any(h is not self for h in logger.handlers):
                return True
            if not logger.propagate:
                return True  # (it never reached us then; kept for symmetry)
            logger = logger.parent
        return False


_lock = threading.Lock()
_users = 0
_handler = CaptureHandler()
_saved: dict[str, Any] = {}
_in_worker = False


def install(level: int | None = None) -> None:
    """Install the proxies and the handler (first user), or count one more user."""
    global _users
    with _lock:
        _users += 1
        if _users > 1:
            return
        root = logging.getLogger()
        root.addHandler(_handler)
        _saved["level"] = None
        if level is not None and (root.level == logging.NOTSET or root.level > level):
            _saved["level"] = root.level
            root.setLevel(level)
        for name in ("stdout", "stderr"):
            stream = getattr(sys, name)
            if not isinstance(stream, StreamProxy):
                proxy = StreamProxy(stream, name)
                setattr(sys, name, proxy)
                _saved[name] = proxy


def uninstall() -> None:
    """One user less; the last one restores the streams (unless someone replaced them
    since) and removes the handler."""
    global _users
    with _lock:
        if _users == 0:
            return
        _users -= 1
        if _users:
            return
        root = logging.getLogger()
        root.removeHandler(_handler)
        if _saved.get("level") is not None:
            root.setLevel(_saved["level"])
        for name in ("stdout", "stderr"):
            proxy = _saved.pop(name, None)
            if proxy is not None and getattr(sys, name) is proxy:
                setattr(sys, name, proxy._original)


def install_in_worker(level: int | None = None) -> None:
    """``run.worker_setup``: in a worker process, install once (kept for its life)."""
    global _in_worker
    if not _in_worker:
        _in_worker = True
        install(level)


def parse_level(value: Any) -> int | None:
    """``--log-level``: a level name or number; None leaves levels alone."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    text = str(value).strip().upper()
    if text.isdigit():
        return int(text)
    if text not in _LEVELS:
        raise UsageError(f"--log-level {value!r}: expected one of {', '.join(_LEVELS)} "
                         "or a number")
    return getattr(logging, text)


def enabled(value: Any) -> bool:
    """``capture=``: "yes"/"no" (CLI), True/False (Python)."""
    if value in (True, "yes", None):
        return True
    if value in (False, "no"):
        return False
    raise UsageError(f"capture={value!r}: expected 'yes' or 'no' (or True/False)")


# --------------------------------------------------------------------------- per session


class RunCapture:
    """A session's capture (in ``config.stash`` while capture is on): installs for each
    run, asks for tracked attempts.  Kept in the stash and driven by the module's
    hooks rather than registered as a plugin per session: registering an object
    costs pluggy a quarter of a millisecond, the whole fixed cost of a small run."""

    def __init__(self, level: int | None):
        self.level = level
        self.active = 0

    def start(self, run: Run) -> None:
        if not run.hook.flowdeco_report.get_hookimpls():
            return  # nothing would record it: output passes through, nothing to install
        run.track_attempts = True
        run.worker_setup.append(partial(install_in_worker, self.level))
        install(self.level)
        self.active += 1

    def close(self) -> None:
        while self.active:
            self.active -= 1
            uninstall()


_SESSION = StashKey["RunCapture"]("capture")


@hookimpl
def flowdeco_run_start(run: Run) -> None:
    capture = run.config.stash.get(_SESSION)
    if capture is not None:
        capture.start(run)


@hookimpl(tryfirst=True)
def flowdeco_run_finish(run: Run, result: RunResult) -> None:
    capture = run.config.stash.get(_SESSION)
    if capture is not None:
        capture.close()


class FailureConsole:
    """Shows the captured output of a failed task on the console, after its failure line.

    Registered only when the run has a console (CLI, or ``log_format`` given):
    keeps the captured events of tasks that have not ended (the last
    :data:`KEEP` of each), drops them when a task ends well.
    """

    def __init__(self, fmt: str, stream: IO[str] | None = None):
        self.fmt = fmt
        self.stream = stream
        self.kept: dict[str, deque] = {}
        self.dropped: dict[str, int] = {}

    @hookimpl(trylast=True)
    def flowdeco_report(self, run: Run, event: Event) -> None:
        name = event.name
        if name == TASK_LOG or name == TASK_OUTPUT:
            kept = self.kept.get(event.task)
            if kept is None:
                kept = self.kept[event.task] = deque(maxlen=KEEP)
            elif len(kept) == KEEP:
                self.dropped[event.task] = self.dropped.get(event.task, 0) + 1
            kept.append(event)
        elif name == "task_failed":
            kept = self.kept.pop(event.task, None)
            if kept:
                self.show(event.task, list(kept), self.dropped.pop(event.task, 0))
        elif name in ("task_succeeded", "task_restored", "task_skipped", "task_interrupted"):
            if self.kept.pop(event.task, None) is not None:
                self.dropped.pop(event.task, None)

    def show(self, task: str, events: list, dropped: int) -> None:
        out = self.stream or sys.stderr
        if self.fmt == "json":
            for e in events:
                data = e.to_dict()
                data.pop("run_id", None)
                out.write(json.dumps(data, default=repr, ensure_ascii=False) + "\n")
            return
        lines = [f"{'-' * 10} captured output of {task} {'-' * 10}"]
        if dropped:
            lines.append(f"({dropped} earlier lines are in the audit trail only)")
        for e in events:
            f = e.fields
            where = f"[attempt {f.get('attempt')}] "
            if e.name == TASK_OUTPUT:
                lines.append(f"{where}{f.get('stream')}: {f.get('text')}")
            else:
                lines.append(f"{where}{str(f.get('level', '')).upper()} {f.get('logger')}: "
                             f"{f.get('message')}")
                if f.get("exception"):
                    lines.extend("    " + x for x in str(f["exception"]).rstrip().split("\n"))
        out.write("\n".join(lines) + "\n")
        out.flush()


# --------------------------------------------------------------------------- hooks


@hookimpl
def flowdeco_addoption(parser: Parser) -> None:
    g = "state and output"
    parser.addoption("--capture", dest="capture", default="yes", choices=("yes", "no"), group=g,
                     help="capture what tasks print and log into the audit trail, showing "
                          "it for failed tasks only (default: yes)")
    parser.addoption("-s", dest="no_capture", default=False, action="store_true", group=g,
                     help="shortcut for --capture=no")
    parser.addoption("--log-level", dest="log_level", default=None, metavar="LEVEL", group=g,
                     help="lower the root logger's level to LEVEL (DEBUG, INFO, ...) while "
                          "the run captures task logging (default: as configured)")


def _console_format(config: Config) -> str | None:
    """Where the audit trail shows events on the console: "console", "json" or None."""
    if (config.getoption("quiet", 0) or 0) >= 2:
        return None
    fmt = config.getoption("log_format", None)
    if fmt is None and config.from_cli:
        fmt = "console"
    return fmt


@hookimpl
def flowdeco_configure(config: Config) -> None:
    on = enabled(config.getoption("capture")) and not config.getoption("no_capture")
    level = parse_level(config.getoption("log_level"))
    if not on:
        return
    config.stash[_SESSION] = RunCapture(level)
    pm = config.pluginmanager
    fmt = _console_format(config)
    if fmt is not None:
        pm.register(FailureConsole(fmt), _CONSOLE)


@hookimpl
def flowdeco_unconfigure(config: Config) -> None:
    pm = config.pluginmanager
    capture = config.stash.pop(_SESSION, None)
    if capture is not None:
        capture.close()  # a run that never reached flowdeco_run_finish
    console = pm.get_plugin(_CONSOLE)
    if console is not None:
        pm.unregister(console)


__all__ = ["CaptureHandler", "StreamProxy", "TASK_LOG", "TASK_OUTPUT", "install", "uninstall"]
