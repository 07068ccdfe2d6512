"""The ``process`` executor: what must pickle (checked at collection), dead workers, results.

What it shares with threads (results, audit, retries, dead workers, timeouts, batched tiny
attempts) is the conformance suite, run here by :class:`TestProcessConformance`.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import types
from concurrent.futures import ProcessPoolExecutor

import pytest

from flowdeco import CollectionError, task
from flowdeco import cli
from flowdeco.executors import ProcessExecutor, WorkerCrashed
from flowdeco.conformance import TINY, audit
from flowdeco.testing import ExecutorConformance, run_flow

TIMEOUT = 60.0


# --------------------------------------------------------------------------- collection


UNPICKLABLE = {
    "lambda": ("""
        from flowdeco import task
        double = task(name="double")(lambda: 2)
        """, "double", "is a lambda"),
    "closure": ("""
        from flowdeco import task
        def make(n):
            @task
            def plus():
                return n + 1
            return plus
        plus = make(1)
        """, "plus", "is defined inside function 'make'"),
    "shadowed": ("""
        from flowdeco import task
        @task
        def real():
            return 1
        original = real
        def real():          # the module name now points elsewhere: pickle cannot find it
            return 2
        """, "real", "cannot be pickled"),
}


@pytest.mark.parametrize("case", sorted(UNPICKLABLE))
def test_unpicklable_task_is_a_collection_error(write_module, case):
    source, name, why = UNPICKLABLE[case]
    path = write_module(source)
    with pytest.raises(CollectionError) as info:
        run_flow(str(path), executor="process", fail_after=TIMEOUT)
    msg = str(info.value)
    assert msg.startswith(f"task {name!r} cannot run on the process executor: it ")
    assert why in msg
    # the same flow runs on threads
    assert run_flow(str(path), executor="thread", fail_after=TIMEOUT).ok


def test_unpicklable_run_parameter_is_a_collection_error(write_module):
    path = write_module("""
        from flowdeco import task
        @task
        def guarded(lock):
            return 1
        """)
    with pytest.raises(CollectionError, match="task 'guarded' cannot run on the process "
                                              "executor: the value of its parameter 'lock' "
                                              r"\(a lock\) cannot be pickled"):
        run_flow(str(path), params={"lock": threading.Lock()}, executor="process",
                 fail_after=TIMEOUT)


def test_unpicklable_task_exits_4_from_the_cli(write_module, tmp_path, capsys):
    path = write_module(UNPICKLABLE["closure"][0])
    rc = cli.main([str(path), "--executor", "process", "--state-dir", str(tmp_path / "st")])
    err = capsys.readouterr().err
    assert rc == 4, err
    assert "task 'plus' cannot run on the process executor" in err
    assert "move it to module level" in err
    assert not (tmp_path / "st").exists()      # nothing ran, nothing was written


def test_closure_given_as_a_list_is_refused_too():
    def make():
        def inner():
            return 1
        return inner
    with pytest.raises(CollectionError, match="task 'inner' cannot run on the process"):
        run_flow([make()], executor="process", fail_after=TIMEOUT)


def test_dynamic_module_needs_fork():
    mod = types.ModuleType("fd_dynamic_mod")
    exec(textwrap.dedent("""
        from flowdeco import task
        @task
        def made():
            return 42
    """), mod.__dict__)
    sys.modules[mod.__name__] = mod
    try:
        spawn = ProcessExecutor(1, mp_context=multiprocessing.get_context("spawn"))
        with pytest.raises(CollectionError, match="module 'fd_dynamic_mod', which a worker "
                                                  "process started with 'spawn' cannot import"):
            run_flow([mod.made], executor=spawn, fail_after=TIMEOUT)
        spawn.shutdown()
        # forked workers inherit the module: it runs
        fork = ProcessExecutor(1, mp_context=multiprocessing.get_context("fork"))
        try:
            assert run_flow([mod.made], executor=fork, fail_after=TIMEOUT).results == {"made": 42}
        finally:
            fork.shutdown()
    finally:
        del sys.modules[mod.__name__]


MAIN_SCRIPT = """
import multiprocessing, sys
from flowdeco import FlowError, run, task
from flowdeco.executors import ProcessExecutor

@task
def answer():
    return 42

method = sys.argv[1]
ex = ProcessExecutor(1, mp_context=multiprocessing.get_context(method))
try:
    print(run([answer], executor=ex, state_dir=None).results)
except FlowError as exc:
    print("FlowError:", exc)
finally:
    ex.shutdown()
"""


def test_task_in_interactive_main_needs_fork(tmp_path):
    spawned = subprocess.run([sys.executable, "-c", MAIN_SCRIPT, "spawn"], cwd=tmp_path,
                             capture_output=True, text=True, timeout=120)
    assert "FlowError: task 'answer' cannot run on the process executor: it is defined in " \
           "__main__" in spawned.stdout, spawned.stderr
    forked = subprocess.run([sys.executable, "-c", MAIN_SCRIPT, "fork"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert forked.stdout.strip() == "{'answer': 42}", forked.stderr


def test_task_in_a_main_script_file_runs_with_spawn(tmp_path):
    script = tmp_path / "script.py"
    # a script guarded like multiprocessing wants it: workers re-import it as __mp_main__
    script.write_text(textwrap.dedent("""
        import multiprocessing, sys
        from flowdeco import run, task
        from flowdeco.executors import ProcessExecutor

        @task
        def answer():
            return 42

        if __name__ == "__main__":
            ex = ProcessExecutor(1, mp_context=multiprocessing.get_context("spawn"))
            try:
                print(run([answer], executor=ex, state_dir=None).results)
            finally:
                ex.shutdown()
    """))
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert proc.stdout.strip() == "{'answer': 42}", proc.stderr


def test_threads_and_sync_check_nothing():
    double = task(name="double")(lambda: 2)
    assert run_flow([double], executor="thread", fail_after=TIMEOUT).results == {"double": 2}
    assert run_flow([double], executor="sync", fail_after=TIMEOUT).results == {"double": 2}


# --------------------------------------------------------------------------- results


RESULTS = """
    import threading
    from flowdeco import task

    def _refuse():
        raise RuntimeError("not here")

    class OnlyInWorkers:
        def __reduce__(self):
            return (_refuse, ())

    @task
    def lock():
        return threading.Lock()

    @task
    def uses_lock(lock):
        return 1

    @task
    def odd():
        return OnlyInWorkers()

    @task
    def fine():
        return {"ok": [1, 2.5, "x"]}
"""


def test_unpicklable_result_fails_that_task(write_module):
    result = run_flow(str(write_module(RESULTS)), workers=2, executor="process",
                      fail_after=TIMEOUT)
    oc = result.outcomes
    assert oc["lock"].status == "failed"
    assert oc["lock"].error.startswith(
        "UnpicklableResult: task 'lock' returned a _thread.lock, which cannot be pickled")
    assert (oc["uses_lock"].status, oc["uses_lock"].reason) == ("skipped", "upstream")
    assert oc["odd"].status == "failed"
    assert oc["odd"].error.startswith("UnpicklableResult: task 'odd' returned a result that "
                                      "cannot be unpickled in the driver process")
    assert result.results["fine"] == {"ok": [1, 2.5, "x"]}


# --------------------------------------------------------------------------- dead workers


def test_segfault_without_retries_fails_the_task_and_the_run_goes_on(write_module):
    path = write_module("""
        import ctypes
        import faulthandler
        from flowdeco import task

        @task(priority=1)
        def segv():
            faulthandler.disable()   # inherited from pytest: keep the test output quiet
            ctypes.string_at(0)

        @task
        def downstream(segv):
            return 1

        @task
        def later():
            return "still runs"
    """)
    result = run_flow(str(path), workers=1, executor="process", fail_after=TIMEOUT)
    oc = result.outcomes
    assert oc["segv"].status == "failed"
    assert oc["segv"].attempts == 1
    assert oc["segv"].error.startswith("WorkerCrashed: worker process ")
    assert oc["segv"].error.endswith("died (exit code -11, SIGSEGV) while running task 'segv'")
    assert isinstance(oc["segv"].exception, WorkerCrashed)
    assert (oc["downstream"].status, oc["downstream"].reason) == ("skipped", "upstream")
    assert result.results["later"] == "still runs"


# attempts in flight beside a crash: tests/test_process_crash.py


def _crash():
    os._exit(7)


def _pid():
    return os.getpid()


def test_process_executor_replaces_a_broken_pool():
    ex = ProcessExecutor(2)
    try:
        first = ex.submit(_pid).result(TIMEOUT)
        with pytest.raises(WorkerCrashed, match=r"died \(exit code 7\)"):
            ex.submit(_crash).result(TIMEOUT)
        assert ex.rebuilds == 0                     # replaced lazily, on the next submit
        assert ex.submit(_pid).result(TIMEOUT) not in (first, os.getpid())
        assert ex.rebuilds == 1
    finally:
        ex.shutdown()
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.submit(_pid)


def test_a_broken_pool_you_own_fails_attempts_instead_of_the_run(write_module):
    path = write_module("""
        import os
        from flowdeco import task

        @task(priority=1)
        def dies():
            os._exit(1)

        @task(retries=2)
        def next_one():
            return 1
    """)
    pool = ProcessPoolExecutor(1)
    try:
        result = run_flow(str(path), executor=pool, workers=1, fail_after=TIMEOUT)
    finally:
        pool.shutdown()
    oc = result.outcomes
    assert oc["dies"].error.startswith("WorkerCrashed: the worker pool broke (")
    assert oc["dies"].error.endswith("while running task 'dies'")
    # the pool is the caller's: flowdeco cannot replace it, so what follows fails too
    assert oc["next_one"].status == "failed"
    assert oc["next_one"].attempts == 3
    assert oc["next_one"].error.startswith("WorkerCrashed: the worker pool broke")


# --------------------------------------------------------------------------- Ctrl-C


def test_ctrl_c_on_the_process_group_lets_in_flight_attempts_finish(write_module, tmp_path):
    markers = tmp_path / "m"
    markers.mkdir()
    path = write_module(f"""
        import time
        from pathlib import Path
        from flowdeco import task

        D = Path({str(markers)!r})

        @task
        def slow():
            (D / "started").write_text("")
            while not (D / "release").exists():
                time.sleep(0.01)
            return 1

        @task
        def then(slow):
            (D / "then").write_text("")
            return 2
    """)
    proc = subprocess.Popen([sys.executable, "-m", "flowdeco", str(path), "--executor",
                             "process", "-w", "1", "--state-dir", str(tmp_path / "st"),
                             "--run-id", "sig"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + TIMEOUT
        while not (markers / "started").exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGINT)   # what a terminal's Ctrl-C does
        time.sleep(0.5)
        (markers / "release").write_text("")
        out, err = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 2, (out, err)
    assert not (markers / "then").exists()
    events = audit(tmp_path / "st", "sig")
    done = [e for e in events if e.get("task") == "slow" and e["event"] != "task_started"]
    assert [e["event"] for e in done] == ["task_succeeded"], events


# --------------------------------------------------------------------------- batching


class CountingExecutor(ProcessExecutor):
    """Records how many attempts each submission carried."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.sizes = []

    def submit(self, fn, /, *args, **kwargs):
        self.sizes.append(len(args[0]) if fn.__name__ == "call_batch" else 1)
        return super().submit(fn, *args, **kwargs)


class TestProcessConformance(ExecutorConformance):
    fail_after = TIMEOUT
    remote = True
    batches = True
    dead_worker_error = (r"WorkerCrashed: worker process {pid} died \(exit code 1\) "
                         r"while running task 'crash'")

    @pytest.fixture
    def executor(self):
        return "process"

    @pytest.fixture
    def counting_executor(self):
        ex = CountingExecutor(2)
        yield ex
        ex.shutdown()


def _expected(n):
    half = n // 2
    return {f"t{i}": i + (i - half if i >= half else 0) for i in range(n)}


def test_batching_off_and_with_exitfirst(write_module, monkeypatch):
    import flowdeco.engine.dispatch as dispatch_mod
    n = 60
    path = write_module(TINY.format(n=n, fail=False))
    for how in ("off", "exitfirst"):
        ex = CountingExecutor(2)
        try:
            if how == "off":
                monkeypatch.setattr(dispatch_mod, "BATCH_MAX", 1)
                result = run_flow(str(path), executor=ex, fail_after=TIMEOUT)
                monkeypatch.undo()
            else:
                result = run_flow(str(path), executor=ex, stop_on_error=True, fail_after=TIMEOUT)
        finally:
            ex.shutdown()
        assert result.results == _expected(n)
        assert ex.sizes == [1] * n, how      # -x: the first failure must stop what follows


def test_slow_tasks_are_not_batched(write_module):
    path = write_module("""
        import time
        from flowdeco import task

        @task
        def root():
            return 0

        def _slow(i):
            def slow(root):
                time.sleep(0.2)
                return i
            slow.__name__ = slow.__qualname__ = f"slow{i}"
            return task(slow)

        for _i in range(6):
            globals()[f"slow{_i}"] = _slow(_i)
    """)
    ex = CountingExecutor(2)
    try:
        result = run_flow(str(path), executor=ex, fail_after=TIMEOUT)
    finally:
        ex.shutdown()
    assert result.ok
    assert ex.sizes == [1] * 7
    # they ran side by side on the two workers: from the first start to the last end
    # took less than their durations added up (relative, so a loaded machine passes)
    slow = [result.outcomes[f"slow{i}"] for i in range(6)]
    span = max(o.finished_at for o in slow) - min(o.started_at for o in slow)
    assert span.total_seconds() < sum(o.duration for o in slow)


def test_errors_are_exported_from_the_package_lazily():
    import flowdeco
    from flowdeco.executors import WorkerCrashed
    from flowdeco.pickling import UnpicklableResult
    assert flowdeco.WorkerCrashed is WorkerCrashed and flowdeco.UnpicklableResult is UnpicklableResult
    assert {"WorkerCrashed", "UnpicklableResult"} <= set(flowdeco.__all__)
