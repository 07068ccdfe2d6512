"""Every hook flowdeco calls, in the order a run calls them.

A plugin is any object (usually a module) with functions named like these,
marked with :data:`flowdeco.hookimpl`.  An implementation may accept fewer
arguments than the spec lists, so specs can grow without breaking plugins.

How one run unfolds (the narrative the individual docstrings refer to):

1. ``flowdeco_addoption(parser)``: plugins declare options (CLI flags, and
   keyword arguments of :func:`flowdeco.run`).
2. ``flowdeco_configure(config)``: options are known; a plugin that is enabled
   registers its stateful object here (``config.pluginmanager.register``).
3. The target is collected into a graph; ``flowdeco_task_options()`` tells
   which ``@task`` options some active plugin handles, so a task using an
   option nobody handles is a collection error, not a silent no-op.
4. ``flowdeco_make_executor(config, workers)`` picks where task bodies run.
5. ``flowdeco_run_start(run)``; on flowdeco's thread pool
   ``flowdeco_task_deadlines(run)`` (attempt time limits the scheduler
   enforces); in-process ``flowdeco_task_guards(run)`` (enter/exit around
   attempts: circuit breakers); then once per task ``flowdeco_task_wrap(run,
   task)`` composes the per-attempt wrappers (anything else; breakers and
   timeouts elsewhere) -- all before any worker thread starts.
   ``flowdeco_attempt_scope`` (per attempt, only when implemented) gives
   context managers an attempt's worker enters around it (trace context).
6. The scheduler loop: when a task becomes ready, ``flowdeco_task_restore``
   may supply its result without running it (resume, caching), else
   ``flowdeco_task_delay`` may hold it back without holding a worker; then an
   attempt runs on a worker; when it ends ``flowdeco_attempt_done`` decides
   whether to run it again (retry, next interval iteration) after a delay.
   Every state change is reported with ``flowdeco_report(run, event)``, and
   ``flowdeco_report_flush(run)`` is called after each batch of reports,
   before tasks that depend on them start.
7. ``flowdeco_run_finish(run, result)``; ``flowdeco_unconfigure(config)``.

Threads: hooks of steps 1-5 and 7, ``flowdeco_task_restore``,
``flowdeco_task_delay``, ``flowdeco_attempt_done``, ``flowdeco_report`` and
``flowdeco_report_flush`` are called from the scheduler thread only, so
plugins need no locks for them.  Only the wrappers returned by
``flowdeco_task_wrap`` and the scopes returned by ``flowdeco_attempt_scope``
run on worker threads (or in worker processes).

Cost: the runner calls a per-task hook only when some plugin implements it,
so a plugin that is off (not registered) costs nothing per task.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, ContextManager, Mapping, Optional

import pluggy

if TYPE_CHECKING:  # pragma: no cover
    from concurrent.futures import Executor

    from .config import Config, Parser
    from .graph import Graph, Vertex
    from .outcome import Attempt, Deadline, Event, Finish, Reschedule, Restored, RunResult
    from .engine.scheduler import Run

hookspec = pluggy.HookspecMarker("flowdeco")


# ------------------------------------------------------------------ configuration


@hookspec
def flowdeco_addoption(parser: "Parser") -> None:
    """Declare options with ``parser.addoption("--flag", dest="name", default=..., help=...)``.

    Called once per configuration, before options are read, for every
    registered plugin.  Each option is a CLI flag and, under its ``dest``
    name, a keyword argument of :func:`flowdeco.run`; read it with
    ``config.getoption("name")``.
    """


@hookspec
def flowdeco_configure(config: "Config") -> None:
    """Called once options are known and before the target is collected.

    A feature that is switched on registers its stateful plugin object here
    (``config.pluginmanager.register(obj, "name")``); one that is off
    registers nothing and so costs nothing during the run.
    """


@hookspec
def flowdeco_unconfigure(config: "Config") -> None:
    """Called once at the very end, also after errors.  Release resources here."""


@hookspec
def flowdeco_task_options() -> list[str]:
    """Return the names of ``@task`` options this plugin implements.

    Results of all plugins are joined.  A task that sets an option no active
    plugin claims (for example ``retries=`` while ``-p no:retry``) is a
    collection error naming the task and the option.
    """


@hookspec
def flowdeco_collection_finish(config: "Config", graph: "Graph") -> None:
    """Called after the graph is built, validated and narrowed by ``-k``.

    Plugins validate task options here (raise :class:`flowdeco.FlowError`
    with a message naming the task).
    """


@hookspec
def flowdeco_cli_commands(commands: dict) -> None:
    """Add subcommands to the CLI: ``commands["runs"] = Command(help, main)``.

    Called once by the CLI with every plugin registered.  When the first
    argument names a command, ``main(argv, pluginmanager)`` runs instead of a
    flow and its return value is the exit code (``python -m flowdeco runs ...``).
    """


@hookspec(firstresult=True)
def flowdeco_make_executor(config: "Config", name: str, workers: int) -> "Optional[Executor]":
    """Return a ``concurrent.futures.Executor`` for executor ``name``, or None.

    Stops at first non-None result.  The core implements ``thread``,
    ``process`` and ``sync``; executor plugins (``flowdeco-dask``) add names.
    When ``executor=`` is an object, ``name`` is its type's name and the
    object is ``config.getoption("executor")``: a plugin may return its own
    executor wrapping it; if none does, an ``Executor`` is used as given.
    An executor with a ``max_workers`` int sets how many attempts run at
    once when ``--workers`` is not given.  The run shuts down what a hook
    made, never an executor given as it is (see
    :func:`flowdeco.executors.choose_executor`).
    """


# ------------------------------------------------------------------ running


@hookspec
def flowdeco_run_start(run: "Run") -> None:
    """Called on the scheduler thread after the graph is final, before any task starts.

    ``run`` exposes ``run_id``, ``config``, ``graph``, ``clock``, ``params``,
    ``state_dir`` (None with ``--no-state``) and ``emit``.  A metrics plugin
    sets ``run.metrics`` (it becomes ``RunResult.metrics``).  A plugin that
    must see a task's completion before its dependents start can set
    ``run.inline_successors = False`` here (the scheduler then starts every
    task itself, after each batch's ``flowdeco_report_flush``), or -- cheaper,
    what the state plugin does -- wrap attempts (``flowdeco_task_wrap``) so a
    task waits on its worker until what it depends on has been recorded.

    A plugin that attributes output to attempts (the capture plugin) sets
    ``run.track_attempts = True``: the engine then marks the thread running
    each attempt (:mod:`flowdeco.engine.tracking`: ``tracking.current()``
    there gives the attempt and ``emit(level, event, fields)`` reports an
    event of it, posted like ``ctx.log`` records), for one tuple store per
    attempt instead of a wrapper; callables appended to ``run.worker_setup``
    (picklable by reference, idempotent) run in a worker process before each
    remote attempt, where the records are buffered and travel back with the
    result.  Nothing is tracked when nothing reports (``flowdeco_report``).
    """


@hookspec
def flowdeco_task_wrap(run: "Run", task: "Vertex") -> "Optional[Callable[[Callable[[dict], Any]], Callable[[dict], Any]]]":
    """Return a decorator for ``task``'s attempts, or None to leave it alone.

    Called once per task at run start (not per attempt).  The decorator
    receives ``call(kwargs) -> result`` (one attempt: calling the task
    function with its arguments) and returns a callable of the same shape,
    which runs on the worker.  Raising from it fails the attempt: that is how
    a timeout (``TaskTimeout``) or an open circuit (``CircuitOpenError``)
    fails an attempt.  Decorators compose in plugin registration order, the
    last registered outermost.
    """


@hookspec
def flowdeco_task_deadlines(run: "Run") -> "Optional[Mapping[int, Deadline]]":
    """Return ``{task index: Deadline}`` to limit each attempt of those tasks, or None.

    Called once per run, after ``flowdeco_run_start`` and before
    ``flowdeco_task_wrap``, on every executor.  A mapped task's deadline
    limits each of its instances.  An attempt still running at its deadline
    fails with ``deadline.error(task_name)``.  The engine applies it where the
    attempt runs (``engine.attempt.run_attempt``): on flowdeco's thread pool
    (``run.can_abandon``) the attempt stays on its worker and the scheduler's
    watchdog gives up the thread at the deadline (:mod:`flowdeco.deadlines`: no
    hand-off, no wrapper); in a worker process the deadline travels with the
    attempt and a ``SIGALRM`` timer stops the code; elsewhere (the sync
    executor, Dask worker threads) the attempt runs on a helper thread
    abandoned at the deadline.  On process and Dask executors the Deadline
    (and its ``error``) must pickle.  When several plugins answer for one
    task, the first answer (pluggy order) wins.
    """


@hookspec
def flowdeco_task_guards(run: "Run") -> "Optional[Mapping[int, Any]]":
    """Return ``{task index: guard}`` to bracket each attempt of those tasks, or None.

    Called once per run, after ``flowdeco_run_start`` and before
    ``flowdeco_task_wrap``, on every executor; a mapped task's guard brackets
    each of its instances.  Where the attempt runs, around it and outside all
    wrappers, the engine calls ``token = guard.enter()`` -- raising fails the
    attempt without running it (an open circuit) -- and then
    ``guard.exit(token, error)`` with the attempt's exception or None;
    ``exit`` must not raise.  On process and Dask executors the guard travels
    with the attempt (it must pickle) and runs in the worker.  One guard
    object may serve many tasks (nothing is built per task: cheaper than a
    wrapper).  When several plugins answer for one task, the first answer
    wins.  If the task also has a deadline (``flowdeco_task_deadlines``) and
    overruns it, the guard is exited with the deadline's error -- on the
    thread executor by the scheduler (from its own thread: guards must be
    thread-safe) -- and the abandoned call's late end is never reported to it.
    """


@hookspec
def flowdeco_attempt_scope(run: "Run", task: "Vertex", name: str, attempt: int,
                           iteration: "Optional[int]") -> "Optional[ContextManager[Any]]":
    """Return a context manager the worker enters around this attempt, or None.

    For context that must travel with an attempt to wherever it runs -- a
    trace context (``flowdeco-otel``), so spans a task body opens nest under
    its attempt's span, also in a worker process or on a Dask worker.
    Called on the scheduler thread as attempt ``attempt`` (``iteration``) of
    ``name`` (a task, or an instance ``scan[3]`` of the mapped task ``task``)
    is handed to a worker, just after its ``task_started`` report.  The
    worker enters every returned object (in the order returned) outside all
    ``flowdeco_task_wrap`` wrappers and exits it when the attempt's call
    ends; for remote executors the object must pickle.

    Cost: only a run in which some plugin implements this hook calls it, and
    such a run starts every attempt from the scheduler (no worker chaining,
    no batching of tiny remote attempts, no in-order fast path on ``sync``),
    so the report and the hook always come before the attempt runs.
    """


@hookspec(firstresult=True)
def flowdeco_task_restore(run: "Run", task: "Vertex", name: str) -> "Optional[Restored]":
    """Return ``Restored(result)`` to complete a ready task without running it.

    Stops at first non-None result.  Called when the task becomes ready
    (all dependencies done), from the scheduler thread; used by resume and
    input caching.  The task is then reported ``task_restored``.

    ``name`` is what is being restored: ``task.name`` for a task as a whole;
    for a mapped task (``@task(map=...)``) that was not restored as a whole,
    the hook is called again for each instance as it is about to start, with
    ``name`` the instance's name (``scan_file[3]``) and ``task`` the mapped
    task's vertex, so a plugin can restore finished instances one by one.
    Implementations may leave ``name`` out; such an implementation answers
    for the whole task only (it is asked about instances too, so it should
    answer None when it has nothing, as usual).

    ``Restored(result, attempts=0, fields={...})``: ``fields`` are added to
    the ``task_restored`` event (the cache adds ``source="cache"``).
    ``run.task_inputs(task, name)`` gives the arguments the task (or
    instance) would be called with, for keying results by their inputs.
    """


@hookspec(firstresult=True)
def flowdeco_task_delay(run: "Run", task: "Vertex") -> Optional[float]:
    """Return seconds to wait before ``task``'s first attempt once it is ready, or None.

    Stops at first non-None result.  Waiting happens in the scheduler (on
    ``run.clock``), so it holds no worker.
    """


@hookspec(firstresult=True)
def flowdeco_attempt_done(run: "Run", task: "Vertex", attempt: "Attempt") -> "Optional[Reschedule | Finish]":
    """Decide what follows an attempt.  Stops at first non-None result.

    Return ``Reschedule(delay, attempt=..., iteration=...)`` to run the task
    again after ``delay`` seconds without holding a worker (a retry after a
    failed attempt is reported ``task_retrying``; after a successful attempt,
    only with ``Reschedule(retrying=True)``), ``Finish(result=...)`` or
    ``Finish(error=...)`` to end the task with that outcome (an interval task
    ending with the list of its results), or None to end it with the
    attempt's own result or error.  This is the attempt loop: the retry
    plugin owns it by answering here.  For an instance of a mapped task
    (``@task(map=...)``) ``task`` is the mapped task's vertex and the attempt
    is that instance's (``Attempt.number`` counts per instance), so a retry
    policy applies to each instance on its own.
    """


@hookspec
def flowdeco_report(run: "Run", event: "Event") -> None:
    """Called for every audit event (``run_started``, ``task_started``, ...), in order.

    Always on the scheduler thread.  ``event.name`` is the contract event
    name, ``event.task`` the qualified task name or None, ``event.fields`` the
    rest (``attempt``, ``error``, ``reason``, ``status``, ...); an event for a
    task that ended carries ``event.outcome``.  Reporting plugins (audit,
    progress, state) implement this; a figure that can be computed from the
    run's records at the end (metrics) should be, instead of costing a hook
    call per event.  Instances of a mapped task report under their own names
    (``event.task == "scan[3]"``, not in ``run.graph.by_name``);
    ``task_mapped`` (with ``instances``) announces them, and the mapped task
    itself ends after its last instance.  Built-in plugins add: ``task_log``
    (``level``, ``logger``, ``message``) and ``task_output`` (``stream``,
    ``text``), what an attempt logged and printed (capture); ``alert_failed``
    (``callback``, ``error``), a task or run callback that raised (alerts);
    ``notify_sent`` / ``notify_failed``, the webhook of a failed run (notify).
    """


@hookspec
def flowdeco_report_flush(run: "Run") -> None:
    """Called after a batch of reports and before any task that depends on them starts.

    Batch expensive work here (one transaction or one file flush for all
    tasks that finished together) without losing durability ordering.
    """


@hookspec
def flowdeco_report_durable(run: "Run", tasks: "list[str]") -> None:
    """The completions of ``tasks`` (task or instance names) are durable now.

    Called on the scheduler thread by a plugin that makes completions durable
    *after* they are reported -- the state plugin, whose writer thread commits
    them -- and sets ``run.durable_later = True`` in ``flowdeco_run_start`` to
    say it will.  A reporting plugin that must never announce a success the
    store could still lose (the audit trail's ``task_succeeded``) holds it
    until its task is named here.  Every completion reported before
    ``run_finished`` is confirmed (or known lost: a failed write) before
    ``run_finished`` is reported.  A completion is confirmed once, in commit
    order; a plugin that persists nothing never calls this hook.
    """


@hookspec
def flowdeco_run_finish(run: "Run", result: "RunResult") -> None:
    """Called once when the run has ended (also when interrupted), before ``run`` returns."""
