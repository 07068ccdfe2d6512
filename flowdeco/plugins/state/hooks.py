"""The state plugin's module-level hooks: its options, configure (which registers
a :class:`~.plugin.StatePlugin` unless ``--no-state``), the default store and
the ``runs``/``ui`` commands.  See :mod:`.plugin` for a session's lifecycle.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ...runid import validate_run_id
from ...errors import UsageError, shorten
from ...manager import hookimpl, swap_plugin
from ...selection import compile_expression
from .plugin import PLUGIN_NAME, RESTORER_NAME, StatePlugin, make_store
from .storage import normalize_choice
from .store import SQLiteStore, Store

if TYPE_CHECKING:  # pragma: no cover
    from ...config import Config, Parser


def _rerun_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return list(value)
    raise UsageError(f"rerun must be a task expression or a list of them, got {shorten(value)}")


@hookimpl
def flowdeco_addoption(parser: Parser) -> None:
    g = "state and output"
    parser.addoption("--resume", dest="resume", default=None, metavar="ID|last", group=g,
                     help="continue saved run ID ('last': the latest run of this flow): "
                          "completed tasks are restored, the rest run")
    parser.addoption("--rerun", dest="rerun", default=[], action="append", metavar="EXPR",
                     group=g, help="with --resume: run matching tasks again (-k syntax, "
                                   "repeatable), and everything downstream of them")
    parser.addoption("--no-cache", dest="no_cache", default=False, action="store_true",
                     group=g, help="run tasks with cache= instead of restoring stored results "
                                   "(the new results are stored for later runs)")
    parser.addoption("--refresh", dest="refresh", default=[], action="append", metavar="EXPR",
                     group=g, help="like --no-cache for the tasks matching EXPR (-k syntax, "
                                   "repeatable)")
    parser.addoption("--store", dest="store", default="auto", metavar="HOW", group=g,
                     help="how results are stored unless a task says (store=): auto (default: "
                          "JSON in the database, large values, DataFrames and arrays as "
                          "files), json, pickle (trusted state dir only), a serializer's name, "
                          "or false (not saved; such tasks run again on resume)")
    parser.addoption("--state-sync", dest="state_sync", default="normal",
                     choices=("normal", "full"), group=g,
                     help="normal (default): a completion survives flowdeco being killed; "
                          "full: also a power loss (an fsync per commit, slower)")


@hookimpl
def flowdeco_task_options() -> list[str]:
    # with --no-state nothing is cached or stored: the tasks just run
    return ["cache", "cache_ttl", "store"]


@hookimpl(trylast=True)
def flowdeco_state_store(state_dir: str, config: Config) -> Store:
    sync = "normal" if config is None else config.getoption("state_sync", "normal")
    return SQLiteStore(state_dir, synchronous=sync)


@hookimpl
def flowdeco_configure(config: Config) -> None:
    resume = config.getoption("resume", None)
    rerun = _rerun_list(config.getoption("rerun", None))
    if rerun and resume is None:
        raise UsageError("--rerun needs --resume ID: it re-runs tasks of a saved run")
    if config.getoption("no_state"):
        if resume is not None:
            raise UsageError("--resume cannot be combined with --no-state (state_dir=None): "
                             "there is no saved state to resume")
        return
    if resume is not None:
        if not isinstance(resume, str):
            raise UsageError(f"resume must be a run id or 'last', got {shorten(resume)}")
        if resume != "last":
            validate_run_id(resume)
            given = config.getoption("run_id")
            if given is not None and given != resume:
                raise UsageError(f"--run-id {shorten(given)} and --resume {resume!r} disagree: a "
                                 "resumed run keeps its id (leave out --run-id)")
    normalize_choice(config.getoption("store", "auto"), "--store")
    sync = config.getoption("state_sync", "normal")
    if sync not in ("normal", "full"):
        raise UsageError(f"state_sync must be 'normal' or 'full', got {sync!r}")
    matchers = [(expr, compile_expression(expr)) for expr in rerun]
    refresh = [(expr, compile_expression(expr))
               for expr in _rerun_list(config.getoption("refresh", None))]
    state_dir = str(config.getoption("state_dir"))
    store = make_store(config.pluginmanager, state_dir, config)
    plugin = StatePlugin(config, store, state_dir, resume, matchers, refresh,
                         bool(config.getoption("no_cache", False)))
    try:
        if resume is not None and resume != "last":
            plugin.check_exists(resume)
    except BaseException:
        store.close()
        raise
    config.pluginmanager.register(plugin, PLUGIN_NAME)


@hookimpl
def flowdeco_unconfigure(config: Config) -> None:
    pm = config.pluginmanager
    plugin = pm.get_plugin(PLUGIN_NAME)
    if plugin is not None:
        try:
            plugin.close()
        finally:
            pm.unregister(plugin)
    swap_plugin(pm, RESTORER_NAME)


@hookimpl
def flowdeco_cli_commands(commands: dict) -> None:
    from .commands import runs_command
    from ...ui import ui_command
    commands["runs"] = runs_command()
    commands["ui"] = ui_command()


__all__ = ["flowdeco_addoption", "flowdeco_task_options", "flowdeco_state_store",
           "flowdeco_configure", "flowdeco_unconfigure", "flowdeco_cli_commands"]
