"""``flowdeco_task_guards``: enter/exit around attempts, without wrappers."""

from __future__ import annotations

import time

import pytest

import flowdeco
from flowdeco import CircuitBreaker, CircuitOpenError, run, task


class Guard:
    def __init__(self, refuse: bool = False):
        self.calls: list = []
        self.refuse = refuse

    def enter(self):
        self.calls.append("enter")
        if self.refuse:
            raise RuntimeError("refused by the guard")
        return len(self.calls)

    def exit(self, token, error):
        self.calls.append(("exit", token, None if error is None else type(error).__name__))


class Guarding:
    def __init__(self, guards):
        self.guards = guards

    @flowdeco.hookimpl
    def flowdeco_task_guards(self, run):
        return {run.graph.by_name[name]: g for name, g in self.guards.items()}


@pytest.mark.parametrize("executor", ["thread", "sync"])
def test_enter_and_exit_bracket_every_attempt(executor):
    ran = []

    @task(retries=1)
    def flaky():
        ran.append("flaky")
        if len(ran) == 1:
            raise ValueError("first attempt fails")
        return 1

    @task
    def refused():
        ran.append("refused")

    @task
    def free():
        return 2

    g, r = Guard(), Guard(refuse=True)
    result = run([flaky, refused, free], state_dir=None, executor=executor,
                 plugins=[Guarding({"flaky": g, "refused": r})])
    assert result.results["flaky"] == 1 and result.results["free"] == 2
    assert g.calls == ["enter", ("exit", 1, "ValueError"), "enter", ("exit", 3, None)]
    assert result["refused"].error == "RuntimeError: refused by the guard"
    assert "refused" not in ran and r.calls == ["enter"]


@pytest.mark.parametrize("executor", ["thread", "sync"])
def test_each_instance_of_a_mapped_task_is_guarded(executor):
    @task
    def items():
        return [1, 2]

    @task(map="items")
    def each(items):
        if items == 2:
            raise ValueError("two")
        return items

    g = Guard()
    result = run([items, each], state_dir=None, executor=executor, workers=1,
                 plugins=[Guarding({"each": g})])
    assert result["each[0]"].result == 1 and result["each[1]"].error == "ValueError: two"
    assert g.calls == ["enter", ("exit", 1, None), "enter", ("exit", 3, "ValueError")]


class Late(Exception):
    pass


def late(name):
    return Late(f"{name} is late")


class Limiting:
    """A third-party plugin limiting one task with a Deadline of its own."""

    def __init__(self, name: str, seconds: float):
        self.name, self.seconds = name, seconds

    @flowdeco.hookimpl
    def flowdeco_task_deadlines(self, run):
        return {run.graph.by_name[self.name]: flowdeco.Deadline(self.seconds, late)}


@task
def slow_body():
    time.sleep(3)
    return 1


@task
def quick_body():
    return 2


@pytest.mark.parametrize("executor", ["thread", "sync", "process"])
def test_a_plugins_deadline_is_enforced_on_every_executor(executor):
    """Deadlines were asked only on flowdeco's thread pool: elsewhere a plugin's limit
    was silently ignored (the timeout plugin wrapped those attempts itself)."""
    t0 = time.monotonic()
    result = run([slow_body, quick_body], state_dir=None, executor=executor, workers=1,
                 plugins=[Limiting("slow_body", 0.2)])
    assert result["slow_body"].error == "Late: slow_body is late", result["slow_body"].error
    assert result.results["quick_body"] == 2
    assert time.monotonic() - t0 < 2.5   # the run did not wait for the body


class WrapperSeen:
    seen: list = []

    @flowdeco.hookimpl(trylast=True)
    def flowdeco_run_start(self, run):
        self.seen.append(run.config.pluginmanager.get_plugin("circuit-wrapper") is not None)


@pytest.mark.parametrize("executor", ["thread", "sync"])
def test_a_breaker_guards_in_process_tasks_without_a_wrapper(executor):
    b = CircuitBreaker("guards-test", threshold=2, reset_after=60)
    b.reset()
    calls = []

    @task(circuit=b)
    def down():
        calls.append(1)
        raise ConnectionError("down")

    @task(circuit=b, after=[down], trigger="all_done")
    def again():
        calls.append(2)
        raise ConnectionError("down")

    @task(circuit=b, after=[again], trigger="all_done")
    def refused():
        calls.append(3)

    seen = WrapperSeen()
    seen.seen = []
    result = run([down, again, refused], state_dir=None, executor=executor, plugins=[seen])
    assert seen.seen == [False]  # guards, no per-task wrapper
    assert calls == [1, 2] and b.state == "open"
    assert isinstance(result["refused"].exception, CircuitOpenError)


def test_an_overrun_attempt_exits_its_guard_once_with_the_timeout():
    import threading

    from flowdeco import TaskTimeout
    release = threading.Event()

    @task(timeout=0.1)
    def hangs():
        release.wait(10)
        return "late"

    g = Guard()
    result = run([hangs], state_dir=None, plugins=[Guarding({"hangs": g})])
    assert isinstance(result["hangs"].exception, TaskTimeout)
    release.set()
    for worker in [t for t in threading.enumerate() if t.name.startswith("flowdeco-worker")]:
        worker.join(5)  # the abandoned attempt returns, and must not reach the guard
    assert g.calls == ["enter", ("exit", 1, "TaskTimeout")]  # the late return is not reported
