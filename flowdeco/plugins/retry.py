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

Cost: successful attempts never reach this module (the core consults
``flowdeco_attempt_done`` on success only for tasks a plugin asked for), and
nothing is prepared per task, so retry configured on tasks that never fail
costs nothing.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from ..errors import CollectionError, UsageError
from ..manager import hookimpl
from ..outcome import Reschedule
# the policy lives in the core (pipelines use it too); re-exported here for compatibility
from ..policies.retry import BACKOFFS, Backoff, RandomSource, Retry  # noqa: F401

if TYPE_CHECKING:  # pragma: no cover
    from ..config import Config, Parser
    from ..engine.scheduler import Run
    from ..graph import Graph, Vertex
    from ..outcome import Attempt

NAME = "retry"

_STASH_DEFAULT = "flowdeco.retry.default"
_STASH_RNG = "flowdeco.retry.rng"


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


@hookimpl(tryfirst=True)
def flowdeco_attempt_done(run: Run, task: Vertex, attempt: Attempt) -> Reschedule | None:
    err = attempt.error
    if err is None:
        return None
    spec = task.spec
    policy: Retry | None
    if spec is not None and spec.retry is not None:
        policy = spec.retry
    elif spec is not None and spec.retries is not None:
        policy = _shorthand(spec.retries)
    else:
        policy = run.config.stash.get(_STASH_DEFAULT)
    if policy is None or not policy.should_retry(err, attempt.number):
        return None
    rng = None
    if policy.jitter:
        rngs = run.stash.get(_STASH_RNG)
        if rngs is None:
            rngs = run.stash[_STASH_RNG] = {}
        rng = rngs.get(policy)
        if rng is None:
            rng = rngs[policy] = policy.rng()
    return Reschedule(delay=policy.delay_before(attempt.number, rng))
