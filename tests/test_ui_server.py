"""The dashboard server (flowdeco.ui) through Starlette's TestClient: every view, API and
security rule, the static report, the command line.  Browser tests: test_ui_browser.py."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("starlette", reason="the ui extra is not installed: pip install "
                    "'flowdeco[ui]'")
pytest.importorskip("httpx", reason="Starlette's TestClient needs httpx")
import warnings  # noqa: E402

with warnings.catch_warnings():  # newer Starlette prefers httpx2; httpx works the same here
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient  # noqa: E402

import flowdeco  # noqa: E402
from flowdeco import Secret, task  # noqa: E402
from flowdeco.ui import app as ui_app  # noqa: E402
from flowdeco.ui.data import StateReader, read_audit  # noqa: E402

HOST = "http://127.0.0.1:8765"
XSS = "<script>alert(1)</script>"


@task
def first():
    return {"rows": 3}


@task(retries=1)
def second(first):
    return first["rows"] * 2


@task
def broken(first):
    raise ValueError("bad <b>input</b>")


@task
def after_broken(broken):
    return 1


_FLAKY = {"calls": 0}


@task(retry=flowdeco.Retry(retries=2, delay=0.05, backoff="fixed"))
def flaky():
    _FLAKY["calls"] += 1
    if _FLAKY["calls"] == 1:
        raise ConnectionError("first try fails")
    return "ok"


@task
def items():
    return [1, 2, 3]


@task(map="items")
def square(items):
    return items * items


@task(name=XSS)
def xss_task():
    return "<img src=x onerror=alert(2)>"


@task
def secretive():
    return {"token": Secret("hunter2"), "n": 1}


def _run(state: Path, tasks: list, run_id: str) -> None:
    flowdeco.run(tasks, state_dir=state, run_id=run_id, log_format="json", quiet=2)


@pytest.fixture(scope="module")
def state(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("ui") / "state"
    _run(d, [first, second, broken, after_broken], "r-fail")
    _run(d, [first, second, xss_task], "r-ok")
    _run(d, [secretive], "r-secret")
    _run(d, [flaky, items, square], "r-retry")
    return d


def client(state: Path, actions: bool = False, host: str = "127.0.0.1",
           port: int = 8765) -> TestClient:
    return TestClient(ui_app.create_app(state, host=host, port=port, allow_actions=actions),
                      base_url=f"http://{host}:{port}")


def test_runs_page_lists_runs_with_counts_and_filters(state):
    c = client(state)
    page = c.get("/")
    assert page.status_code == 200
    assert "r-fail" in page.text and "r-ok" in page.text
    assert 'title="1 failed"' in page.text
    failed = c.get("/", params={"status": "failed"}).text
    assert "r-fail" in failed and "r-ok" not in failed
    assert '<option value="failed" selected>' in failed  # the filter shows what it filters
    assert "r-ok" not in c.get("/", params={"text": "fail"}).text
    data = c.get("/api/runs", params={"status": "succeeded", "text": "r-ok"}).json()
    assert [r["run_id"] for r in data["runs"]] == ["r-ok"] and data["total"] == 1
    assert c.get("/api/runs", params={"since": "2000-01-01", "until": "2000-01-02"}
                 ).json()["total"] == 0


def test_bad_filters_are_one_clear_error(state):
    c = client(state)
    r = c.get("/api/runs", params={"status": "nope"})
    assert r.status_code == 400 and "unknown status 'nope'" in r.json()["error"]
    assert "use YYYY-MM-DD" in c.get("/api/runs", params={"since": "yesterday"}).json()["error"]
    assert "unknown status" in c.get("/", params={"status": "nope"}).text


def test_runs_are_paginated(tmp_path, monkeypatch):
    d = tmp_path / "s"
    for i in range(5):
        _run(d, [first], f"p{i}")
    monkeypatch.setattr(ui_app, "PAGE_SIZE", 2)
    c = client(d)
    one, three = c.get("/api/runs").json(), c.get("/api/runs", params={"page": 3}).json()
    assert one["total"] == 5 and len(one["runs"]) == 2 and len(three["runs"]) == 1
    assert [r["run_id"] for r in one["runs"]] == ["p4", "p3"]
    assert 'id="next"' in c.get("/").text and 'id="prev"' in c.get("/?page=2").text


def test_run_model_has_tasks_timeline_metrics_and_audit(state):
    m = client(state).get("/api/runs/r-fail").json()
    rows = {r[0]: dict(zip(m["columns"], r)) for r in m["tasks"]}
    assert rows["broken"]["status"] == "failed"
    assert rows["broken"]["error"] == "ValueError: bad <b>input</b>"
    assert rows["after_broken"]["status"] == "skipped"
    assert rows["after_broken"]["reason"] == "upstream"
    assert {b["task"] for b in m["timeline"]["bars"]} == {"first", "second", "broken"}
    assert m["metrics"]["lanes"] >= 1 and m["metrics"]["makespan"] >= 0
    events = [e["event"] for _, e in m["audit"]["events"]]
    assert events[0] == "run_started" and events[-1] == "run_finished"
    assert m["audit"]["offset"] == (state / "runs" / "r-fail" / "audit.jsonl").stat().st_size


def test_task_panel_shows_error_traceback_and_result_preview(state):
    c = client(state)
    d = c.get("/api/runs/r-fail/tasks/broken").json()
    assert d["status"] == "failed"
    assert "Traceback (most recent call last)" in d["traceback"]
    assert 'raise ValueError("bad <b>input</b>")' in d["traceback"]
    ok = c.get("/api/runs/r-fail/tasks/first").json()
    assert json.loads(ok["result_preview"]) == {"rows": 3}
    assert ok["attempts"][0]["outcome"] == "succeeded"
    assert c.get("/api/runs/r-fail/tasks/nope").status_code == 404


def test_result_preview_is_size_limited_and_masks_secrets():
    from flowdeco.ui.model import PREVIEW_CHARS, result_preview
    big = result_preview(json.dumps(list(range(100000))))
    assert len(big) < PREVIEW_CHARS + 100 and "characters in all" in big
    tagged = json.dumps({"a": {"$t": "custom", "c": "secret", "v": "hunter2"}})
    assert "hunter2" not in result_preview(tagged)


def test_a_secret_never_reaches_a_page(state):
    c = client(state)
    d = c.get("/api/runs/r-secret/tasks/secretive").json()
    assert "Secret" in d["error"] and d["result_preview"] is None  # refused by the codec
    for path in ("/api/runs/r-secret", "/api/runs/r-secret/audit",
                 "/api/runs/r-secret/tasks/secretive"):
        assert "hunter2" not in c.get(path).text


def test_unknown_and_invalid_run_ids_are_404_or_400(state):
    c = client(state)
    assert c.get("/runs/nope").status_code == 404
    assert "unknown run id &#39;nope&#39;" in c.get("/runs/nope").text
    assert c.get("/runs/a%20b").status_code == 404
    assert c.get("/api/runs/nope").status_code == 404
    assert c.get("/api/runs/bad%20id").status_code == 400


# ------------------------------------------------------------------- security


@pytest.mark.parametrize("host", ["evil.example:8765", "127.0.0.1:9999", "attacker.test",
                                  ""])
def test_host_header_must_name_the_bound_address(state, host):
    c = client(state)
    for path in ("/", "/api/runs", "/runs/r-ok", "/static/run.js"):
        assert c.get(path, headers={"host": host}).status_code == 421, (path, host)
    assert c.get("/", headers={"host": "localhost:8765"}).status_code == 200


def test_host_rule_for_a_non_loopback_bind(state):
    c = client(state, host="10.1.2.3", port=9000)
    assert c.get("/").status_code == 200
    assert c.get("/", headers={"host": "localhost:9000"}).status_code == 421


def test_every_response_carries_a_script_policy(state):
    r = client(state).get("/runs/r-ok")
    assert "script-src 'self'" in r.headers["content-security-policy"]
    assert r.headers["x-frame-options"] == "DENY"


def test_task_names_are_escaped_everywhere(state):
    c = client(state)
    page = c.get("/").text + c.get("/runs/r-ok").text
    assert XSS not in page
    model = c.get("/api/runs/r-ok")
    assert model.headers["content-type"].startswith("application/json")
    assert XSS in [r[0] for r in model.json()["tasks"]]  # data, drawn with textContent
    # every script writes data as text: no innerHTML/outerHTML/insertAdjacentHTML/document.write
    for js in (Path(ui_app.HERE) / "static").glob("*.js"):
        src = js.read_text()
        assert not re.search(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write", src), js


def test_read_only_by_default_no_action(state):
    c = client(state)
    r = c.post("/api/runs/r-fail/rerun", json={"task": "broken"},
               headers={"x-csrf-token": c.app.app.state.dashboard.csrf})
    assert r.status_code == 403 and "--allow-actions" in r.json()["error"]
    assert '<meta name="actions" content="0">' in c.get("/runs/r-fail").text


def test_rerun_needs_the_session_csrf_token(state, monkeypatch):
    started = []

    class FakePopen:
        def __init__(self, argv, **kw):
            started.append((argv, kw))
            self.pid = 4242

    monkeypatch.setattr(ui_app.subprocess, "Popen", FakePopen)
    c = client(state, actions=True)
    token = re.search(r'name="csrf-token" content="([^"]+)"', c.get("/").text).group(1)
    assert c.post("/api/runs/r-fail/rerun", json={"task": "broken"}).status_code == 403
    assert c.post("/api/runs/r-fail/rerun", json={"task": "broken"},
                  headers={"x-csrf-token": "x" + token}).status_code == 403
    assert not started
    r = c.post("/api/runs/r-fail/rerun", json={"task": "broken", "target": "flow.py"},
               headers={"x-csrf-token": token})
    assert r.status_code == 202, r.text
    argv = started[0][0]
    assert argv[1:] == ["-m", "flowdeco", "flow.py", "--state-dir", str(state), "--resume",
                        "r-fail", "--rerun", "broken", "-p", "no:progress"]
    assert c.post("/api/runs/r-fail/rerun", json={"task": "broken", "target": "--evil"},
                  headers={"x-csrf-token": token}).status_code == 400
    other = client(state, actions=True)  # another session: its own token
    assert other.post("/api/runs/r-fail/rerun", json={"task": "broken"},
                      headers={"x-csrf-token": token}).status_code == 403


def test_the_ui_changes_no_byte_of_the_state_dir(state):
    before = {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in state.rglob("*")}
    c = client(state)
    for path in ("/", "/api/runs", "/runs/r-fail", "/api/runs/r-fail",
                 "/api/runs/r-fail/tasks/broken", "/api/runs/r-fail/audit?from=0"):
        assert c.get(path).status_code == 200
    after = {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in state.rglob("*")}
    assert after == before


# ------------------------------------------------------------------- live updates


def _sse(text: str) -> list[dict]:
    out = []
    for block in text.split("\n\n"):
        ev = {}
        for line in block.splitlines():
            if line.startswith(":") or ":" not in line:
                continue
            k, _, v = line.partition(":")
            ev[k] = v.lstrip(" ")
        if "data" in ev:
            out.append(ev)
    return out


def test_stream_ids_are_audit_offsets_and_last_event_id_resumes(state):
    c = client(state)
    path = state / "runs" / "r-fail" / "audit.jsonl"
    whole = _sse(c.get("/api/runs/r-fail/stream", params={"seconds": "0.3"}).text)
    lines = path.read_bytes().splitlines(keepends=True)
    assert len(whole) == len(lines)
    ends = [sum(len(x) for x in lines[:i + 1]) for i in range(len(lines))]
    assert [int(e["id"]) for e in whole] == ends
    assert [json.loads(e["data"])["event"] for e in whole] == \
        [json.loads(x)["event"] for x in lines]
    resumed = _sse(c.get("/api/runs/r-fail/stream", params={"seconds": "0.3"},
                         headers={"last-event-id": str(ends[2])}).text)
    assert [int(e["id"]) for e in resumed] == ends[3:]  # nothing sent twice


def test_read_audit_leaves_a_partial_line_for_later(tmp_path):
    p = tmp_path / "audit.jsonl"
    p.write_bytes(b'{"event": "a"}\nnot json\n{"event": "b"}\n{"event": "c"')
    events, off = read_audit(p, 0)
    partial = b'{"event": "c"'
    assert [e["event"] for _, e in events] == ["a", "b"]
    assert off == p.stat().st_size - len(partial)  # the partial line waits for its end
    with open(p, "ab") as fh:
        fh.write(b"}\n")
    more, off2 = read_audit(p, off)
    assert [e["event"] for _, e in more] == ["c"] and off2 == p.stat().st_size


def test_reader_sees_runs_written_after_it_opened(tmp_path):
    """The read-only connection goes stale (immutable read, then a writer; a WAL removed):
    the reader opens it again and sees new runs and their changes."""
    d = tmp_path / "s"
    _run(d, [first], "one")
    reader = StateReader(d)
    assert [r["run_id"] for r in reader.list_runs()[0]] == ["one"]
    stamp = reader.stamp()
    _run(d, [first], "two")
    assert reader.stamp() != stamp
    assert [r["run_id"] for r in reader.list_runs()[0]] == ["two", "one"]
    assert reader.run("two")["counts"] == {"succeeded": 1}
    reader.close()


def test_changes_stream_reports_a_new_run(tmp_path):
    d = tmp_path / "s"
    _run(d, [first], "one")
    c = client(d)
    import threading
    t = threading.Timer(0.4, lambda: _run(d, [first], "two"))
    t.start()
    text = c.get("/api/stream", params={"seconds": "2.5"}).text
    t.join()
    assert "event: changed" in text


# ------------------------------------------------------------------- report and CLI


def test_static_report_is_self_contained(state, tmp_path):
    from flowdeco.ui.report import render_report
    html = render_report(state, "r-fail")
    assert '<script src' not in html and '<link rel="stylesheet"' not in html
    data = re.search(r'<script type="application/json" id="run-data">(.*?)</script>', html,
                     re.S).group(1)
    model = json.loads(data)
    assert "Traceback" in model["details"]["broken"]["traceback"]
    assert XSS not in render_report(state, "r-ok")  # escaped in the JSON as \u003c...


def _fd(*args, cwd, timeout=60):
    return subprocess.run([sys.executable, "-m", "flowdeco", *args], cwd=cwd, text=True,
                          capture_output=True, timeout=timeout)


def test_runs_report_command(state, tmp_path):
    out = tmp_path / "run.html"
    r = _fd("runs", "report", "r-fail", "--state-dir", str(state), "-o", str(out), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert out.stat().st_mode & 0o777 == 0o600 and "run-data" in out.read_text()
    r = _fd("runs", "report", "nope", "--state-dir", str(state), "-o", str(out), cwd=tmp_path)
    assert r.returncode == 4 and r.stderr.count("\n") == 1 and "unknown run id 'nope'" in r.stderr


def test_ui_without_its_extra_names_the_install_command(tmp_path):
    code = ("import sys, flowdeco.ui.cli as c; c.SERVER_MODULES = ('starlette', "
            "'no_such_module_fd'); sys.exit(c.main(['--state-dir', 'x']))")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, text=True,
                       capture_output=True, timeout=60)
    assert r.returncode == 4
    assert r.stderr.strip() == ("flowdeco: error: ui needs no_such_module_fd: "
                                "pip install 'flowdeco[ui]'")


def test_ui_usage_error_is_exit_4(tmp_path):
    r = _fd("ui", "--port", "nope", cwd=tmp_path)
    assert r.returncode == 4 and "ui: argument --port" in r.stderr


def test_ui_serves_prints_url_and_falls_back_from_a_taken_port(state, tmp_path):
    import socket
    import urllib.request
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    t0 = time.monotonic()
    p = subprocess.Popen([sys.executable, "-m", "flowdeco", "ui", "--state-dir", str(state),
                          "--port", str(port)], cwd=tmp_path, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        line = p.stdout.readline()
        m = re.match(r"flowdeco ui: (http://127\.0\.0\.1:(\d+)/) ", line)
        assert m, (line, p.stderr.read() if p.poll() is not None else "")
        assert int(m.group(2)) != port
        body = None
        while time.monotonic() - t0 < 30:
            try:
                body = urllib.request.urlopen(m.group(1) + "api/runs", timeout=5).read()
                break
            except OSError:
                time.sleep(0.05)
        assert body is not None and json.loads(body)["total"] == 4
    finally:
        p.terminate()
        p.wait(10)
        taken.close()


# ------------------------------------------------------------------- assets


URL = re.compile(r"""(?:https?:)?//[A-Za-z0-9.-]+\.[A-Za-z]{2,}|https?://""")
#: XML namespace names are identifiers, never fetched (createElementNS needs this one)
NAMESPACES = {"http://www.w3.org/2000/svg"}


def test_no_template_or_asset_references_an_outside_url():
    root = Path(ui_app.HERE)
    files = [p for p in root.rglob("*") if p.is_file() and p.suffix in
             (".html", ".js", ".css", ".svg", ".json")]
    assert len(files) >= 8
    for p in files:
        text = p.read_text(encoding="utf-8")
        for ns in NAMESPACES:
            text = text.replace(ns, "")
        found = URL.findall(text)
        assert not found, f"{p.relative_to(root)} references {found[:3]}"


def test_outside_url_check_catches_what_it_should():
    for bad in ('<script src="https://cdn.example.com/x.js">', "url(//fonts.example.org/f)",
                "fetch('http://10.0.0.1/')"):
        assert URL.search(bad), bad


# ------------------------------------------------------------------- graph snapshots


def test_snapshot_shapes_normalise_to_names_and_edges():
    from flowdeco.ui.data import normal_graph
    want = {"tasks": ["a", "b", "c"], "edges": [["a", "b"], ["b", "c"]], "options": {}}
    assert normal_graph({"tasks": ["a", "b", "c"], "edges": [["a", "b"], ["b", "c"]]}) == want
    assert normal_graph(json.dumps({"tasks": [{"name": "a"}, {"name": "b", "deps": ["a"]},
                                              {"name": "c", "deps": ["b"]}]})) == want
    assert normal_graph({"graph": {"tasks": {"a": {}, "b": {"upstream": ["a"]},
                                             "c": {"upstream": ["b"]}}}}) == want
    assert normal_graph({"tasks": ["a", "b", "c"], "edges": [
        {"from": "a", "to": "b"}, {"source": "b", "target": "c"}, ["a", "b"]]}) == want
    assert normal_graph(None) is None


def test_with_a_snapshot_the_model_has_edges_and_the_critical_path_follows_them(
        state, monkeypatch):
    snap = {"tasks": ["first", "second", "broken", "after_broken"],
            "edges": [["first", "second"], ["first", "broken"], ["broken", "after_broken"]]}
    monkeypatch.setattr(StateReader, "graph", lambda self, run_id: snap)
    monkeypatch.setattr(StateReader, "changed_tasks", lambda self, run_id: {"second"})
    m = client(state).get("/api/runs/r-fail").json()
    names = [r[0] for r in m["tasks"]]
    assert names == snap["tasks"] and m["has_edges"]
    assert sorted(m["edges"]) == [[0, 1], [0, 2], [2, 3]]
    assert m["critical"][0] == "first" and m["critical"][-1] in ("second", "broken")
    assert dict(zip(m["columns"], m["tasks"][1]))["changed"] is True


def test_pending_tasks_of_a_snapshot_show_as_pending(state, monkeypatch):
    snap = {"tasks": ["first", "later"], "edges": [["first", "later"]]}
    monkeypatch.setattr(StateReader, "graph", lambda self, run_id: snap)
    m = client(state).get("/api/runs/r-ok").json()
    assert dict(zip(m["columns"], m["tasks"][1]))["status"] == "pending"


def test_lanes_are_packed_so_no_two_attempts_overlap(state):
    m = client(state).get("/api/runs/r-fail").json()
    by_lane: dict = {}
    for b in m["timeline"]["bars"]:
        by_lane.setdefault(b["lane"], []).append((b["start"], b["end"]))
    for spans in by_lane.values():
        spans.sort()
        assert all(a[1] <= b[0] + 1e-9 for a, b in zip(spans, spans[1:]))


_BOTH = threading.Barrier(2, timeout=30)


@task
def left():
    _BOTH.wait()  # left and right run at the same time: on two workers
    return 1


@task
def right():
    _BOTH.wait()
    return 2


@task
def joined(left, right):
    return left + right


def test_timeline_has_one_lane_per_worker_the_trail_names(tmp_path):
    d = tmp_path / "s"
    flowdeco.run([left, right, joined], state_dir=d, run_id="w2", workers=2,
                 log_format="json", quiet=2)
    m = client(d).get("/api/runs/w2").json()
    tl = m["timeline"]
    assert tl["workers_recorded"] is True
    assert len(tl["lanes"]) == 2 and m["metrics"]["lanes"] == 2
    assert not any(lane.startswith("lane ") for lane in tl["lanes"])  # real names, not packed
    lane = {b["task"]: b["lane"] for b in tl["bars"]}
    assert lane["left"] != lane["right"]
    assert {b["worker"] for b in tl["bars"]} == set(tl["lanes"])
    d_left = client(d).get("/api/runs/w2/tasks/left").json()
    assert d_left["attempts"][0]["worker"] == tl["lanes"][lane["left"]]


def test_pipeline_nodes_show_per_stage_figures_and_queue_high_water_marks(tmp_path):
    pipe = flowdeco.Pipeline("squares")

    @pipe.stage(workers=2)
    def parse(x):
        if x == 3:
            raise ValueError("unlucky")
        return int(x)

    @pipe.stage(workers=1)
    def square(n):
        return n * n

    @task
    def numbers():
        return list(range(10))

    d = tmp_path / "s"
    node = pipe.as_task("squares", source=numbers)
    flowdeco.run([numbers, node], state_dir=d, run_id="pipe", log_format="json", quiet=2)
    m = client(d).get("/api/runs/pipe").json()
    (p,) = m["pipeline"]
    assert (p["task"], p["items"], p["outputs"], p["failed"]) == ("squares", 10, 9, 1)
    assert p["high_water"] >= 1 and p["max_in_flight"] >= 1
    rows = {s["stage"]: s for s in p["stages"]}
    assert list(rows) == ["parse", "square"]
    assert (rows["parse"]["in"], rows["parse"]["out"], rows["parse"]["failed"]) == (10, 9, 1)
    assert (rows["square"]["in"], rows["square"]["out"], rows["square"]["failed"]) == (9, 9, 0)
    assert all(r["queue_hwm"] >= 1 and r["rate"] is not None for r in rows.values())
    assert p["high_water"] == max(r["queue_hwm"] for r in rows.values())


def _ev(name, task, sec, **fields):
    return {"event": name, "task": task, "timestamp": f"2026-01-01T00:00:{sec:06.3f}Z",
            **fields}


def test_older_trails_without_workers_are_packed_and_running_attempts_get_a_lane():
    from flowdeco.ui.model import Trail, _timeline
    old = Trail()  # an audit trail written before attempt-end events named the worker
    old.feed([_ev("task_started", "a", 1, attempt=1), _ev("task_started", "b", 1.5, attempt=1),
              _ev("task_succeeded", "a", 2), _ev("task_started", "c", 2.5, attempt=1),
              _ev("task_succeeded", "b", 3), _ev("task_succeeded", "c", 4)])
    tl = _timeline(old)
    assert tl["workers_recorded"] is False and tl["lanes"] == ["lane 1", "lane 2"]
    live = Trail()  # a live run: the running attempt's worker is not known yet
    live.feed([_ev("task_started", "a", 1, attempt=1), _ev("task_started", "b", 1.5, attempt=1),
               _ev("task_succeeded", "a", 2, worker="w-0")])
    tl = _timeline(live)
    assert tl["workers_recorded"] is True and tl["lanes"] == ["w-0", "running 1"]
    assert {b["task"]: tl["lanes"][b["lane"]] for b in tl["bars"]} == {
        "a": "w-0", "b": "running 1"}


def test_retried_attempts_keep_their_worker_lane(state):
    m = client(state).get("/api/runs/r-retry").json()
    assert m["timeline"]["workers_recorded"] is True
    assert all(b["worker"] for b in m["timeline"]["bars"])


def test_retries_show_as_retried_attempts_with_their_wait(state):
    c = client(state)
    m = c.get("/api/runs/r-retry").json()
    bars = [b for b in m["timeline"]["bars"] if b["task"] == "flaky"]
    assert [b["outcome"] for b in bars] == ["retried", "succeeded"]
    assert bars[0]["delay"] == pytest.approx(0.05) and bars[1]["start"] >= bars[0]["end"]
    assert m["metrics"]["retries"] == 1
    d = c.get("/api/runs/r-retry/tasks/flaky").json()
    assert [a["outcome"] for a in d["attempts"]] == ["retried", "succeeded"]
    assert d["attempts"][0]["error"] == "ConnectionError: first try fails"


def test_mapped_instances_are_rows_of_the_model(state):
    m = client(state).get("/api/runs/r-retry").json()
    names = {r[0] for r in m["tasks"]}
    assert {"square[0]", "square[1]", "square[2]"} <= names


# ------------------------------------------------------------------- schedules


def test_schedules_page_shows_what_serve_runs(tmp_path, write_module):
    import datetime as dt
    import io
    from flowdeco.plugins.serve import serve
    from flowdeco import FakeClock
    # (write_module drops the module afterwards: a later test's own "hourly" must not
    # find this one in sys.modules)
    flow = write_module("from flowdeco import task\n\n@task\ndef tick():\n    return 1\n",
                        name="hourly")
    state = tmp_path / "s"
    clock = FakeClock(wall=dt.datetime.fromisoformat("2026-05-28T20:30:00+00:00").timestamp())
    serve(str(flow), cron="0 * * * *", tz="UTC", clock=clock, max_ticks=1, state_dir=state,
          out=io.StringIO())
    c = client(state)
    page = c.get("/schedules").text
    assert 'data-flow="hourly"' in page, page
    assert "<td>2026-05-28 21:00:00Z</td>" in page  # the last tick claimed
    assert "<th>serving</th>" in page and "<td>no</td>" in page
    assert "no flow is served" in client(tmp_path / "none").get("/schedules").text


def test_the_data_layer_is_used_when_present(state, monkeypatch):
    """The one switch in flowdeco.ui.data: with the queries module (schema v4), its rows
    (attrs records with flow_version) and snapshots reach the pages."""
    import types
    import attrs
    from flowdeco.ui import data

    @attrs.frozen
    class Row:
        run_id: str
        flow: str
        status: str
        started: float
        finished: float | None
        duration: float
        sessions: int
        pid: int | None
        flow_version: str | None
        counts: dict

        def to_dict(self):
            return attrs.asdict(self)

    row = Row("r-ok", "tasks", "succeeded", 1.0e9, 1.0e9 + 1, 1.0, 1, None, "abc123def456",
              {"succeeded": 3})
    fake = types.SimpleNamespace(
        list_runs=lambda store, **kw: ([row], 1),
        run_detail=lambda store, run_id: row,
        graph_snapshot=lambda store, run_id: {"tasks": [{"name": "first"}, {"name": "second"}],
                                              "edges": [["first", "second"]], "flow": "tasks"},
        changed_tasks=lambda store, run_id: {"second"},
        schedules=lambda state_dir: [],
    )
    monkeypatch.setattr(data, "_queries", fake)
    c = client(state)
    listed = c.get("/api/runs").json()["runs"][0]
    assert listed["version"] == "abc123def456" and listed["counts"] == {"succeeded": 3}
    assert "abc123def4" in c.get("/").text
    m = c.get("/api/runs/r-ok").json()
    assert m["run"]["version"] == "abc123def456" and m["has_edges"]
    assert [m["tasks"][i][0] for i in m["edges"][0]] == ["first", "second"]
    assert dict(zip(m["columns"], m["tasks"][1]))["changed"] is True


def test_schedule_cells_read_ticks_claims_and_schedules():
    from flowdeco.ui.app import cell
    assert cell("last_tick", 0.0) == ("1970-01-01 00:00:00Z", None)
    assert cell("claim", {"run_id": "f-1", "tick": 0.0}) == \
        ("run_id=f-1, tick=1970-01-01 00:00:00Z", "f-1")
    assert cell("schedules", [{"expr": "0 * * * *", "next_tick": 0.0}]) == \
        ("expr=0 * * * *, next_tick=1970-01-01 00:00:00Z", None)
    assert cell("serving", True) == ("yes", None) and cell("missed", 3) == ("3", None)


def test_bound_to_every_address_ip_hosts_pass_names_do_not(state):
    c = client(state, host="0.0.0.0", port=8765)
    for ok in ("192.168.1.5:8765", "127.0.0.1:8765", "[::1]:8765", "localhost:8765"):
        assert c.get("/", headers={"host": ok}).status_code == 200, ok
    for bad in ("evil.example:8765", "192.168.1.5:9999", "192.168.1.5"):
        assert c.get("/", headers={"host": bad}).status_code == 421, bad


def test_a_damaged_store_is_one_clear_message_not_a_500(tmp_path):
    d = tmp_path / "s"
    d.mkdir()
    (d / "state.db").write_bytes(b"this is not a database" * 100)
    c = client(d)
    page = c.get("/")
    assert page.status_code == 200 and "state.db" in page.text
    assert c.get("/runs/r1").status_code == 404 and "state.db" in c.get("/runs/r1").text
    r = c.get("/api/runs/r1")
    assert r.status_code == 400 and "state.db" in r.json()["error"]


def test_tasks_of_a_crashed_run_are_not_shown_running(tmp_path):
    """A run whose process died mid-task: the trail ends at task_started; the page says
    the run crashed and the task was interrupted, not that it still runs."""
    from flowdeco.plugins.state.store import SQLiteStore
    d = tmp_path / "s"
    store = SQLiteStore(d)
    store.open()
    store.begin_run("dead", "f", 1.0e9, resumed=False)
    store.conn.execute("UPDATE runs SET pid=? WHERE run_id='dead'", (2 ** 22 + 12345,))
    store.close()
    (d / "runs" / "dead").mkdir(parents=True)
    (d / "runs" / "dead" / "audit.jsonl").write_text(
        '{"event": "run_started", "timestamp": "2001-09-09T01:46:40Z", "run_id": "dead"}\n'
        '{"event": "task_started", "timestamp": "2001-09-09T01:46:41Z", "run_id": "dead", '
        '"task": "slow", "attempt": 1}\n')
    m = client(d).get("/api/runs/dead").json()
    assert m["run"]["status"] == "crashed"
    assert dict(zip(m["columns"], m["tasks"][0]))["status"] == "interrupted"


def test_audit_history_pages_backwards_before_an_offset(state):
    c = client(state)
    lines = (state / "runs" / "r-fail" / "audit.jsonl").read_bytes().splitlines(keepends=True)
    ends = [sum(len(x) for x in lines[:i + 1]) for i in range(len(lines))]
    d = c.get("/api/runs/r-fail/audit", params={"before": ends[4], "limit": 2}).json()
    assert [o for o, _ in d["events"]] == ends[2:4] and d["more"] is True
    d = c.get("/api/runs/r-fail/audit", params={"before": ends[2], "limit": 5}).json()
    assert [o for o, _ in d["events"]] == ends[:2] and d["more"] is False
    assert c.get("/api/runs/r-fail/audit", params={"before": "x"}).status_code == 400
    bad = c.get("/api/runs/r-fail/audit", params={"from": "abc"})
    assert bad.status_code == 400
    assert bad.json()["error"] == "from must be a whole number (a byte offset or a count), got 'abc'"


def test_a_running_run_shows_its_duration_so_far(tmp_path):
    import time as _time
    from flowdeco.plugins.state.store import SQLiteStore
    d = tmp_path / "s"
    store = SQLiteStore(d)
    store.open()
    store.begin_run("live", "f", _time.time() - 30, resumed=False)  # pid: this process
    store.close()
    row = client(d).get("/api/runs").json()["runs"][0]
    assert row["status"] == "running" and 29 < row["duration"] < 120


def test_ctrl_c_stops_the_ui_even_with_live_streams_open(state, tmp_path):
    import signal
    import socket
    p = subprocess.Popen([sys.executable, "-m", "flowdeco", "ui", "--state-dir", str(state),
                          "--port", "0"], cwd=tmp_path, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        m = re.match(r"flowdeco ui: http://127\.0\.0\.1:(\d+)/ ", p.stdout.readline())
        assert m
        conn = socket.create_connection(("127.0.0.1", int(m.group(1))), timeout=10)
        conn.sendall(f"GET /api/stream HTTP/1.1\r\nHost: 127.0.0.1:{m.group(1)}\r\n\r\n"
                     .encode())
        assert b"200" in conn.recv(100)  # the stream is open
        p.send_signal(signal.SIGINT)
        assert p.wait(timeout=8) == 0
        assert "Traceback" not in p.stderr.read()  # the stream ended, it was not cancelled
        conn.close()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_ui_starts_without_importing_the_engine_or_structlog(tmp_path):
    """Ready in under 1 s: everything the command does up to serving imports what it
    serves with, not the engine (the scheduler) or structlog, which only runs need."""
    code = ("import sys, uvicorn\n"
            "uvicorn.Server.run = lambda self, sockets=None: None  # stop where it serves\n"
            "from flowdeco.cli import main\n"
            f"assert main(['ui', '--state-dir', {str(tmp_path)!r}, '--port', '0']) == 0\n"
            "heavy = sorted(m for m in ('structlog', 'flowdeco.engine.session',\n"
            "               'flowdeco.engine.scheduler', 'flowdeco.context') if m in sys.modules)\n"
            "print('heavy', heavy)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert "flowdeco ui: http://127.0.0.1:" in out.stdout
    assert out.stdout.strip().endswith("heavy []")


def test_runs_listing_and_the_dashboard_show_the_same_times(state, capsys):
    """One formatter for start times and durations (flowdeco/timefmt.py): ``runs`` on the
    command line and the dashboard's runs page write a run's the same way."""
    from flowdeco import cli
    assert cli.main(["runs", "--state-dir", str(state)]) == 0
    listed = {}
    for line in capsys.readouterr().out.splitlines()[1:]:
        cols = line.split()
        listed[cols[0]] = (f"{cols[3]} {cols[4]}", cols[5])  # STARTED is two words
    page = client(state).get("/").text
    rows = re.findall(r'<tr data-run="([^"]+)"[^>]*>.*?<td class="ts">([^<]*)</td>'
                      r'<td class="dur">([^<]*)</td>', page, re.S)
    shown = {run_id: (started, took) for run_id, started, took in rows}
    assert set(shown) == set(listed) == {"r-fail", "r-ok", "r-secret", "r-retry"}
    assert shown == listed


def test_time_formats():
    from flowdeco.timefmt import seconds, when
    assert [seconds(s) for s in (None, 0.0, 0.0123, 0.9994, 1.0, 59.994, 75.5, 3725.0)] == [
        "-", "0.0ms", "12.3ms", "999.4ms", "1.00s", "59.99s", "1m15s", "1h02m05s"]
    assert when(None) == "-" and when(0.0) == "1970-01-01 00:00:00Z"
    assert when(1_800_000_000.9) == "2027-01-15 08:00:00Z"


def _unsent_bytes(server_port: int, client_port: int) -> int | None:
    """The server side's kernel send queue of one loopback connection (Linux)."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        cols = line.split()
        local, remote = cols[1], cols[2]
        if int(local.split(":")[1], 16) == server_port \
                and int(remote.split(":")[1], 16) == client_port:
            return int(cols[4].split(":")[0], 16)
    return None


def test_ctrl_c_is_prompt_and_quiet_with_a_client_that_stopped_reading(tmp_path):
    """A live stream whose client stopped reading waits in its write (the socket is full)
    and never sees the server stop: Ctrl-C used to wait for uvicorn's 3 s graceful
    timeout and print a CancelledError traceback."""
    import signal
    import socket
    if not Path("/proc/net/tcp").exists():
        pytest.skip("needs /proc/net/tcp to see that the server's writes are blocked")
    d = tmp_path / "state"
    _run(d, [first], "big")
    line = json.dumps({"event": "task_log", "timestamp": "2026-01-01T00:00:00.000000Z",
                       "run_id": "big", "task": "first", "level": "info",
                       "message": "x" * 400}) + "\n"
    with open(d / "runs" / "big" / "audit.jsonl", "a") as fh:
        fh.write(line * 40_000)  # 20 MB: more than the socket buffers hold
    p = subprocess.Popen([sys.executable, "-m", "flowdeco", "ui", "--state-dir", str(d),
                          "--port", "0"], cwd=tmp_path, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        m = re.match(r"flowdeco ui: http://127\.0\.0\.1:(\d+)/ ", p.stdout.readline())
        assert m
        port = int(m.group(1))
        conn = socket.socket()
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        conn.settimeout(10)
        conn.connect(("127.0.0.1", port))
        conn.sendall(f"GET /api/runs/big/stream HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n"
                     .encode())
        assert b"200" in conn.recv(100)  # the stream is open; from now on nothing is read
        client_port = conn.getsockname()[1]
        # wait until the server's send queue stops growing: its writes are blocked
        deadline = time.monotonic() + 20
        seen = []
        while time.monotonic() < deadline:
            seen = (seen + [_unsent_bytes(port, client_port) or 0])[-5:]
            if len(seen) == 5 and seen[0] > 0 and len(set(seen)) == 1:
                break
            time.sleep(0.05)
        else:
            pytest.fail(f"the server's writes never blocked (send queue: {seen})")
        t0 = time.monotonic()
        p.send_signal(signal.SIGINT)
        assert p.wait(timeout=10) == 0
        took = time.monotonic() - t0
        err = p.stderr.read()
        assert "Traceback" not in err and "CancelledError" not in err, err
        assert "timeout graceful shutdown" not in err, err
        assert took < 1.5, f"Ctrl-C took {took:.2f} s"
        conn.close()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
