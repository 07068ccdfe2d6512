"""Tests do not see each other's flow modules: the guard in conftest.py.

``flowdeco.run(path)`` and the CLI import a flow file as a module named after it and
put its folder first on ``sys.path`` (so process workers can import it by name); in
a long pytest session those stayed, and a later test's own module of the same name
(``hourly``) resolved to the stale one.  The tests below run in file order: the
first leaves what a run by path leaves, the others check that it is gone.
"""

from __future__ import annotations

import importlib
import sys
import textwrap

import flowdeco

NAME = "fd_isolation_flow"
FLOW = "from flowdeco import task\n\n@task\ndef which():\n    return {0!r}\n"


def test_a_flow_file_run_by_path_is_imported_under_its_name(tmp_path):
    path = tmp_path / f"{NAME}.py"
    path.write_text(FLOW.format("by path"))
    assert flowdeco.run(str(path), state_dir=None)["which"].result == "by path"
    assert NAME in sys.modules and str(tmp_path) in sys.path  # what the guard undoes


def test_a_later_module_of_the_same_name_is_its_own(write_module):
    write_module(FLOW.format("mine"), name=NAME)
    assert importlib.import_module(NAME).which() == "mine"


def test_no_folder_of_another_test_is_on_sys_path(tmp_path_factory):
    base = str(tmp_path_factory.getbasetemp())
    assert [p for p in sys.path if p.startswith(base)] == []


# --------------------------------------------------------------------------- pooled managers

PLUGIN = """
    import flowdeco

    SEEN = []

    @flowdeco.hookimpl
    def flowdeco_run_start(run):
        SEEN.append({0!r})
"""


@flowdeco.task
def one():
    return 1


def test_a_plugin_module_imported_again_is_used_not_the_pooled_managers_copy(mods):
    """Runs started from Python borrow a pooled plugin manager keyed by the plugin names;
    a module of that name imported again (edited, then reloaded or dropped from
    ``sys.modules`` and imported) must be the one whose hooks run."""
    name, path = mods.write_module(PLUGIN.format("first"))
    first = importlib.import_module(name)
    assert flowdeco.run([one], state_dir=None, plugins=[name]).ok
    assert first.SEEN == ["first"]

    path.write_text(textwrap.dedent(PLUGIN.format("second one")))  # (another size: no stale .pyc)
    importlib.invalidate_caches()
    second = importlib.reload(first)
    assert flowdeco.run([one], state_dir=None, plugins=[name]).ok
    assert second.SEEN == ["second one"]

    path.write_text(textwrap.dedent(PLUGIN.format("third, imported")))
    del sys.modules[name]
    importlib.invalidate_caches()
    third = importlib.import_module(name)
    assert flowdeco.run([one], state_dir=None, plugins=[name]).ok
    assert third.SEEN == ["third, imported"]
