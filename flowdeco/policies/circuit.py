"""Circuit breakers: stop calling a dependency that keeps failing (contract §1, §4, §6).

The policy object, used on its own (:meth:`CircuitBreaker.call`) and by the
``circuit`` plugin for tasks of a flow (the plugin resolves ``circuit=``,
guards the task's attempts with the breaker and reports its transitions).

::

    api = CircuitBreaker("api", threshold=3, reset_after=30.0)

    @task(circuit=api)            # or circuit="api": names are process-wide
    def fetch():
        ...

The state machine::

    CLOSED --threshold consecutive failures--> OPEN
    OPEN   --reset_after seconds-------------> HALF_OPEN   (checked when called)
    HALF_OPEN --half_open_attempts successes-> CLOSED
    HALF_OPEN --a failure--------------------> OPEN

While OPEN, a call fails fast with :class:`CircuitOpenError` without running
the function; HALF_OPEN lets ``half_open_attempts`` trial calls through and
refuses the others.  A failure is an ``Exception`` (a ``KeyboardInterrupt``
neither counts nor resets) that ``exclude=`` does not name: an excluded
exception (a business error such as ``KeyError``, by type or by a predicate)
counts as a success, as in pybreaker.  :attr:`CircuitBreaker.failures` is
pybreaker's ``fail_counter``: consecutive failures since the breaker closed
or a call succeeded (kept while open; a failed half-open trial adds one).

pybreaker's vocabulary: ``@breaker`` decorates a function, ``with breaker:``
guards a block, ``breaker.open()``/``close()``/``half_open()`` force a state
(operators), and ``add_listener(obj)`` takes an object with any of
``state_change(breaker, old, new)``, ``failure(breaker, exc)``,
``success(breaker)``, ``before_call(breaker, fn, *args, **kwargs)``, called
on the calling thread with the breaker's lock held (so in order).  In a flow, an attempt refused by an open breaker
is a failed attempt like any other: a retry policy waits by its own delays and
tries again, it does not spin.  A timed-out attempt (``TaskTimeout``) counts
as a failure of the breaker.

Concurrency: the breaker's lock guards state changes only, never the wrapped
call, so calls through one breaker run concurrently (pybreaker holds its lock
around the call and serialises them).  While CLOSED with no failures pending,
a call takes no lock at all.  Results of calls admitted before a state change
(a slow call that ends after the breaker opened) are ignored, so they cannot
close a breaker that opened meanwhile.

Events: in a run, transitions of the breakers its tasks use are reported as
``circuit_opened``, ``circuit_half_open`` and ``circuit_closed`` with
``breaker`` (the name).

Processes: a breaker's state lives in one process.  With
``executor="process"`` each worker process has its own copy of every breaker
(looked up by name, created with the same settings if missing), so failures
are counted per worker process and transitions there are not reported in the
run's events.  Use the thread executor when tasks must share one breaker.
"""

from __future__ import annotations

import enum
import functools
import numbers
import os
import threading
import time
import warnings
from datetime import timedelta
from typing import Any, Callable, ClassVar, Iterable, TypeVar

from ..errors import FlowError, TaskDefinitionError

R = TypeVar("R")


class CircuitState(str, enum.Enum):
    """The state of a :class:`CircuitBreaker` (compares equal to its value)."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"

    def __str__(self) -> str:
        return self.value


CLOSED, OPEN, HALF_OPEN = CircuitState.CLOSED, CircuitState.OPEN, CircuitState.HALF_OPEN

#: audit event reported when a breaker enters a state
EVENTS = {OPEN: "circuit_opened", HALF_OPEN: "circuit_half_open", CLOSED: "circuit_closed"}

Listener = Callable[["CircuitBreaker", CircuitState, CircuitState], None]


class CircuitOpenError(FlowError):
    """A call was refused because its circuit breaker is open (or half-open and busy).

    ``breaker`` is the breaker's name; ``retry_after`` the seconds until it
    lets a trial call through (0 when half-open).
    """

    engine_decided = True  # one line on the console (see flowdeco.errors.FlowError)

    def __init__(self, message: str, breaker: str = "", retry_after: float = 0.0):
        super().__init__(message)
        self.breaker = breaker
        self.retry_after = retry_after

    def __reduce__(self) -> Any:
        return (type(self), (str(self), self.breaker, self.retry_after))


def _monotonic_source(clock: Any) -> Callable[[], float]:
    if clock is None:
        return time.monotonic
    mono = getattr(clock, "monotonic", None)
    if callable(mono):
        return mono  # a flowdeco Clock / FakeClock
    if callable(clock):
        return clock
    raise TaskDefinitionError(
        f"CircuitBreaker: clock must be a flowdeco Clock or a function returning seconds, "
        f"got {clock!r}")


class CircuitBreaker:
    """Fails calls fast after ``threshold`` consecutive failures, then probes for recovery.

    ``name``: process-wide; ``@task(circuit="name")`` finds the breaker made
    with that name (making another with the same name replaces it in the
    registry, as re-importing a module does).  ``threshold``: consecutive
    failures that open it.  ``reset_after``: seconds it stays open before
    half-open.  ``half_open_attempts``: trial calls let through while
    half-open; that many successes close it, one failure re-opens it.
    ``clock``: where time comes from (default ``time.monotonic``; tests pass
    a :class:`~flowdeco.FakeClock` or a function).

    ``exclude``: exception types and predicates on the exception whose
    exceptions are not failures (they count as successes); ``listeners``:
    listener objects (see :meth:`add_listener`).  ``reset_after`` may be a
    ``timedelta``.

    Use :meth:`call`, ``@breaker`` or ``with breaker:`` outside flows;
    :attr:`state`, :attr:`failures`, :meth:`open`, :meth:`close`,
    :meth:`half_open`, :meth:`add_listener`, :meth:`subscribe` for the rest.
    """

    _registry: ClassVar[dict[str, "CircuitBreaker"]] = {}
    _registry_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, name: str, threshold: int = 5, reset_after: float | timedelta = 60.0,
                 half_open_attempts: int = 1, clock: Any = None, *,
                 exclude: Any = (), listeners: Iterable[Any] = ()):
        if not isinstance(name, str) or not name.strip():
            raise TaskDefinitionError(
                f"CircuitBreaker: name must be a non-empty string, got {name!r}")
        where = f"CircuitBreaker({name!r})"
        if isinstance(reset_after, timedelta):
            reset_after = reset_after.total_seconds()
        if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 1:
            raise TaskDefinitionError(f"{where}: threshold must be an int >= 1, got {threshold!r}")
        if isinstance(reset_after, bool) or not isinstance(reset_after, numbers.Real) \
                or not 0 <= reset_after < float("inf"):
            raise TaskDefinitionError(
                f"{where}: reset_after must be a finite number of seconds >= 0 or a "
                f"timedelta, got {reset_after!r}")
        if isinstance(half_open_attempts, bool) or not isinstance(half_open_attempts, int) \
                or half_open_attempts < 1:
            raise TaskDefinitionError(
                f"{where}: half_open_attempts must be an int >= 1, got {half_open_attempts!r}")
        self.name = name
        self.threshold = threshold
        self.reset_after = float(reset_after)
        self.half_open_attempts = half_open_attempts
        #: exception types and predicates whose exceptions are not failures
        self.exclude = _exclusions(where, exclude)
        # what travels to worker processes for a breaker they lack: the types (a
        # predicate may not pickle; the worker imports the module that made the
        # breaker, and with it the predicate, in the usual case)
        self._types_excluded = tuple(x for x in self.exclude if isinstance(x, type))
        self._now = _monotonic_source(clock)
        self._init_state()
        for obj in listeners:
            self.add_listener(obj)
        with CircuitBreaker._registry_lock:
            CircuitBreaker._registry[name] = self

    def _init_state(self) -> None:
        self._lock = threading.RLock()
        self._state = CLOSED
        self._gen = 0            # bumped on every transition; stale results are ignored
        self._failures = 0       # consecutive failures while closed
        self._opened_at = 0.0
        self._admitted = 0       # trial calls let through while half-open
        self._successes = 0      # trial calls that succeeded
        self._listeners: list[Listener] = []
        #: pybreaker-style listener objects (add_listener); non-empty: every call
        #: goes through the counted path so they hear of each success and failure
        self._observers: list[Any] = []
        self._local = threading.local()  # tokens of ``with breaker:`` blocks, per thread

    # -- registry
    @classmethod
    def get(cls, name: str) -> "CircuitBreaker":
        """The breaker created with ``name`` in this process (``KeyError`` if none)."""
        return cls._registry[name]

    @classmethod
    def names(cls) -> list[str]:
        """Names of the breakers of this process, sorted."""
        return sorted(cls._registry)

    # -- state
    @property
    def state(self) -> CircuitState:
        """``closed``, ``open`` or ``half_open`` (an open breaker whose ``reset_after``
        has passed reads as half-open)."""
        if self._state is OPEN:
            with self._lock:
                if self._state is OPEN and self._now() - self._opened_at >= self.reset_after:
                    self._transition(HALF_OPEN)
        return self._state

    @property
    def failures(self) -> int:
        """Consecutive failures since the breaker last closed or a call last succeeded
        (pybreaker's ``fail_counter``): it reaches ``threshold`` as the breaker opens,
        keeps its value while open, grows by one when a half-open trial fails, and
        is 0 again once a call succeeds while closed or the breaker closes.  An
        excluded exception (``exclude=``) counts as a success."""
        return self._failures

    def reset(self) -> None:
        """Close the breaker and forget its failures (same as :meth:`close`)."""
        with self._lock:
            if self._state is not CLOSED:
                self._transition(CLOSED)
            else:
                self._gen += 1
                self._failures = 0

    # -- operators: force a state (pybreaker's open()/close()/half_open())
    def open(self) -> None:
        """Open the breaker now: calls fail fast for ``reset_after`` seconds from now."""
        with self._lock:
            if self._state is OPEN:
                self._opened_at = self._now()
            else:
                self._transition(OPEN)

    def close(self) -> None:
        """Close the breaker now and forget its failures."""
        self.reset()

    def half_open(self) -> None:
        """Let ``half_open_attempts`` trial calls through now."""
        with self._lock:
            if self._state is not HALF_OPEN:
                self._transition(HALF_OPEN)

    # -- pybreaker-style listeners
    def add_listener(self, listener: Any) -> None:
        """Tell ``listener`` what happens, as pybreaker's ``CircuitBreakerListener``.

        Any of these methods it has is called, each optional:
        ``state_change(breaker, old, new)`` (states are :class:`CircuitState`),
        ``failure(breaker, exc)`` for a call that failed (counted or not: a stale
        one too), ``success(breaker)`` for a call that succeeded or raised an
        excluded exception, ``before_call(breaker, fn, *args, **kwargs)`` before
        a call is admitted (``fn`` is None for a ``with breaker:`` block or a
        task's attempt, whose arguments it does not see).  They run on the calling
        thread with the breaker's lock held, so each listener sees one breaker's
        events in order: keep them short and do not call into other breakers from
        them.  A listener that raises is reported as a ``RuntimeWarning`` and
        ignored.  While a breaker has listeners every call takes its lock.
        """
        if not any(callable(getattr(listener, m, None))
                   for m in ("state_change", "failure", "success", "before_call")):
            raise TypeError(
                f"CircuitBreaker({self.name!r}).add_listener: {listener!r} has none of "
                "state_change, failure, success, before_call")
        with self._lock:
            self._observers = [*self._observers, listener]

    def add_listeners(self, *listeners: Any) -> None:
        for listener in listeners:
            self.add_listener(listener)

    def remove_listener(self, listener: Any) -> None:
        with self._lock:
            self._observers = [x for x in self._observers if x is not listener]

    @property
    def listeners(self) -> tuple[Any, ...]:
        """The listener objects added with :meth:`add_listener` (or ``listeners=``)."""
        return tuple(self._observers)

    def _tell(self, method: str, *args: Any) -> None:
        """Call ``method`` of each listener that has it (lock held)."""
        for obj in self._observers:
            fn = getattr(obj, method, None)
            if fn is None:
                continue
            try:
                fn(self, *args)
            except Exception as exc:  # noqa: BLE001 - a listener must not fail the call
                warnings.warn(f"circuit breaker {self.name!r}: listener {obj!r}.{method} "
                              f"failed: {type(exc).__name__}: {exc}", RuntimeWarning,
                              stacklevel=3)

    def excluded(self, error: BaseException) -> bool:
        """Whether ``error`` is excluded (``exclude=``): not a failure of the breaker."""
        for x in self.exclude:
            if isinstance(x, type):
                if isinstance(error, x):
                    return True
            elif x(error):
                return True
        return False

    # -- decorator and context manager
    def __call__(self, fn: Callable[..., R]) -> Callable[..., R]:
        """``@breaker``: every call of ``fn`` goes through :meth:`call`."""
        if not callable(fn):
            raise TypeError(f"@CircuitBreaker({self.name!r}) decorates a function, got {fn!r}")

        @functools.wraps(fn)
        def guarded(*args: Any, **kwargs: Any) -> R:
            return self.call(fn, *args, **kwargs)
        return guarded

    def __enter__(self) -> "CircuitBreaker":
        """``with breaker:``: admit the block as one call (raise :class:`CircuitOpenError`
        if open); an exception leaving it counts as a failure (unless excluded)."""
        if self._observers:
            with self._lock:
                self._tell("before_call", None)
        token = self.enter()
        stack = getattr(self._local, "tokens", None)
        if stack is None:
            stack = self._local.tokens = []
        stack.append(token)
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        token = self._local.tokens.pop()
        self.exit(token, exc)
        return False

    def subscribe(self, listener: Listener) -> None:
        """Call ``listener(breaker, old_state, new_state)`` on every transition.

        Listeners run on the thread whose call caused the transition, while
        the breaker's lock is held (so they see transitions in order): keep
        them short and do not call into other breakers from them.
        """
        with self._lock:
            self._listeners = [*self._listeners, listener]

    def unsubscribe(self, listener: Listener) -> None:
        with self._lock:
            self._listeners = [x for x in self._listeners if x is not listener]

    # -- calls
    def call(self, fn: Callable[..., R], /, *args: Any, **kwargs: Any) -> R:
        """``fn(*args, **kwargs)`` through the breaker.

        Raises :class:`CircuitOpenError` without calling ``fn`` while open;
        otherwise returns its result or re-raises its exception, counting it.
        """
        if self._observers:
            with self._lock:
                self._tell("before_call", fn, *args, **kwargs)
        gen = self._gen
        if self._state is CLOSED:
            trial = False
        else:
            gen, trial = self._admit()
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:
            self._record_error(gen, trial, exc)
            raise
        except BaseException:
            if trial:
                self._release(gen)
            raise
        if trial or self._failures or self._observers:
            self._record_success(gen, trial)
        return result

    # -- the attempt guard protocol (flowdeco_task_guards): call() split in two
    def enter(self) -> Any:
        """Admit a call (raise :class:`CircuitOpenError` if open); returns a token for exit()."""
        if self._state is CLOSED:
            return self._gen  # an int: closed, not a trial
        return self._admit()

    def exit(self, token: Any, error: BaseException | None) -> None:
        """Count the end of a call admitted by enter(): ``error`` None on success."""
        if error is None and type(token) is int:
            # the usual end (admitted while closed, succeeded): nothing to count unless
            # failures are pending or listeners want to hear of it
            if self._failures or self._observers:
                self._record_success(token, False)
            return
        if type(token) is int:
            gen, trial = token, False
        else:
            gen, trial = token
        if error is None:
            if trial or self._failures or self._observers:
                self._record_success(gen, trial)
        elif isinstance(error, Exception):
            self._record_error(gen, trial, error)
        elif trial:
            self._release(gen)

    def _admit(self) -> tuple[int, bool]:
        with self._lock:
            if self._state is OPEN:
                remaining = self._opened_at + self.reset_after - self._now()
                if remaining > 0:
                    raise CircuitOpenError(
                        f"circuit {self.name!r} is open after {self.threshold} consecutive "
                        f"failures; failing fast for another {remaining:.3g} s",
                        self.name, remaining)
                self._transition(HALF_OPEN)
            elif self._state is CLOSED:
                return self._gen, False
            if self._admitted >= self.half_open_attempts:
                raise CircuitOpenError(
                    f"circuit {self.name!r} is half-open and its {self.half_open_attempts} "
                    "trial call(s) are already running", self.name, 0.0)
            self._admitted += 1
            return self._gen, True

    def _record_error(self, gen: int, trial: bool, error: BaseException) -> None:
        """A call raised ``error``: a failure, or a success when it is excluded."""
        if self.exclude and self.excluded(error):
            self._record_success(gen, trial)
        else:
            self._record_failure(gen, trial, error)

    def _record_failure(self, gen: int, trial: bool, error: BaseException | None = None
                        ) -> None:
        with self._lock:
            if self._observers:
                self._tell("failure", error)
            if gen != self._gen:
                return  # admitted before a transition: stale
            if trial:
                self._failures += 1
                self._transition(OPEN)
            elif self._state is CLOSED:
                self._failures += 1
                if self._failures >= self.threshold:
                    self._transition(OPEN)

    def _record_success(self, gen: int, trial: bool) -> None:
        with self._lock:
            if self._observers:
                self._tell("success")
            if gen != self._gen:
                return
            if trial:
                self._successes += 1
                if self._successes >= self.half_open_attempts:
                    self._transition(CLOSED)
            else:
                self._failures = 0

    def _release(self, gen: int) -> None:
        with self._lock:
            if gen == self._gen and self._admitted:
                self._admitted -= 1

    def _transition(self, new: CircuitState) -> None:
        """Enter ``new`` (lock held) and tell the listeners."""
        old = self._state
        self._state = new
        self._gen += 1
        self._admitted = self._successes = 0
        if new is CLOSED:
            self._failures = 0  # kept while open and half-open (see ``failures``)
        if new is OPEN:
            self._opened_at = self._now()
        if self._observers:
            self._tell("state_change", old, new)
        for listener in self._listeners:
            try:
                listener(self, old, new)
            except Exception as exc:  # noqa: BLE001 - a listener must not fail the call
                warnings.warn(f"circuit breaker {self.name!r}: listener {listener!r} failed: "
                              f"{type(exc).__name__}: {exc}", RuntimeWarning, stacklevel=2)

    # -- pickling: a breaker travels by name (worker processes use their own)
    def __reduce__(self) -> Any:
        return (_lookup_or_create,
                (self.name, self.threshold, self.reset_after, self.half_open_attempts,
                 self._types_excluded))

    def __repr__(self) -> str:
        return (f"<CircuitBreaker {self.name!r} {self._state.value} threshold={self.threshold} "
                f"reset_after={self.reset_after:g} half_open_attempts={self.half_open_attempts}>")


def _exclusions(where: str, exclude: Any) -> tuple[Any, ...]:
    """``exclude=`` as a tuple of exception types and predicates."""
    items = tuple(exclude) if isinstance(exclude, (tuple, list, set, frozenset)) else (exclude,)
    bad = [x for x in items if not (isinstance(x, type) and issubclass(x, BaseException))
           and (isinstance(x, type) or not callable(x))]
    if bad:
        raise TaskDefinitionError(
            f"{where}: exclude= takes exception types and predicates on the exception "
            f"(or a tuple of them), got {exclude!r}")
    return items


def _lookup_or_create(name: str, threshold: int, reset_after: float,
                      half_open_attempts: int, exclude: Any = ()) -> CircuitBreaker:
    found = CircuitBreaker._registry.get(name)
    if found is not None:
        return found
    return CircuitBreaker(name, threshold, reset_after, half_open_attempts, exclude=exclude)


def _reset_locks_after_fork() -> None:
    CircuitBreaker._registry_lock = threading.Lock()
    for breaker in list(CircuitBreaker._registry.values()):
        breaker._lock = threading.RLock()
        breaker._listeners = []
        breaker._observers = []
        breaker._local = threading.local()


os.register_at_fork(after_in_child=_reset_locks_after_fork)


class CircuitCall:
    """One attempt through a breaker (picklable: the breaker travels by name)."""

    __slots__ = ("call", "breaker")

    def __init__(self, call: Callable[[dict], Any], breaker: CircuitBreaker):
        self.call = call
        self.breaker = breaker

    def __call__(self, kwargs: dict) -> Any:
        b = self.breaker
        if b._state is not CLOSED or b._failures or b._observers:
            return b.call(self.call, kwargs)
        gen = b._gen  # closed with a clean record: breaker.call without its checks
        try:
            return self.call(kwargs)
        except Exception as exc:
            b._record_error(gen, False, exc)
            raise

    def __getstate__(self) -> tuple:
        return (self.call, self.breaker)

    def __setstate__(self, state: tuple) -> None:
        self.call, self.breaker = state

    def __repr__(self) -> str:
        return f"<CircuitCall {self.breaker.name!r}>"
