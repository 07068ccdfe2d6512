"""CSV processing: generate a CSV, then parse, validate and price its rows in a
streaming pipeline, aggregate, and write a report.

Flow::

    generate_csv -> rows (pipeline: parse -> validate -> price) -> aggregate -> write_report

``generate_csv`` writes ``sales.csv`` (deterministic, with a few broken rows)
into ``out_dir`` and returns its *path*.  The ``rows`` node streams the file
line by line (``items=read_lines`` opens it lazily), so a file of any size
goes through in constant memory.  Broken rows fail in ``parse`` or
``validate``: they are dropped from the outputs and listed, with their line
number and reason, in the node's ``errors`` and in the report.  ``price`` is a
batch stage: it receives up to 50 records at once, like a bulk currency
lookup would.

Run it::

    python -m flowdeco examples/csv_pipeline.py --no-state
    python -m flowdeco examples/csv_pipeline.py --no-state --param n_rows=100000 --param out_dir=/tmp/csv
"""

import csv
import json
import os
import random
import tempfile
from pathlib import Path

from flowdeco import Pipeline, task

REGIONS = ["north", "south", "east", "west"]
PRODUCTS = {"widget": 2.50, "gadget": 12.00, "doohickey": 7.25}
#: rows the generator breaks on purpose (by position): bad number, unknown product, negative qty
BROKEN = {17: "qty", 256: "product", 511: "negative"}

pipe = Pipeline("rows", queue_size=200)


@task
def generate_csv(n_rows: int = 1000,
                 out_dir: Path = Path(tempfile.gettempdir()) / "flowdeco-csv"):
    """Write ``n_rows`` sales records (a header first) and return the file's path."""
    rng = random.Random(7)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "sales.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["order_id", "region", "product", "qty"])
        for i in range(n_rows):
            region, product, qty = rng.choice(REGIONS), rng.choice(list(PRODUCTS)), rng.randint(1, 9)
            broken = BROKEN.get(i)
            if broken == "qty":
                qty = "seven"
            elif broken == "product":
                product = "sprocket"
            elif broken == "negative":
                qty = -3
            w.writerow([i + 1, region, product, qty])
    return str(path)


def read_lines(path):
    """The node's items: the data lines of the file, read lazily."""
    with open(path, newline="") as f:
        next(f)  # header
        yield from f


@pipe.stage(workers=2)
def parse(line):
    order_id, region, product, qty = next(csv.reader([line]))
    return {"order_id": int(order_id), "region": region, "product": product, "qty": int(qty)}


@pipe.stage(workers=2)
def validate(record):
    if record["product"] not in PRODUCTS:
        raise ValueError(f"unknown product {record['product']!r}")
    if record["qty"] <= 0:
        raise ValueError(f"quantity must be positive, got {record['qty']}")
    return record


@pipe.stage(workers=1, batch_size=50)
def price(records):
    return [{**r, "amount": round(PRODUCTS[r["product"]] * r["qty"], 2)} for r in records]


rows = pipe.as_task("rows", source=generate_csv, items=read_lines)


@task
def aggregate(rows):
    by_region: dict[str, float] = {}
    by_product: dict[str, int] = {}
    for r in rows.outputs:
        by_region[r["region"]] = round(by_region.get(r["region"], 0.0) + r["amount"], 2)
        by_product[r["product"]] = by_product.get(r["product"], 0) + r["qty"]
    return {
        "orders": len(rows.outputs),
        "revenue": round(sum(by_region.values()), 2),
        "by_region": dict(sorted(by_region.items())),
        "units_by_product": dict(sorted(by_product.items())),
        "rejected": [{"line": e.index + 2, "stage": e.stage, "reason": e.error}
                     for e in rows.errors],
    }


@task
def write_report(ctx, aggregate, generate_csv):
    path = os.path.join(os.path.dirname(generate_csv), "report.json")
    with open(path, "w") as f:
        json.dump(aggregate, f, indent=2)
    ctx.log.info("report written", path=path, orders=aggregate["orders"],
                 rejected=len(aggregate["rejected"]))
    return path
