"""Building the plugin manager: built-ins, entry points, ``-p`` and ``-p no:``.

Built-in plugins are ordinary modules registered under short names, exactly
like third-party ones; ``-p no:NAME`` blocks any of them except the essential
core ones.  Third-party plugins come from the ``flowdeco`` entry-point group.
The scan of installed distributions is done once per process.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import sys
import threading
from types import ModuleType
from typing import Any, Iterable

import pluggy

from . import hookspecs
from .errors import UsageError, suggest

#: core plugins that cannot be disabled
ESSENTIAL_PLUGINS: tuple[tuple[str, str], ...] = (
    ("main", "flowdeco.main"),
    ("executors", "flowdeco.executors"),
)

#: built-in plugins, on by default, each blockable with ``-p no:NAME``
DEFAULT_PLUGINS: tuple[tuple[str, str], ...] = (
    ("audit", "flowdeco.plugins.audit"),
    ("retry", "flowdeco.plugins.retry"),
    ("circuit", "flowdeco.plugins.circuit"),
    ("timeout", "flowdeco.plugins.timeout"),
    ("timers", "flowdeco.plugins.timers"),
    ("pipeline", "flowdeco.plugins.pipeline"),
    ("state", "flowdeco.plugins.state"),
    ("metrics", "flowdeco.plugins.metrics"),
    ("progress", "flowdeco.plugins.progress"),
    ("capture", "flowdeco.plugins.capture"),
    ("alerts", "flowdeco.plugins.alerts"),
    ("notify", "flowdeco.plugins.notify"),
)

hookimpl = pluggy.HookimplMarker("flowdeco")


@functools.lru_cache(maxsize=None)
def entry_points() -> tuple[importlib.metadata.EntryPoint, ...]:
    """Installed ``flowdeco`` entry points (scanned once per process)."""
    return tuple(importlib.metadata.entry_points(group="flowdeco"))


def builtin_names() -> list[str]:
    return [name for name, _ in DEFAULT_PLUGINS]


def make_pluginmanager(plugins: Iterable[Any] = (), disable: Iterable[str] = (),
                       load_entrypoints: bool = True) -> pluggy.PluginManager:
    """A plugin manager with core, built-in, entry-point and requested plugins.

    ``plugins`` are plugin objects or names (``-p NAME``: a built-in, an entry
    point, or an importable module); ``disable`` are names to block
    (``-p no:NAME``).
    """
    pm = pluggy.PluginManager("flowdeco")
    pm.add_hookspecs(hookspecs)
    blocked = set(disable)
    essential = {name for name, _ in ESSENTIAL_PLUGINS}
    refused = blocked & essential
    if refused:
        raise UsageError(f"-p no:{sorted(refused)[0]}: this core plugin cannot be disabled")
    for name in blocked:
        pm.set_blocked(name)
    for name, modname in ESSENTIAL_PLUGINS + DEFAULT_PLUGINS:
        if not pm.is_blocked(name):
            pm.register(importlib.import_module(modname), name)
    eps = entry_points() if load_entrypoints else ()
    for ep in eps:
        if pm.is_blocked(ep.name) or pm.get_plugin(ep.name) is not None:
            continue
        try:
            plugin = ep.load()
        except Exception as exc:
            raise UsageError(
                f"flowdeco plugin {ep.name!r} ({ep.value}) failed to load: "
                f"{type(exc).__name__}: {exc}; uninstall it or disable it with -p no:{ep.name}") from None
        pm.register(plugin, ep.name)
    for plugin in plugins:
        if isinstance(plugin, str):
            _load_named(pm, plugin, eps)
        elif not pm.is_registered(plugin):
            pm.register(plugin)
    return pm


def _load_named(pm: pluggy.PluginManager, name: str, eps: Iterable[Any]) -> None:
    if pm.is_blocked(name):
        return
    if pm.get_plugin(name) is not None:
        return
    known = dict(ESSENTIAL_PLUGINS + DEFAULT_PLUGINS)
    if name in known:
        pm.register(importlib.import_module(known[name]), name)
        return
    for ep in eps:
        if ep.name == name:
            pm.register(ep.load(), name)
            return
    try:
        module = importlib.import_module(name)
    except ImportError as exc:
        if getattr(exc, "name", None) and not name.startswith(str(exc.name)):
            raise UsageError(f"-p {name}: importing it failed: {exc}") from None
        candidates = builtin_names() + [ep.name for ep in eps]
        hint = suggest(name, candidates)
        raise UsageError(
            f"-p {name}: unknown plugin; not a built-in ({', '.join(builtin_names())}), "
            "not an installed flowdeco plugin, and no module of that name"
            + (f"; did you mean {hint[0]!r}?" if hint else "")) from None
    if pm.is_registered(module):  # -p MODULE of an installed plugin its entry point loaded
        return
    pm.register(module, name)


# --------------------------------------------------------------------------- reuse
#
# Building a plugin manager (hookspec and hookimpl introspection) costs more
# than running a small flow, so a run started from Python borrows an idle
# manager configured the same way.  A manager goes back to the pool only when
# unconfigure left exactly the plugins it started with, so state registered
# for one run never leaks into the next.

_POOL: dict[tuple, list["PooledManager"]] = {}
_POOL_LOCK = threading.Lock()
_POOL_MAX = 4


class PooledManager:
    """A configured plugin manager with its declared options, borrowed from the pool for one
    session (``acquire``) and given back after it (``release``)."""

    def __init__(self, pm: pluggy.PluginManager, parser: Any, key: tuple | None):
        self.pm = pm
        self.parser = parser
        self.key = key
        self.base = _registrations(pm)
        #: the registered modules with the import of each (``__spec__``: a reload makes a new
        #: one) -- a module imported again since must not be called through this manager
        self.modules = tuple((m, m.__spec__) for _, m in self.base if isinstance(m, ModuleType))

    def current(self) -> bool:
        """Every registered module is still the one ``sys.modules`` has, not reloaded since."""
        modules = sys.modules
        return all(modules.get(m.__name__) is m and m.__spec__ is spec for m, spec in self.modules)


def _registrations(pm: pluggy.PluginManager) -> list[tuple[str, Any]]:
    """Names with their plugins (blocked names map to None), in registration order, to spot
    leftovers of a session (a plugin unregistered and registered again also differs:
    such a manager is dropped, which is only slower)."""
    return pm.list_name_plugin()


def acquire(plugins: Iterable[Any] = (), disable: Iterable[str] = ()) -> PooledManager:
    """A configured plugin manager: from the pool when possible, else new."""
    from .config import Parser

    plugins = tuple(plugins)
    disable = tuple(disable)
    key = None
    if all(isinstance(p, str) for p in plugins):
        key = (plugins, tuple(sorted(set(disable))))
        with _POOL_LOCK:
            idle = _POOL.get(key)
            while idle:
                managed = idle.pop()
                if managed.current():
                    return managed
    pm = make_pluginmanager(plugins, disable)
    parser = Parser()
    pm.hook.flowdeco_addoption(parser=parser)
    return PooledManager(pm, parser, key)


def release(managed: PooledManager) -> None:
    """Give a manager back after its session ended (dropped if plugins changed)."""
    if managed.key is None or _registrations(managed.pm) != managed.base:
        return
    with _POOL_LOCK:
        idle = _POOL.setdefault(managed.key, [])
        if len(idle) < _POOL_MAX:
            idle.append(managed)


def swap_plugin(pm: pluggy.PluginManager, name: str, plugin: Any = None) -> None:
    """Unregister what is registered as ``name`` (if anything), then register ``plugin`` under it.

    For plugin objects registered for a while only (the timeout plugin's guard,
    registered when a collected flow uses timeouts); ``plugin=None`` just removes.
    """
    old = pm.get_plugin(name)
    if old is not None:
        pm.unregister(old)
    if plugin is not None:
        pm.register(plugin, name)

def direct_caller(caller: Any, argnames: tuple[str, ...], firstresult: bool = False) -> Any:
    """A plain function calling ``caller``'s implementations as pluggy would.

    Per-task hooks (``flowdeco_task_wrap`` at run start, ``flowdeco_task_restore``
    when a task is ready) are called once per task; pluggy's dispatch costs a
    few microseconds per call, as much as scheduling a task (benchmarks/dispatch.py:
    about 17,000 instructions per call, +56% on a run whose plugin implements both).  The returned
    function takes the hook's arguments *positionally*, in the order
    ``argnames``, and calls the current implementations in pluggy's order
    (``tryfirst`` first, the last registered before earlier ones), each with
    the arguments it names; it returns the list of non-None results, or the
    first one when ``firstresult``.  With a hook wrapper among the
    implementations, it calls ``caller`` itself.  Take it after every plugin
    is registered (at run start): later registrations are not seen.
    """
    impls = caller.get_hookimpls()
    if any(i.hookwrapper or getattr(i, "wrapper", False) for i in impls):
        return lambda *args: caller(**dict(zip(argnames, args)))
    order: list[Any] = []
    for impl in reversed(impls):
        names = tuple(impl.argnames)
        fn = impl.function
        if names == argnames:
            order.append(fn)
        else:
            idx = [argnames.index(n) for n in names]
            order.append(lambda *args, _fn=fn, _idx=idx: _fn(*[args[j] for j in _idx]))
    if firstresult:
        if len(order) == 1:
            return order[0]

        def first(*args: Any) -> Any:
            for fn in order:
                res = fn(*args)
                if res is not None:
                    return res
            return None
        return first

    if len(order) == 1:
        only = order[0]

        def one(*args: Any) -> list:
            res = only(*args)
            return [] if res is None else [res]
        return one

    def every(*args: Any) -> list:
        out = []
        for fn in order:
            res = fn(*args)
            if res is not None:
                out.append(res)
        return out
    return every
