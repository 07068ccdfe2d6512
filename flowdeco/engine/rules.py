"""Trigger rules and conditions: whether a task whose dependencies ended runs or is skipped.

**Gate** (:meth:`TriggerGate.gate`).  When every dependency of a task with a
trigger rule or a condition has ended -- or earlier, when :meth:`TriggerGate.early`
says its rule is already decided -- the scheduler asks the gate before
queueing it:

- the trigger rule (Airflow's set and meanings, :func:`verdict`), over how
  the dependencies ended: *succeeded* (or restored), *failed* (failed or
  interrupted), *upstream-failed* (skipped with reason ``upstream``: a
  failure further up) or *skipped* (reason ``condition``, ``trigger`` or
  ``stopped``).  ``all_succeeded`` (default; alias ``all_success``): a
  dependency that failed ends the task at once (the scheduler does it),
  skipped with reason ``upstream``; a skipped one passes its reason on.
  The ``one_*`` rules fire as soon as they are met, without waiting for the
  other dependencies; ``always`` runs as soon as the run starts.  Any rule
  is decided as soon as its outcome is certain.  A rule unmet because
  something upstream failed skips the task with reason ``upstream``
  (Airflow's upstream_failed); unmet for any other reason, with ``trigger``
  (``stopped`` instead when a dependency was skipped by a stop).  A task
  with no dependencies runs whatever its rule;
- then ``when=``: the predicate is called on the scheduler thread with the
  task's own arguments by name (upstream results, None for one that did not
  succeed *or has not ended yet*; run parameters; defaults; ``ctx``); false:
  ``skipped`` with reason ``condition``; raising: the task fails with that
  error (0 attempts).

A task that starts before some dependencies ended (``one_*``, ``always``)
receives None for each of them, as for one that did not succeed, and does
not wait for them; ``ctx.upstream`` lists the dependencies that had ended
when it is read.  Dependencies that end later release nothing more.

Reasons propagate to ``all_succeeded`` tasks: a dependency skipped for
``condition``, ``trigger`` or ``stopped`` passes its reason on (a plain skip
stays a skip, never a failure), one that failed, was interrupted, or was
skipped for ``upstream`` gives ``upstream`` (``upstream`` > ``stopped`` >
``trigger`` > ``condition`` when several apply).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..graph import Vertex
from ..outcome import FAILED, SKIPPED
from ..task import CTX
from .states import OK, InternalError

if TYPE_CHECKING:  # pragma: no cover
    from .port import SchedulerPort
    from .scheduler import Run

#: reasons passed on to all_succeeded dependents, strongest last
_RANK = {"condition": 0, "trigger": 1, "stopped": 2, "upstream": 3}


#: skip reasons an all_succeeded dependent inherits as they are (plain skips); any
#: other way of not succeeding gives it "upstream" (a failure further up)
_PASSED_ON = ("condition", "trigger", "stopped")


#: a rule's verdict: run the task (a skip verdict is its reason)
RUN = "run"


#: rules that may be decided before every dependency ended (``early``)
_EARLY = frozenset(("all_failed", "all_skipped", "one_success", "one_failed", "one_done",
                    "none_failed", "none_failed_min_one_success", "none_skipped"))


def verdict(rule: str, ok: int, failed: int, upfailed: int, skipped: int, done: bool,
            n: int) -> str | None:
    """A trigger rule (other than ``all_succeeded``/``always``) over the dependencies
    that have ended: :data:`RUN`, a skip reason, or None (wait for more).

    ``ok``, ``failed`` (failed or interrupted), ``upfailed`` (skipped with reason
    ``upstream``: Airflow's upstream_failed) and ``skipped`` (any other skip)
    count the ended dependencies of ``n``; ``done``: all have ended.  As in
    Airflow's ``TriggerRuleDep``: a rule unmet because something upstream
    failed skips with ``upstream`` (Airflow's upstream_failed), any other
    unmet rule with ``trigger`` (Airflow's skipped).
    """
    if rule == "all_done":
        return RUN if done else None
    if rule == "one_success":
        if ok:
            return RUN
        return None if not done else "trigger" if skipped == n else "upstream"
    if rule == "one_failed":
        return RUN if failed or upfailed else "trigger" if done else None
    if rule == "one_done":
        return RUN if ok or failed else "trigger" if done else None
    if rule == "none_failed":
        return "upstream" if failed or upfailed else RUN if done else None
    if rule == "none_failed_min_one_success":
        if failed or upfailed:
            return "upstream"
        return None if not done else "trigger" if skipped == n else RUN
    if rule == "none_skipped":
        return "trigger" if skipped else RUN if done else None
    if rule == "all_failed":
        return "trigger" if ok or skipped else RUN if done else None
    if rule == "all_skipped":
        return "trigger" if ok or failed or upfailed else RUN if done else None
    raise InternalError(f"unknown trigger rule {rule!r}")


class TriggerGate:
    """The gate of :class:`~.dynamic.DynamicFlows` (its base): trigger rule, then ``when=``.

    Uses the run's public names and the scheduler port (``self.run``, ``self.port``,
    set by :class:`~.dynamic.DynamicFlows`), never run privates.
    """

    run: "Run"
    port: "SchedulerPort"

    def gate(self, v: Vertex) -> tuple | None:
        """Trigger rule, then ``when=``: how ``v`` ends right away, or None to go on.

        Called when every dependency has ended, or earlier when :meth:`early`
        said the rule is decided (then the dependencies not ended yet count
        as not ended: see :func:`verdict`).
        """
        run = self.run
        port = self.port
        i = v.index
        spec = v.spec
        assert spec is not None
        status, reasons = port.table.status, port.table.reason
        rule = spec.trigger
        if rule == "all_succeeded":
            worst = None
            for d in v.deps:
                st = status[d]
                if st in OK:
                    continue
                why = reasons[d] if st == SKIPPED and reasons[d] in _PASSED_ON else "upstream"
                if worst is None or _RANK[why] > _RANK[worst]:
                    worst = why
            if worst is not None:
                return (i, SKIPPED, None, None, 0, None, None, worst)
        elif rule != "always" and v.deps:
            ok = failed = upfailed = skipped = stopped = 0
            for d in v.deps:
                st = status[d]
                if st is None:
                    continue
                if st in OK:
                    ok += 1
                elif st == SKIPPED:
                    why = reasons[d]
                    if why == "upstream":
                        upfailed += 1
                    else:
                        skipped += 1
                        stopped += why == "stopped"
                else:  # failed, interrupted
                    failed += 1
            n = len(v.deps)
            out = verdict(rule, ok, failed, upfailed, skipped,
                          ok + failed + upfailed + skipped == n, n)
            if out is None:
                raise InternalError(f"task {v.name!r}: trigger rule {rule!r} undecided at its gate")
            if out is not RUN:
                return (i, SKIPPED, None, None, 0, None, None,
                        "stopped" if stopped and out == "trigger" else out)
        if spec.when is not None:
            try:
                go = spec.when(**self._when_kwargs(v))
            except Exception as exc:  # noqa: BLE001 - a predicate may raise anything
                now = run.clock.monotonic()
                port.table.t0[i] = now
                return (i, FAILED, None, exc, 0, now, None, None)
            if not go:
                return (i, SKIPPED, None, None, 0, None, None, "condition")
        return None

    def early(self, i: int, d: int | None) -> bool:
        """Whether task ``i``'s trigger rule is decided now, before all its dependencies
        ended: dependency ``d`` just ended (None: the run is starting).

        Every decision before the last dependency ends is made by the first
        dependency that ends a certain way (a success for ``one_success``, a
        failure for ``none_failed``, ...), so looking at ``d`` alone is enough;
        the scheduler then calls :meth:`gate` through ``_make_ready``.
        """
        spec = self.run.graph.vertices[i].spec
        if spec is None:
            return False
        rule = spec.trigger
        if rule == "always":
            return True
        if d is None or rule not in _EARLY:
            return False
        table = self.port.table
        st = table.status[d]
        ok = st in OK
        up = st == SKIPPED and table.reason[d] == "upstream"
        skip = st == SKIPPED and not up
        failed = not (ok or skip or up)
        return verdict(rule, ok, failed, up, skip, False, 0) is not None

    def _when_kwargs(self, v: Vertex) -> dict[str, Any]:
        spec = v.spec
        assert spec is not None
        run = self.run
        port = self.port
        args = dict(v.args)
        kw: dict[str, Any] = {}
        for p in spec.when_params:
            name = p.name
            if name in args:
                kw[name] = run.results[args[name]]
            elif name in v.consts:
                kw[name] = v.consts[name]
            elif name == CTX:
                kw[name] = port.context(v, 1, None)
            else:
                for tp in spec.params:
                    if tp.name == name and tp.has_default:
                        kw[name] = tp.default
        return kw
