"""Send a flow's own ``.py`` files to a Dask cluster, and check the cluster can import the flow.

Dask pickles a function defined at module level *by reference* (module and
name).  Recent ``distributed`` unpickles the task graph on the **scheduler**
as well as on the workers, so both must import the flow module: starting
workers from the flow's folder is not enough, and a cluster started with
``dask scheduler`` / ``dask worker`` knows nothing of a file on the
driver's disk.

:func:`files_to_upload` lists what a single-file flow needs: the files of
the task modules that are plain top-level ``.py`` files (not installed
packages), and the ``.py`` files next to them that they import, found by
reading their ``import`` statements -- dependencies first.  :class:`Uploads`
registers them on the scheduler and the workers (Dask's ``UploadFile``
plugins, the same as ``client.upload_file``, under names it can remove
after the run; a worker that joins or restarts during the run gets them
too).  :func:`probe` then imports the task modules on the scheduler and on
every worker before anything runs, so a flow the cluster cannot import
fails once, in one line naming the module and the fix, instead of Dask's
deserialisation error for every task.
"""

from __future__ import annotations

import ast
import os
import site
import socket
import sys
import sysconfig
import uuid
from pathlib import Path
from typing import Any, Iterable

import cloudpickle
from distributed.diagnostics.plugin import SchedulerUploadFile, UploadFile

from flowdeco import UsageError


# --------------------------------------------------------------------------- what to send


def _install_roots() -> list[Path]:
    paths = sysconfig.get_paths()
    roots = {paths.get(k) for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    roots.update(getattr(site, "getsitepackages", lambda: [])())
    user = getattr(site, "getusersitepackages", lambda: None)()
    roots.add(user if isinstance(user, str) else None)
    return [Path(r).resolve() for r in roots if r]


def _plain_file(module: Any, roots: list[Path]) -> Path | None:
    """The ``.py`` file of a top-level, not installed module, or None."""
    name = getattr(module, "__name__", "")
    file = getattr(module, "__file__", None)
    if not file or "." in name or name == "__main__":
        return None
    path = Path(file).resolve()
    if path.suffix != ".py" or path.name == "__init__.py" or not path.is_file():
        return None
    if any(path.is_relative_to(r) for r in roots):
        return None
    return path


def _imported_names(path: Path) -> list[str]:
    """Top-level names of the absolute imports in ``path`` (``import a.b``, ``from a import b``: ``a``)."""
    try:
        tree = ast.parse(path.read_bytes(), str(path))
    except (SyntaxError, ValueError, OSError):
        return []
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name.partition(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module.partition(".")[0])
    return names


def _siblings(path: Path) -> list[Path]:
    """The ``.py`` files next to ``path`` that it imports and that this process imports from there."""
    out = []
    for name in dict.fromkeys(_imported_names(path)):
        candidate = path.with_name(f"{name}.py")
        if not candidate.is_file():
            continue
        loaded = sys.modules.get(name)
        where = getattr(loaded, "__file__", None)
        if loaded is not None and (where is None or Path(where).resolve() != candidate.resolve()):
            continue   # this process took that name from elsewhere (stdlib, site-packages)
        out.append(candidate.resolve())
    return out


def task_modules(graph: Any) -> list[str]:
    """Names of the modules the graph's task functions are defined in (not ``__main__``), in order."""
    names: dict[str, None] = {}
    for v in graph.vertices:
        modname = getattr(getattr(v, "fn", None), "__module__", None)
        if modname and modname != "__main__":
            names[modname] = None
    return list(names)


def files_to_upload(graph: Any) -> list[Path]:
    """The flow's own files a cluster needs, each after the files it imports."""
    roots = _install_roots()
    order: list[Path] = []
    seen: set[Path] = set()

    def visit(path: Path) -> None:
        if path in seen:
            return
        seen.add(path)
        for dep in _siblings(path):
            visit(dep)
        order.append(path)

    for modname in task_modules(graph):
        path = _plain_file(sys.modules.get(modname), roots)
        if path is not None:
            visit(path)
    return order


# --------------------------------------------------------------------------- sending


class Uploads:
    """Files registered on a cluster for one run; :meth:`release` unregisters them (idempotent)."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.names: list[str] = []
        self.modules: list[str] = []

    def send(self, paths: Iterable[Path]) -> None:
        for path in paths:
            name = f"flowdeco-upload-{path.name}-{uuid.uuid4().hex[:8]}"
            try:
                # the scheduler first: it unpickles the task graph; load=False because
                # probe() imports in dependency order and reloads what a long-lived
                # process imported from an earlier upload
                self.client.register_plugin(SchedulerUploadFile(str(path), load=False), name=name)
                self.names.append(name)
                self.client.register_plugin(UploadFile(str(path), load=False), name=name)
            except Exception as exc:  # noqa: BLE001 - one line for the user, whatever Dask raised
                raise UsageError(
                    f"cannot upload {path} to the Dask cluster at {_address(self.client)} "
                    f"({type(exc).__name__}: {_first_line(exc)}); install the flow's code on "
                    "the scheduler and workers and run with --no-dask-upload") from None
            self.modules.append(path.stem)

    def release(self) -> None:
        names, self.names = self.names, []
        for name in names:
            for unregister in (self.client.unregister_worker_plugin,
                               self.client.unregister_scheduler_plugin):
                try:
                    unregister(name)
                except Exception:  # noqa: BLE001 - a closed cluster keeps nothing anyway
                    pass


def _address(client: Any) -> str:
    scheduler = getattr(client, "scheduler", None)
    return getattr(scheduler, "address", None) or "?"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


# --------------------------------------------------------------------------- checking


def _make_probe() -> Any:
    """The function run on the scheduler and on each worker.

    Defined inside a function so that cloudpickle ships it by value: the
    cluster needs flowdeco (task attempts run its code) but not this plugin.
    """
    def flowdeco_import_probe(modules, blobs, fresh, driver):  # noqa: ANN001, ANN202
        import importlib
        import importlib.machinery
        import importlib.util
        import os
        import pickle
        import socket
        import sys

        def failed(name, exc):
            text = str(exc).strip().splitlines()
            return (name, f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": "),
                    getattr(exc, "name", None) if isinstance(exc, ImportError) else None)

        importlib.invalidate_caches()
        # files uploaded again: drop their bytecode, reload what an earlier run imported
        # (never in the driver's own process: a LocalCluster's scheduler lives there)
        for name in fresh:
            spec = importlib.machinery.PathFinder.find_spec(name)
            if spec is not None and spec.origin:
                try:
                    os.remove(importlib.util.cache_from_source(spec.origin))
                except OSError:
                    pass
        if (socket.gethostname(), os.getpid()) != tuple(driver):
            for name in fresh:
                if name in sys.modules:
                    try:
                        importlib.reload(sys.modules[name])
                    except BaseException as exc:  # noqa: BLE001 - reported to the driver
                        return failed(name, exc)
        for name in modules:
            try:
                importlib.import_module(name)
            except BaseException as exc:  # noqa: BLE001
                return failed(name, exc)
        for modname, blob in blobs:
            try:
                pickle.loads(blob)
            except BaseException as exc:  # noqa: BLE001
                return failed(modname, exc)
        return None

    return flowdeco_import_probe


def _payload(graph: Any) -> tuple[list[str], list[tuple[str, bytes]]]:
    """Modules to import, and one pickle per code object of the tasks that travel by value."""
    by_value = set(cloudpickle.list_registry_pickle_by_value())
    modules: dict[str, None] = {}
    blobs: dict[Any, tuple[str, bytes]] = {}
    for v in graph.vertices:
        fn = getattr(v, "fn", None)
        modname = getattr(fn, "__module__", None)
        if fn is None or not modname:
            continue
        if modname != "__main__" and modname not in by_value and _reachable(fn, modname):
            modules[modname] = None
            continue
        code = getattr(fn, "__code__", fn)
        if code not in blobs:
            try:
                blobs[code] = (modname, cloudpickle.dumps(fn))
            except Exception:  # noqa: BLE001 - check_graph has refused these already
                continue
    return list(modules), list(blobs.values())


def _reachable(fn: Any, modname: str) -> bool:
    """True when ``fn`` is found in its module by its qualified name (cloudpickle: by reference)."""
    obj: Any = sys.modules.get(modname)
    qual = getattr(fn, "__qualname__", "") or ""
    if obj is None or "<locals>" in qual:
        return False
    for part in qual.split("."):
        obj = getattr(obj, part, None)
    return obj is fn


def probe(client: Any, graph: Any, uploads: Uploads | None, upload_flag: bool | None) -> None:
    """Import the flow's modules on the scheduler and every worker; :class:`UsageError` if one cannot."""
    modules, blobs = _payload(graph)
    fresh = list(uploads.modules) if uploads is not None else []
    if not modules and not blobs:
        return
    probe_fn = _make_probe()
    args = (modules, blobs, fresh, (socket.gethostname(), os.getpid()))
    try:
        answers = [("on the scheduler", client.run_on_scheduler(probe_fn, *args))]
        workers = client.run(probe_fn, *args)
    except Exception as exc:  # noqa: BLE001
        raise UsageError(f"cannot check the Dask cluster at {_address(client)} before the run "
                         f"({type(exc).__name__}: {_first_line(exc)})") from None
    answers += [(f"on worker {w}", workers[w]) for w in sorted(workers)]
    for where, answer in answers:
        if answer is not None:
            raise UsageError(_refusal(client, where, answer, fresh, upload_flag))


def _refusal(client: Any, where: str, answer: tuple, uploaded: list[str],
             upload_flag: bool | None) -> str:
    module, error, missing = answer
    head = (f"the Dask cluster at {_address(client)} cannot import module {module!r} "
            f"({where}: {error})")
    loaded = sys.modules.get(module)
    file = getattr(loaded, "__file__", None)
    if missing and missing == module.partition(".")[0] and missing not in uploaded:
        if _plain_file(loaded, _install_roots()) is not None:
            how = ("drop --no-dask-upload (--dask-upload is the default with --dask-address)"
                   if upload_flag is False
                   else "pass dask_upload=True (--dask-upload)")
            fix = (f"it is the single file {file}: {how} so that it is uploaded, or put it "
                   "on the scheduler's and the workers' sys.path")
        else:
            fix = ("install it on the scheduler and every worker (the same environment as "
                   "here)")
    elif missing:
        beside = f" next to {Path(file).name}" if file else ""
        fix = (f"install {missing!r} on the scheduler and every worker (the same environment "
               f"as here), or make it a .py file{beside} so that --dask-upload sends it")
    else:
        fix = "its import fails there: make the cluster's environment match this one"
    return f"{head}: {fix}"
