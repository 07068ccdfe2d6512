"""Crash safety: a run SIGKILLed at random moments is resumed until done.

Every task ends up completed, and no task recorded as completed before a kill runs again.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from flowdeco.plugins.state import SQLiteStore

LAYERS, WIDTH = 6, 10
KILLS = 12
SEED = 20261127


def crash_flow() -> str:
    """60 tasks in 6 layers; each appends "PID NAME" to a side-effect log and sleeps 10-40 ms."""
    rng = random.Random(SEED)
    lines = [
        "import os, time, zlib",
        "from flowdeco import task",
        "LOG = os.environ['FD_CRASH_LOG']",
        "",
        "def body(name):",
        "    fd = os.open(LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)",
        "    os.write(fd, f'{os.getpid()} {name}\\n'.encode())",
        "    os.close(fd)",
        "    time.sleep(0.010 + zlib.crc32(name.encode()) % 31 / 1000)",
        "    return {'task': name, 'pid': os.getpid()}",
        "",
    ]
    prev: list[str] = []
    for layer in range(LAYERS):
        cur = [f"t{layer}_{j}" for j in range(WIDTH)]
        for name in cur:
            deps = rng.sample(prev, rng.randint(1, 2)) if prev else []
            lines += ["@task", f"def {name}({', '.join(deps)}):", f"    return body({name!r})", ""]
        prev = cur
    return "\n".join(lines)


def completed(state: Path) -> set[str] | None:
    """Tasks recorded completed (None: the run is not recorded yet).  Must never raise."""
    store = SQLiteStore(state)
    try:
        if not store.open(create=False) or store.load_run("crash") is None:
            return None
        return {n for n, t in store.load_tasks("crash").items() if t.completed}
    finally:
        store.close()


def test_sigkill_at_random_moments_then_resume_until_done(tmp_path):
    """At least KILLS kills in all: on a slow machine one flow may finish before its
    kills are used up, so a fresh flow (new state, new log) continues the count --
    every flow is checked in full."""
    rng = random.Random(SEED)
    started = time.monotonic()
    total_kills = resumed_mid_run = 0
    for round_ in range(4):
        kills, mid = _crash_round(tmp_path / f"round{round_}", rng, KILLS - total_kills)
        total_kills += kills
        resumed_mid_run += mid
        if total_kills >= KILLS:
            break
    assert total_kills >= KILLS
    assert resumed_mid_run >= 5          # kills did land while tasks were recorded
    assert time.monotonic() - started < 120


def _crash_round(tmp_path: Path, rng: random.Random, wanted: int) -> tuple[int, int]:
    """Kill one flow up to ``wanted`` times, resume it until done, check it; (kills, mid-run kills)."""
    tmp_path.mkdir()
    (tmp_path / "crash.py").write_text(crash_flow())
    log = tmp_path / "effects.log"
    state = tmp_path / "state"
    env = {**os.environ, "FD_CRASH_LOG": str(log)}
    kills: list[tuple[int, set[str]]] = []   # (session index, recorded completed after the kill)
    pids: list[int] = []
    done = False
    for session in range(wanted + 10):
        known = completed(state)
        args = ["--resume", "crash"] if known is not None else ["--run-id", "crash"]
        proc = subprocess.Popen(
            [sys.executable, "-m", "flowdeco", "crash.py", "--state-dir", "state", "-w", "4",
             "-q", "-q", *args], cwd=tmp_path, env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        pids.append(proc.pid)
        if len(kills) < wanted:
            if rng.random() < 0.25:   # anywhere, start-up and opening the store included
                time.sleep(rng.uniform(0.0, 0.6))
            else:                     # while tasks run: after this process's first effect
                mark = f"{proc.pid} ".encode()
                deadline = time.monotonic() + 20
                while proc.poll() is None and time.monotonic() < deadline and not (
                        log.exists() and mark in log.read_bytes()):
                    time.sleep(0.002)
                time.sleep(rng.uniform(0.0, 0.08))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=20)
                kills.append((session, completed(state) or set()))
                proc.stderr.close()
                continue
        err = proc.communicate(timeout=60)[1]
        if proc.returncode == 0:
            done = True
            break
        assert proc.returncode in (1, 4) or proc.returncode < 0, err
    assert done, "the run never completed"

    names = {f"t{layer}_{j}" for layer in range(LAYERS) for j in range(WIDTH)}
    assert completed(state) == names                       # every task completed
    effects = [line.split() for line in log.read_text().splitlines()]
    assert {name for _, name in effects} == names
    session_of = {str(pid): i for i, pid in enumerate(pids)}
    for session, recorded in kills:
        later = [name for pid, name in effects if session_of[pid] > session]
        again = recorded & set(later)
        assert not again, f"recorded before kill {session}, ran again: {sorted(again)}"
    return len(kills), sum(1 for _, rec in kills if 0 < len(rec) < len(names))
