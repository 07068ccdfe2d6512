"""The retry policy: when a failed attempt runs again, and after how long.

:class:`Retry` is a plain value object used by every caller that retries: the
``retry`` plugin (tasks of a flow, on every executor) and pipeline stages
(:mod:`flowdeco.pipeline`).  It decides and computes; it never sleeps --
each caller waits on its own clock without holding a worker.
"""

from __future__ import annotations

import math
import numbers
import random
import sys
from typing import Any, Iterable, Literal, Protocol

import attrs

from ..errors import TaskDefinitionError

Backoff = Literal["fixed", "linear", "exponential"]
BACKOFFS: tuple[str, ...] = ("fixed", "linear", "exponential")

_FLOAT_MAX = sys.float_info.max


class RandomSource(Protocol):
    def random(self) -> float: ...


def _seconds(name: str, value: Any, *, optional: bool = False) -> float | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value >= 0 \
            or math.isinf(value):
        raise TaskDefinitionError(
            f"Retry: {name} must be a finite number of seconds >= 0, got {value!r}")
    return float(value)


def _exception_types(on: Any) -> tuple[type[BaseException], ...]:
    types = tuple(on) if isinstance(on, (tuple, list, set, frozenset)) else (on,)
    bad = [t for t in types if not (isinstance(t, type) and issubclass(t, BaseException))]
    if not types or bad:
        raise TaskDefinitionError(
            f"Retry: on= takes an exception type or a tuple of them, got {on!r}")
    return types


@attrs.frozen(init=False)
class Retry:
    """When and how long to wait before running a failed task again.

    ``retries``: retries after the first attempt.  ``backoff``: how the delay
    before retry n (n = 1, 2, ...) grows from ``delay``:

    ==============  ===================
    ``fixed``       ``delay``
    ``linear``      ``delay * n``
    ``exponential`` ``delay * 2**(n-1)``
    ==============  ===================

    then multiplied by a uniform factor in ``[1 - jitter, 1 + jitter]``, then
    clamped to ``[min_delay, max_delay]`` (``max_delay`` is a hard cap; None:
    no cap).  ``on``: an exception type or a tuple of them; an error outside
    it fails the task at once.  ``seed``: makes jitter reproducible (a run
    draws from a fresh ``random.Random(seed)`` per policy, so a single task's
    delays equal :meth:`preview`).

    Invalid arguments raise :class:`~flowdeco.TaskDefinitionError` when the
    policy is made, that is at decoration time.
    """

    retries: int
    backoff: Backoff
    delay: float
    max_delay: float | None
    min_delay: float
    jitter: float
    on: tuple[type[BaseException], ...]
    seed: int | None
    #: largest useful exponent for exponential back-off under max_delay
    _exp_cap: int = attrs.field(eq=False, repr=False)

    def __init__(self, retries: int = 0, backoff: Backoff = "fixed", delay: float = 0.0,
                 max_delay: float | None = None, min_delay: float = 0.0, jitter: float = 0.0,
                 on: type[BaseException] | Iterable[type[BaseException]] = (Exception,),
                 seed: int | None = None):
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise TaskDefinitionError(f"Retry: retries must be an int >= 0, got {retries!r}")
        if backoff not in BACKOFFS:
            raise TaskDefinitionError(
                f"Retry: unknown backoff {backoff!r}; use 'fixed', 'linear' or 'exponential'")
        delay_ = _seconds("delay", delay)
        min_ = _seconds("min_delay", min_delay)
        max_ = _seconds("max_delay", max_delay, optional=True)
        if max_ is not None and max_ < min_:  # type: ignore[operator]
            raise TaskDefinitionError(
                f"Retry: max_delay ({max_delay!r}) must be >= min_delay ({min_delay!r})")
        if isinstance(jitter, bool) or not isinstance(jitter, numbers.Real) \
                or not 0.0 <= jitter <= 1.0:
            raise TaskDefinitionError(f"Retry: jitter must be a number in [0, 1], got {jitter!r}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise TaskDefinitionError(f"Retry: seed must be an int or None, got {seed!r}")
        self.__attrs_init__(retries, backoff, delay_, max_, min_, float(jitter),
                            _exception_types(on), seed, _exponent_cap(delay_, max_, jitter))

    # -- the schedule
    def should_retry(self, error: BaseException, attempt: int) -> bool:
        """True when attempt number ``attempt`` (1-based) failing with ``error`` is retried."""
        return attempt <= self.retries and isinstance(error, self.on)

    def base_delay(self, n: int) -> float:
        """The delay before retry ``n`` from ``backoff`` alone (before jitter and clamping)."""
        d = self.delay
        if d == 0.0 or self.backoff == "fixed":
            return d
        if self.backoff == "linear":
            return min(d * n, _FLOAT_MAX)
        e = n - 1 if n - 1 < self._exp_cap else self._exp_cap  # clamp growth before computing
        try:
            return math.ldexp(d, e)
        except OverflowError:
            return _FLOAT_MAX

    def delay_before(self, n: int, rng: RandomSource | None = None) -> float:
        """Seconds to wait before retry ``n`` (n = 1, 2, ...).

        Jitter draws one number from ``rng`` (default: the ``random`` module,
        or a fresh ``random.Random(seed)`` for a seeded policy; pass one
        generator to successive calls for a sequence, as :meth:`preview` does).
        Never overflows: exponential growth is clamped to what ``max_delay``
        can use before it is computed.
        """
        if n < 1:
            raise ValueError(f"retry numbers start at 1, got {n}")
        value = self.base_delay(n)
        if self.jitter:
            if rng is None:
                rng = self.rng()
            value = min(value * (1.0 - self.jitter + 2.0 * self.jitter * rng.random()),
                        _FLOAT_MAX)
        if value < self.min_delay:
            value = self.min_delay
        if self.max_delay is not None and value > self.max_delay:
            value = self.max_delay
        return value

    def rng(self) -> RandomSource:
        """A fresh ``random.Random(seed)`` for a seeded policy, else the ``random`` module."""
        return random.Random(self.seed) if self.seed is not None else random

    def preview(self, n: int | None = None) -> list[float]:
        """The first ``n`` delays (default: all ``retries`` of them), in seconds.

        With a seed the jitter is the one a run draws, so a task using this
        policy alone waits exactly these delays.
        """
        if n is None:
            n = self.retries
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"preview(n): n must be an int >= 0, got {n!r}")
        rng = self.rng()
        return [self.delay_before(i, rng) for i in range(1, n + 1)]


def _exponent_cap(delay: float, max_delay: float | None, jitter: float) -> int:
    """The exponent from which ``delay * 2**e`` times the smallest jitter factor exceeds
    ``max_delay`` (so larger exponents change nothing); without a cap, the exponent past
    which ``delay * 2**e`` leaves the float range (a subnormal delay needs over 2,000)."""
    if delay == 0.0:
        return 0
    if max_delay is None:
        return max(0, math.ceil(1025 - math.log2(delay)))
    if max_delay == 0.0:
        return 0
    low = 1.0 - jitter
    # with jitter=1 the factor can come arbitrarily close to 0: leave 2**40 of headroom
    headroom = -math.log2(low) if low > 0 else 40.0
    return max(0, min(1100, math.ceil(math.log2(max_delay) - math.log2(delay) + headroom) + 1))
