"""The README's first lines are the contract with a new user and with CI."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ci_runs_the_readmes_test_command_verbatim():
    lines = (ROOT / "README.md").read_text().splitlines()
    fence = lines.index("```bash")
    quickstart, tests = lines[fence + 1], lines[fence + 2]
    assert "examples/quickstart.py" in quickstart
    assert "pytest" in tests
    assert tests in (ROOT / ".ci" / "run").read_text().splitlines()
