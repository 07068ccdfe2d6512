"""DataFrames between tasks: stored as Parquet files, restored on resume.

Needs pandas and pyarrow (``pip install 'flowdeco[dataframes]'``).  ``read``
loads a CSV into a pandas DataFrame, ``enrich`` adds columns, ``by_region``
aggregates; with state on (the default) each DataFrame result is written to
``.flowdeco/results/RUN_ID/`` as a Parquet file (its row keeps the file's
name, size and sha256).  The first run fails in ``publish`` (the report's
folder is not writable); after the fix, resuming restores the three
DataFrame steps from their files instead of computing them again::

    python -m flowdeco examples/dataframes.py --run-id df --param out=/proc/report.csv
    #   FAILED publish - FileNotFoundError: ... '/proc/report.csv' (a folder you cannot write)
    #   3 succeeded, 1 failed (run df)

    python -m flowdeco examples/dataframes.py --resume df --param out=report.csv
    #   1 succeeded, 3 restored (run df)

    python -m flowdeco runs export df     # "files": read, enrich, by_region (parquet)

``read`` writes a line to ``dataframes-calls.txt`` each time it really runs.
"""

import io
from pathlib import Path

import pandas as pd

from flowdeco import task

SALES = """\
date,region,product,units,price
2026-01-03,north,widget,3,9.50
2026-01-03,south,gadget,1,24.00
2026-01-04,north,gadget,2,24.00
2026-01-05,east,widget,7,9.50
2026-01-05,south,widget,4,9.50
2026-01-06,east,gizmo,1,120.00
2026-01-07,north,gizmo,2,120.00
"""


@task
def read(source: str = "") -> pd.DataFrame:
    """The CSV (``--param source=FILE``; the built-in sample when empty) as a DataFrame."""
    with open("dataframes-calls.txt", "a") as fh:  # lets you (and the tests) count the calls
        fh.write("read\n")
    text = Path(source).read_text() if source else SALES
    return pd.read_csv(io.StringIO(text), parse_dates=["date"])


@task
def enrich(read: pd.DataFrame) -> pd.DataFrame:
    df = read.copy()
    df["revenue"] = df["units"] * df["price"]
    df["weekday"] = df["date"].dt.day_name()
    return df


@task
def by_region(enrich: pd.DataFrame) -> pd.DataFrame:
    return (enrich.groupby("region", as_index=False)
            .agg(units=("units", "sum"), revenue=("revenue", "sum"))
            .sort_values("revenue", ascending=False, ignore_index=True))


@task
def publish(by_region: pd.DataFrame, out: str = "report.csv") -> dict:
    """Write the report; returns a small summary (JSON, kept in the database)."""
    by_region.to_csv(out, index=False)
    return {"regions": len(by_region), "revenue": float(by_region["revenue"].sum()),
            "file": out}
