"""Turn a run target into the members of a root flow.

A target is a module object, a module name, a file path, ``"module:object"``,
a :class:`~flowdeco.Flow`, a sub-flow node, or a list of task functions.

The module rule (like pytest collecting test functions): a module's flow is
the ``@task`` functions *defined in that module* (``fn.__module__`` is the
module) that belong to no ``Flow``, plus the sub-flow nodes bound at module
level, in the order they appear.  A task imported from another module is not
collected on its own; it joins the graph only when a collected task depends on
it (by parameter name or ``after=``).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import threading
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any, Sequence

import attrs

from .errors import CollectionError, suggest
from .flow import Flow, SubflowNode
from .task import get_spec


@attrs.frozen
class Target:
    """What a target resolved to: a flow name and its members, in order."""

    name: str
    members: tuple[Any, ...]
    flow: Flow | None = None
    module: ModuleType | None = None
    #: ``members`` is a list the user gave: plain functions among them get default
    #: options and other objects are refused, both while the graph is declared
    #: (``build_graph(loose=True)``: one pass over a 100,000-task list, not two)
    loose: bool = False


def resolve_target(target: Any) -> Target:
    """Load ``target`` and list the members of its root flow (see module docstring)."""
    if isinstance(target, Target):
        return target
    if isinstance(target, Flow):
        return Target(target.name, target.members, target)
    if isinstance(target, SubflowNode):
        return Target(target.flow.name, target.flow.members, target.flow)
    if isinstance(target, ModuleType):
        return module_target(target)
    if isinstance(target, Path):
        return module_target(load_file(target))
    if isinstance(target, str):
        return _string_target(target)
    if callable(target):
        return _list_target([target])
    if isinstance(target, (list, tuple)):
        return _list_target(target)
    raise CollectionError(
        f"cannot run {target!r}: give a module, a module name, a file path, "
        "'module:flow', a Flow, or a list of task functions")


def _list_target(items: Sequence[Any]) -> Target:
    # (the items are checked while the graph is declared: see Target.loose)
    return Target("tasks", tuple(items), loose=True)


def module_target(module: ModuleType) -> Target:
    members: list[Any] = []
    seen: set[int] = set()
    modname = module.__name__
    for obj in list(vars(module).values()):
        if id(obj) in seen:
            continue
        if isinstance(obj, SubflowNode):
            seen.add(id(obj))
            members.append(obj)
            continue
        spec = get_spec(obj)
        if spec is not None and spec.owner is None and getattr(obj, "__module__", None) == modname:
            seen.add(id(obj))
            members.append(obj)
    short = modname.rsplit(".", 1)[-1]
    return Target(short, tuple(members), None, module)


def _looks_like_path(text: str) -> bool:
    return text.endswith(".py") or os.sep in text or (os.altsep or "/") in text


def _string_target(text: str) -> Target:
    obj_name = None
    base = text
    if ":" in text and not (len(text) > 1 and text[1] == ":" and os.name == "nt"):
        base, obj_name = text.rsplit(":", 1)
        if not obj_name:
            raise CollectionError(f"target {text!r}: nothing after ':'; write module:flow_object")
    module = load_file(Path(base)) if _looks_like_path(base) or Path(base).is_file() \
        else load_module(base)
    if obj_name is None:
        return module_target(module)
    try:
        obj = getattr(module, obj_name)
    except AttributeError:
        names = [n for n, v in vars(module).items()
                 if isinstance(v, (Flow, SubflowNode)) or get_spec(v) is not None]
        hint = suggest(obj_name, names)
        raise CollectionError(
            f"target {text!r}: module {module.__name__!r} has no {obj_name!r}"
            + (f"; did you mean {hint[0]!r}?" if hint else
               f" (flows there: {', '.join(names) or 'none'})")) from None
    if isinstance(obj, (Flow, SubflowNode)):
        return resolve_target(obj)
    if isinstance(obj, (list, tuple)) and obj:
        return _list_target(obj)
    if get_spec(obj) is not None:
        return _list_target([obj])
    raise CollectionError(
        f"target {text!r}: {obj_name!r} is a {type(obj).__name__}, not a Flow "
        "(use a Flow, a sub-flow node, a task, or a list of tasks)")


def load_module(name: str) -> ModuleType:
    """Import a module by dotted name, with errors that say what to do."""
    if not all(part.isidentifier() for part in name.split(".")):
        raise CollectionError(
            f"target {name!r} is neither an existing file nor a module name")
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and name.startswith(exc.name):
            hint = f" (no file {name}.py here either)" if not Path(name + ".py").exists() \
                else f" (did you mean the file {name}.py?)"
            raise CollectionError(f"cannot import module {name!r}: not found{hint}") from None
        raise CollectionError(_import_failure(name, exc)) from None
    except SyntaxError as exc:
        raise CollectionError(_syntax_failure(name, exc)) from None
    except Exception as exc:
        raise CollectionError(_import_failure(name, exc)) from None


_LOAD_LOCK = threading.RLock()


def load_file(path: Path) -> ModuleType:
    """Import a ``.py`` file as a module named after it, its folder put first on ``sys.path``.

    Putting the folder on ``sys.path`` (pytest's "prepend" mode) lets process
    workers import the module by name, so tasks pickle by reference.
    """
    if not path.exists():
        raise CollectionError(f"file not found: {path}")
    if path.is_dir():
        init = path / "__init__.py"
        if not init.exists():
            raise CollectionError(f"{path} is a folder, not a Python file or package")
        path = init
    path = path.resolve()
    if path.suffix != ".py":
        raise CollectionError(f"{path}: not a .py file")
    if path.name == "__init__.py":
        modname, folder = path.parent.name, path.parent.parent
    else:
        modname, folder = path.stem, path.parent
    # runs started from several threads at once (backfill --max-active, run() in threads)
    # must not see each other's half-executed module
    with _LOAD_LOCK:
        return _load(path, modname, folder)


def _load(path: Path, modname: str, folder: Path) -> ModuleType:
    existing = sys.modules.get(modname)
    if existing is not None and _same_file(getattr(existing, "__file__", None), path):
        return existing
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    spec = importlib.util.spec_from_file_location(modname, path)
    if spec is None or spec.loader is None:
        raise CollectionError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[modname] = module
    try:
        spec.loader.exec_module(module)
    except SyntaxError as exc:
        sys.modules.pop(modname, None)
        raise CollectionError(_syntax_failure(str(path), exc)) from None
    except BaseException as exc:
        sys.modules.pop(modname, None)
        if isinstance(exc, (KeyboardInterrupt, SystemExit)) and not isinstance(exc, SystemExit):
            raise
        raise CollectionError(_import_failure(str(path), exc)) from None
    return module


def _same_file(a: str | None, b: Path) -> bool:
    try:
        return a is not None and os.path.samefile(a, b)
    except OSError:
        return False


def _syntax_failure(what: str, exc: SyntaxError) -> str:
    where = f"{exc.filename}:{exc.lineno}" if exc.filename else what
    return f"cannot import {what}: syntax error at {where}: {exc.msg}"


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def _import_failure(what: str, exc: BaseException) -> str:
    # point at the user's line (e.g. the decorator that was misused), not at our frames
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if "importlib" not in f.filename
              and not os.path.abspath(f.filename).startswith(_PACKAGE_DIR + os.sep)]
    where = f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    return f"importing {what} raised {type(exc).__name__}: {exc}{where}"
