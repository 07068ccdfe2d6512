"""``examples/resilient_api.py``: retries, a breaker that opens, a timeout (issue 3)."""

from __future__ import annotations

import importlib.util
import itertools
import os
import subprocess
import sys
from pathlib import Path

import flowdeco
from flowdeco import CircuitOpenError, FakeClock, TaskTimeout
from flowdeco.testing import FlowEvents

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "resilient_api.py"
_fresh = itertools.count()


def load_fresh():
    """The example as a new module object: its services and breakers start from scratch."""
    spec = importlib.util.spec_from_file_location(f"_resilient_api_{next(_fresh)}", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_outcomes_of_the_resilient_api_example():
    mod = load_fresh()
    rec = FlowEvents()
    result = flowdeco.run(mod, state_dir=None, workers=4, clock=FakeClock(),
                          params={"hang": 0.15}, plugins=[rec])
    out = result.outcomes
    assert result.exit_code == 1
    assert {n: o.status for n, o in out.items()} == {
        "quotes": "succeeded", "inventory": "succeeded", "dashboard": "succeeded",
        "erp_orders": "failed", "erp_invoices": "failed", "monthly_report": "failed",
        "reconcile": "skipped"}

    # the flaky service: two dropped requests, answered on attempt 3 after the policy's delays
    assert out["quotes"].attempts == 3
    delays = [e.fields["delay"] for e in rec.events
              if e.name == "task_retrying" and e.task == "quotes"]
    assert delays == mod.QUOTES_RETRY.preview(2)
    assert 0.018 <= delays[0] <= 0.022 and 0.036 <= delays[1] <= 0.044

    # the dead endpoint: reached exactly `threshold` times, then the breaker failed fast
    assert mod.ERP.calls == 2
    assert mod.legacy_erp.state == "open"
    assert mod.inventory_api.state == "closed"
    for name in ("erp_orders", "erp_invoices"):
        assert out[name].attempts == 3
        assert isinstance(out[name].exception, CircuitOpenError)
    opened = [e for e in rec.events if e.name == "circuit_opened"]
    assert [e.fields["breaker"] for e in opened] == ["legacy-erp"]

    # the hanging report: the attempt gave up after 0.1 s
    assert isinstance(out["monthly_report"].exception, TaskTimeout)
    assert out["monthly_report"].error == \
        "TaskTimeout: task 'monthly_report' exceeded its timeout of 0.1 s"

    # downstream: healthy results used, the ERP-dependent task skipped
    assert result.results["dashboard"] == {"stock_value_usd": 324.0, "items": 155}
    assert out["reconcile"].reason == "upstream"


def test_the_example_runs_from_the_cli_with_exit_code_1():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "flowdeco", str(EXAMPLE), "--no-state",
                           "--param", "hang=0.15", "--log-format", "json"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, proc.stderr
    assert "3 succeeded, 3 failed, 1 skipped" in proc.stdout
    assert "FAILED erp_orders - CircuitOpenError" in proc.stdout
    assert "FAILED monthly_report - TaskTimeout" in proc.stdout
    assert '"event": "circuit_opened"' in proc.stderr
    assert '"event": "task_retrying"' in proc.stderr
