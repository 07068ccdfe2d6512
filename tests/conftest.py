"""Shared fixtures for the core engine's tests."""

from __future__ import annotations

import importlib
import itertools
import sys
import textwrap
from pathlib import Path

import pytest

_counter = itertools.count()


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
