"""flowdeco.executors.choose_executor: every executor= goes through flowdeco_make_executor.

A plugin may wrap an ``Executor`` object it recognises (flowdeco-dask wraps
``client.get_executor()``) and tell the run how wide it is (``max_workers``),
so it never needs to overwrite ``run.executor`` or ``run.workers``.
"""

from __future__ import annotations

from concurrent.futures import Executor, ThreadPoolExecutor

import pytest

from flowdeco import UsageError, hookimpl
from flowdeco.config import Config, Parser
from flowdeco.executors import choose_executor, default_workers
from flowdeco.manager import make_pluginmanager
from flowdeco.threadpool import ThreadPool


def config(executor, plugins=()):
    pm = make_pluginmanager(plugins, load_entrypoints=False)
    parser = Parser()
    pm.hook.flowdeco_addoption(parser=parser)
    return Config(pm, parser, {**parser.defaults(), "executor": executor})


class Wrapped(Executor):
    max_workers = 5

    def __init__(self, inner):
        self.inner = inner


class Wrapping:
    """A plugin that wraps ThreadPoolExecutor objects given as executor=."""

    @hookimpl
    def flowdeco_make_executor(self, config, name, workers):
        given = config.getoption("executor")
        return Wrapped(given) if isinstance(given, ThreadPoolExecutor) else None


def test_a_name_is_made_by_the_hook_and_owned():
    made, workers, owned = choose_executor(config("thread"), None)
    try:
        assert isinstance(made, ThreadPool) and owned
        assert workers == default_workers("thread")
    finally:
        made.shutdown()


def test_an_executor_object_is_used_as_is_with_its_width():
    pool = ThreadPoolExecutor(3)
    try:
        assert choose_executor(config(pool), None) == (pool, 3, False)
        assert choose_executor(config(pool), 2) == (pool, 2, False)
    finally:
        pool.shutdown()


def test_a_plugin_wraps_an_executor_object_and_sets_the_width():
    pool = ThreadPoolExecutor(3)
    try:
        made, workers, owned = choose_executor(config(pool, [Wrapping()]), None)
        assert isinstance(made, Wrapped) and made.inner is pool and owned
        assert workers == 5                                  # the wrapper's max_workers
        assert choose_executor(config(pool, [Wrapping()]), 2)[1] == 2   # --workers wins
    finally:
        pool.shutdown()


@pytest.mark.parametrize("executor, shown", [("nope", "'nope'"), (object(), "'object'")])
def test_unknown_executor_is_a_usage_error(executor, shown):
    with pytest.raises(UsageError, match=f"unknown executor {shown}: use thread, process or sync"):
        choose_executor(config(executor), None)
