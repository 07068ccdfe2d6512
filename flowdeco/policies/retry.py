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
from datetime import timedelta
from typing import Any, Callable, Iterable, Literal, Protocol

import attrs

from ..errors import FlowError, TaskDefinitionError

Backoff = Literal["fixed", "linear", "exponential"]
BACKOFFS: tuple[str, ...] = ("fixed", "linear", "exponential")

_FLOAT_MAX = sys.float_info.max


class RandomSource(Protocol):
    def random(self) -> float: ...


def _seconds(name: str, value: Any, *, optional: bool = False) -> float | None:
    """A duration option as seconds: a number or a ``timedelta``."""
    if value is None and optional:
        return None
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value >= 0 \
            or math.isinf(value):
        raise TaskDefinitionError(
            f"Retry: {name} must be a finite number of seconds >= 0 or a timedelta, "
            f"got {value!r}")
    return float(value)


def _exception_types(name: str, on: Any, *, empty: bool = False
                     ) -> tuple[type[BaseException], ...]:
    types = tuple(on) if isinstance(on, (tuple, list, set, frozenset)) else (on,)
    bad = [t for t in types if not (isinstance(t, type) and issubclass(t, BaseException))]
    if (not types and not empty) or bad:
        raise TaskDefinitionError(
            f"Retry: {name}= takes an exception type or a tuple of them"
            + (", or a predicate on the exception" if name == "on" else "") + f", got {on!r}")
    return types


def _is_predicate(value: Any) -> bool:
    return callable(value) and not isinstance(value, type)


class RetryError(FlowError):
    """A task's result still asked for a retry (``Retry(retry_if=...)``) when the
    policy's limits (``retries``, ``give_up_after``) ran out.

    ``attempts``: attempts made; ``last_result``: the last attempt's result.
    """

    engine_decided = True  # one line on the console (see flowdeco.errors.FlowError)

    def __init__(self, message: str, attempts: int = 0, last_result: Any = None):
        super().__init__(message)
        self.attempts = attempts
        self.last_result = last_result

    def __reduce__(self) -> Any:
        return (type(self), (str(self), self.attempts, None))


class Incrementing:
    """``wait=`` for tenacity's ``wait_incrementing``: ``start``, then ``increment``
    more before each further retry, capped at ``max`` (None: no cap)."""

    __slots__ = ("start", "increment", "max")

    def __init__(self, start: float | timedelta = 0.0, increment: float | timedelta = 1.0,
                 max: float | timedelta | None = None):
        self.start = _seconds("Incrementing start", start)
        self.increment = _seconds("Incrementing increment", increment)
        self.max = _seconds("Incrementing max", max, optional=True)

    def __call__(self, n: int, error: BaseException | None = None) -> float:
        value = min(self.start + self.increment * (n - 1), _FLOAT_MAX)  # type: ignore[operator]
        return value if self.max is None else min(value, self.max)

    def __repr__(self) -> str:
        return f"Incrementing(start={self.start:g}, increment={self.increment:g}, max={self.max})"


class Chain:
    """``wait=`` for tenacity's ``wait_chain``: the n-th step for retry n, the last
    step for every retry after.  A step is seconds, a ``timedelta`` or a ``wait=``
    callable ``(n, error) -> seconds``."""

    __slots__ = ("steps",)

    def __init__(self, *steps: Any):
        if not steps:
            raise TaskDefinitionError("Retry: Chain() needs at least one step")
        self.steps = tuple(s if _is_predicate(s) else _seconds("Chain step", s)
                           for s in steps)

    def __call__(self, n: int, error: BaseException | None = None) -> float:
        step = self.steps[min(n, len(self.steps)) - 1]
        return step(n, error) if callable(step) else step

    def __repr__(self) -> str:
        return f"Chain{self.steps!r}"


@attrs.frozen(init=False)
class Retry:
    """When and how long to wait before running a failed task again.

    ``retries``: retries after the first attempt (None: no limit, then
    ``give_up_after`` must be set).  ``give_up_after``: a time budget across
    attempts (tenacity's ``stop_after_delay``): once that many seconds have
    passed since the first attempt started, a failed attempt is not retried.
    With both, the first limit reached wins.

    ``backoff``: how the delay before retry n (n = 1, 2, ...) grows from ``delay``:

    ==============  ===================
    ``fixed``       ``delay``
    ``linear``      ``delay * n``
    ``exponential`` ``delay * 2**(n-1)``
    ==============  ===================

    or ``wait``: a callable ``(n, error) -> seconds`` for any other schedule
    (:class:`Incrementing`, :class:`Chain`, or your own; ``error`` is None in
    :meth:`preview`); then multiplied by a uniform factor in ``[1 - jitter,
    1 + jitter]``, then clamped to ``[min_delay, max_delay]`` (``max_delay`` is
    a hard cap; None: no cap).

    Which failures are retried: ``on``, an exception type, a tuple of them, or
    a predicate on the exception (true: retry); ``not_on``, exception types
    never retried (checked first).  An error not retried fails the task at
    once.  ``retry_if``: a predicate on a *successful* attempt's result; true
    runs the task again (polling until a job is done); when the limits run
    out while it is still true the task fails with :class:`RetryError`.

    ``seed``: makes jitter reproducible (a run draws from a fresh
    ``random.Random(seed)`` per policy, so a single task's delays equal
    :meth:`preview`).  Every duration may be given as a ``timedelta``.

    Invalid arguments raise :class:`~flowdeco.TaskDefinitionError` when the
    policy is made, that is at decoration time.
    """

    retries: int | None
    backoff: Backoff
    delay: float
    max_delay: float | None
    min_delay: float
    jitter: float
    on: tuple[type[BaseException], ...] | Callable[[BaseException], Any]
    seed: int | None
    give_up_after: float | None
    not_on: tuple[type[BaseException], ...]
    retry_if: Callable[[Any], Any] | None
    wait: Callable[[int, BaseException | None], Any] | None
    #: largest useful exponent for exponential back-off under max_delay
    _exp_cap: int = attrs.field(eq=False, repr=False)

    def __init__(self, retries: int | None = 0, backoff: Backoff = "fixed",
                 delay: float | timedelta = 0.0, max_delay: float | timedelta | None = None,
                 min_delay: float | timedelta = 0.0, jitter: float = 0.0,
                 on: type[BaseException] | Iterable[type[BaseException]]
                 | Callable[[BaseException], Any] = (Exception,),
                 seed: int | None = None, *, give_up_after: float | timedelta | None = None,
                 not_on: type[BaseException] | Iterable[type[BaseException]] = (),
                 retry_if: Callable[[Any], Any] | None = None,
                 wait: Callable[[int, BaseException | None], Any] | None = None):
        budget = _seconds("give_up_after", give_up_after, optional=True)
        if retries is None:
            if budget is None:
                raise TaskDefinitionError(
                    "Retry: retries=None (no limit on attempts) needs give_up_after= "
                    "(a time budget); otherwise give a number of retries")
        elif isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise TaskDefinitionError(
                f"Retry: retries must be an int >= 0 (or None with give_up_after=), "
                f"got {retries!r}")
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
        on_ = on if _is_predicate(on) else _exception_types("on", on)
        not_on_ = _exception_types("not_on", not_on, empty=True)
        if retry_if is not None and not callable(retry_if):
            raise TaskDefinitionError(
                f"Retry: retry_if= takes a predicate on the result, got {retry_if!r}")
        if wait is not None and not callable(wait):
            raise TaskDefinitionError(
                f"Retry: wait= takes a callable (n, error) -> seconds, got {wait!r}")
        self.__attrs_init__(retries, backoff, delay_, max_, min_, float(jitter), on_, seed,
                            budget, not_on_, retry_if, wait,
                            _exponent_cap(delay_, max_, jitter))

    # -- the schedule
    def within_limits(self, attempt: int, elapsed: float | None = None) -> bool:
        """True while another attempt after attempt number ``attempt`` is allowed:
        ``retries`` not used up and, when ``elapsed`` (seconds since the first
        attempt started) is known, ``give_up_after`` not reached."""
        if self.retries is not None and attempt > self.retries:
            return False
        return self.give_up_after is None or elapsed is None or elapsed < self.give_up_after

    def retries_error(self, error: BaseException) -> bool:
        """Whether ``error`` is a failure to retry (``not_on``, then ``on``)."""
        if self.not_on and isinstance(error, self.not_on):
            return False
        on = self.on
        return isinstance(error, on) if isinstance(on, tuple) else bool(on(error))

    def should_retry(self, error: BaseException, attempt: int,
                     elapsed: float | None = None) -> bool:
        """True when attempt number ``attempt`` (1-based) failing with ``error`` is
        retried; ``elapsed``: seconds since the first attempt started (for
        ``give_up_after``; None: not checked)."""
        return self.within_limits(attempt, elapsed) and self.retries_error(error)

    def should_retry_result(self, result: Any, attempt: int,
                            elapsed: float | None = None) -> bool | None:
        """For a successful attempt: True to run again, False to keep ``result``,
        None when ``retry_if`` still asks for a retry but the limits ran out."""
        if self.retry_if is None or not self.retry_if(result):
            return False
        return True if self.within_limits(attempt, elapsed) else None

    def base_delay(self, n: int, error: BaseException | None = None) -> float:
        """The delay before retry ``n`` from ``wait`` or ``backoff`` alone (before
        jitter and clamping)."""
        if self.wait is not None:
            value = self.wait(n, error)
            try:
                return _seconds("wait", value)  # type: ignore[return-value]
            except TaskDefinitionError:
                raise TaskDefinitionError(
                    f"Retry: wait={self.wait!r} returned {value!r} for retry {n}; it must "
                    "return a finite number of seconds >= 0 or a timedelta") from None
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

    def delay_before(self, n: int, rng: RandomSource | None = None,
                     error: BaseException | None = None) -> float:
        """Seconds to wait before retry ``n`` (n = 1, 2, ...); ``error``: the failure
        (passed to ``wait``).

        Jitter draws one number from ``rng`` (default: the ``random`` module,
        or a fresh ``random.Random(seed)`` for a seeded policy; pass one
        generator to successive calls for a sequence, as :meth:`preview` does).
        Never overflows: exponential growth is clamped to what ``max_delay``
        can use before it is computed.
        """
        if n < 1:
            raise ValueError(f"retry numbers start at 1, got {n}")
        value = self.base_delay(n, error)
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

        Exact for the deterministic forms: with a seed the jitter is the one a
        run draws, and a ``wait=`` callable is called with ``error=None``, so a
        task using this policy alone waits exactly these delays (one whose
        ``wait`` looks at the error may differ).  ``give_up_after`` is not
        applied (it depends on how long the attempts take).
        """
        if n is None:
            if self.retries is None:
                raise ValueError("preview(): this policy has no retries limit "
                                 "(retries=None with give_up_after=); pass n")
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
