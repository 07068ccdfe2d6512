"""The README is a contract with a new user: its first lines with CI, its Python blocks run.

Every ```python block of README.md is executed, in order, in one scratch folder,
so the README cannot drift from the code again.  How a block runs is decided by
an HTML comment on the line right above its fence (invisible on GitHub):

- no marker: the block is written to a file and run with ``python FILE``.  A
  block whose first line is ``# NAME.py`` is written to ``NAME.py``, so later
  blocks (and ``flowdeco.run("etl.py")``) find it; ``# test_*.py`` blocks run
  under pytest;
- ``<!-- readme: run ARGS -->``: ``python -m flowdeco FILE --no-state ARGS``
  must exit 0 (a flow that can run here in well under a second);
- ``<!-- readme: collect -->``: ``python -m flowdeco FILE --collect-only``
  must exit 0 (a flow that waits on real time or calls real services);
- ``<!-- readme: continues -->``: the block is appended to the previous one
  (a snippet that builds on the one above it) and runs as that one did;
- ``<!-- readme: skip REASON -->``: deliberately partial; reported as a
  skipped test with its reason, never silently ignored.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import attrs
import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
_FENCE = re.compile(r"^```(\w*)\s*$")
_MARKER = re.compile(r"^<!--\s*readme:\s*(\w+)\s*(.*?)\s*-->\s*$")
_NAMED = re.compile(r"^#\s*([\w.]+\.py)\s*$")
#: files the README's blocks read but do not show in full (kept tiny on purpose)
_FIXTURES = {
    "flaky_api.py": (
        "from flowdeco import Retry, task\n\n"
        "@task(retry=Retry(retries=5, delay=60))\n"
        "def call_api(ctx):\n"
        "    if ctx.attempt <= 5:\n"
        "        raise ConnectionError('try again')\n"
        "    return 'ok'\n"),
    "big.csv": "".join(f"{i},item{i}\n" for i in range(120)),
    "data/sales.csv": "".join(f"{i},{i * 3}\n" for i in range(10)),
}


@attrs.frozen
class Block:
    line: int           # 1-based line of the opening fence
    mode: str           # "exec", "run", "collect", "skip", "pytest"
    args: str           # the marker's argument (run arguments, skip reason)
    code: str
    filename: str


def readme_blocks(text: str) -> list[Block]:
    """The README's python blocks, continuations merged into the block they continue."""
    lines = text.splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m or not m.group(1):
            i += 1
            continue
        lang, start = m.group(1), i
        j = i + 1
        while j < len(lines) and lines[j].strip() != "```":
            j += 1
        i = j + 1
        if lang != "python":
            continue
        code = "\n".join(lines[start + 1:j]) + "\n"
        marker = _MARKER.match(lines[start - 1]) if start else None
        mode, args = (marker.group(1), marker.group(2)) if marker else ("exec", "")
        if mode == "continues":
            prev = blocks.pop()
            blocks.append(attrs.evolve(prev, code=prev.code + code, line=start + 1))
            continue
        named = _NAMED.match(code.splitlines()[0]) if code.strip() else None
        filename = named.group(1) if named else f"readme_line_{start + 1}.py"
        if mode == "exec" and filename.startswith("test_"):
            mode = "pytest"
        assert mode in ("exec", "pytest", "run", "collect", "skip"), \
            f"README.md:{start}: unknown readme marker {mode!r}"
        blocks.append(Block(start + 1, mode, args, code, filename))
    return blocks


BLOCKS = readme_blocks(README.read_text())


def test_ci_runs_the_readmes_test_command_verbatim():
    lines = README.read_text().splitlines()
    fence = lines.index("```bash")
    quickstart, tests = lines[fence + 1], lines[fence + 2]
    assert "examples/quickstart.py" in quickstart
    assert "pytest" in tests
    assert tests in (ROOT / ".ci" / "run").read_text().splitlines()


def test_the_readme_has_python_blocks_to_run():
    assert len([b for b in BLOCKS if b.mode != "skip"]) >= 10


def test_block_parser_handles_markers_names_and_continuations():
    text = "\n".join([
        "```python", "# etl.py", "x = 1", "```",
        "<!-- readme: collect -->", "```python", "y = 2", "```",
        "<!-- readme: continues -->", "```python", "z = 3", "```",
        "<!-- readme: skip a fragment -->", "```python", "w", "```",
        "```console", "$ ls", "```",
    ])
    got = [(b.mode, b.filename, b.code, b.args) for b in readme_blocks(text)]
    assert got == [("exec", "etl.py", "# etl.py\nx = 1\n", ""),
                   ("collect", "readme_line_6.py", "y = 2\nz = 3\n", ""),
                   ("skip", "readme_line_14.py", "w\n", "a fragment")]


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    """One folder for all blocks: every named file of the README and the fixtures in it."""
    folder = tmp_path_factory.mktemp("readme")
    for name, text in _FIXTURES.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    for block in BLOCKS:
        (folder / block.filename).write_text(block.code)
    return folder


@pytest.mark.parametrize("block", BLOCKS, ids=[f"README.md:{b.line}" for b in BLOCKS])
def test_readme_block_runs_as_written(block: Block, scratch: Path):
    if block.mode == "skip":
        pytest.skip(f"README.md:{block.line} is marked partial: {block.args}")
    command = {
        "exec": [sys.executable, block.filename],
        "pytest": [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", block.filename],
        "run": [sys.executable, "-m", "flowdeco", block.filename, "--no-state", *block.args.split()],
        "collect": [sys.executable, "-m", "flowdeco", block.filename, "--collect-only"],
    }[block.mode]
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    done = subprocess.run(command, cwd=scratch, capture_output=True, text=True, timeout=120,
                          env=env)
    assert done.returncode == 0, (
        f"README.md:{block.line} ({block.mode}) exited {done.returncode}\n"
        f"--- stdout\n{done.stdout[-3000:]}\n--- stderr\n{done.stderr[-3000:]}")
