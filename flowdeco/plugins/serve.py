"""``python -m flowdeco serve TARGET``: run a flow at each tick of its cron schedules.

A long-running scheduler.  Schedules come from the tasks' ``cron=`` options
(``@task(cron="*/5 * * * *")``) and/or from ``--cron EXPR`` (the whole flow).
At each tick one run starts, with its own run id ``FLOW-YYYYmmddTHHMMSSZ``
(the tick in UTC) and its own state and audit trail; it runs the cron tasks
due at that tick plus what they need (like ``-k``), or the whole flow for
``--cron``.  Ticks of several schedules that fall together make one run.

Rules:

- **Time zone**: cron expressions read wall time in ``--tz ZONE`` (an IANA
  name), else a leading ``CRON_TZ=ZONE`` in the expression, else the
  machine's zone.  DST follows Debian cron (see
  :class:`~flowdeco.plugins.timers.CronSchedule`).
- **No pile-up**: runs never overlap.  Ticks that pass while a run is in
  progress are coalesced: when it ends, one run starts at once for the
  latest of them; the others are counted as ``skipped``.  Same rule as
  interval tasks: late means "at once, once".
- **Claims and missed ticks** (needs state, i.e. not ``--no-state``):
  before a tick's run starts, serve *claims* the tick: it writes the tick
  and the run id it will use to ``STATE_DIR/serve/FLOW.json`` (a new file
  fsynced, then renamed over the old one, then the directory fsynced), and
  clears the claim once the run has ended and is recorded.  The run id is
  the tick itself (``FLOW-<tick in UTC>``) and the store refuses a second
  run with an id it holds, so a claim can be replayed without ever starting
  a tick twice.  On start, a claim left by a serve that died (SIGKILL, power
  loss) is looked up in the store: a run that was never recorded makes the
  tick *missed*; a run recorded but not ended (``running``, ``interrupted``)
  is *unfinished*; an ended run needs nothing.  The ticks after the claimed
  one up to now are missed too.  Both are reported; ``--catch-up`` resumes
  the unfinished run (the state plugin keeps its completed tasks), then runs
  each missed tick, oldest first, before serving the schedule.  Without
  ``--catch-up`` they are reported once, and the next tick's claim replaces
  them.  A serve holds ``STATE_DIR/serve/FLOW.lock`` while it runs: a second
  serve of the same flow and state dir is refused.  ``FLOW.json`` also lists
  the schedules served (expression, zone, tasks), which the UI reads
  (:func:`load_serve_state`, :func:`is_served`).
- **Stopping**: SIGTERM or Ctrl-C while waiting for a tick stops serve at
  once with exit code 0 (nothing was cut short).  During a run, the run is
  interrupted like any run (running tasks finish and are recorded) and serve
  exits 2; ``--catch-up`` on the next start resumes that run.  Failed runs do
  not stop serve: they are reported and recorded like any run.
- **Wall-clock changes**: the wait for a tick re-reads the wall clock at least
  once a minute, so a clock set forward fires the due tick (coalesced), and a
  clock set back never re-runs a tick already handled (also across a
  restart: the first tick served is after the last one claimed).

- **Backfills**: ``--backfill FROM TO [--max-active N]`` runs each tick of a
  past range once instead of serving (see :mod:`flowdeco.plugins.backfill`).

Time is injectable: ``serve(target, clock=FakeClock(wall=...), max_ticks=3)``
runs three ticks of an hourly schedule instantly (the fake clock jumps to
each tick, and the runs use the same clock).
"""

from __future__ import annotations

import datetime as _dt
import os
import re
from pathlib import Path
from queue import Empty, SimpleQueue
from typing import IO, Any, Callable, Iterable, Literal, Mapping, Sequence

import attrs

from ..clock import Clock
from ..errors import FlowError, StateError, UsageError
from ..outcome import INTERRUPTED, ExitCode, RunResult
from ..engine.session import Session, validate_run_id
from ..signals import on_stop_signals
from .serve_state import (STATE_VERSION, ServeLock, is_served, load_serve_state,
                          write_serve_state)
from .timers import CronSchedule, parse_cron, zone_info

UTC = _dt.timezone.utc

#: on a real clock, re-read the wall clock at least this often while waiting for a tick
MAX_WAIT = 60.0
#: most missed ticks listed (and run by --catch-up) after a long time down
MAX_MISSED = 10_000

_STOP = "stop"
StopReason = Literal["max_ticks", "stopped", "interrupted"]


@attrs.frozen
class TickRun:
    """One run started by serve."""

    #: the tick it ran for, in its schedule's zone
    tick: _dt.datetime
    run_id: str
    #: the cron tasks due at this tick; empty when the whole flow ran (``--cron``)
    tasks: tuple[str, ...]
    #: None when the run could not start (see ``error``)
    result: RunResult | None
    error: str | None = None
    #: started by ``--catch-up`` for a tick missed while serve was down
    catch_up: bool = False
    resumed: bool = False
    #: started by ``--backfill`` (:mod:`flowdeco.plugins.backfill`)
    backfill: bool = False


@attrs.frozen
class ServeReport:
    """What :func:`serve` returns."""

    flow: str
    runs: tuple[TickRun, ...]
    #: ticks missed while serve was down, found at start (oldest first)
    missed: tuple[_dt.datetime, ...]
    #: ticks coalesced because they passed while a run was in progress
    skipped: int
    #: the run id of a tick run that was cut short before this start, if any
    unfinished: str | None
    reason: StopReason

    @property
    def exit_code(self) -> ExitCode:
        """0 when serve stopped cleanly, 2 when a signal interrupted a run in flight."""
        return ExitCode.INTERRUPTED if self.reason == "interrupted" else ExitCode.OK


@attrs.frozen
class _Claim:
    """The tick a serve that stopped had claimed (``running`` in ``FLOW.json``)."""

    run_id: str
    tick: _dt.datetime
    #: the cron tasks of the run; None: the whole flow
    tasks: tuple[str, ...] | None
    #: its run in the store: None never recorded, else its status ("unknown": no store to ask)
    status: str | None


#: a claimed run in these states was cut short: --catch-up resumes it
_UNFINISHED = ("running", "interrupted", "unknown")


@attrs.frozen
class _Entry:
    key: str
    schedule: CronSchedule
    #: task names this schedule runs (plus what they need); None: the whole flow
    tasks: tuple[str, ...] | None


def tick_run_id(flow: str, tick: _dt.datetime) -> str:
    """``FLOW-YYYYmmddTHHMMSSZ``: the run id of the run for ``tick``."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", flow)[:100].strip(".") or "flow"
    return validate_run_id(f"{safe}-{tick.astimezone(UTC):%Y%m%dT%H%M%SZ}")


SessionFactory = Callable[[Mapping[str, Any]], Session]


class Scheduler:
    """The serve loop.  :meth:`run` blocks until stopped; :meth:`stop` is thread-safe.

    ``start_session(options)`` starts a configured :class:`Session` with these
    extra options (``run_id``, ``resume``); :func:`serve` and the CLI provide
    it.  ``state_dir`` (None: no state) is where ``serve/FLOW.json`` lives.
    """

    def __init__(self, target: Any, start_session: SessionFactory, *,
                 state_dir: str | os.PathLike | None, cron: str | None = None,
                 tz: _dt.tzinfo | str | None = None, catch_up: bool = False,
                 max_ticks: int | None = None, clock: Clock | None = None,
                 out: IO[str] | None = None, quiet: int = 0, can_resume: bool = True):
        if max_ticks is not None and (isinstance(max_ticks, bool) or not isinstance(max_ticks, int)
                                      or max_ticks < 0):
            raise UsageError(f"max_ticks must be an int >= 0, got {max_ticks!r}")
        self.target = target
        self.start_session = start_session
        self.state_dir = None if state_dir is None else Path(state_dir)
        self.cron = cron
        self.tz = None if tz is None else zone_info(tz)
        self.catch_up = catch_up
        self.max_ticks = max_ticks
        self.clock = clock or Clock()
        self.out = out
        self.quiet = quiet
        self.can_resume = can_resume
        self._wake: SimpleQueue = SimpleQueue()
        self.runs: list[TickRun] = []
        self.skipped = 0
        #: the schedules served, as written to FLOW.json for the UI (set when collected)
        self.schedules: list[dict[str, Any]] = []

    # -- control
    def stop(self) -> None:
        """Stop serving: at once while waiting; after the current run otherwise."""
        self._wake.put(_STOP)

    def _stop_pending(self) -> bool:
        try:
            return self._wake.get_nowait() == _STOP
        except Empty:
            return False

    def _say(self, text: str) -> None:
        if self.out is not None and self.quiet < 2:
            print(f"flowdeco serve: {text}", file=self.out, flush=True)

    # -- the loop
    def run(self) -> ServeReport:
        flow, entries, saved, claim, lock = self._discover()
        try:
            restore = self._install_signals()
            try:
                return self._serve(flow, entries, saved, claim)
            finally:
                restore()
        finally:
            if lock is not None:
                lock.release()

    def _discover(self) -> tuple[str, list[_Entry], dict[str, Any], _Claim | None,
                                 ServeLock | None]:
        """Collect the flow, parse its schedules, lock and read its serve state."""
        session = self.start_session({})
        lock = None
        try:
            graph = session.collect(self.target)
            entries = self._entries(graph)
            self.schedules = [{"key": e.key, "expr": e.schedule.expr,
                               "tz": _zone_name(e.schedule.tz),
                               "tasks": list(e.tasks) if e.tasks is not None else None}
                              for e in entries]
            lock = self._lock(graph.name)
            saved = self._load_state(graph.name)
            claim = self._claim(saved, session, entries)
        except BaseException:
            if lock is not None:
                lock.release()
            raise
        finally:
            session.close()
        return graph.name, entries, saved, claim, lock

    def _entries(self, graph: Any) -> list[_Entry]:
        entries = []
        for v in graph.using("cron"):
            entries.append(_Entry(v.name, parse_cron(v.spec.cron, self.tz,
                                                     where=f"task {v.name!r}"), (v.name,)))
        if self.cron is not None:
            entries.append(_Entry("*", parse_cron(self.cron, self.tz, where="--cron"), None))
        if not entries:
            raise UsageError(
                f"nothing to serve: no task of flow {graph.name!r} sets cron=, and no --cron "
                "EXPR was given (e.g. --cron '*/5 * * * *' runs the whole flow every 5 minutes)")
        return entries

    def _claim(self, saved: dict[str, Any], session: Session,
               entries: list[_Entry]) -> _Claim | None:
        """The claim a stopped serve left, with its run's status in the store."""
        running = saved.get("running")
        if not running:
            return None
        status: str | None = "unknown"
        if self._resume_supported():
            from .state import make_store

            store = make_store(session.config.pluginmanager, str(self.state_dir), session.config)
            try:
                record = store.load_run(running["run_id"]) if store.open(create=False) else None
            finally:
                store.close()
            status = None if record is None else record.status
        tasks = tuple(running["tasks"]) or None
        # shown in the zone of its schedule, like the other ticks
        zone = next((e.schedule.tz for e in entries if (e.tasks is None) == (tasks is None)
                     and set(e.tasks or ()) <= set(tasks or ())), entries[0].schedule.tz)
        return _Claim(running["run_id"], _dt.datetime.fromtimestamp(running["tick"], zone),
                      tasks, status)

    def _now(self) -> _dt.datetime:
        return _dt.datetime.fromtimestamp(self.clock.time(), UTC)

    def _serve(self, flow: str, entries: list[_Entry], saved: dict[str, Any],
               claim: _Claim | None) -> ServeReport:
        start = self._now()
        #: (tick, its cron tasks or None for the whole flow, run id or None for the tick's)
        missed: list[tuple[_dt.datetime, tuple[str, ...] | None, str | None]] = []
        if claim is not None and claim.status is None:  # claimed, never recorded: missed
            missed.append((claim.tick, claim.tasks, claim.run_id))
        unfinished = claim if claim is not None and claim.status in _UNFINISHED else None
        last = saved.get("last_tick")
        if last is not None:
            last_tick = _dt.datetime.fromtimestamp(last, UTC)
            missed += [(t, tasks_of(due), None)
                       for t, due in merge_ticks(entries, last_tick, start)]
            start = max(start, last_tick)  # a clock set back: never serve a claimed tick again
        nxt = {e.key: e.schedule.next_after(start) for e in entries}
        self._say(f"serving flow {flow!r}: " + "; ".join(
            f"{e.schedule.expr} ({e.key if e.tasks else 'whole flow'}) next at "
            f"{nxt[e.key].isoformat()}" for e in entries))
        self._report_down(flow, missed, unfinished)
        if self.catch_up:
            if unfinished and self._resume_supported():
                run = self._run_tick(flow, unfinished.tick, unfinished.tasks, catch_up=True,
                                     resume=unfinished.run_id)
                if self._interrupted(run):
                    return self._report(flow, missed, unfinished, "interrupted")
            for tick, tasks, run_id in missed:
                if self._stop_pending():
                    return self._report(flow, missed, unfinished, "stopped")
                run = self._run_tick(flow, tick, tasks, catch_up=True, run_id=run_id)
                if self._interrupted(run):
                    return self._report(flow, missed, unfinished, "interrupted")
        ticks = 0
        while True:
            if self.max_ticks is not None and ticks >= self.max_ticks:
                return self._report(flow, missed, unfinished, "max_ticks")
            if self._wait_until(min(nxt.values())):
                return self._report(flow, missed, unfinished, "stopped")
            now = self._now()
            due: dict[str, _dt.datetime] = {}
            for e in entries:
                if nxt[e.key] > now:
                    continue
                passed = [nxt[e.key], *e.schedule.ticks(nxt[e.key], now, limit=MAX_MISSED)]
                due[e.key] = passed[-1]
                self.skipped += len(passed) - 1
                nxt[e.key] = e.schedule.next_after(now if len(passed) >= MAX_MISSED
                                                   else passed[-1])
            if not due:
                continue
            tick = max(due.values())
            run = self._run_tick(flow, tick, tasks_of([e for e in entries if e.key in due]))
            ticks += 1
            if self._interrupted(run):
                return self._report(flow, missed, unfinished, "interrupted")

    def _wait_until(self, when: _dt.datetime) -> bool:
        """Wait for wall time ``when``; True when asked to stop first."""
        target = when.timestamp()
        while True:
            remaining = target - self.clock.time()
            if remaining <= 0:
                return self._stop_pending()
            # a fake clock jumps straight to the tick; real time is re-read now and then
            step = remaining if self.clock.virtual else min(remaining, MAX_WAIT)
            try:
                msg = self.clock.wait(self._wake.get, step, True)
            except Empty:
                continue
            if msg == _STOP:
                return True

    @staticmethod
    def _interrupted(run: TickRun) -> bool:
        return run.result is not None and run.result.status == INTERRUPTED

    def _report(self, flow: str, missed: list, unfinished: _Claim | None,
                reason: StopReason) -> ServeReport:
        if reason != "max_ticks":
            self._say("stopped" if reason == "stopped" else "stopped: a run was interrupted")
        return ServeReport(flow, tuple(self.runs), tuple(t for t, _, _ in missed), self.skipped,
                           unfinished.run_id if unfinished else None, reason)

    def _report_down(self, flow: str, missed: list, unfinished: _Claim | None) -> None:
        if unfinished:
            how = "--catch-up resumes it" if self._resume_supported() else \
                f"resume it with: python -m flowdeco TARGET --resume {unfinished.run_id}"
            self._say(f"run {unfinished.run_id} did not finish (serve stopped during it); "
                      + how)
        if missed:
            more = "at least " if len(missed) >= MAX_MISSED else ""
            first, last = missed[0][0], missed[-1][0]
            what = "running them now (--catch-up)" if self.catch_up else \
                "run them with --catch-up"
            self._say(f"{more}{len(missed)} tick(s) of flow {flow!r} missed while serve was down "
                      f"({first.isoformat()} .. {last.isoformat()}); {what}")

    def _resume_supported(self) -> bool:
        return self.can_resume and self.state_dir is not None

    # -- one tick
    def _run_tick(self, flow: str, tick: _dt.datetime, tasks: tuple[str, ...] | None, *,
                  catch_up: bool = False, resume: str | None = None,
                  run_id: str | None = None) -> TickRun:
        run_id = resume or run_id or tick_run_id(flow, tick)
        # the claim: on disk before the run can be recorded (see the module docstring)
        self._save_state(flow, tick, {"run_id": run_id, "tick": tick.timestamp(),
                                      "tasks": list(tasks or ())})
        options = {"resume": run_id} if resume else {"run_id": run_id}
        result, error = self.execute_tick(self.start_session, flow, tasks, options)
        # ended (or could not start): clear the claim; cut short: keep it, to resume it
        self._save_state(flow, tick, None if result is None or result.status != INTERRUPTED
                         else {"run_id": run_id, "tick": tick.timestamp(),
                               "tasks": list(tasks or ())})
        run = TickRun(tick, run_id, tuple(tasks or ()), result, error, catch_up, bool(resume))
        self.runs.append(run)
        self._say_run(run)
        return run

    def execute_tick(self, start_session: SessionFactory, flow: str,
                     tasks: tuple[str, ...] | None, options: Mapping[str, Any]
                     ) -> tuple[RunResult | None, str | None]:
        """One tick's run (``options``: its ``run_id`` or ``resume``): (result, None), or
        (None, why) when it could not start.  Touches no serve state (also backfills')."""
        result = None
        error = None
        session = None
        try:
            session = start_session(options)
            graph = session.collect(self.target)
            if tasks is not None:
                unknown = [t for t in tasks if t not in graph.by_name]
                if unknown:
                    raise UsageError(f"task(s) {', '.join(map(repr, unknown))} are no longer "
                                     f"in flow {flow!r}")
                graph = graph.subgraph(graph.ancestors(graph.by_name[t] for t in tasks))
            result = session.execute(graph)
        except FlowError as exc:  # this tick's run could not start: say so, serve on
            error = str(exc)
        finally:
            if session is not None:
                session.close()
        return result, error

    def _say_run(self, run: TickRun) -> None:
        if self.out is None or self.quiet >= 2:
            return
        what = "resumed" if run.resumed else "backfilled" if run.backfill else \
            "caught up" if run.catch_up else "tick"
        head = f"{what} {run.tick.isoformat()}: run {run.run_id}"
        if run.result is None:
            self._say(f"{head} could not start: {run.error}")
            return
        if not self.quiet:
            for name, o in run.result.outcomes.items():
                if o.status in ("failed", "interrupted"):
                    print(f"{o.status.upper()} {name}" + (f" - {o.error}" if o.error else ""),
                          file=self.out)
        self._say(f"{head}: {run.result.summary()}")

    # -- the small state file (STATE_DIR/serve/FLOW.json)
    def _state_path(self, flow: str) -> Path | None:
        if self.state_dir is None:
            return None
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", flow) or "flow"
        return self.state_dir / "serve" / f"{safe}.json"

    def _load_state(self, flow: str) -> dict[str, Any]:
        path = self._state_path(flow)
        if path is None or not path.exists():
            return {}
        return load_serve_state(path)

    def _save_state(self, flow: str, tick: _dt.datetime, running: dict | None) -> None:
        """Replace ``FLOW.json`` atomically and durably (a kill or a power loss leaves
        the old file or the new one, never a torn one nor a lost rename)."""
        path = self._state_path(flow)
        if path is None:
            return
        data = {"version": STATE_VERSION, "flow": flow, "last_tick": tick.timestamp(),
                "last_tick_utc": tick.astimezone(UTC).isoformat(), "running": running,
                "schedules": self.schedules}
        try:
            write_serve_state(path, data)
        except OSError as exc:
            what = "claim" if running is not None else "record the end of"
            raise StateError(f"{path}: cannot {what} tick {tick.isoformat()} of flow {flow!r} "
                             f"({exc.strerror or exc}); serve stopped; free space or fix the "
                             "permissions, then start serve again with --catch-up") from None

    def _lock(self, flow: str) -> ServeLock | None:
        path = self._state_path(flow)
        return None if path is None else ServeLock.acquire(flow, path.with_suffix(".lock"),
                                                            self.state_dir)

    # -- signals
    def _install_signals(self) -> Callable[[], None]:
        return on_stop_signals(lambda signum, frame: self._wake.put(_STOP))

    def _install_signals_to(self, stop: Callable[[], None]) -> Callable[[], None]:
        """SIGTERM / Ctrl-C call ``stop()`` (backfills; a run installs its own meanwhile)."""
        return on_stop_signals(lambda signum, frame: stop())


def _zone_name(tz: _dt.tzinfo) -> str | None:
    """An IANA name (or "UTC") that :func:`~flowdeco.plugins.timers.zone_info` reads back."""
    if tz is UTC:
        return "UTC"
    key = getattr(tz, "key", None)
    return key if isinstance(key, str) else None


def tasks_of(entries: Iterable[_Entry]) -> tuple[str, ...] | None:
    names: set[str] = set()
    for e in entries:
        if e.tasks is None:
            return None  # the whole flow
        names.update(e.tasks)
    return tuple(sorted(names))


def merge_ticks(entries: list[_Entry], after: _dt.datetime, until: _dt.datetime
                 ) -> list[tuple[_dt.datetime, list[_Entry]]]:
    """Ticks of all schedules with ``after < t <= until``, merged, oldest first."""
    by_tick: dict[_dt.datetime, list[_Entry]] = {}
    for e in entries:
        for t in e.schedule.ticks(after, until, limit=MAX_MISSED):
            by_tick.setdefault(t.astimezone(UTC), []).append(e)
    ticks = sorted(by_tick)[:MAX_MISSED]
    return [(t.astimezone(by_tick[t][0].schedule.tz), by_tick[t]) for t in ticks]


# --------------------------------------------------------------------------- Python API



def tick_sessions(command: str, plugins: Sequence[Any], disable: Sequence[str],
                  options: Mapping[str, Any], state_dir: Any, params: Mapping[str, Any] | None,
                  clock: Clock) -> SessionFactory:
    """What starts one tick run's session (``serve``, ``backfill``): the caller's options,
    its state dir, and the tick's own (``extra``); ``run_id``/``resume`` are refused, each
    tick run has its id.  Each call leases its own plugin manager, so concurrent tick runs
    never share one."""
    plugins, disable = tuple(plugins), tuple(disable)
    base = dict(options)
    for refused in ("run_id", "resume"):
        if refused in base:
            raise UsageError(f"{command}: {refused}= is not accepted (each tick run gets its "
                             "own id)")
    if state_dir is None:
        base["no_state"] = True
    else:
        base["state_dir"] = os.fspath(state_dir)

    def start(extra: Mapping[str, Any]) -> Session:
        return Session.start(plugins=plugins, disable=disable, options={**base, **extra},
                             params=params or {}, clock=clock)
    return start

def serve(target: Any, *, cron: str | None = None, tz: _dt.tzinfo | str | None = None,
          catch_up: bool = False, max_ticks: int | None = None, clock: Clock | None = None,
          state_dir: str | os.PathLike | None = ".flowdeco", plugins: Iterable[Any] = (),
          disable: Iterable[str] = (), params: Mapping[str, Any] | None = None,
          out: IO[str] | None = None, scheduler: list | None = None,
          **options: Any) -> ServeReport:
    """Serve ``target``'s cron schedules until stopped or ``max_ticks`` runs were started.

    ``cron`` adds a schedule for the whole flow; ``tz`` is the zone of the
    expressions (default: the machine's); ``catch_up`` runs ticks missed while
    down; ``clock`` a :class:`~flowdeco.FakeClock` to run schedules instantly
    (the runs use it too).  ``state_dir``, ``plugins``, ``disable``,
    ``params`` and further keyword options are those of :func:`flowdeco.run`.
    ``out``: a stream for progress lines (default: none).  Pass a list as
    ``scheduler`` to receive the :class:`Scheduler` (its ``stop()`` ends
    serving from another thread).
    """
    clock = clock or Clock()
    start = tick_sessions("serve", plugins, disable, options, state_dir, params, clock)

    sched = Scheduler(target, start, state_dir=state_dir, cron=cron, tz=tz, catch_up=catch_up,
                      max_ticks=max_ticks, clock=clock, out=out,
                      can_resume="state" not in disable)
    if scheduler is not None:
        scheduler.append(sched)
    return sched.run()




#: the old private name (tests and the backfill's tests acquire the lock through it)
_ServeLock = ServeLock


def main(argv: Sequence[str], pluginmanager: Any, clock: Clock | None = None) -> int:
    """``python -m flowdeco serve TARGET [options]``; the exit code (see :mod:`.serve_cli`)."""
    from .serve_cli import run_command

    return run_command(argv, pluginmanager, clock)

__all__ = ["serve", "Scheduler", "ServeReport", "TickRun", "tick_run_id", "main",
           "load_serve_state", "is_served"]
