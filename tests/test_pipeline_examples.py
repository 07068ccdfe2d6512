"""The pipeline examples: ``examples/etl_pipeline.py`` and ``examples/csv_pipeline.py``."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import flowdeco
from flowdeco import PipelineResult

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SUMMARY = re.compile(r"^=+ (\d+) succeeded in \d+\.\d\ds(?: \(run [^)]+\))? =+$", re.M)


def example(name: str) -> Path:
    return EXAMPLES / f"{name}.py"


def load_module(name: str):
    spec = importlib.util.spec_from_file_location(f"_example_{name}", example(name))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flowdeco", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("name", ["etl_pipeline", "csv_pipeline"])
def test_docstring_says_how_to_run_it(name):
    doc = load_module(name).__doc__
    assert doc and f"python -m flowdeco examples/{name}.py" in doc


# --------------------------------------------------------------------------- etl_pipeline


def test_etl_pipeline_three_stages_2_3_2_workers():
    result = flowdeco.run(example("etl_pipeline"), state_dir=None)
    assert result.ok, {n: o.error for n, o in result.outcomes.items() if o.error}
    assert list(result.outcomes) == ["record_ids", "etl", "summary"]
    etl = result.results["etl"]
    assert isinstance(etl, PipelineResult)
    assert [r["id"] for r in etl.outputs] == list(range(1, 31))      # input order
    assert etl.outputs[0] == {"id": 1, "raw": "ROW-1", "value": 10, "loaded": True, "tries": 1}
    assert result.results["summary"]["workers"] == {"extract": 2, "transform": 3, "load": 2}
    assert result.results["summary"]["retries"] == 4                  # ids 7, 14, 21, 28
    assert result.results["summary"]["failed"] == 0
    m = etl.metrics
    assert {w.worker for w in m.workers} == {
        "etl/extract-0", "etl/extract-1", "etl/transform-0", "etl/transform-1",
        "etl/transform-2", "etl/load-0", "etl/load-1"}
    # streaming: the run is shorter than the stages one after another, each with its pool
    one_by_one = sum(s.busy / s.workers for s in m.stages.values())
    assert m.duration < one_by_one


def test_etl_pipeline_runs_on_its_own():
    mod = load_module("etl_pipeline")
    result = mod.pipe.run({"id": i} for i in range(1, 8))
    assert [r["value"] for r in result.outputs] == [10 * i for i in range(1, 8)]
    proc = subprocess.run([sys.executable, str(example("etl_pipeline"))], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("30 loaded, 0 failed")


def test_etl_pipeline_from_the_cli(tmp_path):
    proc = cli(str(example("etl_pipeline")), "--no-state", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert SUMMARY.search(proc.stdout).group(1) == "3"
    assert "pipeline etl: 30 items, 30 out, 0 failed" in proc.stdout
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- csv_pipeline


def test_csv_pipeline_report(tmp_path):
    result = flowdeco.run(example("csv_pipeline"), state_dir=None,
                          params={"out_dir": tmp_path, "n_rows": 600})
    assert result.ok, {n: o.error for n, o in result.outcomes.items() if o.error}
    assert list(result.outcomes) == ["generate_csv", "rows", "aggregate", "write_report"]
    report_path = Path(result.results["write_report"])
    assert report_path == tmp_path / "report.json"
    report = json.loads(report_path.read_text())
    assert report == result.results["aggregate"]
    assert report["orders"] == 597
    assert [(r["line"], r["stage"]) for r in report["rejected"]] == [
        (19, "parse"), (258, "validate"), (513, "validate")]
    assert "unknown product 'sprocket'" in report["rejected"][1]["reason"]
    assert report["revenue"] == pytest.approx(sum(report["by_region"].values()))
    rows = result.results["rows"]
    assert [r["order_id"] for r in rows.outputs][:3] == [1, 2, 3]
    assert rows.metrics.stages["price"].batch_size == 50
    assert rows.metrics.stages["parse"].items_in == 600
    # recomputed independently from the file
    mod = load_module("csv_pipeline")
    import csv
    total = 0.0
    with open(tmp_path / "sales.csv", newline="") as f:
        for rec in csv.DictReader(f):
            try:
                qty = int(rec["qty"])
            except ValueError:
                continue
            if rec["product"] in mod.PRODUCTS and qty > 0:
                total += mod.PRODUCTS[rec["product"]] * qty
    assert report["revenue"] == pytest.approx(total)


def test_csv_pipeline_from_the_cli_with_state(tmp_path):
    out = tmp_path / "out"
    proc = cli(str(example("csv_pipeline")), "--state-dir", str(tmp_path / "st"),
               "--run-id", "c1", "--param", f"out_dir={out}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert SUMMARY.search(proc.stdout).group(1) == "4"
    assert "pipeline rows: 1,000 items, 997 out, 3 failed" in proc.stdout
    assert json.loads((out / "report.json").read_text())["orders"] == 997
    audit = [json.loads(line) for line in
             (tmp_path / "st" / "runs" / "c1" / "audit.jsonl").read_text().splitlines()]
    failed = [e for e in audit if e["event"] == "item_failed"]
    assert sorted((e["item_index"], e["stage"]) for e in failed) == [
        (17, "parse"), (256, "validate"), (511, "validate")]
