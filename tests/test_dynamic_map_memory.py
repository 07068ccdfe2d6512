"""A map over 100,000 elements stays small: peak RSS of a fresh process under 200 MiB.

Instances are scheduled lazily from a cursor with compact per-instance
arrays, so no per-instance objects exist up front.  Measured in a subprocess
as its own high-water mark (``VmHWM``): ``ru_maxrss`` of a child also counts
the RSS of the process that started it (Linux keeps the pre-exec memory's
high-water mark), so a big pytest process made the test fail depending on
which tests ran before it.
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

#: this process's own peak RSS in MiB: VmHWM belongs to the memory map made at exec,
#: ru_maxrss also keeps the parent's (fork) high-water mark
PEAK = textwrap.dedent("""
    def peak_mib():
        import re, resource, sys
        try:
            with open("/proc/self/status") as f:
                return int(re.search(r"VmHWM:\\s+(\\d+)", f.read()).group(1)) / 1024
        except OSError:
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            return rss / 2**20 if sys.platform == "darwin" else rss / 1024
""")

SCRIPT = PEAK + textwrap.dedent("""
    import json, sys
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
        "peak_mib": peak_mib(),
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


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc (Linux)")
def test_peak_is_the_child_s_own_not_the_parent_s():
    """A parent bigger than the limit (a long pytest session) does not count in the child's peak."""
    ballast = bytearray(b"x" * ((LIMIT_MIB + 50) * 2**20))
    code = PEAK + "print(peak_mib())"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    del ballast
    assert proc.returncode == 0, proc.stderr
    assert float(proc.stdout) < LIMIT_MIB / 2
