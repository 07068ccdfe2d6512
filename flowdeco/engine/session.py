"""The session: one invocation's plugin manager, configuration, collection and run.

:func:`run` (``flowdeco.run``) and the CLI both go through :class:`Session`:
``start`` borrows a plugin manager and parses options, ``collect`` builds the
graph, ``execute`` picks the executor (``flowdeco_make_executor``) and hands
the graph to a :class:`~flowdeco.engine.scheduler.Run`, ``close`` gives the
plugin manager back.
"""

from __future__ import annotations

import os
import secrets
import time
from concurrent.futures import Executor
from typing import Any, Iterable, Mapping

from ..clock import Clock
from ..collect import resolve_target
from ..config import Config, Parser, check_run_timeout, merge_options, parse_params
from ..errors import CollectionError, FlowError, UsageError
from ..executors import choose_executor
from ..graph import Graph, build_graph
from ..manager import PooledManager, acquire, release
from ..outcome import RunResult
from ..params import (check_params, declare_secrets, parse_param_env, scrub_options,
                      wrap_secrets)
from ..runid import RUN_ID_RE, validate_run_id  # noqa: F401 - re-exported
from ..selection import compile_expression
from .pools import parse_limits
from .scheduler import Run


def new_run_id(clock: Clock) -> str:
    """A sortable, unique id: ``20261127-033931-5f3a9c``."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(clock.time()))
    return f"{stamp}-{secrets.token_hex(3)}"



class Session:
    """One invocation: plugin manager, configuration, collection, run, teardown."""

    def __init__(self, config: Config, params: Mapping[str, Any], manager: PooledManager | None = None):
        self.config = config
        self.params = dict(params)
        self._manager = manager

    @classmethod
    def start(cls, *, plugins: Iterable[Any] = (), disable: Iterable[str] = (),
              options: Mapping[str, Any] | None = None, params: Mapping[str, Any] | None = None,
              clock: Clock | None = None, from_cli: bool = False,
              parser: Parser | None = None, pm: Any = None) -> "Session":
        managed = None
        if pm is None:
            managed = acquire(plugins, disable)
            pm, parser = managed.pm, managed.parser
        if parser is None:
            parser = Parser()
            pm.hook.flowdeco_addoption(parser=parser)
        try:
            values = merge_options(parser, options or {})
            config = Config(pm, parser, values, clock=clock, from_cli=from_cli)
            all_params = parse_params(values.get("param") or ())
            all_params.update(parse_param_env(values.get("param_env")))
            all_params.update(params or {})
            declare_secrets(all_params, values.get("secret"))
        except BaseException:
            if managed is not None:
                release(managed)
            raise
        session = cls(config, all_params, managed)
        config.params = session.params  # type: ignore[attr-defined]
        try:
            pm.hook.flowdeco_configure(config=config)
        except BaseException:
            session.close()
            raise
        return session

    def close(self) -> None:
        try:
            self.config.hook.flowdeco_unconfigure(config=self.config)
        finally:
            if self._manager is not None:
                release(self._manager)
                self._manager = None

    def collect(self, target: Any, unset_ok: bool = False) -> Graph:
        """Resolve the target, build and validate the graph, check the run parameters,
        apply ``-k``.  ``unset_ok``: leave required run parameters unset (listings)."""
        resolved = resolve_target(target)
        graph = build_graph(resolved.name, resolved.members, self.params, resolved.flow,
                            unset_ok=unset_ok, loose=resolved.loose)
        if not len(graph):
            raise NoTasksError(f"no tasks found in {resolved.name!r}: decorate functions with "
                               "@task (tasks imported from elsewhere are not collected on "
                               "their own)")
        self._check_options(graph)
        if self.params:  # against the whole flow: a parameter of a task -k leaves out is fine
            check_params(graph, self.params)
            wrap_secrets(graph, self.params)
            scrub_options(self.config.option, self.params)
        expr = self.config.getoption("select", None)
        if expr:
            match = compile_expression(expr)
            chosen = [v.index for v in graph.vertices if match(v.name)]
            if not chosen:
                raise NoTasksError(f"-k {expr!r} matched none of the {len(graph)} tasks "
                                   f"({', '.join(graph.names[:8])}{', ...' if len(graph) > 8 else ''})")
            graph = graph.subgraph(graph.ancestors(chosen))
        self.config.hook.flowdeco_collection_finish(config=self.config, graph=graph)
        return graph

    def _check_options(self, graph: Graph) -> None:
        used = graph.options_used
        if not used:
            return
        claimed = {name for names in self.config.hook.flowdeco_task_options() for name in names}
        for opt in used:
            if opt not in claimed:
                v = graph.using(opt)[0]
                raise CollectionError(
                    f"task {v.name!r} sets {opt}= but no active plugin handles it "
                    "(is the plugin that provides it disabled with -p no:NAME or not "
                    "installed?)")

    def execute(self, graph: Graph) -> RunResult:
        cfg = self.config
        state_dir = None if cfg.getoption("no_state") else cfg.getoption("state_dir")
        if state_dir is not None and not isinstance(state_dir, str):
            raise UsageError(f"state_dir (--state-dir) must be a folder path, got {state_dir!r}")
        run_id = cfg.getoption("run_id")
        run_id = validate_run_id(run_id) if run_id is not None else new_run_id(cfg.clock)
        workers = cfg.getoption("workers")
        if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int)
                                    or workers < 1):
            raise UsageError(f"workers must be an int >= 1, got {workers!r}")
        # checked before the executor exists
        check_run_timeout(cfg.getoption("run_timeout", None))
        parse_limits(cfg.getoption("limits", None))
        executor, workers, owns = choose_executor(cfg, workers)
        run = Run(cfg, graph, run_id=run_id, state_dir=state_dir, params=self.params,
                  executor=executor, workers=workers,
                  stop_on_error=bool(cfg.getoption("stop_on_error")),
                  resumed=bool(cfg.getoption("resume", None)), owns_executor=owns)
        self.last_run = run
        return run.execute()


class NoTasksError(FlowError):
    """Nothing to run: no tasks collected, or ``-k`` matched none (exit code 5)."""


def run(target: Any, *, workers: int | None = None, params: Mapping[str, Any] | None = None,
        executor: str | Executor = "thread", state_dir: str | os.PathLike | None = ".flowdeco",
        run_id: str | None = None, resume: str | None = None, stop_on_error: bool = False,
        plugins: Iterable[Any] = (), disable: Iterable[str] = (), select: str | None = None,
        clock: Clock | None = None, **options: Any) -> RunResult:
    """Collect ``target`` and run it; returns a :class:`RunResult`.

    ``target`` is a module object, a module name, a file path,
    ``"module:flow"``, a :class:`Flow`, or a list of task functions.
    ``state_dir=None`` keeps nothing (``--no-state``).  ``plugins`` and
    ``disable`` are ``-p NAME`` and ``-p no:NAME``; ``select`` is ``-k``;
    further keyword options are those the active plugins declare.  Graph and
    usage errors raise :class:`FlowError` before anything runs.
    """
    given: dict[str, Any] = dict(workers=workers, executor=executor, run_id=run_id,
                                 stop_on_error=stop_on_error, select=select, **options)
    if state_dir is None:
        given["no_state"] = True
    else:  # (a value of another type is refused by execute, naming the option)
        given["state_dir"] = os.fspath(state_dir) if isinstance(state_dir, os.PathLike) \
            else state_dir
    if resume is not None:
        given["resume"] = resume
    plugins = tuple(plugins)
    plugins += tuple(_module_plugins(target, plugins))
    session = Session.start(plugins=plugins, disable=disable, options=given,
                            params=params or {}, clock=clock)
    try:
        graph = session.collect(target)
        return session.execute(graph)
    finally:
        session.close()



def _module_plugins(target: Any, given: Iterable[Any]) -> list[str]:
    """The ``flowdeco_plugins`` a module target asks for and ``given`` lacks."""
    from types import ModuleType

    if not isinstance(target, (ModuleType, str, os.PathLike)):
        return []  # a list of tasks, a Flow: no module of its own
    from ..project import module_plugins, target_module
    module = target if isinstance(target, ModuleType) else target_module(os.fspath(target))
    return [p for p in module_plugins(module) if p not in given]
