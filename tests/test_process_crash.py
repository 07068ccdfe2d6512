"""The ``process`` executor under crashes: a killed driver, and workers that die.

- A driver killed with SIGKILL (as the OOM killer would) leaves no worker
  running its tasks and no worker holding the run's lock: the workers notice
  their parent is gone and exit, and ``--resume`` is accepted at once.
- A worker process that dies fails only the attempt it was running; the
  attempts that merely shared its (now broken) pool run again in a new pool
  without using up an attempt.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flowdeco.executors import MAX_UNEXPLAINED_RESENDS, ProcessExecutor, WorkerCrashed
from flowdeco.plugins.state import RunLock
from flowdeco.testing import run_flow

TIMEOUT = 60.0


def _audit(state_dir: Path, run_id: str) -> list[dict]:
    path = state_dir / "runs" / run_id / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie nobody reaped yet counts as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("State:"):
                return "Z" not in line.split()[1]
    except OSError:
        return False
    return True


# --------------------------------------------------------------------------- killed driver


def _hold_on(conn) -> None:
    conn.send(os.getpid())
    conn.recv()


def test_a_forked_child_never_holds_the_run_lock(tmp_path):
    """flock belongs to the open file: a forked child keeping the descriptor keeps the lock."""
    where = tmp_path / "locks" / "r.lock"
    lock = RunLock(where, "r", str(tmp_path))
    ctx = multiprocessing.get_context("fork")
    mine, theirs = ctx.Pipe()
    child = ctx.Process(target=_hold_on, args=(theirs,))
    child.start()
    try:
        assert mine.recv() == child.pid          # the child runs (past the fork handlers)
        assert RunLock.held(where)
        os.close(lock.fd)                        # the driver dies: the kernel closes its files
        lock.fd = None
        assert not RunLock.held(where), "a forked child kept the run lock"
    finally:
        mine.send(None)
        child.join(TIMEOUT)


SLOW = """
    import os
    import time
    from pathlib import Path
    from flowdeco import task

    D = Path({markers!r})

    def _slow(name):
        def body():
            (D / f"pid.{{os.getpid()}}").write_text(name)
            end = time.monotonic() + 60     # bounded, should the fix not work
            while not (D / "release").exists() and time.monotonic() < end:
                time.sleep(0.01)
            (D / f"done.{{name}}.{{os.getpid()}}").write_text("")
            return name
        body.__name__ = body.__qualname__ = name
        return task(body)

    for _n in ("s0", "s1", "s2", "s3"):
        globals()[_n] = _slow(_n)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc for zombies")
def test_killed_driver_leaves_no_worker_and_the_run_resumes(write_module, tmp_path):
    markers = tmp_path / "m"
    markers.mkdir()
    path = write_module(SLOW.format(markers=str(markers)))
    st = tmp_path / "st"
    cmd = [sys.executable, "-m", "flowdeco", str(path), "--executor", "process", "-w", "2",
           "--state-dir", str(st)]
    # output to a file: the workers inherit it, and a pipe would stay open while they live
    log = open(tmp_path / "driver.log", "w")
    proc = subprocess.Popen(cmd + ["--run-id", "killed"], cwd=tmp_path, stdout=log,
                            stderr=subprocess.STDOUT)
    log.close()
    pids: list[int] = []
    try:
        deadline = time.monotonic() + TIMEOUT
        while len(list(markers.glob("pid.*"))) < 2:
            assert proc.poll() is None and time.monotonic() < deadline, \
                (tmp_path / "driver.log").read_text()
            time.sleep(0.01)
        pids = [int(p.name.split(".")[1]) for p in markers.glob("pid.*")]
        proc.send_signal(signal.SIGKILL)          # the driver only, as the OOM killer would
        proc.wait(TIMEOUT)
        deadline = time.monotonic() + 10
        while any(_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [p for p in pids if _alive(p)], "worker processes outlived the killed run"
        assert not list(markers.glob("done.*"))   # no attempt went on to finish
        (markers / "release").write_text("")
        resumed = subprocess.run(cmd + ["--resume", "killed"], cwd=tmp_path,
                                 capture_output=True, text=True, timeout=TIMEOUT)
        assert resumed.returncode == 0, (resumed.stdout, resumed.stderr)
        assert "in use by another process" not in resumed.stderr
        ends = [e for e in _audit(st, "killed") if e["event"] == "task_succeeded"]
        assert sorted(e["task"] for e in ends) == ["s0", "s1", "s2", "s3"]
    finally:
        if proc.poll() is None:
            proc.kill()
        for p in pids:
            if _alive(p):
                os.kill(p, signal.SIGKILL)


# --------------------------------------------------------------------------- dead workers


BESIDE = """
    import os
    import time
    from pathlib import Path
    from flowdeco import task

    D = Path({markers!r})

    def _bystander(name):
        def body():
            # how often this attempt started: the pool it first ran in breaks under it
            n = len(list(D.glob(f"run.{{name}}.*"))) + 1
            (D / f"run.{{name}}.{{n}}").write_text(str(os.getpid()))
            if n == 1:
                end = time.monotonic() + 30      # killed with the broken pool long before
                while time.monotonic() < end:
                    time.sleep(0.01)
            return n
        body.__name__ = body.__qualname__ = name
        return task(body)

    a = _bystander("a")
    b = _bystander("b")

    @task
    def killer():
        while not ((D / "run.a.1").exists() and (D / "run.b.1").exists()):
            time.sleep(0.01)
        os._exit(1)
"""


def test_a_dying_worker_fails_only_the_attempt_it_ran(write_module, tmp_path):
    markers = tmp_path / "m"
    markers.mkdir()
    path = write_module(BESIDE.format(markers=str(markers)))
    st = tmp_path / "st"
    t0 = time.monotonic()
    result = run_flow(str(path), workers=3, state_dir=st, run_id="beside", executor="process",
                      fail_after=TIMEOUT)
    assert time.monotonic() - t0 < 25
    oc = result.outcomes
    assert (oc["killer"].status, oc["killer"].attempts) == ("failed", 1)
    assert oc["killer"].error.startswith("WorkerCrashed: worker process ")
    assert oc["killer"].error.endswith("died (exit code 1) while running task 'killer'")
    for name in ("a", "b"):
        assert (oc[name].status, oc[name].attempts) == ("succeeded", 1), oc[name]
        assert result.results[name] == 2      # ran again in the new pool
    events = _audit(st, "beside")
    assert not [e for e in events if e["event"] == "task_retrying"]
    assert [e["task"] for e in events if e["event"] == "task_failed"] == ["killer"]


REPEAT = """
    import os
    import time
    from pathlib import Path
    from flowdeco import task

    D = Path({markers!r})

    @task
    def innocent():
        n = len(list(D.glob("inn.*"))) + 1
        (D / f"inn.{{n}}").write_text("")
        if n <= 3:                              # the killer's three attempts break its pool
            end = time.monotonic() + 30
            while time.monotonic() < end:
                time.sleep(0.01)
        return n

    @task(retries=2)
    def killer(ctx):
        end = time.monotonic() + 30
        while not (D / f"inn.{{ctx.attempt}}").exists() and time.monotonic() < end:
            time.sleep(0.01)
        os._exit(9)
"""


def test_a_task_killing_its_worker_every_time_uses_up_its_retries_only(write_module, tmp_path):
    markers = tmp_path / "m"
    markers.mkdir()
    path = write_module(REPEAT.format(markers=str(markers)))
    st = tmp_path / "st"
    t0 = time.monotonic()
    result = run_flow(str(path), workers=2, state_dir=st, run_id="repeat", executor="process",
                      fail_after=TIMEOUT)
    assert time.monotonic() - t0 < 25
    oc = result.outcomes
    assert (oc["killer"].status, oc["killer"].attempts) == ("failed", 3)
    assert oc["killer"].error.endswith("died (exit code 9) while running task 'killer'")
    assert (oc["innocent"].status, oc["innocent"].attempts) == ("succeeded", 1)
    assert result.results["innocent"] == 4
    retrying = [e["task"] for e in _audit(st, "repeat") if e["event"] == "task_retrying"]
    assert retrying == ["killer", "killer"]


def _wait_for(path: str) -> int:
    end = time.monotonic() + 30
    Path(path, "started").write_text(str(os.getpid()))
    while not Path(path, "go").exists() and time.monotonic() < end:
        time.sleep(0.01)
    return os.getpid()


def test_an_idle_worker_dying_costs_the_calls_in_flight_nothing(tmp_path):
    """No call was running in the dead process: every call in flight is sent again."""
    ex = ProcessExecutor(2)
    try:
        fut = ex.submit(_wait_for, str(tmp_path))
        deadline = time.monotonic() + TIMEOUT
        while not (tmp_path / "started").exists():
            assert time.monotonic() < deadline
            time.sleep(0.01)
        busy = int((tmp_path / "started").read_text())
        (tmp_path / "started").unlink()
        procs = list(ex._pool.executor._processes)
        idle = [pid for pid in procs if pid != busy]
        assert len(idle) == 1, procs
        os.kill(idle[0], signal.SIGKILL)
        while not (tmp_path / "started").exists():
            assert time.monotonic() < deadline and not fut.done()
            time.sleep(0.01)
        (tmp_path / "go").touch()
        assert fut.result(TIMEOUT) not in procs
        assert ex.rebuilds == 1
    finally:
        ex.shutdown()


class _ExitWhenUnpickled:
    """Kills the worker while it unpickles the call: before anything records what it runs."""

    def __reduce__(self):
        return (os._exit, (5,))


def test_a_call_that_kills_workers_unnoticed_is_not_resent_forever():
    ex = ProcessExecutor(1)
    try:
        with pytest.raises(WorkerCrashed, match=r"died \(exit code 5\)"):
            ex.submit(_wait_for, _ExitWhenUnpickled()).result(TIMEOUT)
        assert ex.rebuilds == MAX_UNEXPLAINED_RESENDS
    finally:
        ex.shutdown()
