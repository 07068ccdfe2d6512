"""A truncated or garbled ``state.db-wal`` loses commits; the resume says so.

The audit trail writes ``task_succeeded`` only once the completion is committed, so
on resume a task the trail shows as succeeded but the store lacks was lost by the
store: it runs again with one ``state_warning`` naming it.  A run whose own record
is gone while its audit trail exists is refused, naming the run (exit 4).

The commits are kept in the -wal by a reader holding a snapshot from before the
run (no checkpoint can copy them into state.db), then state.db, the -wal and the
audit trails are copied elsewhere and the copy's -wal is cut or garbled.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest

import flowdeco
from flowdeco import cli
from flowdeco.plugins.state import SQLiteStore

FLOW = """
    from flowdeco import task

    LOG = {log!r}

    def mark(name):
        with open(LOG, "a") as fh:
            fh.write(name + "\\n")

    @task
    def a():
        mark("a")
        return 1

    @task
    def b(a):
        mark("b")
        return a + 10

    @task
    def c(b):
        mark("c")
        return b + 100

    @task
    def d(c):
        mark("d")
        return c * 2
"""

FRAME_HEADER, WAL_HEADER = 24, 32


class Recorder:
    def __init__(self):
        self.events = []

    @flowdeco.hookimpl
    def flowdeco_report(self, run, event):
        self.events.append(event)


def completed(state: Path, run_id: str) -> set[str] | None:
    """Completed tasks of ``run_id`` in a copy of ``state`` (None: no such run)."""
    probe = state.parent / f"{state.name}-probe"
    shutil.rmtree(probe, ignore_errors=True)
    probe.mkdir()
    for name in ("state.db", "state.db-wal"):
        if (state / name).exists():
            shutil.copy(state / name, probe / name)
    conn = sqlite3.connect(probe / "state.db")
    try:
        if conn.execute("SELECT 1 FROM runs WHERE run_id=?", (run_id,)).fetchone() is None:
            return None
        return {n for n, s in conn.execute("SELECT name, status FROM tasks WHERE run_id=?",
                                           (run_id,)) if s in ("succeeded", "restored")}
    finally:
        conn.close()
        shutil.rmtree(probe)


@pytest.fixture
def saved(flows, tmp_path):
    """Run FLOW once with its commits held in the -wal; a copy of the state dir."""
    log = tmp_path / "calls.log"
    path = flows.write(FLOW.format(log=str(log)))
    st = tmp_path / "st"
    store = SQLiteStore(st)
    store.open()  # the database exists (schema committed) before the reader starts
    store.close()
    reader = sqlite3.connect(st / "state.db")
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM runs").fetchall()  # a snapshot from before the run
    try:
        result = flowdeco.run(str(path), state_dir=st, run_id="r", executor="sync")
        assert result.ok and result["d"].result == 222
        copy = tmp_path / "copy"
        copy.mkdir()
        shutil.copy(st / "state.db", copy / "state.db")
        shutil.copy(st / "state.db-wal", copy / "state.db-wal")
        shutil.copytree(st / "runs", copy / "runs")
    finally:
        reader.close()
    assert completed(copy, "r") == {"a", "b", "c", "d"}  # all of it is in the -wal
    log.unlink()

    class Saved:
        state = copy
        wal = copy / "state.db-wal"
        module = path

        def calls(self):
            return log.read_text().split() if log.exists() else []

        def frames(self) -> int:
            return (self.wal.stat().st_size - WAL_HEADER) // self.frame_size()

        def frame_size(self) -> int:
            page = int.from_bytes(self.wal.read_bytes()[8:12], "big")
            return FRAME_HEADER + page

        def damage(self, how: str, frame: int) -> None:
            """Cut the -wal before ``frame`` (0-based), or garble that frame's page."""
            size = self.frame_size()
            start = WAL_HEADER + frame * size
            with open(self.wal, "r+b") as fh:
                if how == "truncate":
                    fh.truncate(start + size // 2)  # (mid-frame: a torn last write)
                else:
                    fh.seek(start + FRAME_HEADER + 100)
                    fh.write(b"\xde\xad\xbe\xef" * 16)
    return Saved()


def _losing_some(saved, how: str) -> set[str]:
    """Damage the -wal at the latest frame that leaves the run recorded but loses tasks."""
    original = saved.wal.read_bytes()
    for frame in range(saved.frames() - 1, 0, -1):
        saved.damage(how, frame)
        kept = completed(saved.state, "r")
        if kept is not None and len(kept) <= 2:
            return {"a", "b", "c", "d"} - kept
        saved.wal.write_bytes(original)
    raise AssertionError("no frame of the -wal loses tasks but keeps the run")


@pytest.mark.parametrize("how", ["truncate", "garble"])
def test_completions_lost_from_the_wal_run_again_with_one_warning(saved, how, capsys):
    lost = _losing_some(saved, how)
    assert {"c", "d"} <= lost
    rec = Recorder()
    result = flowdeco.run(str(saved.module), state_dir=saved.state, resume="r", plugins=[rec])
    assert result.ok and result["d"].result == 222
    assert sorted(saved.calls()) == sorted(lost)  # the lost ones (only) ran again
    warnings = [e for e in rec.events if e.name == "state_warning"]
    assert len(warnings) == 1
    fields = warnings[0].fields
    assert fields["level"] == "warning"
    assert sorted(fields["tasks"]) == sorted(lost) and fields["count"] == len(lost)
    assert "-wal" in fields["reason"] and "audit trail" in fields["reason"]
    trail = [json.loads(x) for x in
             (saved.state / "runs" / "r" / "audit.jsonl").read_text().splitlines()]
    assert [e["event"] for e in trail].count("state_warning") == 1
    assert completed(saved.state, "r") == {"a", "b", "c", "d"}


def test_cli_shows_the_lost_tasks_in_one_line(saved, capsys):
    lost = _losing_some(saved, "truncate")
    code = cli.main([str(saved.module), "--state-dir", str(saved.state), "--resume", "r"])
    err = capsys.readouterr().err
    assert code == 0
    lines = [ln for ln in err.splitlines() if "state_warning" in ln]
    assert len(lines) == 1
    assert all(repr(name) in lines[0] for name in lost)


def test_a_run_whose_record_the_store_lost_is_refused(saved, capsys):
    with open(saved.wal, "r+b") as fh:
        fh.truncate(WAL_HEADER + saved.frame_size() // 2)  # not even the run's record is left
    assert completed(saved.state, "r") is None
    code = cli.main([str(saved.module), "--state-dir", str(saved.state), "--resume", "r"])
    err = capsys.readouterr().err
    assert code == 4
    assert len(err.strip().splitlines()) == 1
    assert "'r'" in err and "audit trail" in err and "lost" in err
    assert saved.calls() == []
