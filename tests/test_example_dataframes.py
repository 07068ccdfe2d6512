"""``examples/dataframes.py``: DataFrame results stored as Parquet files, resumed without
recomputing them (runs when pandas and pyarrow are installed: the ``test`` extra has them)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

import flowdeco
from flowdeco.plugins.state.results import parse_ref
from flowdeco.plugins.state.store import SQLiteStore

pd = pytest.importorskip("pandas")
pytest.importorskip("pyarrow")

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "dataframes.py"


def test_dataframes_example_fails_then_resumes_without_recomputing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    state = str(tmp_path / ".flowdeco")
    bad = tmp_path / "missing-folder" / "report.csv"
    first = flowdeco.run(EXAMPLE, state_dir=state, run_id="df", params={"out": str(bad)})
    assert first.status == "failed"
    assert first.outcomes["publish"].error.startswith("OSError: Cannot save file")
    assert isinstance(first.outcomes["by_region"].result, pd.DataFrame)

    store = SQLiteStore(state)
    store.open(create=False)
    rows = store.load_tasks("df")
    store.close()
    for name in ("read", "enrich", "by_region"):
        assert parse_ref(rows[name].result).serializer == "parquet", name

    out = tmp_path / "report.csv"
    second = flowdeco.run(EXAMPLE, state_dir=state, resume="df", params={"out": str(out)})
    assert second.status == "succeeded"
    assert {n: o.status for n, o in second.outcomes.items()} == {
        "read": "restored", "enrich": "restored", "by_region": "restored",
        "publish": "succeeded"}
    assert (tmp_path / "dataframes-calls.txt").read_text().split() == ["read"]
    restored = second.outcomes["by_region"].result
    pd.testing.assert_frame_equal(restored, first.outcomes["by_region"].result)
    table = list(csv.DictReader(out.open()))
    assert [r["region"] for r in table] == ["north", "east", "south"]
    assert second.outcomes["publish"].result == {"regions": 3, "revenue": 565.0,
                                                 "file": str(out)}
