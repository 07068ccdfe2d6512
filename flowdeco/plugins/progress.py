"""Progress: a live one-line view of a run on a terminal.

::

    flowdeco 12/40 done (1 failed) | 4 running | etl 5,432 items 2,100/s | 3.2s, ~7s left

Shown on stderr when it is a terminal, for CLI runs (``--progress`` /
``--no-progress`` force it on or off; from Python, ``run(..., progress=True)``
shows it when stderr is a terminal).  Off when stderr is not a terminal (a
pipe, a file, CI logs), with ``-q``, with ``TERM=dumb``, or with
``-p no:progress``.  When it is off nothing is registered, so it costs nothing.

When on, a :class:`ProgressView` counts task events as they are reported (on
the scheduler thread) and a small daemon thread redraws the line at most 10
times a second, so the elapsed time keeps moving during a long task.  Around
each report the view takes its lock and erases its line first, so lines the
audit trail prints to the console never get mixed with it.  Items per second
are shown for each pipeline node that is running.  After the first Ctrl-C
the line says ``stopping`` and no longer estimates the time left.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import threading
import time
from typing import IO, TYPE_CHECKING, Any, Callable

from ..manager import hookimpl

if TYPE_CHECKING:  # pragma: no cover
    from flowdeco import Event, Run, RunResult
    from flowdeco.config import Config, Parser

NAME = "progress"
_PLUGIN = "progress-view"

_DONE = {"task_succeeded": "succeeded", "task_restored": "succeeded", "task_failed": "failed",
         "task_skipped": "skipped", "task_interrupted": "interrupted"}


def is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty()) and os.environ.get("TERM") != "dumb"
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def enabled(config: Any, stream: Any) -> bool:
    """Whether a run configured by ``config`` shows the live view on ``stream``."""
    want = config.getoption("progress", None)
    if want is False or (config.getoption("quiet", 0) or 0):
        return False
    if want is None and not config.from_cli:
        return False
    return is_terminal(stream)


def _count(n: float) -> str:
    return f"{n:,.0f}"


def _secs(x: float) -> str:
    if x < 60:
        return f"{x:.1f}s"
    m, s = divmod(int(x), 60)
    return f"{m}m{s:02d}s" if m < 60 else f"{m // 60}h{m % 60:02d}m"


class ProgressView:
    """The live line; registered for one session only when it is shown."""

    def __init__(self, stream: IO[str], interval: float = 0.1,
                 clock: Callable[[], float] = time.monotonic):
        self.stream = stream
        self.interval = interval
        self.clock = clock
        self.lock = threading.Lock()
        self.drawn = False
        self.run: Any = None
        self.total = 0
        self.started_at = 0.0
        self.running: set[str] = set()
        #: after the first Ctrl-C (``run_interrupted``): no new task starts
        self.stopping = False
        self.counts = dict.fromkeys(("succeeded", "failed", "skipped", "interrupted"), 0)
        self._rates: dict[str, tuple[float, int, float]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- hooks
    @hookimpl
    def flowdeco_run_start(self, run: Run) -> None:
        self.run = run
        self.total = len(run.graph)
        self.started_at = self.clock()
        self._stop.clear()
        self._thread = threading.Thread(target=self._tick, name="flowdeco-progress",
                                        daemon=True)
        self._thread.start()

    @hookimpl(wrapper=True, tryfirst=True)
    def flowdeco_report(self, run: Run, event: Event) -> Any:
        with self.lock:
            if self.drawn:
                self._erase()
            try:
                return (yield)
            finally:
                name = event.name
                if name == "task_started":
                    self.running.add(event.task)
                elif name == "task_mapped":  # its instances count as tasks of the run
                    self.total += event.fields.get("instances", 0)
                elif name == "run_interrupted":
                    self.stopping = True
                else:
                    kind = _DONE.get(name)
                    if kind is not None:
                        self.counts[kind] += 1
                        self.running.discard(event.task)

    @hookimpl(tryfirst=True)
    def flowdeco_run_finish(self, run: Run, result: RunResult) -> None:
        self.close()

    # -- drawing
    def line(self) -> str:
        """The current progress line (without terminal control codes)."""
        c = self.counts
        done = sum(c.values())
        extra = ", ".join(f"{n} {k}" for k, n in c.items() if n and k != "succeeded")
        parts = [f"flowdeco {done}/{self.total} done" + (f" ({extra})" if extra else "")]
        if self.stopping:
            parts.append("stopping")
        parts.append(f"{len(self.running)} running")
        now = self.clock()
        if self.run is not None:
            from ..pipeline import live
            for name, ex in live(self.run).items():
                parts.append(f"{name} {_count(ex.delivered)} items {_count(self._rate(name, ex, now))}/s")
        elapsed = now - self.started_at
        timing = _secs(elapsed)
        if 0 < done < self.total and not self.stopping:  # what is left will not run
            timing += f", ~{_secs(elapsed / done * (self.total - done))} left"
        parts.append(timing)
        return " | ".join(parts)

    def _rate(self, name: str, ex: Any, now: float) -> float:
        """Items per second over the last second or so (smoothed)."""
        prev = self._rates.get(name)
        count = ex.delivered
        if prev is None:
            rate = count / max(now - self.started_at, 1e-9) if count else 0.0
            self._rates[name] = (now, count, rate)
            return rate
        t, n, rate = prev
        if now - t >= 0.5:
            rate = 0.5 * rate + 0.5 * (count - n) / (now - t)
            self._rates[name] = (now, count, rate)
        return rate

    def draw(self) -> None:
        with self.lock:
            width = shutil.get_terminal_size((80, 24)).columns - 1
            self.stream.write("\r" + self.line()[:width] + "\x1b[K")
            self.stream.flush()
            self.drawn = True

    def _erase(self) -> None:
        self.stream.write("\r\x1b[K")
        self.stream.flush()
        self.drawn = False

    def _tick(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.draw()
            except Exception:  # noqa: BLE001 - a closed terminal must not break the run
                return

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(1.0)
            self._thread = None
        with self.lock:
            if self.drawn:
                try:
                    self._erase()
                except Exception:  # noqa: BLE001
                    pass


# --------------------------------------------------------------------------- hooks


@hookimpl
def flowdeco_addoption(parser: Parser) -> None:
    parser.addoption("--progress", dest="progress", default=None,
                     action=argparse.BooleanOptionalAction, group="state and output",
                     help="a live progress line on stderr when it is a terminal (default: on "
                          "for CLI runs, off with -q)")


@hookimpl
def flowdeco_configure(config: Config) -> None:
    if enabled(config, sys.stderr):
        config.pluginmanager.register(ProgressView(sys.stderr), _PLUGIN)


@hookimpl
def flowdeco_unconfigure(config: Config) -> None:
    view = config.pluginmanager.get_plugin(_PLUGIN)
    if view is not None:
        view.close()
        config.pluginmanager.unregister(view)
