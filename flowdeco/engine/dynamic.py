"""Dynamic flows: trigger rules, conditions and mapped tasks.

These are scheduling semantics, so they live in the engine, next to the
scheduler; a :class:`Run` makes one :class:`DynamicFlows` the first time it needs it
(a graph without ``map=``/``when=``/``trigger=`` never does), and the scheduler's
hot paths for plain tasks do not look at it.

**Gate**: trigger rules and ``when=`` (:mod:`.rules`, :class:`~.rules.TriggerGate`,
a base of :class:`DynamicFlows`).

**Map** (``@task(map="files")``).  When a mapped task passes its gate (and
restore/delay hooks), :meth:`DynamicFlows.expand` takes the upstream result (a
list, tuple or range as is, any other iterable but str/bytes materialized
once) and makes one :class:`~flowdeco.engine.instances.MapState`: a cursor
and compact per-instance arrays, no per-instance objects.  The vertex joins
``port.map_ready``, a heap of priority keys beside the ready heap; the scheduler merges the two by key
(:meth:`dispatch`, :meth:`sync_step`), and a thread worker that finishes an
instance takes the next one from the cursor itself while the mapped task is
still the best ready work (like ``ThreadDispatch.work``), posting "finished k, started
k+1" as one message.  Instances are named ``task[k]`` in events, outcomes
and ``ctx.task``; each has its own attempts (``flowdeco_attempt_done`` is
called with the mapped vertex as ``task``: retry policies apply per
instance), its own restore (``flowdeco_task_restore(name="task[k]")``, asked
as the instance is about to start).  When every instance has ended the
vertex ends like a sub-flow node: ``succeeded`` with the list of results in
element order, else ``failed`` naming the failed instances; when the run
stops (``-x``, Ctrl-C, ``run.stop()``) no new instance starts, those not
started are ``skipped`` (``stopped``), and the vertex is ``interrupted`` (or
``skipped``/``stopped`` when none had started).
"""

from __future__ import annotations

import heapq
import threading
import time
from functools import partial
from typing import TYPE_CHECKING, Any, Iterator

from ..context import Context
from ..executors import remote_failure
from ..outcome import (FAILED, INTERRUPTED, SKIPPED, SUCCEEDED, Attempt, Finish, Reschedule,
                       TaskOutcome)
from ..pickling import load_outcome
from ..task import CTX
from . import tracking
from .attempt import call_remote, run_attempt
from .instances import (ENDED, I_FAILED, I_INTERRUPTED, I_PENDING, I_RESTORED, I_RUNNING,
                        I_SKIPPED, I_SUCCEEDED, I_WAITING, MapState)
from .reporting import retrying_fields
from .rules import TriggerGate
from .states import DONE, M_CRASH, M_INSTANCE_DONE, M_LOG, OK, RUNNING, InternalError

if TYPE_CHECKING:  # pragma: no cover
    from .scheduler import Run

_NAN = float("nan")
_INF = float("inf")
#: failed instances named in a mapped task's error
_NAMED = 10


class DynamicFlows(TriggerGate):
    """A run's trigger rules, conditions and mapped tasks (see the module docstring)."""

    def __init__(self, run: "Run"):
        self.run = run
        #: the scheduler's state and operations this class may use
        self.port = run.scheduler_port()
        #: expanded mapped tasks by vertex index
        self.maps: dict[int, MapState] = {}
        # read on every instance: kept here, one attribute away
        self.mready = self.port.map_ready
        self.ready = self.port.ready
        self.prio_mod = self.port.prio_mod
        self.has_restore = self.port.has_restore
        self.has_flush = self.port.has_flush
        #: the run's pool gate (engine/pools.py), None without binding limits
        self.pools = run.pools

    # ------------------------------------------------------------------ map: expand
    def expand(self, i: int) -> tuple | None:
        """Start mapped task ``i``: read the upstream result, queue its instances."""
        run = self.run
        port = self.port
        v = run.graph.vertices[i]
        spec = v.spec
        assert spec is not None and spec.map is not None
        d = dict(v.args)[spec.map]
        up = run.graph.vertices[d].name
        now = run.clock.monotonic()
        port.table.t0[i] = now
        where = f"task {v.name!r} maps over {spec.map!r}"
        if port.table.status[d] not in OK:
            how = "had not ended (a one_*/always trigger rule started it early)" \
                if port.table.status[d] is None else f"did not succeed ({port.table.status[d]})"
            return self._fail(i, TypeError(f"{where}, but task {up!r} {how}"), now)
        src = run.results[d]
        if isinstance(src, (list, tuple, range)):
            items: Any = src
        elif isinstance(src, (str, bytes, bytearray)):
            return self._fail(i, TypeError(
                f"{where}: task {up!r} returned a {type(src).__name__}; map= does not split "
                "it into characters (return a list of elements)"), now)
        else:
            try:
                it = iter(src)
            except TypeError:
                return self._fail(i, TypeError(
                    f"{where}: task {up!r} returned {type(src).__name__}, which is not "
                    "iterable (map= needs a list or another iterable of elements)"), now)
            try:
                items = list(it)
            except Exception as exc:  # noqa: BLE001 - a generator may raise anything
                return self._fail(i, exc, now)
        n = len(items)
        if n == 0:
            return (i, SUCCEEDED, [], None, 1, now, None, None)
        m = MapState(run, port, v, items, n)
        self.maps[i] = m
        port.table.state[i] = RUNNING
        if run.reporting:
            port.report("task_mapped", v.name, {"instances": n}, now)
        with port.lock:
            heapq.heappush(self.mready, m.key)
            m.queued = True
        return None

    @staticmethod
    def _fail(i: int, exc: BaseException, now: float) -> tuple:
        return (i, FAILED, None, exc, 0, now, None, None)

    # ------------------------------------------------------------------ map: dispatch
    def _take(self, m: MapState) -> tuple[int, int]:
        """The next instance of ``m`` (the top of ``mready``) to start; ``port.lock`` held."""
        if m.retry:
            k, attempt = m.retry.pop(0)
        else:
            k = m.cursor
            m.cursor = k + 1
            attempt = 1
        if not m.retry and m.cursor >= m.n:
            heapq.heappop(self.mready)
            m.queued = False
        return k, attempt

    def dispatch(self) -> None:
        """``Dispatch.fill`` while a mapped task has instances to start: merge by priority."""
        run = self.run
        port = self.port
        ready, mready, lock, n = port.ready, self.mready, port.lock, port.prio_mod
        maps = self.maps
        pools = self.pools
        while (ready or mready) and run.inflight < run.workers and not run.stopping:
            with lock:
                if mready and (not ready or mready[0] < ready[0]):
                    m = maps[mready[0] % n]
                    if pools is not None and pools.capped[m.index] is not None \
                            and not pools.room(m.index):
                        heapq.heappop(mready)   # its pool is full: wait there, not here
                        m.queued = False
                        pools.park(m.index, m.key)
                        continue
                    k, attempt = self._take(m)
                    i = -1
                elif ready:
                    i = heapq.heappop(ready) % n
                else:
                    return
            if i < 0:
                self.start(m, k, attempt)
            else:
                if run.flush_due:
                    port.flush()
                port.start(i, port.table.next_attempt[i], port.table.next_iter[i])

    def sync_step(self) -> bool:
        """``sync`` executor: run the next instance if a mapped task goes first (else False)."""
        ready, mready = self.ready, self.mready
        if ready and ready[0] < mready[0]:
            return False
        m = self.maps[mready[0] % self.prio_mod]
        k, attempt = self._take(m)
        self.start(m, k, attempt)
        return True

    def start(self, m: MapState, k: int, attempt: int) -> None:
        """Start instance ``k`` (scheduler thread), or restore it."""
        run = self.run
        if attempt == 1 and self.has_restore:
            port = self.port
            restored = port.restore(run, m.vertex, m.instance(k))
            if restored is not None:
                if restored.fields:
                    port.restore_fields[m.instance(k)] = restored.fields
                now = run.clock.monotonic()
                m.t0[k] = now
                self.end(m, k, I_RESTORED, restored.result, None, restored.attempts, now, None)
                # reported outside message handling: flush before anything else starts
                run.flush_due = port.has_flush
                return
        if run.flush_due:
            self.port.flush()
        kw = self.kwargs(m, k, attempt)
        m.status[k] = I_RUNNING
        run.inflight += 1
        if self.pools is not None and self.pools.capped[m.index] is not None:
            self.pools.take(m.index)  # dispatch checked the room
        if run.reporting:
            self.port.report_started(m.instance(k), attempt, None)
        if self.port.add_scopes is not None:
            self.port.add_scopes(kw, m.vertex, m.instance(k), attempt, None)
        if run.sync:
            self._run_sync(m, k, kw, attempt)
        elif run.local:
            run.executor.submit(self.work, m, k, kw, attempt)
        else:
            self._submit_remote(m, k, kw, attempt)

    def kwargs(self, m: MapState, k: int, attempt: int) -> dict:
        kw = dict(m.base)
        kw[m.param] = m.items[k]
        if m.wants_ctx:
            run = self.run
            port = self.port
            kw[CTX] = Context(run.run_id, m.instance(k), attempt, None, run.params,
                              port.log_sink if run.local else None, m.upstream,
                              run if run.local else None)
        return kw

    def _run_sync(self, m: MapState, k: int, kw: dict, attempt: int) -> None:
        run = self.run
        call, mono = m.call, run.clock.monotonic
        slot = self.port.sync_slot
        run.sync_busy = True
        if slot is not None:
            slot.at = ((m, k), attempt, None)
        t0 = mono()
        result, err, _ = run_attempt(m.fn, call, kw, m.guard, m.deadline, name=m.name)
        t1 = mono()
        if slot is not None:
            if slot.ends is not None:
                slot.end()
            slot.at = None
        run.sync_busy = False
        q = run.q
        while not q.empty():  # log records, events and signals that arrived during the task
            self.port.handle(q.get())
        self.on_done(m, k, attempt, result, err, t0, t1, "sync", -1)
        if self.has_flush:
            run.hook.flowdeco_report_flush(run=run)

    def work(self, m: MapState, k: int, kw: dict, attempt: int) -> None:
        """A thread worker: run instance ``k``, then take the next ones itself.

        It takes the cursor's next instance under the ready-heap lock while
        ``m`` is still the best ready work (nothing in either heap beats it),
        and posts "finished k, started k+1" as one message (see ``ThreadDispatch.work``).
        Retries and restores are left to the scheduler.
        """
        run = self.run
        port = self.port
        put = run.q.put
        slot = None
        try:
            mono = run.clock.monotonic
            fn, call = m.fn, m.call
            lock, ready, mready = port.lock, port.ready, self.mready
            key, n = m.key, m.n
            base, items, param = m.base, m.items, m.param
            # (a capped instance's successor needs a pool slot: the scheduler starts it)
            chain = port.chaining and (self.pools is None or self.pools.capped[m.index] is None)
            me = threading.current_thread()
            worker = me.name
            guard, deadline, watchdog = m.guard, m.deadline, port.watchdog
            real = mono is time.monotonic  # deadlines are real time (see ThreadDispatch.work)
            if port.tracking:  # captured output: this thread's slot, marked per attempt
                slot = tracking.enter(port.log_sink, port.attempt_name)
            # --run-timeout: take nothing new once the run's deadline has passed
            run_end = run.run_deadline
            if run_end is None:
                run_end = _INF
            while True:
                if slot is not None:
                    slot.at = ((m, k), attempt, None)
                t0 = mono()
                result, err, overran = run_attempt(fn, call, kw, guard, deadline, watchdog,
                                                   (m, k), attempt, None, t0, me,
                                                   t0 if real else None, m.name)
                if overran:
                    return  # the scheduler ended this attempt and gave up this thread
                t1 = mono()
                if slot is not None and slot.ends is not None:
                    slot.end()
                nxt = -1
                if chain and not run.stopping and t1 < run_end and not (
                        err is not None and run.stop_on_error):
                    with lock:
                        if m.cursor < n and mready and mready[0] == key and (
                                not ready or ready[0] > key):
                            nxt = m.cursor
                            m.cursor = nxt + 1
                            if nxt + 1 >= n and not m.retry:
                                heapq.heappop(mready)
                                m.queued = False
                put((M_INSTANCE_DONE, m, k, attempt, result, err, t0, t1, worker, nxt))
                if nxt < 0:
                    return
                k, attempt = nxt, 1
                kw = dict(base)
                kw[param] = items[k]
                if m.wants_ctx:
                    kw[CTX] = Context(run.run_id, m.instance(k), 1, None, run.params,
                                      port.log_sink, m.upstream, run)
        except BaseException as exc:  # noqa: BLE001 - never leave the scheduler waiting
            put((M_CRASH, exc))
        finally:
            if slot is not None:
                tracking.leave(slot)

    # -- remote executors: one instance per submission
    def _submit_remote(self, m: MapState, k: int, kw: dict, attempt: int) -> None:
        run = self.run
        try:
            setup = self.port.worker_setup
            fut = run.executor.submit(call_remote, m.call, kw, m.policy, setup) if setup else \
                run.executor.submit(call_remote, m.call, kw, m.policy)
        except Exception as exc:  # noqa: BLE001 - a broken or closed pool fails the attempt
            now = run.clock.monotonic()
            run.q.put((M_INSTANCE_DONE, m, k, attempt, None, remote_failure(exc, m.instance(k)),
                       now, now, None, -1))
            return
        fut.add_done_callback(partial(self._remote_done, m, k, attempt))

    def _remote_done(self, m: MapState, k: int, attempt: int, fut: Any) -> None:
        """A remote instance attempt ended (executor callback thread): post it."""
        run = self.run
        put = run.q.put
        name = m.instance(k)
        now = run.clock.monotonic()
        try:
            payload, err, t0, t1, worker, logs = fut.result()
        except BaseException as exc:  # noqa: BLE001 - pickling errors, broken pools, cancels
            payload, err, t0, t1, worker, logs = None, remote_failure(exc, name), now, now, None, []
        result, err = load_outcome(payload, err, name)
        t0, t1 = now - (t1 - t0), now
        for level, event, fields in logs:
            put((M_LOG, name, level, attempt, None, event, fields, t1))
        put((M_INSTANCE_DONE, m, k, attempt, result, err, t0, t1, worker, -1))

    # ------------------------------------------------------------------ map: completion
    def on_done(self, m: MapState, k: int, attempt: int, result: Any, err: BaseException | None,
                t0: float, t1: float, worker: str | None, nxt: int) -> None:
        """An instance attempt ended (scheduler thread); ``nxt`` >= 0: the worker took it."""
        run = self.run
        if nxt < 0:
            run.inflight -= 1
            if self.pools is not None and self.pools.capped[m.index] is not None:
                self.pools.release(m.index)
        else:
            m.status[nxt] = I_RUNNING
        if m.t0[k] != m.t0[k]:  # NaN: the first attempt
            m.t0[k] = t0
        elif (m.index, k) in run.attempt_durations:  # a later attempt (busy time, metrics)
            run.attempt_durations[m.index, k].append((worker, t1 - t0))
        if err is None and not m.watched:
            m.results[k] = result
            m.status[k] = I_SUCCEEDED
            m.attempts[k] = attempt
            m.t1[k] = t1
            m.workers[k] = worker
            if m.errors:  # an earlier attempt's error
                m.errors.pop(k, None)
            if run.reporting:
                self.port.report_end(m.instance(k), m.outcome(k, self.port.offset), t1)  # type: ignore[arg-type]
            m.left -= 1
            if not m.left:
                self.port.finish(*self.result(m))
        else:
            self._decide(m, k, attempt, result, err, t0, t1, worker)
        if nxt >= 0 and run.reporting:
            self.port.report_started(m.instance(nxt), 1, None, t1)

    def _decide(self, m: MapState, k: int, attempt: int, result: Any, err: BaseException | None,
                t0: float, t1: float, worker: str | None) -> None:
        run = self.run
        port = self.port
        decision = None
        if port.has_attempt_done:
            off = port.offset
            decision = run.hook.flowdeco_attempt_done(
                run=run, task=m.vertex,
                attempt=Attempt(attempt, None, result, err, t0 + off, t1 + off, t1 - t0,
                                m.t0[k] + off))
        if isinstance(decision, Reschedule):
            run.attempt_durations.setdefault((m.index, k), [(worker, t1 - t0)])
            next_attempt = decision.attempt if decision.attempt is not None else attempt + 1
            delay = max(float(decision.delay), 0.0)
            m.attempts[k] = attempt
            if err is not None:
                m.errors[k] = err
            if run.reporting and (err is not None or decision.retrying):
                port.report("task_retrying", m.instance(k),
                            retrying_fields(attempt, delay, err, worker, decision), t1)
            if run.stopping:
                self.end(m, k, I_INTERRUPTED if run.interrupted or err is None else I_FAILED,
                         None, err, attempt, t1, worker)
                return
            m.status[k] = I_WAITING
            # the timer's iteration slot carries the instance (see Timers.release)
            port.push_timer(run.clock.monotonic() + delay, m.index, next_attempt, k)
            return
        if isinstance(decision, Finish):
            result, err = decision.result, decision.error
        elif decision is not None:
            raise InternalError(f"flowdeco_attempt_done returned {decision!r}; expected "
                                "Reschedule, Finish or None")
        self.end(m, k, I_SUCCEEDED if err is None else I_FAILED, result, err, attempt, t1,
                 worker)

    def end(self, m: MapState, k: int, code: int, result: Any, err: BaseException | str | None,
            attempts: int, t1: float | None, worker: str | None) -> None:
        """Record how instance ``k`` ended; the mapped task ends with its last instance."""
        run = self.run
        port = self.port
        m.status[k] = code
        if code == I_SUCCEEDED or code == I_RESTORED:
            m.results[k] = result
        if err is None:
            m.errors.pop(k, None)
        else:
            m.errors[k] = err
        m.attempts[k] = attempts
        m.t1[k] = _NAN if t1 is None else t1
        m.workers[k] = worker
        if run.reporting:
            port.report_end(m.instance(k), m.outcome(k, port.offset), t1)  # type: ignore[arg-type]
        m.left -= 1
        if not m.left:
            port.finish(*self.result(m))
        elif code == I_FAILED and run.stop_on_error:
            run.stop(interrupted=False)

    def result(self, m: MapState) -> tuple:
        """How the mapped task ends, as a ``Run._finish`` tuple (all instances ended)."""
        i = m.index
        status = m.status
        now = self.run.clock.monotonic()
        failed = status.count(I_FAILED)
        if failed:
            names, k = [], status.find(I_FAILED)
            while k >= 0 and len(names) < _NAMED:
                names.append(m.instance(k))
                k = status.find(I_FAILED, k + 1)
            more = ", ..." if failed > len(names) else ""
            return (i, FAILED, None,
                    f"MapFailed: {failed} of {m.n} instances failed: {', '.join(names)}{more}",
                    1, now, None, None)
        skipped = status.count(I_SKIPPED)
        if skipped == m.n:  # the run stopped before any instance started
            return (i, SKIPPED, None, None, 0, None, None, "stopped")
        if skipped or any(status.count(c) for c in (I_PENDING, I_RUNNING, I_WAITING,
                                                     I_INTERRUPTED)):
            # cut short by a stop, like an interval task between two iterations
            return (i, INTERRUPTED, None, None, 1, now, None, None)
        return (i, SUCCEEDED, list(m.results), None, 1, now, None, None)

    # ------------------------------------------------------------------ map: timers, stop, end
    def timer(self, i: int, attempt: int, k: int | None) -> bool:
        """A timer of slow task ``i`` fired: an instance's retry is due, or a mapped
        task's delay ended.  False: not a mapped task (the scheduler queues it)."""
        run = self.run
        port = self.port
        m = self.maps.get(i)
        if m is not None:
            assert k is not None
            with port.lock:
                m.retry.append((k, attempt))
                if not m.queued:
                    heapq.heappush(self.mready, m.key)
                    m.queued = True
            return True
        spec = run.graph.vertices[i].spec
        if spec is None or spec.map is None:
            return False
        done = self.expand(i)
        if done is not None:
            port.finish(*done)
        return True

    def stop_timer(self, i: int, k: int | None, interrupted: bool, now: float) -> bool:
        """The run stops while instance ``k`` of ``i`` waits for a retry: it ends now."""
        m = self.maps.get(i)
        if m is None:
            return False
        assert k is not None
        err = m.errors.get(k)
        code = I_INTERRUPTED if interrupted or err is None else I_FAILED
        self.end(m, k, code, None, err, m.attempts[k], now, None)
        return True

    def finalize(self, i: int) -> tuple:
        """The run is over with mapped task ``i`` unfinished: give every instance an outcome."""
        run = self.run
        port = self.port
        m = self.maps[i]
        if not run.stopping:
            raise InternalError(f"mapped task {m.name!r} did not finish")
        now = run.clock.monotonic()
        status = m.status
        for k in range(m.n):
            code = status[k]
            if code >= ENDED:
                continue
            if code == I_PENDING:
                end, t1 = I_SKIPPED, None
            else:
                end, t1 = I_INTERRUPTED, now
                if m.t0[k] != m.t0[k]:
                    m.t0[k] = now
                m.attempts[k] = max(m.attempts[k], 1)
            m.left -= 1
            status[k] = end
            m.t1[k] = _NAN if t1 is None else t1
            if run.reporting:
                port.report_end(m.instance(k), m.outcome(k, port.offset), t1)  # type: ignore[arg-type]
        port.table.state[i] = DONE
        return self.result(m)

    # ------------------------------------------------------------------ outcomes of instances
    def instance_outcome(self, name: str) -> TaskOutcome | None:
        """The outcome of instance ``name`` (``task[k]``) once it has ended, else None."""
        if not name.endswith("]") or "[" not in name:
            return None
        base, _, k = name[:-1].rpartition("[")
        i = self.run.graph.by_name.get(base)
        m = self.maps.get(i) if i is not None else None
        if m is None or not k.isdigit() or str(int(k)) != k or int(k) >= m.n:
            return None
        return m.outcome(int(k), self.port.offset)

    def instance_inputs(self, i: int, name: str) -> dict | None:
        """The arguments of instance ``name`` of mapped task ``i`` (no ``ctx``), or None."""
        m = self.maps.get(i)
        base, _, k = name[:-1].rpartition("[")
        if m is None or base != m.name or not k.isdigit() or int(k) >= m.n:
            return None
        kw = dict(m.base)
        kw[m.param] = m.items[int(k)]
        return kw

    def instance_names(self, i: int) -> Iterator[str]:
        m = self.maps.get(i)
        if m is not None:
            name = m.name
            for k in range(m.n):
                yield f"{name}[{k}]"

    def instance_count(self) -> int:
        return sum(m.n for m in self.maps.values())
