"""Shared fixtures for the core engine's tests."""

from __future__ import annotations

import importlib
import itertools
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

_counter = itertools.count()


@pytest.fixture(autouse=True)
def _own_imports(tmp_path_factory):
    """Drop what a test left of its temporary modules: ``sys.modules`` entries loaded
    from pytest's temporary folders and those folders on ``sys.path``.

    ``flowdeco.run(path)`` and the CLI import a flow file under its stem and put its
    folder on ``sys.path`` (by design: process workers import it by name), so a test
    running a file by path left ``hourly`` behind and a later test's own ``hourly``
    resolved to it (tests/test_isolation.py).  Set up before, torn down after every
    other fixture of the test; a dict copy and one pass, cheap enough for every test.
    """
    base = str(tmp_path_factory.getbasetemp())
    path = list(sys.path)
    before = dict(sys.modules)
    yield
    for name, mod in list(sys.modules.items()):
        if before.get(name) is not mod and (getattr(mod, "__file__", None) or "").startswith(base):
            if name in before:
                sys.modules[name] = before[name]
            else:
                del sys.modules[name]
    if sys.path != path:
        sys.path[:] = [p for p in sys.path if p in path or not p.startswith(base)]


@pytest.fixture
def write_module(tmp_path, monkeypatch):
    """Write a module file into ``tmp_path`` under a unique name; returns its path.

    ``write_module(source, name=None)``: ``name`` defaults to a fresh
    ``fdmod_N``.  The folder is put on ``sys.path`` and every module imported
    from it is dropped from ``sys.modules`` afterwards, so tests never see each
    other's modules.
    """
    monkeypatch.syspath_prepend(str(tmp_path))
    names: list[str] = []

    def write(source: str, name: str | None = None) -> Path:
        name = name or f"fdmod_{next(_counter)}"
        path = tmp_path / f"{name}.py"
        path.write_text(textwrap.dedent(source))
        names.append(name)
        importlib.invalidate_caches()
        return path

    yield write
    for name in names:
        sys.modules.pop(name, None)
    for name, mod in list(sys.modules.items()):
        f = getattr(mod, "__file__", None)
        if f and str(tmp_path) in str(f):
            sys.modules.pop(name, None)


class SourceDir:
    """Test modules written into ``tmp_path/src`` (on ``sys.path``), cwd an empty ``tmp_path/work``.

    The working directory is empty so default state (``.flowdeco``) never lands
    in the repository; names are unique per call, so a pooled plugin manager
    keyed by a plugin name never sees another test's module.
    """

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
        self.root = tmp_path
        self.dir = tmp_path / "src"
        self.cwd = tmp_path / "work"
        self.dir.mkdir()
        self.cwd.mkdir()
        monkeypatch.syspath_prepend(str(self.dir))
        monkeypatch.chdir(self.cwd)
        self.names: list[str] = []

    def write(self, source: str, stem: str | None = None) -> Path:
        """Write ``source`` (dedented) as ``src/STEM.py``; returns the path."""
        stem = stem or f"fdsrc_{uuid.uuid4().hex[:10]}"
        path = self.dir / f"{stem}.py"
        path.write_text(textwrap.dedent(source))
        self.names.append(stem)
        importlib.invalidate_caches()
        return path

    def write_module(self, source: str, prefix: str = "fdplug") -> tuple[str, Path]:
        """Like :meth:`write` with a fresh ``PREFIX_xxx`` name; returns (module name, path)."""
        path = self.write(source, f"{prefix}_{uuid.uuid4().hex[:10]}")
        return path.stem, path

    def load(self, name: str):
        return importlib.import_module(name)

    def cleanup(self) -> None:
        for name, mod in list(sys.modules.items()):
            f = getattr(mod, "__file__", None) or ""
            if name in self.names or str(self.root) in f:
                sys.modules.pop(name, None)


@pytest.fixture
def flows(tmp_path, monkeypatch):
    """``flows.write(source, stem=None) -> Path``; see :class:`SourceDir`."""
    src = SourceDir(tmp_path, monkeypatch)
    yield src
    src.cleanup()


@pytest.fixture
def mods(tmp_path, monkeypatch):
    """``mods.write_module(source, prefix) -> (name, path)``; see :class:`SourceDir`."""
    src = SourceDir(tmp_path, monkeypatch)
    yield src
    src.cleanup()
