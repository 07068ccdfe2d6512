"""Plugins use only flowdeco's public surface (issue 16, item 3).

Walks the AST of the built-in plugins (``flowdeco/plugins/``), the pipeline
engine (``flowdeco/pipeline/``) and the separately installable packages
(``plugins/*/``, their tests excluded) and fails on:

- an import of a ``_``-prefixed name (or from a ``_``-prefixed module) that
  lives outside the importing plugin's own package: ``from flowdeco.pickling
  import _importable``, ``from ..cli import _ArgumentParser``;
- a ``_``-prefixed attribute read (or ``getattr(x, "_name")``) on an object
  the core hands over: a parameter of a hook implementation, a name imported
  from flowdeco outside the plugin's package, or anything called like a core
  object (``run``, ``config``, ``task``, ``graph``, ``cli``, ... also when
  kept as ``self._run``);
- an assignment to an attribute of the ``run`` a hook receives, other than
  those documented as settable in ``flowdeco_run_start``.

A plugin's own privates (``self._x``, its own classes, its package's
modules) are its business.  Dunder names and the namedtuple API (``_fields``,
``_asdict``, ``_replace``, ``_make``) are public.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: attribute names that mean "an object the core passes in" wherever they appear
CORE_OBJECTS = frozenset({
    "run", "config", "cfg", "graph", "task", "vertex", "session", "pluginmanager", "pm",
    "hook", "cli", "manager", "attempt", "event", "clock", "ctx", "context", "runner",
    "dynamic", "scheduler", "flowdeco",
})
#: public API of namedtuples, though spelled with one underscore
NAMEDTUPLE_API = frozenset({"_fields", "_asdict", "_replace", "_make", "_field_defaults"})
#: attributes of ``run`` a plugin may set in ``flowdeco_run_start`` (see hookspecs)
RUN_SETTABLE = frozenset({"inline_successors", "metrics", "durable_later", "track_attempts"})

# Known violations, (file relative to the repository, description without line number);
# empty now: keep it so. A stale entry fails the test too.
ALLOWED: frozenset[tuple[str, str]] = frozenset()


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _units() -> list[tuple[Path, str, str]]:
    """(file, its module name, the package that owns its privates) for every scanned file."""
    out = []
    plugins = ROOT / "flowdeco" / "plugins"
    for path in sorted(plugins.rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        unit = ".".join(rel.parts[:3]) if len(rel.parts) > 3 else ".".join(parts)
        if rel.parts[2] == "__init__":
            unit = "flowdeco.plugins.__init__"
        out.append((path, ".".join(parts), unit))
    for path in sorted((ROOT / "flowdeco" / "pipeline").rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        out.append((path, ".".join(parts), "flowdeco.pipeline"))
    for dist in sorted((ROOT / "plugins").iterdir()):
        for pkg in sorted(p.parent for p in dist.glob("*/__init__.py")):
            if pkg.name == "tests":
                continue
            for path in sorted(pkg.rglob("*.py")):
                rel = path.relative_to(dist).with_suffix("")
                parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
                out.append((path, ".".join(parts), pkg.name))
    return out


def _resolve(module: str, is_package: bool, level: int, target: str | None) -> str:
    """The absolute name of ``from <level dots><target> import ...`` written in ``module``."""
    if level == 0:
        return target or ""
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    base = base[:len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def _inside(name: str, unit: str) -> bool:
    return name == unit or name.startswith(unit + ".")


def _hook_params(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> set[str]:
    """Parameters of ``fn`` if it is a hook implementation (marked or named flowdeco_*)."""
    marked = fn.name.startswith("flowdeco_") or any(
        "hookimpl" in ast.unparse(d) for d in fn.decorator_list)
    if not marked:
        return set()
    a = fn.args
    names = {p.arg for p in [*a.posonlyargs, *a.args, *a.kwonlyargs]}
    return names - {"self", "cls"}


def check_source(source: str, module: str, unit: str, is_package: bool = False) -> list[str]:
    """Violations in one file, as ``"LINE: description"`` strings."""
    tree = ast.parse(source)
    found: list[str] = []
    core_names: set[str] = set()   # names bound to flowdeco objects from outside the unit

    def imported(line: int, origin: str, name: str, bound: str) -> None:
        if _inside(origin, unit):
            return
        if _private(name) or any(_private(p) for p in origin.split(".")):
            found.append(f"{line}: private import {name} from {origin}")
        if origin.split(".")[0] == "flowdeco":
            core_names.add(bound)

    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            origin = _resolve(module, is_package, node.level, node.module)
            for alias in node.names:
                imported(node.lineno, origin, alias.name, alias.asname or alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                imported(node.lineno, alias.name, "", alias.asname or alias.name.partition(".")[0])

    def base_name(expr: ast.expr) -> str | None:
        if isinstance(expr, ast.Name):
            return expr.id
        if isinstance(expr, ast.Attribute):
            return expr.attr
        return None

    def is_core(expr: ast.expr, params: set[str]) -> bool:
        name = base_name(expr)
        if name is None:
            return False
        if name.lstrip("_") in CORE_OBJECTS:
            return True
        return isinstance(expr, ast.Name) and (name in params or name in core_names)

    def visit(node: ast.AST, params: set[str], run_params: set[str]) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            own = _hook_params(node)
            params = params | own
            run_params = run_params | ({"run"} & own)
        elif isinstance(node, ast.Attribute) and _private(node.attr) \
                and node.attr not in NAMEDTUPLE_API and is_core(node.value, params):
            found.append(f"{node.lineno}: private attribute {ast.unparse(node)}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                and node.func.id in ("getattr", "hasattr", "setattr") and len(node.args) >= 2 \
                and isinstance(node.args[1], ast.Constant) \
                and isinstance(node.args[1].value, str) and _private(node.args[1].value) \
                and is_core(node.args[0], params):
            found.append(f"{node.lineno}: private attribute "
                         f"{ast.unparse(node.args[0])}.{node.args[1].value}")
        if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) \
                        and t.value.id in run_params and t.attr not in RUN_SETTABLE:
                    found.append(f"{node.lineno}: sets {t.value.id}.{t.attr}")
        for child in ast.iter_child_nodes(node):
            visit(child, params, run_params)

    visit(tree, set(), set())
    return found


def scan() -> list[tuple[str, str, str]]:
    """(file, line, description) for every violation in the scanned files."""
    out = []
    for path, module, unit in _units():
        rel = path.relative_to(ROOT).as_posix()
        for v in check_source(path.read_text(), module, unit, path.name == "__init__.py"):
            line, _, what = v.partition(": ")
            out.append((rel, line, what))
    return out


def test_scanned_files_exist():
    files = {path.relative_to(ROOT).as_posix() for path, _, _ in _units()}
    assert "flowdeco/plugins/metrics.py" in files
    assert "flowdeco/pipeline/pipe.py" in files
    assert "plugins/flowdeco-dask/flowdeco_dask/executor.py" in files
    assert not any("/tests/" in f for f in files)


def test_plugins_use_only_the_public_surface():
    found = scan()
    new = sorted(f"{f}:{line}: {what}" for f, line, what in found if (f, what) not in ALLOWED)
    assert not new, ("plugins reach into flowdeco privates; give the core a public, "
                     "documented name instead:\n  " + "\n  ".join(new))


def test_allowlist_has_no_stale_entries():
    seen = {(f, what) for f, _, what in scan()}
    stale = sorted(ALLOWED - seen)
    assert not stale, f"fixed: remove these from ALLOWED in {__file__}: {stale}"


# ---------------------------------------------------------------- the checker itself


@pytest.mark.parametrize("source, module, expected", [
    ("from flowdeco.pickling import _importable\n", "flowdeco_dask.executor",
     ["1: private import _importable from flowdeco.pickling"]),
    ("def main():\n    from ..cli import _ArgumentParser\n", "flowdeco.plugins.serve",
     ["2: private import _ArgumentParser from flowdeco.cli"]),
    ("from flowdeco._impl import thing\n", "flowdeco_dask",
     ["1: private import thing from flowdeco._impl"]),
    ("from .store import _helper\n", "flowdeco.plugins.state.plugin", []),
    ("from .result import _BASE\n", "flowdeco.pipeline.engine", []),
    ("from .timeout import _wrap\n", "flowdeco.plugins.retry",
     ["1: private import _wrap from flowdeco.plugins.timeout"]),
    ("@hookimpl\ndef flowdeco_run_start(run):\n    x = run._t0\n", "flowdeco.plugins.m",
     ["3: private attribute run._t0"]),
    ("@hookimpl\ndef flowdeco_report(run, event):\n    x = event._when\n", "flowdeco.plugins.m",
     ["3: private attribute event._when"]),
    ("@hookimpl\ndef flowdeco_report(r, e):\n    x = e._when\n", "flowdeco.plugins.m",
     ["3: private attribute e._when"]),
    ("class M:\n    def __init__(self, run):\n        self._run = run\n"
     "    def f(self):\n        return self._run._status\n", "flowdeco.plugins.m",
     ["5: private attribute self._run._status"]),
    ("def f(x):\n    return x.run.graph._by_name\n", "flowdeco.plugins.m",
     ["2: private attribute x.run.graph._by_name"]),
    ("def f(task):\n    return getattr(task, '_spec', None)\n", "flowdeco.plugins.m",
     ["2: private attribute task._spec"]),
    ("from flowdeco import cli\ncli._main()\n", "flowdeco_dask",
     ["2: private attribute cli._main"]),
    ("from flowdeco import pickling as p\np._importable('x')\n", "flowdeco_dask",
     ["2: private attribute p._importable"]),
    ("class C:\n    def f(self):\n        return self._x, C._registry, other._y\n",
     "flowdeco.plugins.m", []),
    ("def f(t):\n    return t._fields, t._asdict(), t.__dict__\n", "flowdeco.plugins.m", []),
    ("@hookimpl\ndef flowdeco_run_start(run):\n    run.executor = 1\n"
     "    run.inline_successors = False\n", "flowdeco_dask", ["3: sets run.executor"]),
])
def test_checker(source, module, expected):
    unit = "flowdeco.plugins.state" if module.startswith("flowdeco.plugins.state") else \
        "flowdeco.pipeline" if module.startswith("flowdeco.pipeline") else \
        module if module.startswith("flowdeco.") else module.partition(".")[0]
    assert check_source(source, module, unit) == expected


def test_no_module_shadows_the_standard_library():
    """``flowdeco/select.py`` hid ``select`` from anything run with ``flowdeco/`` on sys.path."""
    import sys
    names = {p.stem for p in (ROOT / "flowdeco").rglob("*.py")} | \
        {p.name for p in (ROOT / "flowdeco").rglob("*") if p.is_dir()}
    assert not sorted(names & set(sys.stdlib_module_names))


def test_stash_keys_are_typed_and_distinct():
    from flowdeco import StashKey
    from flowdeco.stash import Stash
    a, b = StashKey[int]("same"), StashKey[int]("same")
    stash = Stash()
    stash[a] = 1
    assert stash.get(b) is None and stash[a] == 1     # identity, not label
    assert stash.setdefault(b, 2) == 2 and stash.pop(a) == 1
    stash["plain"] = 3                                 # string keys still work
    assert dict(stash) == {b: 2, "plain": 3} and repr(a) == "StashKey('same')"


#: hook parameters that carry a core object, and the type to annotate them with
HOOK_PARAM_TYPES = {"run": "Run", "config": "Config", "task": "Vertex", "graph": "Graph",
                    "parser": "Parser", "event": "Event", "result": "RunResult",
                    "attempt": "Attempt"}
UNTYPED_HOOKS_ALLOWED: frozenset[str] = frozenset()


def untyped_hook_params(source: str) -> list[str]:
    """``"LINE: name(param: Any)"`` for each hook parameter annotated ``Any`` or not at all."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) \
                and node.name.startswith("flowdeco_"):
            for a in [*node.args.args, *node.args.kwonlyargs]:
                if a.arg in HOOK_PARAM_TYPES and (a.annotation is None
                                                  or ast.unparse(a.annotation) == "Any"):
                    found.append(f"{node.lineno}: {node.name}({a.arg})")
    return found


def test_hook_implementations_annotate_core_objects():
    untyped = {}
    for path, _, _ in _units():
        rel = path.relative_to(ROOT).as_posix()
        found = untyped_hook_params(path.read_text())
        if found:
            untyped[rel] = found
    new = {f: v for f, v in untyped.items() if f not in UNTYPED_HOOKS_ALLOWED}
    assert not new, f"annotate these with {HOOK_PARAM_TYPES} (Run, Config, ...): {new}"
    stale = sorted(UNTYPED_HOOKS_ALLOWED - set(untyped))
    assert not stale, f"annotated now: remove from UNTYPED_HOOKS_ALLOWED: {stale}"


def test_untyped_hook_params_checker():
    assert untyped_hook_params("def flowdeco_run_start(run: Any): pass\n"
                               "def flowdeco_report(run: Run, event): pass\n"
                               "def flowdeco_configure(config: Config): pass\n"
                               "def helper(run: Any): pass\n") == [
        "1: flowdeco_run_start(run)", "2: flowdeco_report(event)"]


#: the model: what a flow is; the engine imports these, so they must not import it back
MODEL_MODULES = ("flow", "graph", "collect", "task", "selection", "params", "outcome")


def test_the_model_never_imports_the_engine():
    """``Flow.run`` imported ``engine.session`` inside the method, closing one import cycle
    through nine core modules (graph -> flow -> engine.session -> scheduler -> graph)."""
    found = []
    for name in MODEL_MODULES:
        path = ROOT / "flowdeco" / f"{name}.py"
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                mods = [("." * node.level) + (node.module or "")]
            elif isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            else:
                continue
            found += [f"{name}.py:{node.lineno}: {m}" for m in mods
                      if m.lstrip(".").startswith("engine") or m.startswith("flowdeco.engine")
                      or m in (".runner", "flowdeco.runner")]
    assert not found
