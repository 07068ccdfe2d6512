"""The command line (contract §3): exit codes, messages, selection, graphs, params, signals."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flowdeco import cli

SUMMARY_RE = re.compile(r"^=+ (?P<body>.+ in \d+\.\d+s)(?: \(run [^)]+\))? =+$")


# --------------------------------------------------------------------------- helpers


def fd(*args: str, cwd: Path, env: dict | None = None, timeout: float = 60
       ) -> subprocess.CompletedProcess:
    """``python -m flowdeco ARGS`` in a subprocess."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "flowdeco", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, env=full_env)


def assert_one_error_line(stderr: str) -> str:
    """Exactly one ``flowdeco: ...`` line on stderr and no traceback; returns it."""
    assert "Traceback" not in stderr, stderr
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("flowdeco: "), stderr
    return lines[0]


def read_audit(state_dir: Path, run_id: str) -> list[dict]:
    path = state_dir / "runs" / run_id / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def summary_line(stdout: str) -> str:
    lines = [ln for ln in stdout.splitlines() if SUMMARY_RE.match(ln)]
    assert len(lines) == 1, stdout
    return SUMMARY_RE.match(lines[0]).group("body")


OK_FLOW = """
    from flowdeco import task

    @task
    def extract():
        return 1

    @task
    def load(extract):
        return extract + 1
"""

FAILING_FLOW = """
    from flowdeco import task

    @task
    def first():
        return 1

    @task
    def boom(first):
        raise ValueError("bad record 7")

    @task
    def after_boom(boom):
        return 3
"""


# --------------------------------------------------------------------------- exit 0 / 1


def test_success_exit_0_and_summary(flows):
    path = flows.write(OK_FLOW)
    proc = fd(str(path), "--no-state", cwd=flows.cwd)
    assert proc.returncode == 0, proc.stderr
    assert summary_line(proc.stdout).startswith("2 succeeded in ")
    assert "FAILED" not in proc.stdout
    assert "Traceback" not in proc.stderr


def test_failed_task_exit_1_with_failed_line_and_summary(flows):
    path = flows.write(FAILING_FLOW)
    proc = fd(str(path), "--no-state", cwd=flows.cwd)
    assert proc.returncode == 1, proc.stderr
    assert "FAILED boom - ValueError: bad record 7" in proc.stdout.splitlines()
    body = summary_line(proc.stdout)
    assert re.fullmatch(r"1 succeeded, 1 failed, 1 skipped in \d+\.\d+s", body), body


def test_in_process_main_returns_exit_codes(flows, capsys):
    ok = flows.write(OK_FLOW)
    bad = flows.write(FAILING_FLOW)
    assert cli.main([str(ok), "--no-state"]) == 0
    assert cli.main([str(bad), "--no-state"]) == 1
    out = capsys.readouterr().out
    assert "FAILED boom - ValueError: bad record 7" in out


# --------------------------------------------------------------------------- exit 4 / 5

SYNTAX = """\
from flowdeco import task

@task
def broken(:
    pass
"""

CYCLE = """
    from flowdeco import task

    @task
    def a(b):
        return 1

    @task
    def b(a):
        return 2
"""

MISSING_DEP = """
    from flowdeco import task

    @task
    def extract():
        return 1

    @task
    def load(extrat):
        return 2
"""

DUPLICATE = """
    from flowdeco import task

    @task
    def a():
        return 1

    @task(name="a")
    def b():
        return 2
"""

INT_PARAM = """
    from flowdeco import task

    @task
    def count(n: int):
        return n
"""

OBJECTS = """
    from flowdeco import Flow, task

    pipeline = Flow("pipeline")

    @pipeline.task
    def step():
        return 1

    CONSTANT = 3
"""

NON_CALLABLE = """\
from flowdeco import task

VALUE = task(42)
"""

DECORATED_CLASS = """\
from flowdeco import task

@task
class NotAFunction:
    pass
"""

NAME_AS_POSITIONAL = """\
from flowdeco import task

@task("x")
def a():
    return 1
"""

NO_TASKS = """
    def helper():
        return 1
"""

# id -> (module source or None, argv with {path}, expected exit code, substrings of the message)
ERROR_CASES = {
    "missing-file": (None, ["{dir}/does_not_exist.py"], 4, ["does_not_exist.py"]),
    "syntax-error": (SYNTAX, ["{path}"], 4, ["{stem}.py:4"]),
    "missing-object-did-you-mean": (OBJECTS, ["{path}:pipline"], 4,
                                    ["pipline", "did you mean 'pipeline'"]),
    "object-not-a-flow": (OBJECTS, ["{path}:CONSTANT"], 4, ["CONSTANT", "not a Flow"]),
    "cycle": (CYCLE, ["{path}"], 4, ["a -> b -> a"]),
    "missing-dependency": (MISSING_DEP, ["{path}"], 4, ["'load'", "'extrat'", "'extract'"]),
    "duplicate-task": (DUPLICATE, ["{path}"], 4, ["'a'"]),
    "param-without-equals": (OK_FLOW, ["{path}", "--param", "novalue"], 4, ["novalue"]),
    "param-not-an-int": (INT_PARAM, ["{path}", "--param", "n=abc"], 4, ["abc", "int"]),
    "unknown-option": (OK_FLOW, ["{path}", "--bogus"], 4, ["--bogus"]),
    "unknown-plugin": (OK_FLOW, ["{path}", "-p", "nosuch_fd_plugin"], 4, ["nosuch_fd_plugin"]),
    "core-plugin-disabled": (OK_FLOW, ["{path}", "-p", "no:main"], 4, ["main"]),
    "invalid-run-id": (OK_FLOW, ["{path}", "--run-id", "a/b"], 4, ["a/b"]),
    "zero-workers": (OK_FLOW, ["{path}", "--workers", "0"], 4, ["workers"]),
    "unknown-executor": (OK_FLOW, ["{path}", "--executor", "nope"], 4, ["nope"]),
    "task-on-non-callable": (NON_CALLABLE, ["{path}"], 4, ["{stem}.py", "TaskDefinitionError"]),
    "task-on-class": (DECORATED_CLASS, ["{path}"], 4, ["{stem}.py", "TaskDefinitionError"]),
    "task-name-positional": (NAME_AS_POSITIONAL, ["{path}"], 4,
                             ["{stem}.py", "TaskDefinitionError", "name='x'"]),
    "missing-target": (None, [], 4, ["TARGET"]),
    "no-tasks": (NO_TASKS, ["{path}"], 5, []),
    "k-matches-nothing": (OK_FLOW, ["{path}", "-k", "zzz_nothing"], 5, ["zzz_nothing"]),
    "bad-k-expression": (OK_FLOW, ["{path}", "-k", "load and ("], 4, ["-k"]),
}


def _materialize(flows, source, argv):
    path = flows.write(source) if source is not None else flows.dir / "absent.py"
    subst = {"path": str(path), "dir": str(flows.dir), "stem": path.stem}
    return [a.format(**subst) for a in argv], subst


@pytest.mark.parametrize("case", list(ERROR_CASES), ids=list(ERROR_CASES))
def test_error_exit_codes_in_process(flows, capsys, case):
    source, argv, code, needles = ERROR_CASES[case]
    args, subst = _materialize(flows, source, argv)
    rc = cli.main(args + ["--no-state"] if args else args)
    captured = capsys.readouterr()
    assert rc == code, captured.err
    line = assert_one_error_line(captured.err)
    for needle in needles:
        assert needle.format(**subst) in line, line
    assert not list(flows.cwd.iterdir())


@pytest.mark.parametrize("case", ["missing-file", "syntax-error", "unknown-option",
                                  "task-name-positional", "no-tasks"])
def test_error_exit_codes_in_subprocess(flows, case):
    source, argv, code, needles = ERROR_CASES[case]
    args, subst = _materialize(flows, source, argv)
    proc = fd(*args, "--no-state", cwd=flows.cwd)
    assert proc.returncode == code, (proc.stdout, proc.stderr)
    line = assert_one_error_line(proc.stderr)
    for needle in needles:
        assert needle.format(**subst) in line, line
    assert proc.stdout == ""


@pytest.mark.parametrize("source,line", [(NON_CALLABLE, 3), (DECORATED_CLASS, 3),
                                         (NAME_AS_POSITIONAL, 3)],
                         ids=["non-callable", "class", "positional-name"])
def test_task_definition_error_points_at_user_code(flows, capsys, source, line):
    """The location in the message is the user's decorator line, not flowdeco's internals."""
    path = flows.write(source)
    assert cli.main([str(path), "--no-state"]) == 4
    msg = assert_one_error_line(capsys.readouterr().err)
    assert f"{path.name}:{line}" in msg, msg
    assert f"flowdeco{os.sep}task.py" not in msg, msg


def test_help_lists_contract_flags_and_exits_0(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for flag in ("--workers", "--exitfirst", "--collect-only", "--graph", "--param", "--run-id",
                 "--state-dir", "--no-state", "--executor", "--log-format", "-k", "-p", "-w",
                 "-x"):
        assert re.search(rf"(^|[\s,\[]){re.escape(flag)}\b", out), flag


def test_help_in_subprocess(tmp_path):
    proc = fd("--help", cwd=tmp_path)
    assert proc.returncode == 0
    assert "--exitfirst" in proc.stdout and "exit codes" in proc.stdout
    assert proc.stderr == ""


def test_internal_error_exit_3(flows, capsys):
    flows.write("""
        from flowdeco import hookimpl

        @hookimpl
        def flowdeco_run_start(run):
            raise RuntimeError("plugin bug")
    """, stem="fdcli_crashing_plugin")
    path = flows.write(OK_FLOW)
    rc = cli.main([str(path), "--no-state", "-p", "fdcli_crashing_plugin"])
    err = capsys.readouterr().err
    assert rc == 3
    assert err.startswith("flowdeco: internal error")
    assert "RuntimeError: plugin bug" in err


# --------------------------------------------------------------------------- -x and -k

EXITFIRST_FLOW = """
    from pathlib import Path
    from flowdeco import task

    HERE = Path(__file__).parent

    @task
    def boom():
        raise ValueError("first failure")

    @task
    def independent_one():
        (HERE / "independent_one.ran").write_text("x")

    @task
    def independent_two():
        (HERE / "independent_two.ran").write_text("x")
"""


def test_exitfirst_starts_nothing_after_first_failure(flows, capsys):
    path = flows.write(EXITFIRST_FLOW)
    rc = cli.main([str(path), "-x", "-w", "1", "--state-dir", "st", "--run-id", "x1"])
    out = capsys.readouterr().out
    assert rc == 1
    assert "FAILED boom - ValueError: first failure" in out
    assert not (flows.dir / "independent_one.ran").exists()
    assert not (flows.dir / "independent_two.ran").exists()
    events = read_audit(flows.cwd / "st", "x1")
    started = [e["task"] for e in events if e["event"] == "task_started"]
    assert started == ["boom"]
    skipped = {e["task"]: e["reason"] for e in events if e["event"] == "task_skipped"}
    assert skipped == {"independent_one": "stopped", "independent_two": "stopped"}
    assert events[-1]["event"] == "run_finished" and events[-1]["status"] == "failed"


def test_without_exitfirst_independent_branches_go_on(flows, capsys):
    path = flows.write(EXITFIRST_FLOW)
    assert cli.main([str(path), "-w", "1", "--no-state"]) == 1
    capsys.readouterr()
    assert (flows.dir / "independent_one.ran").exists()
    assert (flows.dir / "independent_two.ran").exists()


SELECT_FLOW = """
    from flowdeco import task

    @task
    def extract():
        return 1

    @task
    def load_users(extract):
        return 2

    @task
    def load_test_data(extract):
        return 3

    @task
    def report(load_users):
        return 4

    @task
    def unrelated():
        return 5
"""


def _collected(out: str) -> dict[str, list[str]]:
    """``--collect-only`` output -> {task: [deps]}."""
    lines = out.strip().splitlines()
    assert lines[0].startswith("<flow ")
    tasks = {}
    for line in lines[1:]:
        name, _, deps = line.strip().partition("  <- ")
        name = name.split("  ")[0]
        tasks[name] = [d.strip() for d in deps.split(",")] if deps else []
    return tasks


def test_k_selects_matches_plus_ancestors(flows, capsys):
    path = flows.write(SELECT_FLOW)
    assert cli.main([str(path), "--collect-only", "-k", "load and not test"]) == 0
    assert set(_collected(capsys.readouterr().out)) == {"extract", "load_users"}
    assert cli.main([str(path), "-k", "load and not test", "--state-dir", "st",
                     "--run-id", "k1"]) == 0
    capsys.readouterr()
    events = read_audit(flows.cwd / "st", "k1")
    ran = {e["task"] for e in events if e["event"] == "task_succeeded"}
    assert ran == {"extract", "load_users"}


def test_k_or_and_case_insensitive(flows, capsys):
    path = flows.write(SELECT_FLOW)
    assert cli.main([str(path), "--collect-only", "-k", "REPORT or unrel"]) == 0
    assert set(_collected(capsys.readouterr().out)) == {"extract", "load_users", "report",
                                                         "unrelated"}


# --------------------------------------------------------------------------- graphs

GRAPH_FLOW = """
    from flowdeco import task

    @task
    def extract():
        return 1

    @task
    def transform(extract):
        return 2

    @task
    def load(transform, extract):
        return 3

    @task(after=[load])
    def notify():
        return 4

    @task(after=["extract"])
    def audit_log():
        return 5
"""

GRAPH_EDGES = {("extract", "transform"), ("transform", "load"), ("extract", "load"),
               ("load", "notify"), ("extract", "audit_log")}


def test_collect_only_lists_tasks_with_deps(flows, capsys):
    path = flows.write(GRAPH_FLOW)
    assert cli.main([str(path), "--collect-only"]) == 0
    out = capsys.readouterr().out
    tasks = _collected(out)
    assert tasks == {"extract": [], "transform": ["extract"], "load": ["transform", "extract"],
                     "notify": ["load"], "audit_log": ["extract"]}
    assert "load  <- transform, extract" in out
    assert not list(flows.cwd.iterdir())  # nothing ran, nothing written


def test_collect_only_runs_nothing(flows, capsys):
    path = flows.write("""
        from pathlib import Path
        from flowdeco import task

        @task
        def side_effect():
            (Path(__file__).parent / "ran").write_text("x")
    """)
    assert cli.main([str(path), "--collect-only"]) == 0
    assert cli.main([str(path), "--graph", "dot"]) == 0
    capsys.readouterr()
    assert not (flows.dir / "ran").exists()
    assert not list(flows.cwd.iterdir())


def test_graph_mermaid(flows, capsys):
    path = flows.write(GRAPH_FLOW)
    assert cli.main([str(path), "--graph", "mermaid"]) == 0
    out = capsys.readouterr().out.strip()
    lines = out.splitlines()
    assert lines[0] == "flowchart TD"
    ids = dict(re.findall(r'^\s*(\w+)\["([^"]+)"\]\s*$', out, re.M))
    edges = [tuple(ids[x] for x in m) for m in re.findall(r"^\s*(\w+) --> (\w+)\s*$", out, re.M)]
    assert len(edges) == sum("-->" in ln for ln in lines) == len(GRAPH_EDGES)
    assert set(edges) == GRAPH_EDGES


def test_graph_dot(flows, capsys):
    path = flows.write(GRAPH_FLOW)
    assert cli.main([str(path), "--graph", "dot"]) == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith("digraph")
    assert out.endswith("}")
    edges = re.findall(r'^\s*"([^"]+)" -> "([^"]+)";\s*$', out, re.M)
    assert len(edges) == sum("->" in ln for ln in out.splitlines()) == len(GRAPH_EDGES)
    assert set(edges) == GRAPH_EDGES


SUBFLOW_FLOW = """
    from flowdeco import Flow, task

    validation = Flow("validation")

    @task
    def data():
        return [1, 2]

    @validation.task
    def check_format(data):
        return data

    @validation.task
    def check_range(check_format):
        return check_format

    validate = validation.as_task("validate")

    @task
    def publish(validate):
        return validate
"""


def test_subflow_names_are_qualified_in_listings(flows, capsys):
    path = flows.write(SUBFLOW_FLOW)
    assert cli.main([str(path), "--collect-only"]) == 0
    tasks = _collected(capsys.readouterr().out)
    assert tasks["validate.check_format"] == ["data"]
    assert tasks["validate.check_range"] == ["validate.check_format"]
    assert "publish" in tasks and "validate" in tasks
    assert cli.main([str(path), "--graph", "mermaid"]) == 0
    assert '["validate.check_format"]' in capsys.readouterr().out
    assert cli.main([str(path), "--graph", "dot"]) == 0
    out = capsys.readouterr().out
    assert '"data" -> "validate.check_format";' in out
    assert '"validate.check_format" -> "validate.check_range";' in out


def test_graph_invalid_choice_is_usage_error(flows, capsys):
    path = flows.write(OK_FLOW)
    assert cli.main([str(path), "--graph", "svg"]) == 4
    assert "svg" in assert_one_error_line(capsys.readouterr().err)


# --------------------------------------------------------------------------- --param

PARAM_FLOW = """
    import json
    from pathlib import Path
    from flowdeco import task

    @task
    def show(day, n: int, ratio: float, flag: bool, where: Path, untyped="dflt"):
        out = {k: [repr(v), type(v).__name__] for k, v in
               dict(day=day, n=n, ratio=ratio, flag=flag, where=where, untyped=untyped).items()}
        (Path(__file__).parent / "params.json").write_text(json.dumps(out))
"""


def test_param_reaches_task_with_annotation_conversion(flows, capsys):
    path = flows.write(PARAM_FLOW)
    rc = cli.main([str(path), "--no-state", "--param", "day=2026-01-01", "--param", "n=3",
                   "--param", "ratio=0.5", "--param", "flag=false", "--param", "where=a/b",
                   "--param", "untyped=x=y"])
    assert rc == 0, capsys.readouterr().err
    got = json.loads((flows.dir / "params.json").read_text())
    assert got["day"] == ["'2026-01-01'", "str"]
    assert got["n"] == ["3", "int"]
    assert got["ratio"] == ["0.5", "float"]
    assert got["flag"] == ["False", "bool"]
    assert got["where"][1].endswith("Path") and "a/b" in got["where"][0]
    assert got["untyped"] == ["'x=y'", "str"]  # value keeps everything after the first '='


def test_param_bool_true_and_default_kept(flows, capsys):
    path = flows.write(PARAM_FLOW)
    rc = cli.main([str(path), "--no-state", "--param", "day=d", "--param", "n=-2",
                   "--param", "ratio=1e3", "--param", "flag=yes", "--param", "where=."])
    assert rc == 0, capsys.readouterr().err
    got = json.loads((flows.dir / "params.json").read_text())
    assert got["flag"] == ["True", "bool"]
    assert got["n"] == ["-2", "int"]
    assert got["ratio"] == ["1000.0", "float"]
    assert got["untyped"] == ["'dflt'", "str"]  # nothing given: the default


# --------------------------------------------------------------------------- signals
#
# A signal is handled by the scheduler thread some time after the OS delivers
# it.  So that "the interrupt was taken into account" is an observable fact
# rather than a guess (a sleep), the flow has a task ``waiter`` that fails at
# once and is rescheduled an hour later by a test plugin; when the interrupt
# is processed the run ends that pending retry, reports ``task_interrupted``
# for it, and the plugin then writes the file named by FD_ACK.

SIGNAL_FLOW = """
    import os
    import time
    from pathlib import Path
    from flowdeco import task

    D = Path(os.environ["FD_MARKERS"])

    @task
    def first():
        (D / "first.started").write_text("x")
        while not (D / "release").exists():
            time.sleep(0.01)
        return 1

    @task
    def second(first):
        (D / "second.ran").write_text("x")
        return 2

    @task
    def waiter():
        (D / "waiter.ran").write_text("x")
        raise RuntimeError("retry me later")
"""

SIGNAL_PLUGIN = """
    import os
    from pathlib import Path
    from flowdeco import Reschedule, hookimpl

    @hookimpl
    def flowdeco_attempt_done(run, task, attempt):
        if task.name == "waiter" and not attempt.ok:
            return Reschedule(delay=3600)
        return None

    @hookimpl
    def flowdeco_report(run, event):
        if event.name == "task_interrupted" and event.task == "waiter":
            Path(os.environ["FD_ACK"]).write_text("")
"""


def _wait_for(proc, *paths, timeout=30):
    deadline = time.monotonic() + timeout
    while not all(p.exists() for p in paths):
        if proc.poll() is not None or time.monotonic() > deadline:
            if proc.poll() is None:
                proc.kill()
            out, err = proc.communicate()
            pytest.fail(f"waiting for {paths}: rc={proc.returncode}\n{out}\n{err}")
        time.sleep(0.005)


def _start_signal_flow(flows, run_id: str, ack: str):
    markers = flows.dir / f"markers-{run_id}"
    markers.mkdir()
    path = flows.write(SIGNAL_FLOW)
    plugin = flows.write(SIGNAL_PLUGIN).stem
    env = {**os.environ, "FD_MARKERS": str(markers), "FD_ACK": str(markers / ack),
           "PYTHONPATH": os.pathsep.join([str(flows.dir), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "flowdeco", str(path), "-w", "4", "-p", plugin,
         "--state-dir", "st", "--run-id", run_id],
        cwd=flows.cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    _wait_for(proc, markers / "first.started", markers / "waiter.ran")
    return proc, markers


def _finish(proc, timeout):
    try:
        return proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_waits_for_inflight_task_and_exits_2(flows, signum):
    # the plugin's acknowledgement *is* the release file of the running task
    proc, markers = _start_signal_flow(flows, "r1", ack="release")
    proc.send_signal(signum)
    out, err = _finish(proc, timeout=30)
    assert proc.returncode == 2, (out, err)
    assert "Traceback" not in err
    assert not (markers / "second.ran").exists()
    events = read_audit(flows.cwd / "st", "r1")
    ends = {e["task"]: e for e in events if e["event"] in (
        "task_succeeded", "task_failed", "task_skipped", "task_interrupted")}
    assert ends["first"]["event"] == "task_succeeded"  # the in-flight task was waited for
    assert ends["second"]["event"] == "task_skipped"
    assert ends["second"]["reason"] == "stopped"
    assert ends["waiter"]["event"] == "task_interrupted"
    assert not any(e["event"] == "task_started" and e["task"] == "second" for e in events)
    assert events[-1]["event"] == "run_finished"
    assert events[-1]["status"] == "interrupted"
    assert "INTERRUPTED waiter" in out


def test_second_sigint_stops_waiting_for_running_task(flows):
    proc, markers = _start_signal_flow(flows, "r2", ack="ack")
    proc.send_signal(signal.SIGINT)
    _wait_for(proc, markers / "ack")
    assert proc.poll() is None  # the first Ctrl-C waits for the running task
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, err = _finish(proc, timeout=20)
    elapsed = time.monotonic() - t0
    assert proc.returncode == 2, (out, err)
    assert elapsed < 15
    assert "Traceback" not in err
    assert "INTERRUPTED first" in out
    assert not (markers / "second.ran").exists()
    events = read_audit(flows.cwd / "st", "r2")
    ends = {e["task"]: e["event"] for e in events if e["event"] in (
        "task_succeeded", "task_failed", "task_skipped", "task_interrupted")}
    assert ends == {"first": "task_interrupted", "second": "task_skipped",
                    "waiter": "task_interrupted"}
    assert events[-1]["event"] == "run_finished" and events[-1]["status"] == "interrupted"
