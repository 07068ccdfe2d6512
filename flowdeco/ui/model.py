"""One run as the dashboard and the static report draw it (plain JSON-ready data).

Built from the store's task rows, the audit trail and, when the data layer
recorded one, the run's graph snapshot.  Everything a page needs at load
time is here; later changes arrive as audit events on the live stream and
are applied by the page itself (see ``static/run.js``).

Tasks travel as rows (lists, columns in :data:`TASK_COLUMNS`) rather than
objects: a 10,000-task run stays a ~1 MB document.
"""

from __future__ import annotations

import datetime as _dt
import heapq
import json
import os
from typing import Any, Iterable

from .data import StateReader, read_audit

TASK_COLUMNS = ("name", "status", "attempts", "started", "finished", "error", "reason",
                "changed", "cached")
#: how many of the last audit events a page starts with (the rest: ``/audit?from=``)
AUDIT_TAIL = 300
#: at most this much of a stored result is shown
PREVIEW_CHARS = 2000
#: attempts drawn on the timeline (the longest, when there are more)
MAX_BARS = 3000
_END = {"task_succeeded": "succeeded", "task_failed": "failed", "task_skipped": "skipped",
        "task_restored": "restored", "task_interrupted": "interrupted"}


def parse_ts(value: Any) -> float | None:
    """An audit ``timestamp`` (ISO 8601 UTC) as seconds since the epoch, None if unreadable."""
    if not isinstance(value, str):
        return None
    try:
        return _dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


class Trail:
    """What the audit trail says about each task: attempts, waits, errors, the last event."""

    def __init__(self) -> None:
        #: task -> list of attempts {n, start, end, outcome, error, delay, worker}
        self.attempts: dict[str, list[dict]] = {}
        self.status: dict[str, str] = {}
        self.final: dict[str, dict] = {}
        self.pipeline: dict[str, dict] = {}
        self.logs: dict[str, int] = {}
        self.started: float | None = None
        self.finished: float | None = None

    def feed(self, events: Iterable[dict]) -> None:
        for e in events:
            name = e.get("event")
            task = e.get("task")
            ts = parse_ts(e.get("timestamp"))
            if name == "run_started":
                if self.started is None:
                    self.started = ts
                continue
            if name == "run_finished":
                self.finished = ts
                continue
            if not isinstance(task, str):
                continue
            if name == "task_started":
                self.status[task] = "running"
                self.attempts.setdefault(task, []).append(
                    {"n": e.get("attempt"), "start": ts, "end": None, "outcome": "running",
                     "error": None, "delay": None, "worker": e.get("worker")})
            elif name == "task_retrying":
                self.status[task] = "retrying"
                a = self._open(task, e.get("attempt"))
                if a is not None:
                    a.update(end=ts, outcome="retried", error=e.get("error"),
                             delay=e.get("delay"))
                    if e.get("reason"):  # a result retry (retry_if): why, and the result
                        a.update(reason=e["reason"], result=e.get("result"))
                    if e.get("worker"):  # written when the attempt ends (since 0.x)
                        a["worker"] = e["worker"]
            elif name in _END:
                status = _END[name]
                self.status[task] = status
                self.final[task] = e
                a = self._open(task, None)
                if a is not None and status in ("succeeded", "failed", "interrupted"):
                    a.update(end=ts, outcome=status, error=e.get("error"))
                    if e.get("worker"):
                        a["worker"] = e["worker"]
            elif name == "pipeline_finished":
                self.pipeline[task] = e
            else:
                self.logs[task] = self.logs.get(task, 0) + 1

    def _open(self, task: str, number: Any) -> dict | None:
        for a in reversed(self.attempts.get(task, ())):
            if a["end"] is None and (number is None or a["n"] == number):
                return a
        return None


class _Followed:
    """A run's audit trail read so far: the trail, its tail, where reading stopped."""

    def __init__(self, ino: int) -> None:
        self.ino = ino
        self.offset = 0
        self.trail = Trail()
        self.tail: list[tuple[int, dict]] = []
        self.total = 0


def _follow(reader: StateReader, run_id: str) -> _Followed:
    """The run's trail, read incrementally: a page reloaded (or re-fetched while the run is
    live) parses only the events written since the last time."""
    with reader.follow_lock:  # one request at a time feeds a trail
        return _follow_locked(reader, reader.followed, run_id)


def _follow_locked(reader: StateReader, cache: dict, run_id: str) -> _Followed:
    path = reader.audit_file(run_id)
    try:
        st = os.stat(path)
        ino, size = st.st_ino, st.st_size
    except OSError:
        ino, size = -1, 0
    f = cache.get(run_id)
    if f is None or f.ino != ino or size < f.offset:
        f = _Followed(ino)
    while True:
        events, offset = read_audit(path, f.offset, max_bytes=64 << 20)
        f.trail.feed(e for _, e in events)
        f.tail = (f.tail + events)[-AUDIT_TAIL:]
        f.total += len(events)
        moved = offset != f.offset
        f.offset = offset
        if not moved or offset >= size:
            break
    cache.pop(run_id, None)
    cache[run_id] = f
    while len(cache) > 8:  # the runs looked at most recently
        cache.pop(next(iter(cache)))
    return f


def run_model(reader: StateReader, run_id: str) -> dict | None:
    """The whole run for a page: run row, tasks, graph, timeline, metrics, audit tail."""
    run = reader.run(run_id)
    if run is None:
        return None
    records = {r[0]: r for r in reader.task_rows(run_id)}
    snapshot = reader.graph(run_id)
    changed = reader.changed_tasks(run_id)
    followed = _follow(reader, run_id)
    trail = followed.trail
    names: list[str] = list(snapshot["tasks"]) if snapshot else []
    known = set(names)
    for n in list(records) + list(trail.status):
        if n not in known:
            known.add(n)
            names.append(n)
    rows = []
    ended = run["status"] != "running"  # finished, or crashed (its process is gone)
    for n in names:
        # rec: (name, status, attempts, started, finished, error, reason) or None
        rec = records.get(n) or (n, None, 0, None, None, None, None)
        final = trail.final.get(n) or {}
        status = trail.status.get(n) or rec[1] or "pending"
        if status == "retrying":
            status = "running"
        if status == "running" and ended:  # its process is gone: it will not finish
            status = "interrupted"
        attempts = trail.attempts.get(n, ())
        started = attempts[0]["start"] if attempts else rec[3]
        finished = rec[4] or (attempts[-1]["end"] if attempts else None)
        error = final.get("error") or rec[5]
        reason = final.get("reason") or rec[6]
        cached = bool(final.get("cached")) or status == "restored"
        rows.append([n, status, max(len(attempts), rec[2] or 0), started, finished,
                     _first_line(error), reason, n in changed, cached])
    if not snapshot:  # no recorded order: the order the tasks started in
        first = {r[0]: r[3] for r in rows}
        rows.sort(key=lambda r: (first[r[0]] is None, first[r[0]] or 0.0, r[0]))
        names = [r[0] for r in rows]
    index = {n: i for i, n in enumerate(names)}
    edges = [[index[u], index[v]] for u, v in (snapshot["edges"] if snapshot else ())
             if u in index and v in index]
    timeline = _timeline(trail)
    critical = _critical_path(names, edges, trail)
    return {
        "run": run,
        "columns": list(TASK_COLUMNS),
        "tasks": rows,
        "edges": edges,
        "has_edges": snapshot is not None,
        "timeline": timeline,
        "critical": critical,
        "metrics": _metrics(timeline, critical, trail),
        "pipeline": _pipeline(trail),
        "audit": {"offset": followed.offset, "events": [[o, e] for o, e in followed.tail],
                  "total": followed.total},
    }


def _first_line(text: str | None) -> str | None:
    if not text:
        return None
    line = text.splitlines()[0] if text.splitlines() else text
    return line[:300]


def _timeline(trail: Trail) -> dict:
    """Attempts as bars on lanes: the recorded worker's lane, else packed by time."""
    bars = []
    for task, attempts in trail.attempts.items():
        for a in attempts:
            if a["start"] is None:
                continue
            bars.append({"task": task, "n": a["n"], "start": a["start"], "end": a["end"],
                         "outcome": a["outcome"], "delay": a["delay"], "worker": a["worker"]})
    bars.sort(key=lambda b: (b["start"], b["task"]))
    now = max((b["end"] or b["start"] for b in bars), default=None)
    lanes: list[str] = []
    recorded = any(b["worker"] for b in bars)
    if recorded:  # one lane per worker the trail names (attempt-end events carry it)
        index: dict[str, int] = {}
        unknown = []
        for b in bars:
            w = b["worker"]
            if not w:  # still running (the worker is written when the attempt ends)
                unknown.append(b)
                continue
            if w not in index:
                index[w] = len(lanes)
                lanes.append(str(w))
            b["lane"] = index[w]
        _pack(unknown, lanes, now, "running")
    else:  # an older trail that names no worker: pack attempts into the fewest lanes
        _pack(bars, lanes, now, "lane")
    shown = bars
    if len(bars) > MAX_BARS:
        shown = sorted(bars, key=lambda b: -((b["end"] or b["start"]) - b["start"]))[:MAX_BARS]
        shown.sort(key=lambda b: (b["start"], b["task"]))
    start = min((b["start"] for b in bars), default=trail.started)
    end = max((b["end"] or b["start"] for b in bars), default=trail.finished)
    if trail.finished is not None and end is not None:
        end = max(end, trail.finished)
    return {"lanes": lanes, "workers_recorded": recorded, "bars": shown, "total": len(bars),
            "start": start, "end": end}


def _pack(bars: list[dict], lanes: list[str], now: float | None, label: str) -> None:
    """Put ``bars`` (sorted by start) on the fewest new lanes with no two overlapping."""
    free: list[tuple[float, int]] = []
    first = len(lanes)
    for b in bars:
        end = b["end"] if b["end"] is not None else (now or b["start"])
        if free and free[0][0] <= b["start"] + 1e-9:
            _, lane = heapq.heappop(free)
        else:
            lane = len(lanes)
            lanes.append(f"{label} {lane - first + 1}")
        b["lane"] = lane
        heapq.heappush(free, (end, lane))


def _critical_path(names: list[str], edges: list[list[int]], trail: Trail) -> list[str]:
    """The chain of tasks that set the run's length: from the last to finish, back through the
    upstream task that finished last.  Without edges (no graph snapshot): the longest task."""
    end: dict[str, float] = {}
    start: dict[str, float] = {}
    for task, attempts in trail.attempts.items():
        ends = [a["end"] for a in attempts if a["end"] is not None]
        starts = [a["start"] for a in attempts if a["start"] is not None]
        if ends and starts:
            end[task] = max(ends)
            start[task] = min(starts)
    if not end:
        return []
    if not edges:
        return [max(end, key=lambda t: end[t] - start[t])]
    preds: dict[str, list[str]] = {}
    for u, v in edges:
        preds.setdefault(names[v], []).append(names[u])
    path = [max(end, key=lambda t: end[t])]
    seen = set(path)
    while True:
        ups = [p for p in preds.get(path[-1], ()) if p in end and p not in seen]
        if not ups:
            break
        nxt = max(ups, key=lambda p: end[p])
        path.append(nxt)
        seen.add(nxt)
    path.reverse()
    return path


def _metrics(timeline: dict, critical: list[str], trail: Trail) -> dict:
    bars = timeline["bars"]
    lanes = timeline["lanes"]
    busy = [0.0] * len(lanes)
    counts = [0] * len(lanes)
    for b in bars:
        if b["end"] is not None:
            busy[b["lane"]] += b["end"] - b["start"]
            counts[b["lane"]] += 1
    span = (timeline["end"] - timeline["start"]) if timeline["start"] is not None \
        and timeline["end"] is not None else 0.0
    task_time = sum(busy)
    crit = 0.0
    for t in critical:
        for a in trail.attempts.get(t, ()):
            if a["end"] is not None and a["start"] is not None:
                crit += a["end"] - a["start"]
    return {
        "makespan": span, "task_time": task_time, "lanes": len(lanes),
        "efficiency": (task_time / (span * len(lanes))) if span > 0 and lanes else None,
        "critical_time": crit,
        "per_lane": [{"lane": lanes[i], "tasks": counts[i], "busy": busy[i],
                      "util": (busy[i] / span) if span > 0 else None}
                     for i in range(len(lanes))],
        "retries": sum(1 for b in bars if b["outcome"] == "retried"),
        "waits": sum(b["delay"] or 0 for b in bars if b["outcome"] == "retried"),
    }


def _pipeline(trail: Trail) -> list[dict]:
    """Pipeline nodes from their ``pipeline_finished``: totals, and per stage items in/out/
    failed, items/s and the queue high-water mark (``stages``: older trails have none)."""
    out = []
    for task, e in trail.pipeline.items():
        dur = e.get("duration") or 0
        items = e.get("items")
        stages = []
        for s in e.get("stages") or ():
            if isinstance(s, dict):
                stages.append({"stage": s.get("stage"), "workers": s.get("workers"),
                               "in": s.get("items_in"), "out": s.get("items_out"),
                               "failed": s.get("items_failed"), "rate": s.get("throughput"),
                               "queue_hwm": s.get("queue_hwm")})
        marks = [s["queue_hwm"] for s in stages if isinstance(s["queue_hwm"], int)]
        out.append({"task": task, "items": items, "outputs": e.get("outputs"),
                    "failed": e.get("failed"), "duration": dur,
                    "rate": (items / dur) if isinstance(items, (int, float)) and dur else None,
                    "high_water": max(marks) if marks else None,
                    "max_in_flight": e.get("max_in_flight"), "stages": stages})
    return out


def task_detail(reader: StateReader, run_id: str, name: str) -> dict | None:
    """One task's panel: attempts with timings and workers, error and traceback, retry delays,
    cache hits, and a size-limited preview of its stored result (``Secret`` stays ``***``)."""
    rec = reader.task(run_id, name)
    events, _ = read_audit(reader.audit_file(run_id), 0, max_bytes=1 << 31, task=name)
    mine = [e for _, e in events if e.get("task") == name]
    if rec is None and not mine:
        return None
    trail = Trail()
    trail.feed(mine)
    final = trail.final.get(name) or {}
    preview = None
    size = None
    if rec is not None and rec.result is not None:
        size = len(rec.result)
        preview = result_preview(rec.result)
    return {
        "name": name,
        "status": trail.status.get(name) or (rec.status if rec else "pending"),
        "attempts": trail.attempts.get(name, []),
        "started": rec.started if rec else None, "finished": rec.finished if rec else None,
        "error": final.get("error") or (rec.error if rec else None),
        "traceback": final.get("traceback"),
        "reason": final.get("reason") or (rec.reason if rec else None),
        "cached": bool(final.get("cached")) or (rec is not None and rec.status == "restored"),
        "fingerprint": rec.fingerprint if rec else None,
        "result_preview": preview, "result_size": size,
        "logs": [e for e in mine if e.get("event") not in _END
                 and e.get("event") not in ("task_started", "task_retrying")][-50:],
    }


def result_preview(text: str) -> str:
    """A stored result (JSON, codec tags) shortened for display; secrets stay ``***``."""
    try:
        value = json.loads(text)
    except ValueError:
        return text[:PREVIEW_CHARS]
    shown = json.dumps(_mask(value), ensure_ascii=False, indent=1)
    if len(shown) > PREVIEW_CHARS:
        shown = shown[:PREVIEW_CHARS] + f"\n... ({len(shown)} characters in all)"
    return shown


def _mask(value: Any) -> Any:
    if isinstance(value, dict):
        tag = value.get("$t")
        cls = str(value.get("c", ""))
        if isinstance(tag, str) and ("secret" in tag.lower() or "secret" in cls.lower()):
            return "***"  # a registered type that says it is a secret (Secret itself is
            # never stored: the codec refuses it)
        return {k: _mask(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_mask(v) for v in value]
    return value
