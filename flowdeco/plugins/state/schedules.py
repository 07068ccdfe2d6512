"""What ``serve`` is running in a state dir: the UI's schedules view.

Read from serve's own files (see :mod:`flowdeco.plugins.serve`):
``STATE_DIR/serve/FLOW.json`` (the last tick claimed, the claim of a run in
progress or cut short, the schedules: expression, zone, tasks) and
``STATE_DIR/serve/FLOW.lock`` (held by a live serve).  Next ticks and ticks
missed while no serve ran are computed from the schedules, like serve does
on start.  Nothing is written.
"""

from __future__ import annotations

import datetime as _dt
import os
import time
from pathlib import Path
from typing import Any, Mapping

import attrs

from ...errors import FlowError

__all__ = ["ScheduleInfo", "schedules", "MAX_MISSED"]



@attrs.frozen
class ScheduleInfo:
    """What ``serve`` does (or did) for one flow of a state dir."""

    flow: str
    #: a serve holds the flow's lock now
    serving: bool
    #: the last tick claimed (POSIX seconds), None before the first
    last_tick: float | None
    #: the claim of a tick whose run is in progress or was cut short (run_id, tick, tasks)
    claim: Mapping[str, Any] | None
    #: the claimed run's status in the store (None: never recorded, a missed tick)
    claim_status: str | None
    #: per schedule: key (a task or "*"), expr, tz, tasks, next_tick (POSIX seconds)
    schedules: tuple[Mapping[str, Any], ...]
    #: the earliest next tick of all schedules
    next_tick: float | None
    #: ticks after ``last_tick`` that passed while no serve ran (at most ``MAX_MISSED``)
    missed: int
    #: the file could not be read (the rest is empty then)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out = attrs.asdict(self)
        out["claim"] = dict(self.claim) if self.claim is not None else None
        out["schedules"] = [dict(s) for s in self.schedules]
        return out


MAX_MISSED = 1000


def schedules(state_dir: str | os.PathLike, *, now: float | None = None,
              store: Any = None) -> list[ScheduleInfo]:
    """Every flow ``serve`` has served (``STATE_DIR/serve/FLOW.json``) or serves now.

    ``now`` (POSIX seconds; default: the wall clock) is when next and missed
    ticks are counted from; ``store`` (opened read-only) answers a claim's
    run status.  Reads files only; a damaged file is reported in ``error``.
    """
    from ..serve import is_served, load_serve_state
    from ..timers import parse_cron

    folder = Path(state_dir) / "serve"
    if now is None:
        now = time.time()
    try:
        names = sorted({p.stem for p in folder.iterdir() if p.suffix in (".json", ".lock")})
    except OSError:
        return []
    when = _dt.datetime.fromtimestamp(now, _dt.timezone.utc)
    out: list[ScheduleInfo] = []
    for stem in names:
        serving = is_served(folder / f"{stem}.lock")
        path = folder / f"{stem}.json"
        if not path.exists():
            out.append(ScheduleInfo(stem, serving, None, None, None, (), None, 0))
            continue
        try:
            data = load_serve_state(path)
        except FlowError as exc:
            out.append(ScheduleInfo(stem, serving, None, None, None, (), None, 0, str(exc)))
            continue
        flow = data.get("flow") if isinstance(data.get("flow"), str) else stem
        last = data.get("last_tick")
        claim = data.get("running")
        status = None
        if claim is not None and store is not None and store.conn is not None:
            from .queries import run_detail  # (queries imports this module)
            row = run_detail(store, claim["run_id"])
            status = None if row is None else row.status
        elif claim is not None:
            status = "unknown"
        entries: list[dict[str, Any]] = []
        missed: set[float] = set()
        error = None
        raw = data.get("schedules")
        for s in raw if isinstance(raw, list) else ():
            if not isinstance(s, dict) or not isinstance(s.get("expr"), str):
                continue
            try:
                sched = parse_cron(s["expr"], s.get("tz") if isinstance(s.get("tz"), str)
                                   else None, where=f"{path}: schedule")
            except FlowError as exc:
                error = str(exc)
                continue
            entries.append({"key": s.get("key"), "expr": s["expr"], "tz": s.get("tz"),
                            "tasks": s.get("tasks"),
                            "next_tick": sched.next_after(when).timestamp()})
            if last is not None and not serving:
                start = _dt.datetime.fromtimestamp(last, _dt.timezone.utc)
                missed.update(t.timestamp() for t in sched.ticks(start, when, limit=MAX_MISSED))
        if claim is not None and status is None:  # claimed, never recorded
            missed.add(float(claim["tick"]))
        nxt = min((e["next_tick"] for e in entries), default=None)
        out.append(ScheduleInfo(flow, serving, last, claim, status, tuple(entries), nxt,
                                min(len(missed), MAX_MISSED), error))
    return out

