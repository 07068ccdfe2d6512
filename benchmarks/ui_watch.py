#!/usr/bin/env python
"""What watching a run in the dashboard costs the run: watched vs unwatched run time.

Usage::

    python benchmarks/ui_watch.py             # 800 tasks, 9 rounds
    python benchmarks/ui_watch.py --quick     # 300 tasks, 3 rounds

Each round runs the same generated flow twice, in fresh processes
(``python -m flowdeco FLOW --state-dir S --run-id ID -q``), in alternating
order: once unwatched, once while ``python -m flowdeco ui`` serves the state
dir with two Server-Sent-Events clients connected before the run starts -- the
run's own ``/api/runs/ID/stream`` (what an open run page follows) and
``/api/stream`` (what the runs list follows) -- reading everything the server
sends, over plain sockets (no client library).  The flow is many small tasks
(``--work`` ms of CPU each), so its audit trail grows as fast as a real run's
can: the worst case for the stream's polling.  The figure is the median run
time (wall clock of the run process) of each mode and their ratio; the target
(issue 17) is watched <= 1.05x unwatched.  The machine is shared, so rounds
are interleaved and medians reported; a ratio near 1.0 within noise is the
expected outcome.  The dashboard server's CPU time during the run (from
``/proc``) is printed too: on a busy machine it is the steadier figure of what
watching takes from the run.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def flow_source(tasks: int, work_ms: float) -> str:
    """``tasks`` small tasks: a fan-out of chains 20 deep (about ``work_ms`` of CPU each)."""
    spin = max(int(work_ms * 20000), 1)  # ~20k loop steps per ms on a typical core
    lines = ["from flowdeco import task", "",
             f"def spin():\n    return sum(range({spin}))", ""]
    for i in range(tasks):
        dep = f"t{i - 1}" if i % 20 else ""
        lines.append(f"@task\ndef t{i}({dep}):\n    return spin()\n")
    return "\n".join(lines)


def env() -> dict:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    e.pop("FLOWDECO_ADDOPTS", None)
    return e


class SSE(threading.Thread):
    """A Server-Sent-Events client on a raw socket: reads (and counts) until closed."""

    def __init__(self, port: int, path: str):
        super().__init__(daemon=True)
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                          "Accept: text/event-stream\r\n\r\n".encode())
        self.received = 0
        self.events = 0

    def run(self) -> None:
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    return
                self.received += len(data)
                self.events += data.count(b"\nevent: audit\n")
        except OSError:
            return

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


def start_ui(state: Path) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([sys.executable, "-m", "flowdeco", "ui", "--state-dir", str(state),
                             "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env=env(), text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    m = re.search(r":(\d+)/", line)
    if not m:
        proc.kill()
        raise SystemExit(f"ui did not start: {line}{proc.stdout.read()}")
    return proc, int(m.group(1))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc; 0.0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def one_run(flow: Path, state: Path, run_id: str, watched: bool) -> tuple[float, int, float]:
    ui = None
    clients: list[SSE] = []
    if watched:
        ui, port = start_ui(state)
        clients = [SSE(port, f"/api/runs/{run_id}/stream"), SSE(port, "/api/stream")]
        for c in clients:
            c.start()
        time.sleep(0.5)  # both streams connected and polling before the run starts
    cpu0 = cpu_seconds(ui.pid) if ui else 0.0
    t0 = time.perf_counter()
    rc = subprocess.run([sys.executable, "-m", "flowdeco", str(flow), "--state-dir", str(state),
                         "--run-id", run_id, "-qq", "-p", "no:progress"], env=env(),
                        stdout=subprocess.DEVNULL).returncode
    elapsed = time.perf_counter() - t0
    ui_cpu = cpu_seconds(ui.pid) - cpu0 if ui else 0.0
    events = 0
    if watched:
        time.sleep(1.0)  # let the stream deliver the tail
        events = clients[0].events
        for c in clients:
            c.close()
        assert ui is not None
        ui.terminate()
        ui.wait(10)
    if rc != 0:
        raise SystemExit(f"run {run_id} exited {rc}")
    return elapsed, events, ui_cpu


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--tasks", type=int)
    ap.add_argument("--work", type=float, default=1.0, help="ms of CPU per task")
    ap.add_argument("--rounds", type=int)
    ns = ap.parse_args()
    tasks = ns.tasks or (300 if ns.quick else 800)
    rounds = ns.rounds or (3 if ns.quick else 9)
    times: dict[str, list[float]] = {"unwatched": [], "watched": []}
    with tempfile.TemporaryDirectory() as tmp:
        flow = Path(tmp) / "watched_flow.py"
        flow.write_text(flow_source(tasks, ns.work))
        state = Path(tmp) / "state"
        one_run(flow, state, "warmup", False)
        streamed = 0
        ui_cpu: list[float] = []
        for r in range(rounds):
            order = ("unwatched", "watched") if r % 2 == 0 else ("watched", "unwatched")
            for mode in order:
                t, ev, cpu = one_run(flow, state, f"r{r}-{mode}", mode == "watched")
                times[mode].append(t)
                if mode == "watched":
                    ui_cpu.append(cpu)
                streamed = max(streamed, ev)
    u, w = statistics.median(times["unwatched"]), statistics.median(times["watched"])
    print(f"{tasks} tasks x {ns.work} ms, {rounds} rounds (medians, wall clock of the run)")
    print(f"  unwatched  {u * 1000:9.1f} ms")
    print(f"  watched    {w * 1000:9.1f} ms   ({streamed} audit events streamed to the client)")
    print(f"  ui server CPU during the run {statistics.median(ui_cpu) * 1000:.1f} ms "
          f"({statistics.median(ui_cpu) / w * 100:.1f}% of one core)")
    print(f"  ratio      {w / u:9.3f}x   (target <= 1.05x)")


if __name__ == "__main__":
    main()
