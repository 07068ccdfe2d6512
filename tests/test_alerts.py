"""Alerts (issue 19 item 7): task callbacks, run(on_finish=), the notify webhook."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

import flowdeco
from flowdeco import cli

FLOW = """
    import threading
    from flowdeco import task
    calls = []

    def record(alert):
        calls.append((alert.kind, alert.task, alert.attempt, alert.error, alert.delay,
                      alert.outcome.status if alert.outcome else None,
                      threading.current_thread().name))

    @task(on_success=record)
    def good():
        return 1

    @task(retries=2, on_failure=record, on_retry=record)
    def flaky(good, ctx):
        raise ValueError(f"bad try {ctx.attempt}")

    @task(on_failure=record, on_success=record)
    def after(flaky):
        return 2
"""


def events(state_dir, run_id, *names):
    from flowdeco.plugins.audit import audit_path, read_events
    return list(read_events(audit_path(state_dir, run_id), names or None))


@pytest.mark.parametrize("executor", ["thread", "sync", "process"])
def test_task_callbacks_get_the_outcome_on_the_scheduler_thread(flows, tmp_path, executor):
    path = flows.write(FLOW)
    me = threading.current_thread().name
    result = flowdeco.run(str(path), executor=executor, state_dir=None)
    assert result.status == "failed"
    mod = flows.load(path.stem)
    assert mod.calls == [
        ("success", "good", 1, None, None, "succeeded", me),
        ("retry", "flaky", 1, "ValueError: bad try 1", 0.0, None, me),
        ("retry", "flaky", 2, "ValueError: bad try 2", 0.0, None, me),
        ("failure", "flaky", 3, "ValueError: bad try 3", None, "failed", me),
        # 'after' was skipped: neither callback
    ]


def test_a_callback_that_raises_is_reported_and_the_run_goes_on(flows, tmp_path):
    path = flows.write("""
        from flowdeco import task

        def broken(alert):
            raise RuntimeError("pager is down")

        @task(on_success=broken)
        def first():
            return 1

        @task
        def second(first):
            return first + 1
    """)
    result = flowdeco.run(str(path), state_dir=str(tmp_path / "st"), run_id="r1")
    assert result.ok and result.results["second"] == 2
    (failed,) = events(tmp_path / "st", "r1", "alert_failed")
    assert failed["task"] == "first" and failed["callback"] == "on_success"
    assert failed["error"] == "RuntimeError: pager is down" and failed["level"] == "warning"
    assert "pager is down" in failed["traceback"]


def test_a_failing_callback_is_a_console_warning_not_a_failure(flows, capsys):
    path = flows.write("""
        from flowdeco import task

        def broken(alert):
            raise RuntimeError("pager is down")

        @task(on_success=broken)
        def only():
            return 1
    """)
    assert cli.main([str(path), "--no-state", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "alert_failed" in err and "pager is down" in err and "warning" in err


def test_on_finish_gets_the_run_result_also_when_it_failed(flows):
    path = flows.write(FLOW)
    seen = []
    result = flowdeco.run(str(path), state_dir=None,
                          on_finish=lambda r: seen.append((r.run_id, r.status,
                                                           threading.current_thread().name)))
    assert seen == [(result.run_id, "failed", threading.current_thread().name)]


def test_on_finish_that_raises_does_not_change_the_outcome(flows, tmp_path):
    path = flows.write("""
        from flowdeco import task

        @task
        def only():
            return 1
    """)

    def boom(result):
        raise KeyError("nope")

    result = flowdeco.run(str(path), state_dir=str(tmp_path / "st"), run_id="r1", on_finish=boom)
    assert result.ok
    (failed,) = events(tmp_path / "st", "r1", "alert_failed")
    assert failed["callback"] == "on_finish" and "KeyError" in failed["error"]


def test_mapped_task_retries_call_on_retry_per_instance(flows):
    path = flows.write("""
        from flowdeco import task
        calls = []

        @task
        def items():
            return [1, 2]

        @task(map="items", retries=1, on_retry=lambda a: calls.append(("retry", a.task)),
              on_failure=lambda a: calls.append(("failure", a.task)))
        def check(items, ctx):
            if items == 2 and ctx.attempt == 1:
                raise ValueError("once")
            return items
    """)
    result = flowdeco.run(str(path), state_dir=None)
    assert result.ok
    assert flows.load(path.stem).calls == [("retry", "check[1]")]


def test_a_callback_that_is_not_callable_is_a_collection_error(flows):
    path = flows.write("""
        from flowdeco import task

        @task(on_failure="page me")
        def t():
            return 1
    """)
    with pytest.raises(flowdeco.FlowError, match="task 't': on_failure='page me' is not callable"):
        flowdeco.run(str(path), state_dir=None)


def test_alert_options_need_the_alerts_plugin(flows):
    path = flows.write("""
        from flowdeco import task

        @task(on_failure=print)
        def t():
            return 1
    """)
    with pytest.raises(flowdeco.FlowError, match="on_failure"):
        flowdeco.run(str(path), state_dir=None, disable=["alerts"])


def test_idle_alerts_and_notify_have_no_per_session_hooks():
    """Without callbacks or --notify-url, these plugins implement only what every session
    must ask (options, configure, collection checks): nothing runs at a run's start or
    end, nor at the session's end."""
    from flowdeco import manager
    pm = manager.make_pluginmanager(load_entrypoints=False)
    for hook in ("flowdeco_run_start", "flowdeco_run_finish", "flowdeco_unconfigure",
                 "flowdeco_report"):
        names = {impl.plugin_name for impl in getattr(pm.hook, hook).get_hookimpls()}
        assert not names & {"alerts", "notify"}, hook


def test_on_finish_and_notify_last_one_session_on_a_reused_manager(flows, webhook):
    """What a session with on_finish= / --notify-url registers is gone after it: the next
    run (on the same pooled plugin manager) calls neither."""
    _, rec, url = webhook
    path = flows.write(FLOW)
    seen = []
    assert not flowdeco.run(str(path), state_dir=None, on_finish=seen.append,
                            notify_url=url).ok
    for _ in range(2):
        assert not flowdeco.run(str(path), state_dir=None).ok
    assert len(seen) == 1 and len(rec.received) == 1


# --------------------------------------------------------------------------- notify


class Hook(BaseHTTPRequestHandler):
    """A webhook on 127.0.0.1 that records what it receives."""

    received: list = []
    status = 200

    def do_POST(self):  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append((self.path, self.headers["Content-Type"], json.loads(body)))
        self.send_response(type(self).status)
        self.end_headers()

    def log_message(self, *args):  # keep the test output clean
        pass


@pytest.fixture
def webhook():
    class Recorder(Hook):
        received: list = []
        status = 200

    server = HTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server, Recorder, f"http://127.0.0.1:{server.server_address[1]}/hooks/flowdeco"
    finally:
        server.shutdown()
        server.server_close()


def test_notify_posts_a_json_summary_of_a_failed_run(flows, tmp_path, webhook):
    server, rec, url = webhook
    path = flows.write(FLOW)
    code = cli.main([str(path), "--state-dir", str(tmp_path / "st"), "--run-id", "r1",
                     "--no-progress", "--notify-url", url])
    assert code == 1  # the run's own outcome
    ((where, ctype, body),) = rec.received
    assert where == "/hooks/flowdeco" and ctype == "application/json"
    assert body["run_id"] == "r1" and body["status"] == "failed"
    assert body["counts"] == {"succeeded": 1, "failed": 1, "skipped": 1}
    assert body["failed"] == [{"task": "flaky", "error": "ValueError: bad try 3",
                               "attempts": 3}]
    assert body["failed_count"] == 1 and body["audit"].endswith("runs/r1/audit.jsonl")
    assert "r1" in body["text"] and "failed" in body["text"]
    (sent,) = events(tmp_path / "st", "r1", "notify_sent")
    assert sent["status"] == 200 and sent["url"] == url


def test_notify_sends_nothing_for_a_run_that_succeeded(flows, webhook):
    server, rec, url = webhook
    path = flows.write("""
        from flowdeco import task

        @task
        def fine():
            return 1
    """)
    assert flowdeco.run(str(path), state_dir=None, notify_url=url).ok
    assert rec.received == []


def test_a_webhook_that_fails_is_a_warning_and_the_exit_code_stays(flows, tmp_path, webhook):
    server, rec, url = webhook
    rec.status = 500
    path = flows.write(FLOW)
    code = cli.main([str(path), "--state-dir", str(tmp_path / "st"), "--run-id", "r1",
                     "--no-progress", "--notify-url", url])
    assert code == 1
    (failed,) = events(tmp_path / "st", "r1", "notify_failed")
    assert failed["error"].startswith("HTTP 500") and failed["level"] == "warning"


def test_an_unreachable_webhook_is_a_warning(flows, tmp_path):
    import socket
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path = flows.write(FLOW)
    result = flowdeco.run(str(path), state_dir=str(tmp_path / "st"), run_id="r1",
                          notify_url=f"http://127.0.0.1:{port}/x", notify_timeout=5)
    assert result.status == "failed"
    (failed,) = events(tmp_path / "st", "r1", "notify_failed")
    assert "refused" in failed["error"].lower()


def test_the_webhook_url_keeps_its_secret_out_of_the_trail(flows, tmp_path, webhook):
    server, rec, url = webhook
    path = flows.write(FLOW)
    flowdeco.run(str(path), state_dir=str(tmp_path / "st"), run_id="r1",
                 notify_url=url + "?token=s3cret")
    (sent,) = events(tmp_path / "st", "r1", "notify_sent")
    assert "s3cret" not in json.dumps(sent)


@pytest.mark.parametrize("url", ["ftp://example.com/x", "example.com/hook", "http://"])
def test_a_bad_notify_url_is_a_usage_error(flows, capsys, url):
    path = flows.write(FLOW)
    assert cli.main([str(path), "--no-state", "--notify-url", url]) == 4
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--notify-url" in err[0] and "http://" in err[0]


# --------------------------------------------------------------------------- the example


EXAMPLE = __import__("pathlib").Path(__file__).resolve().parents[1] / "examples" / "monitored_etl.py"


def test_monitored_etl_example_captures_logging_and_alerts_on_retry(tmp_path, capsys):
    result = flowdeco.run(EXAMPLE, state_dir=str(tmp_path / "st"), run_id="ok", log_level="INFO",
                          workers=4, limits={"db": 1})
    # (with the example's pool on; the cap itself is checked in test_pools.py)
    assert result.ok and result.results["publish"] == {"customers": 2, "orders": 2,
                                                       "products": 1}
    assert result.outcomes["publish"].attempts == 2
    logs = events(tmp_path / "st", "ok", "task_log")
    assert ("clean", "warning", "customer 2 has no name: dropped") in \
        [(e["task"], e["level"], e["message"]) for e in logs]
    assert {e["task"] for e in logs if e["message"].startswith("read ")} == \
        {"customers", "orders", "products"}
    err = capsys.readouterr().err
    assert "ALERT publish attempt 1 failed (TimeoutError" in err
    assert "ALERT publish failed" not in err


def test_monitored_etl_example_pages_on_failure(tmp_path, capsys):
    result = flowdeco.run(EXAMPLE, state_dir=None, params={"fail_publish": True})
    assert result.status == "failed"
    assert "ALERT publish failed after 2 attempts: TimeoutError" in capsys.readouterr().err
