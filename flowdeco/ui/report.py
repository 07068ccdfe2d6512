"""``python -m flowdeco runs report ID -o run.html``: one self-contained HTML file per run.

The file holds the run's graph, timeline, metrics, outcomes, audit tail and
the panels of its failed tasks (error and traceback), with our CSS and
JavaScript inline and the data as JSON in the page: it opens from disk with
no server and no network (its Content-Security-Policy forbids any fetch).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path

from ..errors import StateError, UsageError
from .data import StateReader
from .model import run_model, task_detail

HERE = Path(__file__).parent
#: failed tasks whose panel (error, traceback, attempts) the report carries
MAX_DETAILS = 200


def json_for_script(value: object) -> str:
    """JSON that cannot end its ``<script>`` element early (``<``, ``>``, ``&`` escaped)."""
    text = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return (text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def render_report(state_dir: str | os.PathLike, run_id: str) -> str:
    """The report of ``run_id`` as one HTML document."""
    try:
        from .app import templates
    except ImportError as exc:  # jinja2 / starlette missing
        raise UsageError(f"runs report needs {exc.name}: pip install 'flowdeco[ui]'") from None
    reader = StateReader(state_dir)
    try:
        model = run_model(reader, run_id)
        if model is None:
            raise StateError(f"unknown run id {run_id!r} in {state_dir}")
        details = {}
        for row in model["tasks"]:
            if row[1] in ("failed", "interrupted") and len(details) < MAX_DETAILS:
                details[row[0]] = task_detail(reader, run_id, row[0])
        model["details"] = details
    finally:
        reader.close()
    static = HERE / "static"
    js = "\n".join((static / n).read_text(encoding="utf-8")
                   for n in ("common.js", "graph.js", "run.js"))
    written = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
    return templates().get_template("report.html").render(
        run=model["run"], run_id=run_id, css=(static / "ui.css").read_text(encoding="utf-8"),
        js=js.replace("</", "<\\/"), data=json_for_script(model), written=written,
        actions=False)


def write_report(state_dir: str | os.PathLike, run_id: str, output: str) -> Path:
    """Write the report to ``output`` (created owner-only: it may hold results and errors)."""
    html = render_report(state_dir, run_id)
    try:
        fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(html)
    except OSError as exc:
        raise UsageError(f"runs report: cannot write {output}: {exc.strerror}") from None
    return Path(output)
