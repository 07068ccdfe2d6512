"""A map over 100,000 elements stays small: peak RSS of a fresh process under 200 MiB.

Instances are scheduled lazily from a cursor with compact per-instance
arrays, so no per-instance objects exist up front.  Measured in a subprocess
(``ru_maxrss`` is a process-wide high-water mark).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LIMIT_MIB = 200

SCRIPT = textwrap.dedent("""
    import json, resource, sys
    sys.path.insert(0, {root!r})
    import flowdeco
    from flowdeco import task

    N = 100_000

    @task
    def items():
        return list(range(N))

    @task(map="items")
    def double(items):
        return items * 2

    @task
    def check(double):
        return len(double), sum(double)

    result = flowdeco.run([items, double, check], state_dir=None, executor={executor!r},
                          workers=4)
    out = {{
        "status": result.status,
        "check": result["check"].result,
        "last": result["double[99999]"].result,
        "count": len(result.outcomes),
        "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }}
    print(json.dumps(out))
""")


@pytest.mark.parametrize("executor", ["thread", "sync"])
def test_map_over_100k_elements_stays_under_200_mib(executor, tmp_path):
    code = SCRIPT.format(root=str(ROOT), executor=executor)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["status"] == "succeeded"
    assert out["check"] == [100_000, 2 * sum(range(100_000))]
    assert out["last"] == 199_998
    assert out["count"] == 3 + 100_000
    assert out["peak_mib"] < LIMIT_MIB, out
