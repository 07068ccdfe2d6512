"""flowdeco's thread pool and attempt deadlines on it (the thread executor's timeouts)."""

from __future__ import annotations

import threading
import time

import pytest

from flowdeco import TaskTimeout, run, task
from flowdeco.threadpool import ThreadPool

# --------------------------------------------------------------------------- the pool


def test_results_exceptions_and_daemon_threads():
    pool = ThreadPool(2, thread_name_prefix="tp-test")
    try:
        assert pool.submit(lambda a, b=0: a + b, 1, b=2).result(timeout=5) == 3
        fut = pool.submit(lambda: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            fut.result(timeout=5)
        names = {pool.submit(lambda: threading.current_thread()).result(timeout=5)
                 for _ in range(20)}
        assert all(t.daemon and t.name.startswith("tp-test_") for t in names)
    finally:
        pool.shutdown()
    with pytest.raises(RuntimeError, match="after shutdown"):
        pool.submit(print)


def test_never_more_threads_than_max_workers():
    pool = ThreadPool(3)
    gate = threading.Event()
    running = []
    lock = threading.Lock()

    def job():
        with lock:
            running.append(threading.current_thread().name)
        gate.wait(5)

    futs = [pool.submit(job) for _ in range(10)]
    deadline = time.monotonic() + 5
    while len(running) < 3 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert len(running) == 3 and len(pool._threads) == 3
    gate.set()
    for f in futs:
        f.result(timeout=5)
    assert len(set(running)) == 3
    pool.shutdown()


def test_a_given_up_thread_is_replaced_and_not_waited_for():
    pool = ThreadPool(1)
    release = threading.Event()
    stuck = pool.submit(lambda: (release.wait(10), threading.current_thread())[1])
    queued = pool.submit(lambda: "ran")
    time.sleep(0.05)
    assert not queued.done()  # the only thread is busy
    stuck_thread = next(iter(pool._threads))
    pool.give_up(stuck_thread)  # a replacement starts for the queued job
    assert queued.result(timeout=5) == "ran"
    t0 = time.monotonic()
    pool.shutdown(wait=True)
    assert time.monotonic() - t0 < 2  # the given-up thread is not joined
    release.set()
    assert stuck.result(timeout=5) is stuck_thread
    stuck_thread.join(5)
    assert not stuck_thread.is_alive()  # it ended when its call returned


def test_shutdown_can_cancel_queued_jobs():
    pool = ThreadPool(1)
    gate = threading.Event()
    first = pool.submit(gate.wait, 5)
    later = [pool.submit(lambda: 1) for _ in range(3)]
    pool.shutdown(wait=False, cancel_futures=True)
    gate.set()
    assert first.result(timeout=5) is True
    assert all(f.cancelled() for f in later)


# --------------------------------------------------------------------------- deadlines


def test_a_timed_out_attempt_runs_on_its_worker_and_its_thread_is_replaced():
    seen = {}
    release = threading.Event()

    @task(timeout=0.1)
    def hangs():
        seen["hangs"] = threading.current_thread().name
        release.wait(10)

    @task
    def other():
        seen["other"] = threading.current_thread().name
        return "ok"

    run([other], state_dir=None)  # warm-up: the first run in a process loads plugins
    t0 = time.monotonic()
    result = run([hangs, other], state_dir=None, workers=1)
    wall = time.monotonic() - t0
    release.set()
    assert result["hangs"].status == "failed"
    assert isinstance(result["hangs"].exception, TaskTimeout)
    assert result["other"].status == "succeeded"
    # no hand-off to a helper thread: the attempt ran on a pool worker...
    assert seen["hangs"].startswith("flowdeco-worker_")
    # ...and with one worker, "other" ran on a fresh thread right after the timeout
    assert seen["other"] != seen["hangs"]
    assert wall < 5


def test_a_timed_out_attempt_is_retried_and_its_late_end_is_ignored():
    calls = []
    release = threading.Event()

    @task(timeout=0.1, retries=1)
    def flaky():
        calls.append(threading.current_thread().name)
        if len(calls) == 1:
            release.wait(10)
            return "late"
        return "second"

    result = run([flaky], state_dir=None)
    release.set()
    assert result.results["flaky"] == "second" and result["flaky"].attempts == 2
    assert result["flaky"].error is None


def test_a_thread_given_up_after_taking_a_queued_job_is_replaced_for_the_next():
    """A job queued while the only thread was busy is taken by that thread when it
    finishes; giving that thread up must not leave the pool believing it has an idle
    thread (the next job then waited forever: a hung run after a timed-out attempt)."""
    pool = ThreadPool(1)
    first, second_started, release = threading.Event(), threading.Event(), threading.Event()
    threads = []

    def second():
        threads.append(threading.current_thread())
        second_started.set()
        release.wait(10)

    try:
        pool.submit(first.wait, 10)
        pool.submit(second)               # queued: the one thread is busy
        first.set()
        assert second_started.wait(5)     # the same thread took the queued job
        pool.give_up(threads[0])          # ... and overran it
        assert pool.submit(lambda: 3).result(timeout=5) == 3
    finally:
        release.set()
        pool.shutdown(wait=False)


class _CountingCond:
    def __init__(self):
        self.notified = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def notify(self):
        self.notified += 1


def test_arming_wakes_the_watchdog_only_when_it_must_look_earlier():
    """Arming is lock-free unless the attempt is due before the watchdog's next look
    or the watchdog is scanning (it would miss the new slot): then it is notified."""
    import flowdeco
    from flowdeco import deadlines
    from flowdeco.deadlines import Watchdog

    def late(name):
        return TaskTimeout(f"{name} is late")

    wd = Watchdog(lambda armed: None)  # (not started: its state is driven by hand)
    wd._cond = cond = _CountingCond()
    me = threading.current_thread()
    now = time.monotonic()
    wd._wake = deadlines._SCANNING
    wd.arm(0, 1, None, now, me, flowdeco.Deadline(1000.0, late), now=now)
    assert cond.notified == 1  # scanning: always told
    wd._wake = now + 10.0
    wd.arm(0, 1, None, now, me, flowdeco.Deadline(1000.0, late), now=now)
    assert cond.notified == 1  # due after its next look: no lock, no wake-up
    armed = wd.arm(0, 1, None, now, me, flowdeco.Deadline(5.0, late), now=now)
    assert cond.notified == 2  # due before its next look
    assert armed[0] == now + 5.0 and wd._slots[me] is armed
    assert Watchdog.disarm(armed) and not Watchdog.disarm(armed)
