"""Retry: the plugin that owns the attempt loop (contract §1, §4, §6).

A task runs again after a failed attempt when its policy says so:

- ``@task(retries=N)``: N retries after the first attempt (N + 1 attempts in
  all), no delay; shorthand for ``@task(retry=Retry(retries=N))``.
- ``@task(retry=Retry(...))``: a full policy (back-off, jitter, caps,
  exception filter).
- Engine-wide default for tasks that set neither: ``run(retry=Retry(...))``
  or ``run(retries=N)`` / CLI ``--retries N``.

How it works: after each failed attempt the scheduler asks
``flowdeco_attempt_done``; this module answers ``Reschedule(delay)`` while the
policy allows another attempt.  The scheduler then waits on the run's clock
*without holding a worker* (other ready tasks use it meanwhile), reports
``task_retrying`` (``attempt``, ``delay``, ``error``), and starts attempt
n + 1 (``ctx.attempt``).  An error outside ``on``, or the last allowed
attempt failing, ends the task ``failed`` with ``TaskOutcome.attempts`` the
number of attempts made.  A timed-out attempt (``TaskTimeout``) and one
refused by an open circuit breaker (``CircuitOpenError``) are failed attempts
like any other, so a retry that meets an open breaker waits by the policy
instead of spinning.

The policy object, :class:`~flowdeco.policies.retry.Retry`, lives in the core
(:mod:`flowdeco.policies.retry`); this module only applies it to tasks.

``Retry(retry_if=predicate)`` also retries *successful* attempts whose result
the predicate accepts (polling); for those tasks only, this module asks the
core at run start to show it successful attempts (``run.on_success``).  Each
such retry is reported ``task_retrying`` too, with the same ``attempt``,
``delay`` and ``worker`` fields but no ``error``: ``reason="retry_if"`` and
``result``, the attempt's result as a ``repr`` cut to 80 characters (so the
trail, ``runs show`` and the dashboard count it like any retry).  When
``retries``/``give_up_after`` run out while the predicate is still true, the
task fails with :class:`~flowdeco.policies.retry.RetryError`.
``give_up_after`` is measured from the first attempt's start
(``Attempt.first_started``).  A ``wait=``, ``on=`` or ``retry_if=`` callable
that raises fails the task with that error.

Cost: successful attempts never reach this module unless the task's policy
has ``retry_if`` (the core consults ``flowdeco_attempt_done`` on success only
for tasks a plugin asked for), and nothing is prepared per task, so retry
configured on tasks that never fail costs nothing.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from ..errors import CollectionError, UsageError
from ..manager import hookimpl
from ..outcome import Finish, Reschedule
# the policy lives in the core (pipelines use it too); re-exported here for compatibility
from ..policies.retry import BACKOFFS, Backoff, RandomSource, Retry, RetryError  # noqa: F401

if TYPE_CHECKING:  # pragma: no cover
    from ..config import Config, Parser
    from ..engine.scheduler import Run
    from ..graph import Graph, Vertex
    from ..outcome import Attempt

NAME = "retry"

_STASH_DEFAULT = "flowdeco.retry.default"
_STASH_RNG = "flowdeco.retry.rng"
_STASH_POLLED = "flowdeco.retry.polled"


@functools.lru_cache(maxsize=64)
def _shorthand(retries: int) -> Retry:
    return Retry(retries=retries)


# --------------------------------------------------------------------------- hooks


@hookimpl(trylast=True)  # listed after the core's own options in --help
def flowdeco_addoption(parser: Parser) -> None:
    parser.addoption("--retries", dest="retries", type=int, default=None, metavar="N",
                     group="running",
                     help="retries after a failed attempt, for tasks that set no retries= "
                          "or retry= (default: 0)")
    # Python only: run(retry=Retry(...))
    parser.addoption(dest="retry", default=None,
                     help="default Retry policy for tasks that set none")


@hookimpl
def flowdeco_configure(config: Config) -> None:
    retries = config.getoption("retries")
    policy = config.getoption("retry")
    if retries is not None and policy is not None:
        raise UsageError("give either retries= (--retries) or retry=, not both "
                         "(retries=N is shorthand for retry=Retry(retries=N))")
    if retries is not None:
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise UsageError(f"retries (--retries) must be an int >= 0, got {retries!r}")
        policy = _shorthand(retries)
    elif policy is not None and not isinstance(policy, Retry):
        raise UsageError(f"retry= must be a flowdeco.Retry policy, got {policy!r}")
    if policy is not None:
        config.stash[_STASH_DEFAULT] = policy


@hookimpl
def flowdeco_unconfigure(config: Config) -> None:
    config.stash.pop(_STASH_DEFAULT, None)


@hookimpl
def flowdeco_task_options() -> list[str]:
    return ["retries", "retry"]


@hookimpl
def flowdeco_collection_finish(config: Config, graph: Graph) -> None:
    for v in graph.using("retry"):
        spec = v.spec
        if not isinstance(spec.retry, Retry):
            raise CollectionError(
                f"task {v.name!r}: retry= must be a flowdeco.Retry policy, got "
                f"{spec.retry!r} (for a number of retries use retries=N)")


def _policy(run: Run, task: Vertex) -> Retry | None:
    spec = task.spec
    if spec is not None and spec.retry is not None:
        return spec.retry
    if spec is not None and spec.retries is not None:
        return _shorthand(spec.retries)
    return run.config.stash.get(_STASH_DEFAULT)


@hookimpl
def flowdeco_run_start(run: Run) -> None:
    """Tasks whose policy has ``retry_if=`` see their successful attempts too."""
    polled = set()
    default = run.config.stash.get(_STASH_DEFAULT)
    if default is not None and default.retry_if is not None:
        polled.update(v.index for v in run.graph.vertices
                      if v.spec is not None and v.spec.retry is None and v.spec.retries is None)
    for v in run.graph.using("retry"):
        if isinstance(v.spec.retry, Retry) and v.spec.retry.retry_if is not None:
            polled.add(v.index)
    if polled:
        run.on_success.update(polled)
        run.stash[_STASH_POLLED] = polled


@hookimpl(tryfirst=True)
def flowdeco_attempt_done(run: Run, task: Vertex, attempt: Attempt) -> Reschedule | Finish | None:
    err = attempt.error
    if err is None and _STASH_POLLED not in run.stash:
        return None  # another plugin watches successes (state, intervals): not ours
    policy = _policy(run, task)
    if policy is None:
        return None
    first = attempt.first_started
    elapsed = None if first is None else attempt.finished - first
    try:
        if err is None:
            again = policy.should_retry_result(attempt.result, attempt.number, elapsed)
            if again is None:
                return Finish(error=RetryError(
                    f"task {task.name!r}: retry_if={_name(policy.retry_if)} still true after "
                    f"{attempt.number} attempt(s) (last result: {_short(attempt.result)}); "
                    + _limits(policy), attempt.number, attempt.result))
            if not again:
                return None
        elif not policy.should_retry(err, attempt.number, elapsed):
            return None
        rng = None
        if policy.jitter:
            rngs = run.stash.get(_STASH_RNG)
            if rngs is None:
                rngs = run.stash[_STASH_RNG] = {}
            rng = rngs.get(policy)
            if rng is None:
                rng = rngs[policy] = policy.rng()
        delay = policy.delay_before(attempt.number, rng, err)
        if err is None:  # a result retry: reported like an error retry, with why instead
            return Reschedule(delay=delay, retrying=True,
                              fields={"reason": "retry_if", "result": _short(attempt.result)})
        return Reschedule(delay=delay)
    except Exception as exc:  # noqa: BLE001 - a user predicate or wait= may raise anything
        # the task fails with the policy's own error, the attempt's error as its cause
        if err is not None and exc.__cause__ is None and exc is not err:
            exc.__cause__ = err
        return Finish(error=exc)


def _name(fn: Any) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _limits(policy: Retry) -> str:
    parts = []
    if policy.retries is not None:
        parts.append(f"retries={policy.retries}")
    if policy.give_up_after is not None:
        parts.append(f"give_up_after={policy.give_up_after:g}s")
    return "the policy's limits ran out (" + ", ".join(parts) + ")"
