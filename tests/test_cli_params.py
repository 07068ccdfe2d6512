"""Run parameters from the command line and Python (issue 15, items 1, 5 and 9).

A parameter no selected task takes is refused with a suggestion; parameters
annotated ``Secret`` (or named by ``--secret``) arrive wrapped and never
appear in the clear on the console, in the audit trail or in the state
database; ``--param-env`` reads a value from the environment; the listing
commands work without required parameters; ``--version``; failed pipeline
items on the console; a finished run's id cannot be reused by accident.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from flowdeco import Secret, UsageError, cli, run

from test_cli import assert_one_error_line, fd, read_audit, summary_line

# the README's etl.py: `notify` takes ctx but reads no parameter through it
ETL = """
    from flowdeco import task

    @task
    def extract():
        return {"records": 1000}

    @task
    def transform(extract):
        return {"processed": extract["records"] * 2}

    @task(after=[transform])
    def notify(ctx):
        ctx.log.info("done", run=ctx.run_id)

    @task
    def load(transform, table="events"):
        return f"{transform['processed']} rows into {table}"
"""


# --------------------------------------------------------------------------- item 1


def test_misspelled_param_is_a_usage_error_with_suggestion(flows, capsys):
    path = flows.write(ETL)
    rc = cli.main([str(path), "--no-state", "--param", "tabel=archive"])
    err = capsys.readouterr().err
    assert rc == 4
    line = assert_one_error_line(err)
    assert "'tabel'" in line and "did you mean 'table'?" in line, line


def test_misspelled_param_in_subprocess_runs_nothing(flows):
    path = flows.write(ETL)
    r = fd(str(path), "--param", "tabel=archive", cwd=flows.cwd)
    assert r.returncode == 4, r.stdout + r.stderr
    assert "did you mean 'table'?" in assert_one_error_line(r.stderr)
    assert not (flows.cwd / ".flowdeco").exists()  # nothing ran, nothing recorded


def test_correct_param_still_reaches_the_task(flows, capsys):
    path = flows.write(ETL)
    result = run(path, state_dir=None, params={"table": "archive"})
    assert result.results["load"] == "2000 rows into archive"


def test_run_params_misspelled_raises_usage_error(flows):
    path = flows.write(ETL)
    with pytest.raises(UsageError, match=r"run parameter 'tabel'.*did you mean 'table'\?"):
        run(path, state_dir=None, params={"tabel": "archive"})


def test_several_unknown_params_are_all_named(flows):
    path = flows.write(ETL)
    with pytest.raises(UsageError) as info:
        run(path, state_dir=None, params={"tabel": 1, "zzz": 2, "table": 3})
    msg = str(info.value)
    assert "'tabel'" in msg and "'zzz'" in msg and "'table' " not in msg.split("mean")[0]


def test_param_of_a_deselected_task_is_fine_with_k(flows, capsys):
    path = flows.write(ETL)
    rc = cli.main([str(path), "--no-state", "-k", "transform", "--param", "table=archive"])
    assert rc == 0, capsys.readouterr().err
    # ... but a name no task of the whole flow takes is still a mistake
    rc = cli.main([str(path), "--no-state", "-k", "transform", "--param", "tabel=archive"])
    assert rc == 4
    assert "did you mean 'table'?" in capsys.readouterr().err


def test_param_named_after_a_task_is_not_taken(flows):
    path = flows.write(ETL)
    with pytest.raises(UsageError, match="'extract'"):
        run(path, state_dir=None, params={"extract": "x"})


SUBFLOW = """
    from flowdeco import Flow, task

    inner = Flow("inner")

    @inner.task
    def stamp(data, day):               # `data` from the enclosing flow, `day` a run parameter
        return f"{data}@{day}"

    @task
    def data():
        return "d"

    node = inner.as_task("node")
"""


def test_param_taken_by_an_inner_task_of_a_subflow(flows):
    path = flows.write(SUBFLOW)
    result = run(path, state_dir=None, params={"day": "mon"})
    assert result.results["node.stamp"] == "d@mon"
    with pytest.raises(UsageError, match="did you mean 'day'"):
        run(path, state_dir=None, params={"day": "mon", "dya": "tue"})


CTX_READERS = """
    from flowdeco import task

    def helper(ctx):
        return ctx.params.get("env")

    @task
    def direct(ctx):
        return ctx.params["region"]

    @task
    def handed_on(ctx):
        return helper(ctx)
"""


def test_params_read_through_ctx_params_are_taken(flows):
    path = flows.write(CTX_READERS)
    result = run(path, state_dir=None, params={"region": "eu", "env": "prod"})
    assert result.results == {"direct": "eu", "handed_on": "prod"}


def test_reads_params_rule():
    from flowdeco.params import reads_params

    def logs_only(ctx):
        ctx.log.info("x", run=ctx.run_id)

    def reads(ctx):
        return ctx.params

    def nested(ctx):
        return [ctx.params[k] for k in ("a",)]

    def hands_on(ctx):
        return print(ctx)

    def closure(ctx):
        return lambda: ctx.task

    def closure_reads(ctx):
        return lambda: ctx.params

    def closure_hands_on(ctx):
        return lambda: print(ctx)

    def no_ctx(a):
        return a.params

    assert not reads_params(logs_only)
    assert reads_params(reads) and reads_params(nested) and reads_params(hands_on)
    assert not reads_params(closure)  # nested code is read too
    assert reads_params(closure_reads) and reads_params(closure_hands_on)
    assert not reads_params(no_ctx)


PIPE_FLOW = """
    from flowdeco import Pipeline, task

    pipe = Pipeline("p")

    @pipe.stage
    def double(x):
        return x * 2

    @task
    def source():
        return [1, 2, 3]

    node = pipe.as_task("node", source=source)
"""


def test_pipeline_node_does_not_swallow_unknown_params(flows):
    path = flows.write(PIPE_FLOW)
    with pytest.raises(UsageError, match="'tabel'"):
        run(path, state_dir=None, params={"tabel": "x"})


def test_flow_run_fixture_refuses_unknown_param(flows, request):
    path = flows.write(ETL)
    flow_run = request.getfixturevalue("flow_run")
    with pytest.raises(UsageError, match="did you mean 'table'"):
        flow_run(str(path), params={"tabel": "archive"})


def test_serve_refuses_unknown_param_before_anything_runs(flows):
    from flowdeco import FakeClock
    from flowdeco.plugins.serve import serve
    path = flows.write("""
        from flowdeco import task

        @task(cron="* * * * *")
        def tick(table="events"):
            return table
    """)
    with pytest.raises(UsageError, match="did you mean 'table'"):
        serve(path, state_dir=None, params={"tabel": "x"}, max_ticks=1, clock=FakeClock())


# --------------------------------------------------------------------------- item 5

SECRET_FLOW = """
    import json
    from pathlib import Path
    from flowdeco import Secret, task

    @task
    def fetch(ctx, token: Secret, user):
        ctx.log.info("calling api", token=token, params=dict(ctx.params))
        print(f"token is {token}, params {dict(ctx.params)}")
        assert isinstance(token, Secret), type(token)
        return len(token.reveal())

    @task
    def check(fetch, token: "Secret[str]"):
        (Path(__file__).parent / "seen.json").write_text(
            json.dumps([fetch, type(token).__name__, token.reveal() == "s3cr3t"]))
        return fetch
"""


def _assert_nowhere(secret: str, r: subprocess.CompletedProcess, state: Path) -> None:
    assert secret not in r.stdout and secret not in r.stderr, r.stdout + r.stderr
    hits = [p for p in state.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
    assert not hits, hits


def test_secret_annotated_param_from_cli_is_masked_everywhere(flows):
    path = flows.write(SECRET_FLOW)
    r = fd(str(path), "--param", "token=s3cr3t", "--param", "user=ann", "--run-id", "s1",
           cwd=flows.cwd)
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads((flows.dir / "seen.json").read_text()) == [6, "Secret", True]
    state = flows.cwd / ".flowdeco"
    _assert_nowhere("s3cr3t", r, state)
    logged = [e for e in read_audit(state, "s1") if e["event"] == "calling api"]
    assert logged and logged[0]["token"] == "***" and logged[0]["params"]["token"] == "***"
    assert logged[0]["params"]["user"] == "ann"
    # what the task printed is captured into the trail (issue 19), masked there too
    printed = [e["text"] for e in read_audit(state, "s1") if e["event"] == "task_output"]
    assert any(line.startswith("token is ***") for line in printed), printed


def test_param_env_reads_the_environment(flows):
    path = flows.write(SECRET_FLOW)
    r = fd(str(path), "--param-env", "token=FD_TEST_TOKEN", "--param", "user=ann",
           "--run-id", "s2", cwd=flows.cwd, env={"FD_TEST_TOKEN": "s3cr3t"})
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads((flows.dir / "seen.json").read_text()) == [6, "Secret", True]
    _assert_nowhere("s3cr3t", r, flows.cwd / ".flowdeco")


def test_param_env_missing_variable_is_exit_4_naming_it(flows, capsys, monkeypatch):
    path = flows.write(SECRET_FLOW)
    monkeypatch.delenv("FD_TEST_NOPE", raising=False)
    rc = cli.main([str(path), "--no-state", "--param-env", "token=FD_TEST_NOPE",
                   "--param", "user=ann"])
    assert rc == 4
    line = assert_one_error_line(capsys.readouterr().err)
    assert "FD_TEST_NOPE is not set" in line and "token" in line


@pytest.mark.parametrize("arg", ["token", "=X", "token=", "1x=X", "token=X Y"])
def test_param_env_malformed_is_exit_4(flows, capsys, arg):
    path = flows.write(SECRET_FLOW)
    rc = cli.main([str(path), "--no-state", "--param-env", arg, "--param", "user=ann"])
    assert rc == 4
    line = assert_one_error_line(capsys.readouterr().err)
    assert f"--param-env {arg!r}: expected NAME=ENV_VAR" in line, line


PLAIN_FLOW = """
    from flowdeco import Secret, task

    @task
    def use(ctx, password):
        ctx.log.info("using", password=password, params=dict(ctx.params))
        print(f"password={password}")
        return isinstance(password, Secret) and password.reveal() == "hunter22"
"""


def test_secret_option_wraps_an_unannotated_param(flows):
    path = flows.write(PLAIN_FLOW)
    r = fd(str(path), "--secret", "password", "--param", "password=hunter22", "--run-id", "p1",
           cwd=flows.cwd)
    assert r.returncode == 0, r.stdout + r.stderr
    _assert_nowhere("hunter22", r, flows.cwd / ".flowdeco")
    done = [e for e in read_audit(flows.cwd / ".flowdeco", "p1") if e["event"] == "task_succeeded"]
    assert done[0]["task"] == "use"
    printed = [e["text"] for e in read_audit(flows.cwd / ".flowdeco", "p1")
               if e["event"] == "task_output"]  # (captured, issue 19)
    assert any("password=***" in line for line in printed), printed


def test_secret_option_from_python(flows):
    path = flows.write(PLAIN_FLOW)
    result = run(path, state_dir=None, secret=["password"], params={"password": "hunter22"})
    assert result.results["use"] is True


def test_secret_option_for_a_param_not_given_is_exit_4(flows, capsys):
    path = flows.write(PLAIN_FLOW)
    rc = cli.main([str(path), "--no-state", "--secret", "pasword", "--param", "password=x"])
    assert rc == 4
    line = assert_one_error_line(capsys.readouterr().err)
    assert "'pasword'" in line and "did you mean 'password'?" in line


def test_secret_not_kept_in_clear_in_the_options(flows):
    from flowdeco.runner import Session
    path = flows.write(SECRET_FLOW)
    session = Session.start(options={"param": ["token=s3cr3t", "user=ann"], "no_state": True})
    try:
        session.collect(str(path))
        assert session.config.option.param == ["token=***", "user=ann"]
        assert isinstance(session.params["token"], Secret)
    finally:
        session.close()


def test_secret_annotation_wraps_python_strings_too(flows):
    path = flows.write(SECRET_FLOW)
    result = run(path, state_dir=None, params={"token": "s3cr3t", "user": "u"})
    assert result.results["check"] == 6
    # an already wrapped value is not wrapped twice
    result = run(path, state_dir=None, params={"token": Secret("s3cr3t"), "user": "u"})
    assert result.results["check"] == 6


def test_secret_value_not_echoed_in_conversion_errors(flows, capsys):
    path = flows.write("""
        from flowdeco import task

        @task
        def use(pin: int):
            return pin
    """)
    rc = cli.main([str(path), "--no-state", "--secret", "pin", "--param", "pin=s3cr3t"])
    assert rc == 4
    line = assert_one_error_line(capsys.readouterr().err)
    assert "s3cr3t" not in line and "pin=***" in line and "declares pin: int" in line, line


# --------------------------------------------------------------------------- item 9


def test_version(capsys):
    from flowdeco import __version__
    r = subprocess.run([sys.executable, "-m", "flowdeco", "--version"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"flowdeco {__version__}"


REQUIRED = """
    from flowdeco import task

    @task
    def report(day, region="eu"):
        return day

    @task
    def publish(report, ctx):
        return report
"""


def test_collect_only_and_graph_work_without_required_params(flows, capsys):
    path = flows.write(REQUIRED)
    rc = cli.main([str(path), "--collect-only"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "report" in out and "publish" in out
    lines = out.splitlines()
    i = lines.index("run parameters:")
    assert any("day" in ln and "unset" in ln and "report" in ln for ln in lines[i:]), out
    assert any("region" in ln and "default" in ln for ln in lines[i:]), out
    for fmt in ("mermaid", "dot"):
        rc = cli.main([str(path), "--graph", fmt])
        out, err = capsys.readouterr()
        assert rc == 0, err
        assert "report" in out and "unset" in err and "day" in err
    # a given parameter is shown as given (its value is not printed: it may be a secret)
    rc = cli.main([str(path), "--collect-only", "--param", "day=mon"])
    out, _ = capsys.readouterr()
    assert rc == 0 and any("day" in ln and "given" in ln for ln in out.splitlines())
    # running still needs it
    rc = cli.main([str(path), "--no-state"])
    assert rc == 4 and "day" in capsys.readouterr().err


def test_collect_only_still_refuses_unknown_params(flows, capsys):
    path = flows.write(REQUIRED)
    rc = cli.main([str(path), "--collect-only", "--param", "dya=x"])
    assert rc == 4 and "did you mean 'day'?" in capsys.readouterr().err


ITEMS_FLOW = """
    from flowdeco import Pipeline, task

    pipe = Pipeline("p")

    @pipe.stage
    def parse(x):
        if x % 2:
            raise ValueError(f"odd item {x}")
        return x

    @task
    def source():
        return list(range(30))

    node = pipe.as_task("node", source=source)
"""


def test_failed_pipeline_items_are_shown_on_the_console_capped(flows, capsys):
    path = flows.write(ITEMS_FLOW)
    rc = cli.main([str(path), "--no-state"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    lines = [ln for ln in out.splitlines() if ln.startswith("FAILED node item")]
    assert len(lines) == 10, out
    assert lines[0] == "FAILED node item[1] (stage parse) - ValueError: odd item 1"
    assert "... and 5 more failed items of node\n" in out  # --no-state: no file to point at
    assert summary_line(out)
    rc = cli.main([str(path), "--run-id", "items", "-q"])
    out, _ = capsys.readouterr()
    trail = Path(".flowdeco") / "runs" / "items" / "audit.jsonl"
    assert f"... and 5 more failed items of node (all of them in {trail})" in out
    failed = [e for e in read_audit(Path(".flowdeco"), "items") if e["event"] == "item_failed"]
    assert len(failed) == 15


def test_few_failed_pipeline_items_have_no_count_line(flows, capsys):
    path = flows.write(ITEMS_FLOW.replace("range(30)", "range(4)"))
    rc = cli.main([str(path), "--no-state"])
    out, _ = capsys.readouterr()
    assert rc == 0
    assert [ln for ln in out.splitlines() if ln.startswith("FAILED node item")] == [
        "FAILED node item[1] (stage parse) - ValueError: odd item 1",
        "FAILED node item[3] (stage parse) - ValueError: odd item 3"]
    assert "more failed items" not in out


def test_reusing_a_finished_run_id_is_refused_with_the_fix(flows, capsys):
    path = flows.write(ETL)
    assert cli.main([str(path), "--run-id", "nightly", "-q"]) == 0
    capsys.readouterr()
    rc = cli.main([str(path), "--run-id", "nightly", "-q"])
    line = assert_one_error_line(capsys.readouterr().err)
    assert rc == 4
    assert "'nightly'" in line and "succeeded" in line and "--run-id nightly-" in line, line


def test_prune_names_each_removed_run_on_its_own_line(tmp_path, capsys):
    from flowdeco.manager import make_pluginmanager
    from flowdeco.plugins.state.commands import main
    from flowdeco.plugins.state.store import SQLiteStore
    store = SQLiteStore(tmp_path)
    store.open()
    for i, rid in enumerate(["oldest", "older", "newest"]):
        store.begin_run(rid, "f", float(i), resumed=False)
        store.finish_run(rid, "succeeded", float(i) + 0.5, 0.5)
    store.close()
    pm = make_pluginmanager()
    assert main(["prune", "--keep", "1", "--dry-run", "--state-dir", str(tmp_path)], pm) == 0
    out = capsys.readouterr().out.splitlines()
    assert sorted(out[:2]) == ["would remove run older", "would remove run oldest"]
    assert out[2] == "would remove 2 run(s), kept 1; the 1 newest kept: newest"
    assert main(["prune", "--keep", "1", "--state-dir", str(tmp_path)], pm) == 0
    out = capsys.readouterr().out.splitlines()
    assert sorted(out[:2]) == ["removed run older", "removed run oldest"]
    assert out[2] == "removed 2 run(s), kept 1; the 1 newest kept: newest"
    assert not any(ln.startswith(" ") for ln in out)  # no bare, ambiguous name list
