"""Timers: delayed tasks, interval tasks and cron schedules (contract §1, §4).

- ``@task(delay=S)``: once its dependencies are done, the task waits ``S``
  seconds before its first attempt.  The scheduler waits on the run's clock,
  so no worker is held meanwhile: other ready tasks run.
- ``@task(every=S, times=N, until=pred)``: an *interval task*.  Iteration 1
  runs at once (after ``delay`` when both are set), then one iteration every
  ``S`` seconds, at most ``N`` of them (no ``times``: until ``until`` says
  stop, or the run is interrupted).  ``ctx.iteration`` is 1-based.  After
  each successful iteration ``pred(result)`` is called on the scheduler
  thread; a true value ends the task.  The task's result is the list of its
  iteration results; tasks downstream start when it has ended.
- ``@task(cron="*/5 * * * *")``: a schedule for ``python -m flowdeco serve``
  (see :mod:`flowdeco.plugins.serve`); a plain run runs the task once, like
  any other.

The drift rule (fixed rate on the monotonic clock): iteration ``k+1`` is due
``every`` seconds after iteration ``k`` was due, so the time the iterations
take does not add up -- iteration starts stay on the grid ``t1, t1 + S,
t1 + 2S, ...`` where ``t1`` is the start of the first attempt of iteration 1.
When an iteration ends after the next one was due (it overran, or its
retries took that long), the next one starts at once and the grid shifts to
that start: missed slots are not made up (no burst of catch-up iterations)
and iterations never overlap (no pile-up).  Such a late start is reported as
an ``interval_overrun`` event (``iteration``, ``late`` seconds).

Failures: a failed iteration goes through the task's retry policy like any
attempt (``ctx.attempt`` counts the attempts of that iteration, the
iteration number stays); when its retries are exhausted the task fails.  A
predicate that raises fails the task with that error.

Interrupts (Ctrl-C, SIGTERM, ``-x``): an interval task stops before its next
iteration and ends ``interrupted`` (its ``result`` is None; the iterations it
ran are in the audit trail as ``task_started`` events with ``iteration``).
An iteration in flight is waited for first; if it was the last one due, the
task succeeds with its full list.  A task still waiting for its ``delay`` is
``skipped`` (reason ``stopped``).

Time: every wait uses ``run.clock`` (monotonic), so wall-clock changes never
shift a delay or an interval, and ``run(..., clock=FakeClock())`` runs
hour-long schedules instantly.

Cost: the hooks that act per task (``flowdeco_task_delay``, and
``flowdeco_attempt_done`` for interval tasks) belong to small objects that
are registered at run start only when the graph has a delayed or an interval
task, and unregistered at run end.  A run without timers pays nothing.
"""

from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from ..errors import CollectionError, UsageError
from ..manager import hookimpl
from ..outcome import Finish, Reschedule
from ..stash import StashKey

if TYPE_CHECKING:  # pragma: no cover
    from flowdeco import Attempt, Run, RunResult
    from flowdeco.config import Config
    from flowdeco.graph import Graph, Vertex

NAME = "timers"

#: config.stash key: per-run helper objects still registered (unregistered at unconfigure)
_REGISTERED = StashKey[list]("flowdeco.timers.registered")

OPTIONS = ["delay", "every", "times", "until", "cron"]


# --------------------------------------------------------------------------- hooks


@hookimpl
def flowdeco_task_options() -> list[str]:
    return list(OPTIONS)


@hookimpl
def flowdeco_collection_finish(config: Config, graph: Graph) -> None:
    """Parse every ``cron=`` now, so a bad expression is an error naming its task."""
    for v in graph.using("cron"):
        parse_cron(v.spec.cron, where=f"task {v.name!r}")


@hookimpl
def flowdeco_run_start(run: Run) -> None:
    delays: dict[int, float] = {}
    intervals: dict[int, Any] = {}
    for v in run.graph.using("delay"):
        if v.spec.delay:
            delays[v.index] = v.spec.delay
    for v in run.graph.using("every"):
        intervals[v.index] = v.spec
    if not delays and not intervals:
        return
    pm = run.config.pluginmanager
    registered = run.config.stash.setdefault(_REGISTERED, [])
    if delays:
        helper: Any = _Delays(delays)
        pm.register(helper)
        registered.append(helper)
    if intervals:
        helper = _Intervals(intervals)
        run.on_success.update(intervals)
        pm.register(helper)
        registered.append(helper)


@hookimpl
def flowdeco_run_finish(run: Run, result: RunResult) -> None:
    _unregister(run.config)


@hookimpl
def flowdeco_unconfigure(config: Config) -> None:
    _unregister(config)


def _unregister(config: Any) -> None:
    pm = config.pluginmanager
    for helper in config.stash.pop(_REGISTERED, ()):
        if pm.is_registered(helper):
            pm.unregister(helper)


@hookimpl
def flowdeco_cli_commands(commands: dict) -> None:
    from ..cli import Command

    commands["serve"] = Command("run the flow at each tick of its cron schedules", _serve_main)


def _serve_main(argv: list[str], pluginmanager: Any) -> int:
    from .serve import main

    return main(argv, pluginmanager)


# --------------------------------------------------------------------------- delays


class _Delays:
    """Registered for one run when some task has ``delay=``."""

    def __init__(self, delays: dict[int, float]):
        self.delays = delays

    @hookimpl
    def flowdeco_task_delay(self, run: Run, task: Vertex) -> float | None:
        return self.delays.get(task.index)


# --------------------------------------------------------------------------- intervals


@attrs.define
class _Progress:
    """One interval task's iterations so far."""

    spec: Any
    #: when the current iteration was due (run.clock seconds, as in Attempt.started)
    due: float | None = None
    results: list[Any] = attrs.field(factory=list)


class _Intervals:
    """Registered for one run when some task has ``every=``: decides each next iteration.

    A new-style wrapper around ``flowdeco_attempt_done``, so it sees every
    attempt whatever the order of the other implementations: a failed attempt
    is left to them (the retry plugin reschedules it within the same
    iteration, or nobody does and the task fails); after a successful one,
    when no other plugin decided (the state plugin may refuse an unstorable
    result), it schedules the next iteration or ends the task with the list.
    """

    def __init__(self, specs: dict[int, Any]):
        self.progress = {i: _Progress(spec) for i, spec in specs.items()}

    @hookimpl(wrapper=True)
    def flowdeco_attempt_done(self, run: Run, task: Vertex, attempt: Attempt):  # type: ignore[no-untyped-def]
        decision = yield
        p = self.progress.get(task.index)
        if p is None:
            return decision
        if p.due is None:  # the first attempt of iteration 1: the grid starts here
            p.due = attempt.started
        if decision is not None or attempt.error is not None:
            return decision
        p.results.append(attempt.result)
        spec = p.spec
        k = attempt.iteration or len(p.results)
        if spec.times is not None and k >= spec.times:
            return Finish(result=p.results)
        if spec.until is not None:
            try:
                done = bool(spec.until(attempt.result))
            except Exception as exc:  # noqa: BLE001 - the user's predicate fails the task
                return Finish(error=exc)
            if done:
                return Finish(result=p.results)
        now = attempt.finished
        due = p.due + spec.every
        if due < now:
            run.emit("interval_overrun", task.name, level="warning", iteration=k + 1,
                     late=round(now - due, 6), every=spec.every)
            due = now
        p.due = due
        return Reschedule(delay=due - now, attempt=1, iteration=k + 1)


# --------------------------------------------------------------------------- cron

_ALIASES = {
    "@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0", "@daily": "0 0 * * *", "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}


@attrs.frozen
class CronSchedule:
    """A parsed cron expression in a time zone (cronsim does the parsing and the walking).

    Five fields (``minute hour day-of-month month day-of-week``), or six with
    seconds first; ``L``, ``W``, ``#``, names (``MON``, ``JAN``) and the
    ``@hourly``/``@daily``/``@weekly``/``@monthly``/``@yearly`` aliases.
    Daylight saving time follows Debian cron: a fixed time skipped by a
    spring-forward change runs when the clock jumps (02:30 runs at 03:00); a
    fixed time that happens twice in autumn runs once (the first); ``*``-hour
    schedules run in both repeated hours.
    """

    expr: str
    tz: _dt.tzinfo

    def next_after(self, when: _dt.datetime) -> _dt.datetime:
        """The first tick strictly after ``when`` (an aware datetime), in ``tz``."""
        from cronsim import CronSim

        try:
            return next(CronSim(self.expr, when.astimezone(self.tz)))
        except StopIteration:  # parse_cron refuses these; a hand-made CronSchedule may not
            raise CollectionError(_never_fires("cron", self.expr)) from None

    def ticks(self, after: _dt.datetime, until: _dt.datetime,
              limit: int = 10_000) -> list[_dt.datetime]:
        """Ticks ``t`` with ``after < t <= until``, at most ``limit`` of them."""
        from cronsim import CronSim

        out: list[_dt.datetime] = []
        if until <= after:
            return out
        for t in CronSim(self.expr, after.astimezone(self.tz)):
            if t > until or len(out) >= limit:
                break
            out.append(t)
        return out


def parse_cron(text: str, tz: _dt.tzinfo | str | None = None, *,
               where: str = "cron") -> CronSchedule:
    """Parse ``text`` into a :class:`CronSchedule`.

    A leading ``CRON_TZ=Zone`` (or ``TZ=Zone``) sets the zone of this
    expression; else ``tz`` (a tzinfo or an IANA name); else the local zone
    (:func:`local_zone`).  A bad expression raises :class:`CollectionError`
    naming ``where`` (for a task: ``task 'name'``).
    """
    try:
        from cronsim import CronSim, CronSimError
    except ImportError:  # pragma: no cover - a declared dependency
        raise CollectionError(f"{where}: cron= needs the cronsim package "
                              "(python -m pip install cronsim)") from None
    expr = " ".join(str(text).split())
    zone: Any = tz
    head, _, rest = expr.partition(" ")
    if head.startswith(("CRON_TZ=", "TZ=")):
        zone, expr = head.partition("=")[2], rest
    expr = _ALIASES.get(expr.lower(), expr)
    try:
        zone = zone_info(zone)
    except UsageError as exc:
        raise CollectionError(f"{where}: {exc}") from None
    try:
        first = CronSim(expr.upper(), _dt.datetime(2000, 1, 1, tzinfo=zone))
    except CronSimError as exc:
        raise CollectionError(
            f"{where}: invalid cron expression {_cut(text)}: {_cut(exc, quote=False)} (expected "
            "5 fields: minute hour day-of-month month day-of-week, e.g. '*/5 * * * *')") from None
    # Fields can each be valid and never match together: cronsim searches
    # NEVER_HORIZON years, then stops (a bare StopIteration deep inside serve).
    # Every cron pattern repeats within that horizon, so one search from any
    # date decides it, here at collection, in milliseconds at worst.
    try:
        next(first)
    except StopIteration:
        raise CollectionError(_never_fires(where, text)) from None
    return CronSchedule(expr.upper(), zone)


#: how far cronsim searches for a matching date before it gives up (its constant)
NEVER_HORIZON = 50


def _never_fires(where: str, text: str) -> str:
    return (f"{where}: cron expression {_cut(text)} never fires: no date within {NEVER_HORIZON} "
            "years matches all its fields (when day-of-month or day-of-week starts with '*', "
            "a day must match both); fix the expression")


def _cut(value: Any, limit: int = 100, quote: bool = True) -> str:
    """User input for an error line: on one line, cut to a readable length, quoted."""
    text = " ".join(str(value).split())
    text = text if len(text) <= limit else text[:limit] + "..."
    return repr(text) if quote else text


def zone_info(zone: _dt.tzinfo | str | None) -> _dt.tzinfo:
    """A tzinfo from a tzinfo, an IANA name (``"Europe/Berlin"``), or None (the local zone)."""
    if zone is None:
        return local_zone()
    if isinstance(zone, _dt.tzinfo):
        return zone
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    if str(zone).upper() in ("UTC", "Z"):
        return _dt.timezone.utc
    try:
        return ZoneInfo(str(zone))
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a name too long for a
        # file name, where the tzdata package is installed (pandas brings it)
        raise UsageError(f"unknown time zone {_cut(zone)}: use an IANA name such as "
                         "'Europe/Berlin' or 'UTC'") from None


def local_zone() -> _dt.tzinfo:
    """The machine's zone as an IANA zone (so DST changes are known), else UTC.

    From ``$TZ``, else the ``/etc/localtime`` link, else ``/etc/timezone``.
    """
    from zoneinfo import ZoneInfo

    candidates = []
    env = os.environ.get("TZ")
    if env:
        candidates.append(env.lstrip(":"))
    try:
        link = os.readlink("/etc/localtime")
        if "zoneinfo/" in link:
            candidates.append(link.split("zoneinfo/", 1)[1])
    except OSError:
        pass
    try:
        candidates.append(Path("/etc/timezone").read_text().strip())
    except OSError:
        pass
    for name in candidates:
        if name.upper() in ("UTC", "Z", "ETC/UTC"):
            return _dt.timezone.utc
        try:
            return ZoneInfo(name)
        except Exception:  # noqa: BLE001 - not a usable zone name: try the next source
            continue
    return _dt.timezone.utc


__all__ = ["CronSchedule", "parse_cron", "zone_info", "local_zone", "OPTIONS"]
