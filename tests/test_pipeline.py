"""Pipelines on their own: ordering, streaming, bounded memory, batching, failures, retries.

Synchronisation between stages uses Events and counters with generous
timeouts, never sleeps: a test that would deadlock without the property it
checks fails on the timeout instead.
"""

from __future__ import annotations

import itertools
import os
import signal
import threading
import time

import pytest

from flowdeco import Pipeline, PipelineResult, Retry, TaskDefinitionError, TaskTimeout, UsageError
from flowdeco.pipeline import BatchSizeError, ItemError, PipelineStopped

WAIT = 10.0  # seconds: generous, only reached when the property under test is broken


def wait_for(event: threading.Event, what: str) -> None:
    assert event.wait(WAIT), f"timed out waiting for {what}"


# --------------------------------------------------------------------------- basics


def test_three_stages_in_declaration_order():
    pipe = Pipeline("basic")

    @pipe.stage
    def parse(line):
        return int(line)

    @pipe.stage(workers=3)
    def square(n):
        return n * n

    @pipe.stage(workers=1)
    def fmt(n):
        return f"<{n}>"

    result = pipe.run(str(i) for i in range(500))
    assert isinstance(result, PipelineResult)
    assert result.outputs == [f"<{i * i}>" for i in range(500)]
    assert result.errors == [] and result.ok and not result.stopped
    assert [s.name for s in pipe.stages] == ["parse", "square", "fmt"]
    assert list(result) == result.outputs
    m = result.metrics
    assert (m.items, m.outputs, m.failed) == (500, 500, 0)
    assert list(m.stages) == ["parse", "square", "fmt"]
    assert m.stages["square"].workers == 3
    assert all(s.items_in == s.items_out == 500 for s in m.stages.values())


def test_stage_functions_stay_plain():
    pipe = Pipeline("plain")

    @pipe.stage(workers=4, retries=2)
    def double(x):
        return 2 * x

    assert double(21) == 42


def test_empty_source_and_reuse():
    pipe = Pipeline("reuse")
    pipe.stage(lambda x: x + 1, name="inc")
    assert pipe.run([]).outputs == []
    assert pipe.run(range(3)).outputs == [1, 2, 3]
    assert pipe.run(range(3)).outputs == [1, 2, 3]  # a pipeline runs any number of times


def test_declaration_errors():
    with pytest.raises(TaskDefinitionError, match="queue_size"):
        Pipeline("p", queue_size=0)
    pipe = Pipeline("p")
    with pytest.raises(TaskDefinitionError, match="workers must be an int >= 1"):
        pipe.stage(lambda x: x, name="a", workers=0)
    with pytest.raises(TaskDefinitionError, match="batch_size"):
        pipe.stage(lambda x: x, name="a", batch_size=0)
    with pytest.raises(TaskDefinitionError, match="either retries= or retry="):
        pipe.stage(lambda x: x, name="a", retries=1, retry=Retry(retries=1))
    with pytest.raises(TaskDefinitionError, match="timeout"):
        pipe.stage(lambda x: x, name="a", timeout=-1)
    with pytest.raises(TaskDefinitionError, match="no usable name"):
        pipe.stage(lambda x: x)
    pipe.stage(lambda x: x, name="a")
    with pytest.raises(TaskDefinitionError, match="already exists"):
        pipe.stage(lambda x: x, name="a")
    with pytest.raises(UsageError, match="no stages"):
        Pipeline("empty").run([1])
    with pytest.raises(UsageError, match="must be iterable"):
        pipe.run(42)


# --------------------------------------------------------------------------- order


def _out_of_order_pipeline(ordered: bool) -> tuple[Pipeline, threading.Event]:
    """Item 0 leaves stage 1 only after stage 2 has seen item 3 (so 3 overtakes 0)."""
    pipe = Pipeline("order", ordered=ordered)
    saw3 = threading.Event()

    @pipe.stage(workers=4)
    def first(x):
        if x == 0:
            wait_for(saw3, "item 3 to reach stage 2 while item 0 is still in stage 1")
        return x

    @pipe.stage(workers=1)
    def second(x):
        if x == 3:
            saw3.set()
        return x * 10

    return pipe, saw3


def test_ordered_restores_input_order_when_items_overtake():
    pipe, saw3 = _out_of_order_pipeline(ordered=True)
    result = pipe.run(range(200))
    assert saw3.is_set()
    assert result.outputs == [x * 10 for x in range(200)]


def test_unordered_gives_completion_order():
    pipe, saw3 = _out_of_order_pipeline(ordered=False)
    result = pipe.run(range(200))
    assert saw3.is_set()
    assert sorted(result.outputs) == [x * 10 for x in range(200)]
    assert result.outputs.index(30) < result.outputs.index(0)


# --------------------------------------------------------------------------- streaming


def test_streaming_stage_two_works_while_stage_one_is_on_later_items():
    pipe = Pipeline("stream")
    stage2_has_item0 = threading.Event()
    stage1_on_item1 = threading.Event()

    @pipe.stage(workers=1)
    def one(x):
        if x == 1:
            stage1_on_item1.set()
            # stage 1 cannot finish item 1 until stage 2 has started item 0
            wait_for(stage2_has_item0, "stage 2 to start item 0 while stage 1 works on item 1")
        return x

    @pipe.stage(workers=1)
    def two(x):
        if x == 0:
            stage2_has_item0.set()
            wait_for(stage1_on_item1, "stage 1 to be on item 1")
        return x

    assert pipe.run(range(5)).outputs == [0, 1, 2, 3, 4]


def test_source_is_consumed_lazily_while_stages_work():
    pipe = Pipeline("lazy", queue_size=4)
    first_done = threading.Event()
    pulled = []

    @pipe.stage(workers=1)
    def work(x):
        if x == 0:
            first_done.set()
        return x

    def source():
        for i in range(50):
            if i == 20:
                # item 0 has gone through before the source reached item 20
                wait_for(first_done, "item 0 to be processed before the source is drained")
            pulled.append(i)
            yield i

    assert pipe.run(source()).outputs == list(range(50))


def test_bounded_source_consumption_with_a_million_items():
    """pulled - finished never exceeds the pipeline's window, whatever the source's length."""
    pipe = Pipeline("bounded", queue_size=50)
    state = {"finished": 0}
    lock = threading.Lock()

    @pipe.stage(workers=2, batch_size=500)
    def inc(xs):
        return [x + 1 for x in xs]

    @pipe.stage(workers=1, batch_size=500)
    def count(xs):
        with lock:
            state["finished"] += len(xs)
        return xs

    worst = 0

    def source(n):
        nonlocal worst
        for i in range(n):
            gap = i + 1 - state["finished"]   # pulled - finished, as item i is pulled
            if gap > worst:
                worst = gap
            yield i

    result = pipe.run(source(1_000_000))
    assert result.metrics.outputs == 1_000_000
    assert result.outputs[:3] == [1, 2, 3] and result.outputs[-1] == 1_000_000
    assert worst <= pipe.window, (worst, pipe.window)
    assert result.metrics.max_in_flight <= pipe.window
    assert pipe.window < 10_000  # O(queue_size x stages), not O(items)


def test_window_bounds_the_reorder_buffer_behind_one_slow_item():
    """With item 0 stuck, the feeder stops one window ahead of it instead of reading on."""
    pipe = Pipeline("window", queue_size=5)
    release = threading.Event()
    state = {"pulled": 0}

    @pipe.stage(workers=2)
    def slow_first(x):
        if x == 0:
            wait_for(release, "the feeder to fill the window")
        return x

    @pipe.stage(workers=1)
    def passthrough(x):
        return x

    window = pipe.window

    def source():
        for i in itertools.count():
            if i == 5_000:
                return
            if i >= window:
                # a window ahead of the unfinished item 0: never pulled while item 0 is stuck
                assert release.is_set(), f"pulled item {i} while item 0 was unfinished"
            state["pulled"] += 1
            if state["pulled"] == window:
                release.set()  # everything the window allows is out: let item 0 finish
            yield i

    result = pipe.run(source())
    assert result.outputs == list(range(5_000))
    assert result.metrics.max_in_flight <= window


# --------------------------------------------------------------------------- batching


def test_batches_are_full_except_the_last_and_results_keep_order():
    pipe = Pipeline("batch")
    seen: list[int] = []

    @pipe.stage(workers=1)
    def parse(x):
        return x

    @pipe.stage(workers=1, batch_size=10)
    def load(rows):
        seen.append(len(rows))
        return [r * 2 for r in rows]

    result = pipe.run(range(95))
    assert result.outputs == [x * 2 for x in range(95)]
    assert seen == [10] * 9 + [5]
    assert result.metrics.stages["load"].items_in == 95
    assert result.metrics.workers[-1].calls == 10


def test_batch_with_wrong_length_fails_those_items_only():
    pipe = Pipeline("badbatch")

    @pipe.stage(workers=1, batch_size=4)
    def load(rows):
        if 5 in rows:
            return rows[:-1]       # one result short
        return rows

    result = pipe.run(range(12))
    assert result.outputs == [0, 1, 2, 3, 8, 9, 10, 11]
    assert [e.index for e in result.errors] == [4, 5, 6, 7]
    assert {e.stage for e in result.errors} == {"load"}
    assert all(e.error.startswith("BatchSizeError: stage 'load' returned 3 results for a "
                                  "batch of 4 items") for e in result.errors)
    assert isinstance(result.errors[0].exception, BatchSizeError)
    assert [e.item for e in result.errors] == [4, 5, 6, 7]


def test_batch_returning_a_non_sequence_is_an_error():
    pipe = Pipeline("nonseq")
    pipe.stage(lambda rows: None, name="load", batch_size=3)
    result = pipe.run(range(3))
    assert result.outputs == []
    assert "returned a NoneType for a batch of 3 items" in result.errors[0].error


def test_batch_stage_takes_a_partial_batch_when_the_window_is_stalled():
    """A slow item ahead of a batch stage must not deadlock it (window full, batch short)."""
    pipe = Pipeline("stall", queue_size=3)
    release = threading.Event()
    state = {"pulled": 0}

    @pipe.stage(workers=2)
    def slow_first(x):
        if x == 0:
            wait_for(release, "the window to fill")
        return x

    @pipe.stage(workers=1, batch_size=7)
    def batch(xs):
        return xs

    window = pipe.window

    def source():
        for i in range(200):
            state["pulled"] += 1
            if state["pulled"] == window:
                release.set()
            yield i

    assert pipe.run(source()).outputs == list(range(200))


# --------------------------------------------------------------------------- failures


def test_failing_item_is_recorded_and_dropped_and_the_others_go_on():
    pipe = Pipeline("fail")

    @pipe.stage
    def parse(x):
        if x % 10 == 3:
            raise ValueError(f"bad record {x}")
        return x

    @pipe.stage
    def later(x):
        return -x

    result = pipe.run(range(30))
    assert result.outputs == [-x for x in range(30) if x % 10 != 3]
    assert [(e.index, e.item, e.stage, e.error) for e in result.errors] == [
        (3, 3, "parse", "ValueError: bad record 3"),
        (13, 13, "parse", "ValueError: bad record 13"),
        (23, 23, "parse", "ValueError: bad record 23")]
    assert isinstance(result.errors[0], ItemError)
    assert isinstance(result.errors[0].exception, ValueError)
    assert not result.ok
    st = result.metrics.stages
    assert (st["parse"].items_in, st["parse"].items_out, st["parse"].items_failed) == (30, 27, 3)
    assert st["later"].items_in == 27
    assert result.metrics.failed == 3


def test_error_item_is_what_the_failing_stage_received():
    pipe = Pipeline("which")
    pipe.stage(lambda x: {"id": x}, name="wrap")
    pipe.stage(lambda d: 1 / (d["id"] - 2), name="invert")
    result = pipe.run(range(4))
    assert result.errors[0].index == 2 and result.errors[0].item == {"id": 2}
    assert result.errors[0].stage == "invert"


def test_stop_on_error_stops_feeding_and_drains():
    pipe = Pipeline("stop", queue_size=2)
    pulled = []

    @pipe.stage(workers=1)
    def check(x):
        if x == 5:
            raise RuntimeError("stop here")
        return x

    def source():
        for i in range(100_000):
            pulled.append(i)
            yield i

    result = pipe.run(source(), stop_on_error=True)
    assert result.stopped and not result.ok
    assert [e.index for e in result.errors] == [5]
    assert len(pulled) < 100_000
    assert len(pulled) <= 6 + pipe.window
    # everything pulled was either delivered or failed: in-flight items drained
    assert len(result.outputs) + len(result.errors) == len(pulled)
    assert result.outputs == [x for x in range(len(pulled)) if x != 5]


def test_source_error_is_raised_after_draining():
    pipe = Pipeline("srcerr")
    done = []
    pipe.stage(lambda x: done.append(x) or x, name="keep", workers=1)

    def source():
        yield from range(5)
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        pipe.run(source())
    assert sorted(done) == [0, 1, 2, 3, 4]


def test_base_exceptions_in_a_stage_fail_the_item_not_the_pipeline():
    pipe = Pipeline("base")

    @pipe.stage(workers=1)
    def exits(x):
        if x == 1:
            raise SystemExit(3)
        return x

    result = pipe.run(range(3))
    assert result.outputs == [0, 2]
    assert result.errors[0].error == "SystemExit: 3"


# --------------------------------------------------------------------------- retries, timeouts


def test_retries_per_item():
    pipe = Pipeline("retry")
    calls: dict[int, int] = {}
    lock = threading.Lock()

    @pipe.stage(workers=2, retries=2)
    def flaky(x):
        with lock:
            calls[x] = calls.get(x, 0) + 1
            n = calls[x]
        if x % 3 == 0 and n < 3:   # succeeds on the third attempt
            raise ConnectionError("try again")
        if x == 7:
            raise ConnectionError("always")
        return x

    result = pipe.run(range(12))
    assert result.outputs == [x for x in range(12) if x != 7]
    assert [(e.index, e.attempts, e.error) for e in result.errors] == [
        (7, 3, "ConnectionError: always")]
    assert calls[0] == calls[3] == calls[9] == 3 and calls[1] == 1 and calls[7] == 3
    assert result.metrics.stages["flaky"].retries == 4 * 2 + 2


def test_retry_policy_filters_exceptions():
    pipe = Pipeline("on")
    calls = []

    @pipe.stage(workers=1, retry=Retry(retries=3, on=(ConnectionError,)))
    def work(x):
        calls.append(x)
        raise ValueError("not retryable")

    result = pipe.run([1])
    assert calls == [1]
    assert result.errors[0].attempts == 1


def test_retry_wait_does_not_hold_a_stage_worker():
    """While item 0 waits 1 s for its retry, the stage's only worker handles the others."""
    pipe = Pipeline("nohold", queue_size=100)
    first_try = threading.Event()
    others_done = threading.Event()
    order = []

    @pipe.stage(workers=1, retry=Retry(retries=1, delay=1.0))
    def work(x):
        order.append(x)
        if x == 0 and not first_try.is_set():
            first_try.set()
            raise ConnectionError("later")
        if x == 49:
            others_done.set()
        return x

    t0 = time.monotonic()
    result = pipe.run(range(50))
    assert result.outputs == list(range(50))
    assert order[0] == 0 and order[-1] == 0          # retried last, after all the others
    assert order[1:50] == list(range(1, 50))
    assert time.monotonic() - t0 >= 0.9              # the retry did wait its delay


def test_batch_retry_retries_the_whole_batch():
    pipe = Pipeline("batchretry")
    calls = []

    @pipe.stage(workers=1, batch_size=3, retries=1)
    def load(rows):
        calls.append(list(rows))
        if len(calls) == 1:
            raise ConnectionError("db busy")
        return rows

    result = pipe.run(range(3))
    assert result.outputs == [0, 1, 2]
    assert calls == [[0, 1, 2], [0, 1, 2]]


def test_timeout_per_item():
    pipe = Pipeline("timeout")
    release = threading.Event()

    @pipe.stage(workers=2, timeout=0.2)
    def work(x):
        if x == 1:
            release.wait(WAIT)   # stuck until the test ends
        return x

    try:
        result = pipe.run(range(4))
    finally:
        release.set()
    assert result.outputs == [0, 2, 3]
    assert result.errors[0].index == 1
    assert result.errors[0].error.startswith("TaskTimeout: ")
    assert isinstance(result.errors[0].exception, TaskTimeout)


# --------------------------------------------------------------------------- shutdown


def test_keyboard_interrupt_in_the_caller_stops_every_thread():
    pipe = Pipeline("ctrlc", queue_size=2)
    sent = threading.Event()

    @pipe.stage(workers=2)
    def work(x):
        if x == 10 and not sent.is_set():
            sent.set()
            os.kill(os.getpid(), signal.SIGINT)   # Ctrl-C: lands in the calling thread
        return x

    execution = pipe.execution(itertools.count())  # endless: only the abort can end it
    with pytest.raises(KeyboardInterrupt):
        execution.run()
    for t in execution.threads:
        t.join(WAIT)
        assert not t.is_alive(), t.name


def test_source_raising_keyboard_interrupt_ends_the_run_with_it():
    pipe = Pipeline("srcint")
    pipe.stage(lambda x: x, name="work")

    def source():
        yield from range(10)
        raise KeyboardInterrupt

    execution = pipe.execution(source())
    with pytest.raises(KeyboardInterrupt):
        execution.run()
    assert not any(t.is_alive() for t in execution.threads)


def test_abort_wakes_threads_blocked_on_full_queues():
    pipe = Pipeline("abort", queue_size=1)
    gate = threading.Event()
    stuck_entered = threading.Event()

    @pipe.stage(workers=1)
    def stuck(x):
        stuck_entered.set()
        gate.wait(WAIT)
        return x

    execution = pipe.execution(range(1_000))
    errors = []

    def collect():
        try:
            execution.run()
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    collector = threading.Thread(target=collect, daemon=True)
    collector.start()
    wait_for(stuck_entered, "the stage to start")
    # the feeder is now blocked on the full first queue, the collector on the empty last one
    execution.abort()
    gate.set()
    collector.join(WAIT)
    assert not collector.is_alive()
    assert errors and isinstance(errors[0], PipelineStopped)
    for t in execution.threads:
        t.join(WAIT)
        assert not t.is_alive(), t.name


# --------------------------------------------------------------------------- metrics


def test_stage_metrics_figures():
    pipe = Pipeline("figures", queue_size=10)

    @pipe.stage(workers=2)
    def a(x):
        return x

    @pipe.stage(workers=1, batch_size=4)
    def b(xs):
        return xs

    result = pipe.run(range(40))
    m = result.metrics
    assert m.name == "figures" and m.window == pipe.window
    assert m.duration > 0 and m.throughput == pytest.approx(40 / m.duration)
    sa, sb = m.stages["a"], m.stages["b"]
    assert sa.items_in == sa.items_out == 40 and sa.items_failed == 0 and sa.retries == 0
    assert 0 < sa.latency_mean and sa.latency_p95 is not None and sa.latency_p95 >= 0
    assert 0 <= sa.queue_hwm <= 10
    assert sa.busy > 0 and sa.span >= 0 and 0 <= sa.utilisation
    assert sb.batch_size == 4 and sb.items_in == 40
    assert sum(w.calls for w in m.workers if w.stage == "b") == 10
    assert sum(w.items for w in m.workers if w.stage == "a") == 40
    assert {w.worker for w in m.workers} == {"figures/a-0", "figures/a-1", "figures/b-0"}


def test_percentile_from_the_histogram():
    from flowdeco.pipeline.result import HIST_SIZE, hist_index, percentile

    hist = [0] * HIST_SIZE
    assert percentile(hist, 0.95) is None
    values = [0.001 * i for i in range(1, 101)]  # 1 ms .. 100 ms
    for v in values:
        hist[hist_index(v)] += 1
    p95 = percentile(hist, 0.95)
    assert p95 == pytest.approx(0.095, rel=0.07)
    assert percentile(hist, 0.5) == pytest.approx(0.050, rel=0.07)
    hist0 = [0] * HIST_SIZE
    hist0[hist_index(0.0)] += 1
    assert percentile(hist0, 0.95) < 1e-8


def test_collect_false_drops_outputs_but_counts_and_keeps_errors():
    pipe = Pipeline("sink")
    written = []

    @pipe.stage(workers=2)
    def write(x):
        if x == 4:
            raise IOError("disk full")
        written.append(x)
        return x

    result = pipe.run(range(10), collect=False)
    assert result.outputs == []
    assert result.metrics.outputs == 9 and result.metrics.failed == 1
    assert [e.index for e in result.errors] == [4]
    assert sorted(written) == [0, 1, 2, 3, 5, 6, 7, 8, 9]


def test_a_result_feeds_another_pipeline():
    first = Pipeline("first")
    first.stage(lambda x: x + 1, name="inc")
    second = Pipeline("second")
    second.stage(lambda x: x * 10, name="times")
    assert second.run(first.run(range(3))).outputs == [10, 20, 30]


# --------------------------------------------------------------------------- properties

from hypothesis import given, settings, strategies as st  # noqa: E402

stage_config = st.fixed_dictionaries({
    "workers": st.integers(1, 3),
    "batch_size": st.one_of(st.none(), st.integers(1, 7)),
    "fail_mod": st.one_of(st.none(), st.integers(3, 11)),
})


@settings(max_examples=40, deadline=None)
@given(stages=st.lists(stage_config, min_size=1, max_size=3), n=st.integers(0, 300),
       queue_size=st.integers(1, 8), ordered=st.booleans())
def test_any_configuration_delivers_every_item_exactly_once(stages, n, queue_size, ordered):
    pipe = Pipeline("prop", queue_size=queue_size, ordered=ordered)
    expected_fail: dict[int, str] = {}
    for k, cfg in enumerate(stages):
        mod = cfg["fail_mod"]

        def one(x, k=k, mod=mod):
            if mod is not None and x[0] % mod == k:
                raise ValueError(f"{x[0]} in {k}")
            return (x[0], x[1] + 1)

        def many(xs, one=one):
            return [one(x) for x in xs]

        batch = cfg["batch_size"]
        pipe.stage(many if batch else one, name=f"s{k}", workers=cfg["workers"],
                   batch_size=batch)
        for i in range(n):
            if i not in expected_fail and mod is not None and i % mod == k:
                expected_fail[i] = f"s{k}"
    # a batch fails as a whole: every item of a batch holding a failing item fails
    box = {}
    runner = threading.Thread(target=lambda: box.update(r=pipe.run((i, 0) for i in range(n))),
                              daemon=True)
    runner.start()
    runner.join(60)
    assert not runner.is_alive(), "pipeline did not finish"
    result = box["r"]
    failed = {e.index for e in result.errors}
    delivered = [x[0] for x in result.outputs]
    assert len(delivered) + len(failed) == n
    assert set(delivered) | failed == set(range(n)) and not set(delivered) & failed
    assert all(x[1] == len(stages) for x in result.outputs)
    if not any(cfg["batch_size"] for cfg in stages):
        assert {e.index: e.stage for e in result.errors} == expected_fail
    if ordered:
        assert delivered == sorted(delivered)
    assert result.metrics.max_in_flight <= pipe.window
