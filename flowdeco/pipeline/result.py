"""What a pipeline run produces: outputs, per-item errors, and its own metrics.

All frozen attrs classes of plain data (no live objects), so a pipeline node's
result can be stored by the state plugin like any other task result.  The one
exception is :attr:`ItemError.exception`, kept for debugging in the process
that ran the item and never stored (it is not an ``__init__`` field).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import attrs

# ------------------------------------------------------------------ latency histogram
#
# Per-item latencies go into a fixed log-scale histogram per stage worker: 8
# buckets per power of two, so a percentile read from it is within about 6 %
# of the exact value, whatever the number of items (memory stays constant).

_SUB = 8                       # buckets per octave
_BASE = 64 * _SUB              # bucket offset: exponents down to 2**-64 s
HIST_SIZE = _BASE + 64 * _SUB  # and up to 2**63 s
#: added to every duration so that a zero reading still has a logarithm
HIST_BIAS = 1e-9


def hist_index(seconds: float) -> int:
    """The bucket of a duration (the engine inlines this on its hot path)."""
    m, e = math.frexp(seconds + HIST_BIAS)
    return (e << 3) + int(m * 16) + _BASE


def _bucket_value(i: int) -> float:
    j = i - _BASE                      # j = 8 * (e + 1) + (s - 8), s = int(m * 16) in 8..15
    e = (j >> 3) - 1
    s = (j & 7) + 8
    return max(math.ldexp((s + 0.5) / 16.0, e) - HIST_BIAS, 0.0)


def percentile(hist: list[int], q: float) -> float | None:
    """The ``q``-quantile (0 < q <= 1) of the durations counted in ``hist``, or None if empty."""
    total = sum(hist)
    if not total:
        return None
    rank = max(1, math.ceil(q * total))
    seen = 0
    for i, c in enumerate(hist):
        if c:
            seen += c
            if seen >= rank:
                return _bucket_value(i)
    return None  # pragma: no cover - unreachable


# ------------------------------------------------------------------ results


@attrs.frozen
class ItemError:
    """One item that failed (after its stage's retries) and was dropped.

    ``index`` is the item's position in the source (0-based); ``item`` what
    the failing stage received (so ``stage_fn(error.item)`` reproduces it;
    for a batch stage, this item's element of the batch); ``stage`` the
    stage's name; ``error`` ``"ExcType: message"``; ``attempts`` the number
    of calls made.  ``exception`` is the exception itself (with its
    traceback) in the process that ran the item, None after a restore.
    """

    index: int
    item: Any
    stage: str
    error: str
    attempts: int = 1
    exception: BaseException | None = attrs.field(init=False, default=None, eq=False,
                                                   repr=False)

    @classmethod
    def of(cls, index: int, item: Any, stage: str, error: str, attempts: int,
           exception: BaseException | None) -> "ItemError":
        out = cls(index, item, stage, error, attempts)
        object.__setattr__(out, "exception", exception)
        return out


@attrs.frozen
class StageMetrics:
    """Figures of one stage, from the pipeline's own counters.

    ``items_in``: items that entered the stage; ``items_out``: items it passed
    on; ``items_failed``: items that failed there for good; ``retries``:
    calls repeated after a failure.  ``busy``: seconds the stage's workers
    spent in calls; ``span``: seconds from its first call's start to its last
    call's end; ``throughput``: items finished (out + failed) per second of
    span.  ``latency_mean``/``latency_p95``: seconds per item per call (each
    item of a batch counts the whole batch call; p95 read from a log-scale
    histogram, within ~6 %); None when nothing ran.  ``queue_hwm``: the most
    items ever waiting in the stage's input queue.  ``utilisation``: busy /
    (workers x pipeline duration).
    """

    name: str
    workers: int
    batch_size: int | None
    items_in: int
    items_out: int
    items_failed: int
    retries: int
    busy: float
    span: float
    throughput: float
    latency_mean: float | None
    latency_p95: float | None
    queue_hwm: int
    utilisation: float


@attrs.frozen
class StageWorkerMetrics:
    """One worker thread of a stage: ``calls`` made, ``items`` handled, ``busy`` seconds."""

    worker: str
    stage: str
    calls: int
    items: int
    busy: float


@attrs.frozen
class PipelineMetrics:
    """Figures of one pipeline run.

    ``items``: items pulled from the source; ``outputs``/``failed``: items
    delivered / dropped; ``duration``: seconds from start to the last
    delivery; ``throughput``: outputs per second.  ``max_in_flight``: the
    most items pulled from the source but not yet delivered at any moment (at
    most ``window``, the pipeline's bound).  ``stages``: :class:`StageMetrics`
    by stage name, in order; ``workers``: one entry per stage worker thread.
    """

    name: str
    items: int
    outputs: int
    failed: int
    duration: float
    throughput: float
    max_in_flight: int
    window: int
    stages: Mapping[str, StageMetrics] = attrs.field(factory=dict)
    workers: tuple[StageWorkerMetrics, ...] = ()


@attrs.frozen
class PipelineResult:
    """What :meth:`Pipeline.run` returns, and a pipeline node's result.

    ``outputs``: results of the last stage, in input order (``ordered=True``)
    or completion order; failed items are dropped from it.  ``errors``: one
    :class:`ItemError` per failed item, by input index.  ``metrics``:
    :class:`PipelineMetrics`.  ``stopped``: True when feeding stopped early
    (``stop_on_error`` after a failure, or an interrupt).
    """

    outputs: list[Any]
    errors: list[ItemError]
    metrics: PipelineMetrics
    stopped: bool = False

    @property
    def ok(self) -> bool:
        """True when no item failed and feeding was not stopped."""
        return not self.errors and not self.stopped

    def __iter__(self):
        """Iterate over ``outputs`` (so a result can feed another pipeline)."""
        return iter(self.outputs)
