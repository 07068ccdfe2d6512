"""The ``process`` executor: what must pickle (checked at collection), dead workers, results."""

from __future__ import annotations

import json
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

from flowdeco import CollectionError, run, task
from flowdeco import cli
from flowdeco.executors import ProcessExecutor, WorkerCrashed
from flowdeco.testing import within

TIMEOUT = 60.0


def go(target, timeout=TIMEOUT, **kw):
    """``run`` in a helper thread, so a hanging engine fails the test instead of the suite."""
    kw.setdefault("state_dir", None)
    kw.setdefault("executor", "process")
    return within(timeout, run, target, **kw)


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
        go(str(path))
    msg = str(info.value)
    assert msg.startswith(f"task {name!r} cannot run on the process executor: it ")
    assert why in msg
    # the same flow runs on threads
    assert go(str(path), executor="thread").ok


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
        go(str(path), params={"lock": threading.Lock()})


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
        go([make()])


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
            go([mod.made], executor=spawn)
        spawn.shutdown()
        # forked workers inherit the module: it runs
        fork = ProcessExecutor(1, mp_context=multiprocessing.get_context("fork"))
        try:
            assert go([mod.made], executor=fork).results == {"made": 42}
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
    assert go([double], executor="thread").results == {"double": 2}
    assert go([double], executor="sync").results == {"double": 2}


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
    result = go(str(write_module(RESULTS)), workers=2)
    oc = result.outcomes
    assert oc["lock"].status == "failed"
    assert oc["lock"].error.startswith(
        "UnpicklableResult: task 'lock' returned a _thread.lock, which cannot be pickled")
    assert (oc["uses_lock"].status, oc["uses_lock"].reason) == ("skipped", "upstream")
    assert oc["odd"].status == "failed"
    assert oc["odd"].error.startswith("UnpicklableResult: task 'odd' returned a result that "
                                      "cannot be unpickled in the driver process")
    assert result.results["fine"] == {"ok": [1, 2.5, "x"]}


def test_times_are_on_the_drivers_clock(write_module):
    path = write_module("""
        import time
        from flowdeco import task

        @task
        def nap():
            time.sleep(0.2)
            return 1
    """)
    result = go(str(path))
    out = result.outcomes["nap"]
    assert 0.2 <= out.duration < 5
    assert abs((out.finished_at - out.started_at).total_seconds() - out.duration) < 1e-3
    # the worker's own clock is not used for timestamps: they fall inside the run
    assert result.started - 1e-3 <= out.started_at.timestamp()
    assert out.finished_at.timestamp() <= result.finished + 1e-3


# --------------------------------------------------------------------------- dead workers


CRASH = """
    import os
    import time
    from pathlib import Path
    from flowdeco import task

    D = Path({markers!r})

    @task(retries=1)
    def crash():
        # the first attempt kills its worker process; the second finds the marker
        marker = D / "crashed"
        if not marker.exists():
            marker.write_text(str(os.getpid()))
            os._exit(1)
        return os.getpid()

    @task
    def after(crash):
        return crash

    @task
    def independent():
        return "fine"
"""


def _audit(state_dir, run_id):
    path = state_dir / "runs" / run_id / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_dead_worker_fails_only_its_attempt(write_module, tmp_path):
    markers = tmp_path / "m"
    markers.mkdir()
    path = write_module(CRASH.format(markers=str(markers)))
    st = tmp_path / "st"
    result = go(str(path), workers=1, state_dir=st, run_id="crash")
    assert result.ok, result.outcomes
    oc = result.outcomes
    dead = int((markers / "crashed").read_text())
    assert oc["crash"].attempts == 2
    assert result.results["after"] == result.results["crash"] != dead
    assert result.results["independent"] == "fine"
    retrying = [e for e in _audit(st, "crash") if e["event"] == "task_retrying"]
    assert [e["task"] for e in retrying] == ["crash"]
    assert retrying[0]["error"] == (f"WorkerCrashed: worker process {dead} died (exit code 1) "
                                    "while running task 'crash'")


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
    result = go(str(path), workers=1)
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
        result = go(str(path), executor=pool, workers=1)
    finally:
        pool.shutdown()
    oc = result.outcomes
    assert oc["dies"].error.startswith("WorkerCrashed: the worker pool broke (")
    assert oc["dies"].error.endswith("while running task 'dies'")
    # the pool is the caller's: flowdeco cannot replace it, so what follows fails too
    assert oc["next_one"].status == "failed"
    assert oc["next_one"].attempts == 3
    assert oc["next_one"].error.startswith("WorkerCrashed: the worker pool broke")


# --------------------------------------------------------------------------- like threads


DAG = """
    import os
    from pathlib import Path
    from flowdeco import task

    COUNTER = Path({counter!r})

    @task
    def a():
        return 1

    @task
    def b(a):
        return a + 1

    @task
    def c(a):
        return a * 10

    @task(retries=2)
    def flaky(b, c, ctx):
        # a file-based counter: worker processes share no memory
        n = int(COUNTER.read_text()) + 1 if COUNTER.exists() else 1
        COUNTER.write_text(str(n))
        ctx.log.info("trying", n=n)
        if n < 3:
            raise ValueError(f"attempt {{n}}")
        return b + c

    @task
    def broken(a):
        raise KeyError("nope")

    @task
    def never(broken):
        return 0
"""


def _shape(events):
    """Per task, its events in order with the fields that do not depend on timing."""
    keep = ("attempt", "attempts", "error", "reason", "status", "n", "delay")
    out: dict = {}
    for e in events:
        out.setdefault(e.get("task"), []).append(
            (e["event"],) + tuple((k, e[k]) for k in keep if k in e))
    return out


@pytest.mark.parametrize("executor", ["process"])
def test_dag_retries_and_audit_match_threads(write_module, tmp_path, executor):
    results = {}
    shapes = {}
    for ex in ("thread", executor):
        counter = tmp_path / f"counter-{ex}"
        path = write_module(DAG.format(counter=str(counter)))
        st = tmp_path / f"st-{ex}"
        result = go(str(path), executor=ex, workers=2, state_dir=st, run_id="same")
        results[ex] = ({k: (o.status, o.attempts, o.error, o.reason)
                        for k, o in result.outcomes.items()}, result.results, result.status)
        shapes[ex] = _shape(_audit(st, "same"))
    assert results["thread"] == results[executor]
    assert results[executor][1]["flaky"] == 12
    assert shapes["thread"] == shapes[executor]
    assert ("task_retrying", ("attempt", 1), ("error", "ValueError: attempt 1"),
            ("delay", 0.0)) in shapes[executor]["flaky"]


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
    events = _audit(tmp_path / "st", "sig")
    done = [e for e in events if e.get("task") == "slow" and e["event"] != "task_started"]
    assert [e["event"] for e in done] == ["task_succeeded"], events


# --------------------------------------------------------------------------- batching


TINY = """
    from flowdeco import task

    def _tiny(i, deps):
        def tiny(ctx, **kw):
            if {fail!r} and i % 7 == 3 and ctx.attempt == 1:
                raise ValueError(f"first try of {{i}}")
            if i % 50 == 0:
                ctx.log.info("note", i=i)
            return i + sum(kw.values())
        name = f"t{{i}}"
        tiny.__name__ = tiny.__qualname__ = name
        # parameters named after upstream tasks: rebuild the signature
        import inspect
        tiny.__signature__ = inspect.Signature(
            [inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
            + [inspect.Parameter(d, inspect.Parameter.KEYWORD_ONLY) for d in deps])
        return task(retries=1)(tiny)

    for _i in range({n}):
        _deps = [f"t{{_i - {n} // 2}}"] if _i >= {n} // 2 else []
        _f = _tiny(_i, _deps)
        globals()[_f.__name__] = _f
"""


class CountingExecutor(ProcessExecutor):
    """Records how many attempts each submission carried."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.sizes = []

    def submit(self, fn, /, *args, **kwargs):
        self.sizes.append(len(args[0]) if fn.__name__ == "call_batch" else 1)
        return super().submit(fn, *args, **kwargs)


def _expected(n):
    half = n // 2
    out = {f"t{i}": i for i in range(half)}
    out.update({f"t{i}": i + (i - half) for i in range(half, n)})
    return out


@pytest.mark.parametrize("fail", [False, True], ids=["ok", "retries"])
def test_tiny_tasks_are_batched_and_report_like_single_attempts(write_module, tmp_path, fail):
    n = 400
    path = write_module(TINY.format(n=n, fail=fail))
    ex = CountingExecutor(2)
    st = tmp_path / "st"
    try:
        result = go(str(path), executor=ex, state_dir=st, run_id="tiny")
    finally:
        ex.shutdown()
    assert result.ok, {k: o.error for k, o in result.outcomes.items() if o.error}
    assert result.results == _expected(n)
    assert sum(ex.sizes) == n + (len([i for i in range(n) if i % 7 == 3]) if fail else 0)
    assert max(ex.sizes) > 10 and len(ex.sizes) < n / 4, ex.sizes
    # each attempt is reported as if it ran alone: started, then succeeded/retrying
    per_task: dict = {}
    for e in _audit(st, "tiny"):
        if e.get("task"):
            per_task.setdefault(e["task"], []).append(e["event"])
    for i in range(n):
        events = per_task[f"t{i}"]
        first = ["task_started", "task_retrying"] if fail and i % 7 == 3 else []
        note = ["note"] if i % 50 == 0 else []
        assert events == first + ["task_started"] + note + ["task_succeeded"], (i, events)
        assert result.outcomes[f"t{i}"].attempts == (2 if fail and i % 7 == 3 else 1)


def test_batching_off_and_with_exitfirst(write_module, monkeypatch):
    import flowdeco.engine.dispatch as dispatch_mod
    n = 60
    path = write_module(TINY.format(n=n, fail=False))
    for how in ("off", "exitfirst"):
        ex = CountingExecutor(2)
        try:
            if how == "off":
                monkeypatch.setattr(dispatch_mod, "BATCH_MAX", 1)
                result = go(str(path), executor=ex)
                monkeypatch.undo()
            else:
                result = go(str(path), executor=ex, stop_on_error=True)
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
        t0 = time.monotonic()
        result = go(str(path), executor=ex)
        wall = time.monotonic() - t0
    finally:
        ex.shutdown()
    assert result.ok
    assert ex.sizes == [1] * 7
    assert wall < 0.6 * 3 + 2


def test_errors_are_exported_from_the_package_lazily():
    import flowdeco
    from flowdeco.executors import WorkerCrashed
    from flowdeco.pickling import UnpicklableResult
    assert flowdeco.WorkerCrashed is WorkerCrashed and flowdeco.UnpicklableResult is UnpicklableResult
    assert {"WorkerCrashed", "UnpicklableResult"} <= set(flowdeco.__all__)
