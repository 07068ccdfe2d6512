"""``manager.direct_caller``: per-task hooks called without pluggy's dispatch, same semantics."""

from __future__ import annotations

import pluggy
import pytest

from flowdeco.manager import direct_caller

spec = pluggy.HookspecMarker("t")
impl = pluggy.HookimplMarker("t")


class Specs:
    @spec
    def h(self, run, task):
        """all results"""

    @spec(firstresult=True)
    def f(self, run, task, name):
        """first result"""


def make(*plugins):
    pm = pluggy.PluginManager("t")
    pm.add_hookspecs(Specs)
    for p in plugins:
        pm.register(p)
    return pm


class A:
    @impl
    def h(self, run, task):
        return ("A", run, task)

    @impl
    def f(self, task):  # fewer arguments than the spec
        return None if task == "skip" else ("A", task)


class B:
    @impl(tryfirst=True)
    def h(self, task, run):  # other order
        return ("B", run, task)

    @impl
    def f(self, name, run):
        return ("B", name, run) if name == "mine" else None


class C:
    @impl(trylast=True)
    def h(self, run):
        return None


@pytest.mark.parametrize("plugins", [(A(),), (A(), B()), (A(), B(), C()), (C(), B(), A()), ()])
def test_same_results_and_order_as_pluggy(plugins):
    pm = make(*plugins)
    fast = direct_caller(pm.hook.h, ("run", "task"))
    assert fast(1, 2) == pm.hook.h(run=1, task=2)
    first = direct_caller(pm.hook.f, ("run", "task", "name"), firstresult=True)
    for args in [(1, "t", "mine"), (1, "skip", "mine"), (1, "skip", "other"), (1, "t", "x")]:
        assert first(*args) == pm.hook.f(run=args[0], task=args[1], name=args[2])


def test_a_hook_wrapper_falls_back_to_pluggy():
    seen = []

    class W:
        @impl(wrapper=True)
        def h(self, run, task):
            seen.append("before")
            res = yield
            return res + [("W",)]

    pm = make(A(), W())
    fast = direct_caller(pm.hook.h, ("run", "task"))
    assert fast(1, 2) == [("A", 1, 2), ("W",)] and seen == ["before"]
