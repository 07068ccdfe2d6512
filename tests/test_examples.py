"""The example flows in ``examples/``: each runs, computes what it says, and works from the CLI."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import flowdeco

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
NAMES = ["quickstart", "etl", "parallel_fetch", "dag_pipeline", "subflows"]
SUMMARY = re.compile(r"^=+ (\d+) succeeded in \d+\.\d\ds =+$", re.M)


def example(name: str) -> Path:
    return EXAMPLES / f"{name}.py"


def run(name: str, **kwargs):
    result = flowdeco.run(example(name), state_dir=None, **kwargs)
    assert result.ok, {n: o.error for n, o in result.outcomes.items() if o.error}
    assert result.status == "succeeded"
    assert result.exit_code == 0
    assert {o.status for o in result.outcomes.values()} == {"succeeded"}
    return result


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flowdeco", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=60)


def load_module(name: str):
    """Import an example under a private name (not registered in sys.modules)."""
    spec = importlib.util.spec_from_file_location(f"_example_{name}", example(name))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def overlapping(outcomes) -> bool:
    """Whether at least two of ``outcomes`` ran at the same time.

    (Not "all at once": starting a thread can take milliseconds on a small
    machine, so a pool's later workers may start after its first task ended.)
    """
    return any(a.started_at < b.finished_at and b.started_at < a.finished_at
               for i, a in enumerate(outcomes) for b in outcomes[i + 1:])


# ---------------------------------------------------------------- every example


@pytest.mark.parametrize("name", NAMES)
def test_example_has_a_docstring_saying_how_to_run_it(name):
    doc = load_module(name).__doc__
    assert doc and f"python -m flowdeco examples/{name}.py" in doc


@pytest.mark.parametrize("name", NAMES)
def test_example_runs_from_the_cli(name, tmp_path):
    proc = cli(str(example(name)), "--no-state", "--log-format", "json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    m = SUMMARY.search(proc.stdout)
    assert m, proc.stdout
    assert int(m.group(1)) == len(run(name).outcomes)
    assert "FAILED" not in proc.stdout
    events = [json.loads(line) for line in proc.stderr.splitlines()]
    assert events[0]["event"] == "run_started"
    assert events[-1]["event"] == "run_finished" and events[-1]["status"] == "succeeded"
    assert "task_failed" not in {e["event"] for e in events}
    assert list(tmp_path.iterdir()) == []  # --no-state keeps nothing


# ---------------------------------------------------------------- quickstart


def test_quickstart_results():
    r = run("quickstart")
    assert list(r.outcomes) == ["greet", "announce", "count_letters", "shout", "summary"]
    assert r.results["greet"] == "Hello, world!"
    assert r.results["summary"] == {"message": "Hello, world!", "letters": 10,
                                    "shout": "HELLO, WORLD!"}
    # after= orders announce after greet without passing its result
    assert r.outcomes["announce"].started_at >= r.outcomes["greet"].finished_at
    assert r.results["announce"] is None


def test_quickstart_param_overrides_the_default():
    r = run("quickstart", params={"name": "Ada"})
    assert r.results["summary"] == {"message": "Hello, Ada!", "letters": 8, "shout": "HELLO, ADA!"}


def test_quickstart_param_from_the_cli_reaches_the_audit_trail(tmp_path):
    proc = cli(str(example("quickstart")), "--state-dir", str(tmp_path / "st"), "--run-id", "r1",
               "--param", "name=Ada", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "5 succeeded" in proc.stdout
    lines = (tmp_path / "st" / "runs" / "r1" / "audit.jsonl").read_text().splitlines()
    events = [json.loads(line) for line in lines]
    assert all(e["run_id"] == "r1" for e in events)
    assert events[0]["event"] == "run_started"
    assert events[-1]["event"] == "run_finished" and events[-1]["status"] == "succeeded"
    summary = [e for e in events if e["event"] == "summary"]
    assert len(summary) == 1
    assert summary[0]["task"] == "summary"
    assert summary[0]["message"] == "Hello, Ada!" and summary[0]["letters"] == 8
    assert {e["task"] for e in events if e["event"] == "task_succeeded"} == {
        "greet", "announce", "count_letters", "shout", "summary"}
    ready = [e for e in events if e["event"] == "greeting is ready"]
    assert ready and ready[0]["run"] == "r1"


def test_quickstart_graph_mermaid(tmp_path):
    proc = cli(str(example("quickstart")), "--graph", "mermaid", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.startswith("flowchart TD")
    assert "-->" in out
    ids = dict(re.findall(r'(n\d+)\["(\w+)"\]', out))
    edges = {(ids[a], ids[b]) for a, b in re.findall(r"(n\d+) --> (n\d+)", out)}
    assert {("greet", "announce"), ("greet", "count_letters"), ("greet", "shout"),
            ("count_letters", "summary"), ("shout", "summary")} <= edges
    assert list(tmp_path.iterdir()) == []  # nothing ran, nothing written


# ---------------------------------------------------------------- etl


def test_etl_is_a_sequential_chain():
    r = run("etl")
    assert r.results == {"extract": {"records": 1000}, "transform": {"processed": 2000},
                         "load": 2000}
    o = r.outcomes
    assert o["extract"].finished_at <= o["transform"].started_at
    assert o["transform"].finished_at <= o["load"].started_at


def test_etl_functions_stay_plain_functions():
    etl = load_module("etl")
    assert etl.transform({"records": 2}) == {"processed": 4}


# ---------------------------------------------------------------- parallel_fetch


def test_parallel_fetch_aggregates_three_sources():
    r = run("parallel_fetch", workers=4)
    assert r.results["aggregate"] == {"users": 3, "products": 5, "orders": 8, "total": 16}
    assert [u["source"] for u in r.results["fetch_users"]] == ["/users"] * 3
    fetches = [r.outcomes[n] for n in ("fetch_users", "fetch_products", "fetch_orders")]
    assert overlapping(fetches)
    assert r.outcomes["aggregate"].started_at >= max(o.finished_at for o in fetches)


def test_parallel_fetch_with_one_worker_runs_one_at_a_time():
    r = run("parallel_fetch", workers=1)
    fetches = sorted((r.outcomes[n] for n in ("fetch_users", "fetch_products", "fetch_orders")),
                     key=lambda o: o.started_at)
    for first, second in zip(fetches, fetches[1:]):
        assert first.finished_at <= second.started_at


# ---------------------------------------------------------------- dag_pipeline

STAGES = {
    1: ["fetch_users", "fetch_orders", "fetch_products", "fetch_inventory"],
    2: ["customer_path", "catalog_path"],
    3: ["transform_orders", "transform_customers", "transform_stock"],
    4: ["total_revenue", "top_product", "best_customer", "low_stock"],
    5: ["report"],
}
DAG_DEPS = {
    "customer_path": ["fetch_users", "fetch_orders"],
    "catalog_path": ["fetch_products", "fetch_inventory"],
    **{t: ["customer_path", "catalog_path"] for t in STAGES[3]},
    "total_revenue": ["transform_orders"],
    "top_product": ["transform_orders"],
    "best_customer": ["transform_customers"],
    "low_stock": ["transform_stock"],
    "report": STAGES[4],
}


def test_dag_pipeline_values():
    r = run("dag_pipeline")
    assert set(r.outcomes) == {t for stage in STAGES.values() for t in stage}
    assert r.results["report"] == {"revenue": 440.0, "top_product": "kb",
                                   "best_customer": "linus", "low_stock": ["mouse", "screen"]}
    assert r.results["transform_customers"] == {"ada": 90.0, "grace": 150.0, "linus": 200.0}


@pytest.mark.parametrize("workers", [1, 4])
def test_dag_pipeline_stage_ordering(workers):
    o = run("dag_pipeline", workers=workers).outcomes
    for t, deps in DAG_DEPS.items():
        for d in deps:
            assert o[d].finished_at <= o[t].started_at, (d, t)
    # the fan-in barriers: stage 3 after all of stage 2, the report after all of stage 4
    assert max(o[t].finished_at for t in STAGES[2]) <= min(o[t].started_at for t in STAGES[3])
    assert max(o[t].finished_at for t in STAGES[4]) <= o["report"].started_at
    assert o["report"].finished_at == max(x.finished_at for x in o.values())


def test_dag_pipeline_stage1_fetches_run_in_parallel():
    o = run("dag_pipeline", workers=4).outcomes
    assert overlapping([o[t] for t in STAGES[1]])


def test_dag_pipeline_priority_orders_stage3_when_workers_are_scarce():
    o = run("dag_pipeline", workers=1).outcomes
    by_start = sorted(STAGES[3], key=lambda t: o[t].started_at)
    assert by_start == ["transform_orders", "transform_customers", "transform_stock"]


def test_dag_pipeline_collect_only_lists_dependencies_and_priorities(tmp_path):
    proc = cli(str(example("dag_pipeline")), "--collect-only", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = {ln.split()[0]: ln for ln in proc.stdout.splitlines()[1:] if ln.strip()}
    assert set(lines) == set(DAG_DEPS) | set(STAGES[1])
    assert "<- customer_path, catalog_path" in lines["transform_orders"]
    assert "priority=10" in lines["transform_orders"]
    assert "<- total_revenue, top_product, best_customer, low_stock" in lines["report"]
    assert "<-" not in lines["fetch_users"]
    assert "succeeded" not in proc.stdout  # nothing ran
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- subflows

VALIDATION = ["check_format", "check_schema", "check_integrity"]
NESTED = ["prepare", "prepare.clean", "prepare.clean.normalize",
          "prepare.clean.normalize.strip", "prepare.clean.normalize.lowercase",
          "prepare.clean.dedupe", "prepare.index"]


def test_subflows_reused_validation():
    r = run("subflows")
    for node in ("validate_users", "validate_orders"):
        assert node in r.outcomes
        for inner in VALIDATION:
            assert f"{node}.{inner}" in r.outcomes
    assert "check_format" not in r.outcomes  # inner tasks are not module tasks
    # each node's result is its sink's (check_integrity's) result, on its own input
    assert r.results["validate_users"] == {"valid": True, "count": 2, "fields": ["id", "name"]}
    assert r.results["validate_orders"] == {"valid": True, "count": 3, "fields": ["id", "user"]}
    assert r.results["validate_users"] == r.results["validate_users.check_integrity"]
    assert r.results["validate_orders.check_format"] == r.results["fetch_orders"]
    assert r.results["load"] == 5
    o = r.outcomes
    assert o["fetch_users"].finished_at <= o["validate_users.check_format"].started_at
    assert o["validate_users.check_integrity"].finished_at <= o["load"].started_at
    assert o["validate_orders"].finished_at <= o["load"].started_at


def test_subflows_nest_three_levels():
    r = run("subflows")
    for name in NESTED:
        assert name in r.outcomes
    assert r.results["prepare.clean.normalize.strip"] == ["Ada", "grace", "ADA", "Linus"]
    assert r.results["prepare.clean.normalize"] == ["ada", "grace", "ada", "linus"]
    assert r.results["prepare.clean"] == ["ada", "grace", "linus"]
    assert r.results["prepare"] == {"ada": 0, "grace": 1, "linus": 2}
    assert r.results["names_report"] == {"unique": 3, "index": {"ada": 0, "grace": 1, "linus": 2}}
    o = r.outcomes
    assert o["fetch_names"].finished_at <= o["prepare.clean.normalize.strip"].started_at
    assert o["prepare.clean.normalize.lowercase"].finished_at <= o["prepare.clean.dedupe"].started_at
    assert o["prepare.index"].finished_at <= o["names_report"].started_at


def test_subflows_collect_only_shows_qualified_names(tmp_path):
    proc = cli(str(example("subflows")), "--collect-only", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "validate_users  (sub-flow validation)" in out
    assert "validate_orders.check_format  <- fetch_orders" in out
    assert "prepare.clean.normalize.strip  <- fetch_names" in out
    assert "load  <- validate_users, validate_orders" in out


# --------------------------------------------------------------------------- dogfooding
# The same examples tested the way users test their own flows: with the pytest
# plugin's fixtures (flowdeco.testing).


def test_etl_with_extract_stubbed_by_value(flow_run, flow_events):
    result = flow_run(example("etl"), overrides={"extract": {"records": 5}})
    result.assert_ok()
    assert result.results["load"] == 10
    assert result.outcomes["extract"].status == "restored"
    assert flow_events.of("loaded", task="load")[0].fields["rows"] == 10


def test_etl_with_transform_replaced_by_a_fake(flow_run):
    result = flow_run(example("etl"), override={"transform": lambda extract: {"processed": 1}})
    result.assert_ok()
    assert result.results["load"] == 1


def test_quickstart_events_in_order(flow_run, flow_events):
    flow_run(example("quickstart"), params={"name": "Ada"}).assert_ok()
    names = flow_events.names()
    assert names[0] == "run_started" and names[-1] == "run_finished"
    assert names.index("task_succeeded") < len(names) - 1
    assert flow_events.of("run_finished", status="succeeded")
