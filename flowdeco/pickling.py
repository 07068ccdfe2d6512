"""What must pickle for a task to run in another process, checked before anything runs.

A process or remote executor sends each attempt to a worker as a pickle:
the task function, its arguments, and back its result or exception.  The
standard library pickles a function *by reference* -- its module and
qualified name -- so the worker imports the module and looks the name up.
That fails for a lambda, for a function defined inside another function (a
closure), for a function defined in ``__main__`` when workers do not start
by forking this process, and for a module that a fresh worker cannot import
by name.  :func:`check_graph` finds these at collection, so the run stops
with one clear message (CLI exit code 4) instead of failing every task.

Dask ships functions with ``cloudpickle``, which pickles lambdas and
closures *by value*; its plugin calls :func:`check_graph` with its own
``dumps`` and ``by_reference=False``.
"""

from __future__ import annotations

import importlib.machinery
import pickle
import sys
from typing import Any, Callable, Iterable

from .errors import CollectionError

#: start methods whose workers inherit this process's modules (no import by name)
_INHERITING = ("fork",)


class UnpicklableResult(Exception):
    """A task's result could not be pickled in the worker, or unpickled in the driver.

    Fails that attempt; a retry (if the task's policy allows one) usually
    fails the same way.
    """

    engine_decided = True  # one line on the console (see flowdeco.errors.FlowError)


def _what(fn: Any) -> str:
    mod = getattr(fn, "__module__", None) or "?"
    return f"{mod}.{getattr(fn, '__qualname__', getattr(fn, '__name__', repr(fn)))}"


def importable(modname: str) -> bool:
    """True when a fresh interpreter with this ``sys.path`` can import ``modname`` by name."""
    module = sys.modules.get(modname)
    if module is None:
        return False
    spec = getattr(module, "__spec__", None)
    if spec is None:
        return False  # made at run time (types.ModuleType, exec): no file to import
    if spec.origin in ("built-in", "frozen"):
        return True
    top = modname.partition(".")[0]
    if top in sys.builtin_module_names:
        return True
    try:
        found = importlib.machinery.PathFinder.find_spec(top, sys.path)
    except (ImportError, ValueError):
        return False
    return found is not None


def _problem(fn: Any, dumps: Callable[[Any], bytes], by_reference: bool,
             start_method: str | None) -> str | None:
    """Why ``fn`` cannot travel to a worker, or None."""
    qual = getattr(fn, "__qualname__", "") or ""
    modname = getattr(fn, "__module__", None)
    if by_reference:
        if getattr(fn, "__name__", None) == "<lambda>":
            return ("is a lambda, which a process executor cannot pickle (functions travel "
                    "by reference: module and name); define it with def at module level")
        if "<locals>" in qual:
            outer = qual.split(".<locals>")[0]
            return (f"is defined inside function {outer!r} (a nested function or closure), "
                    "which a process executor cannot pickle (functions travel by reference: "
                    "module and name); move it to module level and pass what it captured "
                    "as a parameter")
    try:
        dumps(fn)
    except Exception as exc:  # noqa: BLE001 - pickle raises many types
        return (f"({_what(fn)}) cannot be pickled to send it to a worker: "
                f"{type(exc).__name__}: {exc}; define tasks with def at module level")
    if by_reference and start_method not in _INHERITING and modname is not None:
        if modname == "__main__":
            main = sys.modules.get("__main__")
            if getattr(main, "__file__", None) is None:
                return (f"is defined in __main__ (an interactive session or python -c), "
                        f"which worker processes started with {start_method!r} cannot "
                        "import; put the tasks in a module file and run that file")
        elif not importable(modname):
            return (f"lives in module {modname!r}, which a worker process started with "
                    f"{start_method!r} cannot import by name (it was not loaded from "
                    "sys.path); put it in a file on sys.path or run the file with "
                    "python -m flowdeco FILE")
    return None


def check_graph(graph: Any, executor: str, *, dumps: Callable[[Any], bytes] = pickle.dumps,
                by_reference: bool = True, start_method: str | None = "fork") -> None:
    """Raise :class:`CollectionError` naming the first task that cannot run on ``executor``.

    Checks each task function (see the module docstring) and the values bound
    to its parameters from run parameters and defaults (``--param``, ``params=``),
    which travel with every attempt.  Results of upstream tasks are checked
    when they are produced (an unpicklable result fails the task that returned it).
    """
    for v in graph.vertices:
        fn = getattr(v, "fn", None)
        if fn is None:
            continue
        why = _problem(fn, dumps, by_reference, start_method)
        if why is not None:
            raise CollectionError(f"task {v.name!r} cannot run on the {executor} executor: "
                                  f"it {why} (or use executor='thread')")
        for param, value in _items(v.consts):
            try:
                dumps(value)
            except Exception as exc:  # noqa: BLE001
                raise CollectionError(
                    f"task {v.name!r} cannot run on the {executor} executor: the value of "
                    f"its parameter {param!r} (a {type(value).__name__}) cannot be pickled "
                    f"to send it to a worker: {type(exc).__name__}: {exc}") from None


def _items(consts: Any) -> Iterable[tuple[str, Any]]:
    return consts.items() if consts else ()


def dumps_result(result: Any) -> bytes:
    """Pickle a task's result in the worker; :class:`UnpicklableResult` names its type."""
    try:
        return pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:  # noqa: BLE001 - pickle raises many types
        raise UnpicklableResult(
            f"returned a {_type_name(result)}, which cannot be pickled to travel back from "
            f"the worker ({type(exc).__name__}: {exc}); return plain data (dicts, lists, "
            "numbers, strings, dataclasses defined at module level)") from None


def loads_result(payload: bytes) -> Any:
    """Unpickle a result in the driver; :class:`UnpicklableResult` on failure."""
    try:
        return pickle.loads(payload)
    except Exception as exc:  # noqa: BLE001
        raise UnpicklableResult(
            f"returned a result that cannot be unpickled in the driver process "
            f"({type(exc).__name__}: {exc}); is its class importable here?") from None



def load_outcome(payload: Any, err: BaseException | None, task: str
                 ) -> tuple[Any, BaseException | None]:
    """An attempt that ran elsewhere, in the driver: its result, or its error naming ``task``."""
    result = None
    if err is None:
        try:
            result = loads_result(payload)
        except UnpicklableResult as exc:
            err = exc
    if isinstance(err, UnpicklableResult):
        err = UnpicklableResult(f"task {task!r} {err}")
    return result, err

def _type_name(obj: Any) -> str:
    t = type(obj)
    mod = t.__module__
    return t.__qualname__ if mod in ("builtins", None) else f"{mod}.{t.__qualname__}"


#: the name flowdeco-dask 0.1.0 imported; kept so an installed older plugin still loads
_importable = importable
