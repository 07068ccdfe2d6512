"""``flowdeco serve TARGET --backfill FROM TO``: run every tick of a past range once.

Backfilling is serve without the waiting: the ticks of the flow's schedules
(``cron=`` tasks and/or ``--cron``) with ``FROM <= tick <= TO`` run one by
one, oldest first, each as the run serve would have started for it -- same
run id ``FLOW-<tick in UTC>``, same tasks, its own state and audit trail.

- **Times**: ``FROM`` and ``TO`` are ISO dates or date-times
  (``2026-03-01``, ``2026-03-01T06:30``); without an offset they are wall
  time in the schedule's zone (``--tz``, else the first schedule's).  A date
  is its midnight; both ends are included.  A value that does not parse is a
  usage error naming it (exit 4).
- **Once**: the tick's run id is its claim -- the store refuses a second
  run with an id it holds.  Before starting, each tick's run is looked up in
  the store: one that ended (``succeeded`` or ``failed``) is skipped; one
  recorded but cut short (``running``, ``interrupted``: a crash or Ctrl-C of
  an earlier backfill or serve) is resumed, keeping its completed tasks; a
  tick never recorded runs.  So running the same command again after a
  crash finishes the job and repeats nothing.  With ``--no-state`` nothing
  is remembered and every tick runs.
- **Concurrency**: ``--max-active N`` runs up to N tick runs at once, each on
  its own thread with its own plugin manager, run id, state and audit trail
  (their tasks run on their own executors as usual).  Results are reported in
  tick order.  The serve lock is held throughout: a serve of the same flow
  and state dir cannot claim ticks meanwhile.  Backfills leave serve's own
  file (``serve/FLOW.json``: last tick, claim) alone.
- **Stopping**: with one active run, Ctrl-C / SIGTERM interrupts it like any
  run (it is resumed next time) and the backfill stops, exit 2.  With
  several, the signal stops starting new ticks; the runs in flight finish.
- **Exit code**: 0 when every tick run succeeded (or there was nothing to
  do), 1 when one failed or could not start, 2 when interrupted.
"""

from __future__ import annotations

import datetime as _dt
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from queue import SimpleQueue
from typing import IO, Any, Iterable, Mapping, Sequence

import attrs

from ..clock import Clock
from ..errors import UsageError
from ..outcome import FAILED, INTERRUPTED, SUCCEEDED, ExitCode
from .serve import (MAX_MISSED, Scheduler, SessionFactory, TickRun, merge_ticks, tasks_of,
                    tick_run_id, tick_sessions)

#: a recorded tick run in one of these states is not run again
_DONE = (SUCCEEDED, FAILED)


@attrs.frozen
class BackfillReport:
    """What :func:`backfill` returns."""

    flow: str
    #: the range, in the schedule's zone
    start: _dt.datetime
    end: _dt.datetime
    #: the tick runs started (new or resumed), in tick order
    runs: tuple[TickRun, ...]
    #: ticks whose run had already ended in the store: not run again
    done: tuple[_dt.datetime, ...]
    #: ticks left unstarted because of a stop signal
    stopped: int = 0

    @property
    def exit_code(self) -> ExitCode:
        if any(r.result is not None and r.result.status == INTERRUPTED for r in self.runs) \
                or self.stopped:
            return ExitCode.INTERRUPTED
        if any(r.result is None or r.result.status != SUCCEEDED for r in self.runs):
            return ExitCode.TASKS_FAILED
        return ExitCode.OK


def parse_when(text: Any, tz: _dt.tzinfo, what: str) -> _dt.datetime:
    """``FROM`` / ``TO`` as an aware datetime: naive values are wall time in ``tz``."""
    if isinstance(text, _dt.datetime):
        value = text
    elif isinstance(text, _dt.date):
        value = _dt.datetime(text.year, text.month, text.day)
    else:
        try:
            value = _dt.datetime.fromisoformat(str(text).strip())
        except ValueError:
            raise UsageError(
                f"--backfill {what}: cannot read {str(text)!r} as a date or time; use "
                "YYYY-MM-DD or YYYY-MM-DDTHH:MM[:SS] (wall time in the schedule's zone)") \
                from None
    return value.replace(tzinfo=tz) if value.tzinfo is None else value


class Backfill:
    """One backfill of ``sched``'s flow over ``[start, end]``; see the module docstring.

    ``factories``: one session factory per active slot (``--max-active``):
    concurrent runs never share a plugin manager.
    """

    def __init__(self, sched: Scheduler, start: Any, end: Any,
                 factories: Sequence[SessionFactory]):
        if not factories:
            raise UsageError("--max-active must be >= 1")
        self.sched = sched
        self.start, self.end = start, end
        self.factories = list(factories)
        self._stop = threading.Event()

    def run(self) -> BackfillReport:
        sched = self.sched
        flow, entries, _saved, _claim, lock = sched._discover()
        try:
            zone = sched.tz or entries[0].schedule.tz
            lo = parse_when(self.start, zone, "FROM")
            hi = parse_when(self.end, zone, "TO")
            if lo > hi:
                raise UsageError(f"--backfill: FROM {lo.isoformat()} is after TO "
                                 f"{hi.isoformat()}; give the older time first")
            ticks = merge_ticks(entries, lo - _dt.timedelta(microseconds=1), hi)
            if len(ticks) >= MAX_MISSED:
                raise UsageError(f"--backfill: {lo.isoformat()} .. {hi.isoformat()} holds "
                                 f"{MAX_MISSED} ticks or more; backfill a shorter range at a time")
            status = self._recorded([tick_run_id(flow, t) for t, _ in ticks])
            todo: list[tuple[_dt.datetime, tuple[str, ...] | None, str, bool]] = []
            done: list[_dt.datetime] = []
            for t, due in ticks:
                run_id = tick_run_id(flow, t)
                st = status.get(run_id)
                if st in _DONE:
                    done.append(t)
                else:
                    todo.append((t, tasks_of(due), run_id, st is not None))
            resumed = sum(1 for *_, r in todo if r)
            sched._say(f"backfill of flow {flow!r} from {lo.isoformat()} to {hi.isoformat()}: "
                       f"{len(ticks)} tick(s), {len(done)} already done, {len(todo)} to run"
                       + (f" ({resumed} resumed)" if resumed else "")
                       + (f", {len(self.factories)} at a time" if len(self.factories) > 1 else ""))
            restore = sched._install_signals_to(self._stop.set)
            try:
                runs, stopped = self._run_all(flow, todo)
            finally:
                restore()
            return BackfillReport(flow, lo, hi, tuple(runs), tuple(done), stopped)
        finally:
            if lock is not None:
                lock.release()

    def _recorded(self, run_ids: list[str]) -> dict[str, str | None]:
        """Each tick run's status in the store (absent: never recorded)."""
        sched = self.sched
        if not run_ids or not sched._resume_supported():
            return {}
        from .state import make_store

        session = self.factories[0]({})
        try:
            store = make_store(session.config.pluginmanager, str(sched.state_dir),
                               session.config)
            try:
                if not store.open(create=False):
                    return {}
                out = {}
                for run_id in run_ids:
                    record = store.load_run(run_id)
                    if record is not None:
                        out[run_id] = record.status
                return out
            finally:
                store.close()
        finally:
            session.close()

    def _one(self, factory: SessionFactory, flow: str, tick: _dt.datetime,
             tasks: tuple[str, ...] | None, run_id: str, resume: bool) -> TickRun:
        options = {"resume": run_id} if resume else {"run_id": run_id}
        result, error = self.sched.execute_tick(factory, flow, tasks, options)
        return TickRun(tick, run_id, tuple(tasks or ()), result, error, resumed=resume,
                       backfill=True)

    def _run_all(self, flow: str, todo: list) -> tuple[list[TickRun], int]:
        sched = self.sched
        runs: list[TickRun] = []
        if len(self.factories) == 1:  # on this thread: Ctrl-C interrupts the run itself
            for k, (tick, tasks, run_id, resume) in enumerate(todo):
                if self._stop.is_set():
                    return runs, len(todo) - k
                run = self._one(self.factories[0], flow, tick, tasks, run_id, resume)
                runs.append(run)
                sched.runs.append(run)
                sched._say_run(run)
                if sched._interrupted(run):
                    return runs, len(todo) - k - 1
            return runs, 0
        free: SimpleQueue = SimpleQueue()
        for f in self.factories:
            free.put(f)
        skipped = [0]

        def job(item: tuple) -> TickRun | None:
            if self._stop.is_set():
                skipped[0] += 1
                return None
            factory = free.get()
            try:
                return self._one(factory, flow, *item)
            finally:
                free.put(factory)

        with ThreadPoolExecutor(len(self.factories), thread_name_prefix="backfill") as pool:
            futures = [pool.submit(job, item) for item in todo]
            for fut in futures:  # reported in tick order as they complete
                run = fut.result()
                if run is None:
                    continue
                runs.append(run)
                sched.runs.append(run)
                sched._say_run(run)
        return runs, skipped[0]


def backfill(target: Any, start: Any, end: Any, *, max_active: int = 1,
             cron: str | None = None, tz: _dt.tzinfo | str | None = None,
             clock: Clock | None = None, state_dir: str | os.PathLike | None = ".flowdeco",
             plugins: Iterable[Any] = (), disable: Iterable[str] = (),
             params: Mapping[str, Any] | None = None, out: IO[str] | None = None,
             **options: Any) -> BackfillReport:
    """Run every tick of ``target``'s schedules in ``[start, end]`` once (see the module doc).

    ``start``/``end``: ISO strings, dates or datetimes (naive: in the
    schedule's zone).  The other arguments are those of
    :func:`~flowdeco.plugins.serve.serve`.
    """
    if isinstance(max_active, bool) or not isinstance(max_active, int) or max_active < 1:
        raise UsageError(f"max_active must be an int >= 1, got {max_active!r}")
    clock = clock or Clock()
    start_session = tick_sessions("backfill", plugins, disable, options, state_dir, params, clock)

    sched = Scheduler(target, start_session, state_dir=state_dir, cron=cron, tz=tz,
                      clock=clock, out=out, can_resume="state" not in disable)
    return Backfill(sched, start, end, [start_session] * max_active).run()


__all__ = ["backfill", "Backfill", "BackfillReport", "parse_when"]
