"""A mapped task's instances: one :class:`MapState` of compact per-instance arrays.

:class:`~flowdeco.engine.dynamic.DynamicFlows` expands a ``map=`` task into one
``MapState`` (no per-instance objects: a cursor, a bytearray of states, typed
arrays of times); outcomes of instances are built from it on demand.
"""

from __future__ import annotations

import os
from array import array
from typing import TYPE_CHECKING, Any

from ..graph import Vertex
from ..outcome import (FAILED, INTERRUPTED, RESTORED, SKIPPED, SUCCEEDED, TaskOutcome,
                       format_error)
from .attempt import RemotePolicy
from .port import SchedulerPort
from .states import SKIP_STOPPED
from .views import Upstream

if TYPE_CHECKING:  # pragma: no cover
    from .scheduler import Run

# instance states (one byte each in MapState.status); ENDED and above: ended
I_PENDING, I_RUNNING, I_WAITING, I_SUCCEEDED, I_FAILED, I_SKIPPED, I_RESTORED, \
    I_INTERRUPTED = range(8)
ENDED = I_SUCCEEDED
#: the outcome status of each ended instance state
INSTANCE_STATUS = {I_SUCCEEDED: SUCCEEDED, I_FAILED: FAILED, I_SKIPPED: SKIPPED,
                   I_RESTORED: RESTORED, I_INTERRUPTED: INTERRUPTED}
_NAN = float("nan")


class MapState:
    """One mapped task's instances: a cursor plus compact per-instance arrays.

    ``status`` is a bytearray of instance states; ``attempts``, ``t0``, ``t1``
    are typed arrays (NaN: not yet); ``results`` and ``workers`` plain lists;
    ``errors`` holds only the instances that have an error.  ``cursor``,
    ``retry`` and ``queued`` (whether the task is in ``port.map_ready``) change
    under ``port.lock`` only: thread workers advance the cursor too.
    """

    __slots__ = ("index", "vertex", "name", "key", "param", "items", "n", "base", "fn", "call",
                 "guard", "deadline", "policy",
                 "wants_ctx", "upstream", "watched", "cursor", "left", "retry", "queued",
                 "status", "attempts", "t0", "t1", "results", "errors", "workers")

    def __init__(self, run: "Run", port: SchedulerPort, v: Vertex, items: Any, n: int):
        spec = v.spec
        assert spec is not None and spec.map is not None
        self.index = v.index
        self.vertex = v
        self.name = v.name
        self.key = port.prio[v.index]
        self.param = spec.map
        self.items = items
        self.n = n
        base = dict(v.consts) if v.consts else {}
        results = run.results
        for p, d in v.args:
            if p != spec.map:
                base[p] = results[d]
        self.base = base
        self.fn = v.fn
        self.call = port.calls[v.index]
        #: every instance's attempt runs under the mapped task's guard and deadline
        self.guard = port.guards[v.index] if port.guards is not None else None
        self.deadline = port.deadlines[v.index] if port.deadlines is not None else None
        #: the same, for an attempt on a remote worker (None: neither)
        self.policy = None if self.guard is None and self.deadline is None else \
            RemotePolicy(self.guard, self.deadline, v.name, os.getpid())
        self.wants_ctx = v.wants_ctx
        self.upstream = Upstream(run, v.deps) if v.wants_ctx else None
        #: successful attempts also go through flowdeco_attempt_done
        self.watched = v.index in port.success_hooked
        self.cursor = 0
        self.left = n
        self.retry: list[tuple[int, int]] = []
        self.queued = False
        self.status = bytearray(n)
        self.attempts = array("I", [0]) * n
        self.t0 = array("d", [_NAN]) * n
        self.t1 = array("d", [_NAN]) * n
        self.results: list[Any] = [None] * n
        self.errors: dict[int, BaseException | str] = {}
        self.workers: list[str | None] = [None] * n

    def instance(self, k: int) -> str:
        return f"{self.name}[{k}]"

    def outcome(self, k: int, offset: float) -> TaskOutcome | None:
        """Instance ``k``'s outcome, or None while it has not ended."""
        code = self.status[k]
        if code < ENDED:
            return None
        if code == I_SKIPPED:
            return SKIP_STOPPED
        err = self.errors.get(k)
        t0, t1 = self.t0[k], self.t1[k]
        has0, has1 = t0 == t0, t1 == t1
        return TaskOutcome(
            INSTANCE_STATUS[code], self.results[k] if code in (I_SUCCEEDED, I_RESTORED) else None,  # type: ignore[arg-type]
            None if err is None else err if isinstance(err, str) else format_error(err),
            self.attempts[k], t0 + offset if has0 else None, t1 + offset if has1 else None,
            t1 - t0 if has0 and has1 else 0.0,
            exception=err if isinstance(err, BaseException) else None,
            worker=self.workers[k])
