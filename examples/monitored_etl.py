"""Running a flow in production: captured logging, a database pool, and alerts.

Three extracts read tables from a (pretend) database; every extract is
tagged ``db`` so a pool can cap how many hit the database at once.  The
tasks log with the standard ``logging`` module and ``print`` as they always
did: flowdeco captures both per attempt into the audit trail
(``task_log`` / ``task_output`` events) and shows them on the console only
for a task that fails.  ``publish`` is flaky (its first attempt times out)
and retries once; its ``on_retry`` and ``on_failure`` callbacks are the
alerts -- here they print to stderr, in production they would page someone.

Run it::

    python -m flowdeco examples/monitored_etl.py --log-level INFO

Expected: exit code 0, ``5 succeeded``; a ``task_retrying`` line for
``publish`` and the ``on_retry`` alert (``ALERT publish attempt 1 failed``).
The audit trail (``.flowdeco/runs/RUN_ID/audit.jsonl``) holds the captured
``logging`` records (``--log-level INFO`` lets INFO records through; WARNING
ones are captured anyway) and the printed lines of every task.

Make ``publish`` fail for good to see the failure alert and the captured
output of the failed task on the console, and a JSON summary POSTed to a
webhook::

    python -m flowdeco examples/monitored_etl.py --param fail_publish=true \\
        --notify-url http://127.0.0.1:8080/hook

The pool: with ``--limit db=2`` (or ``run(limits={"db": 2})``, or ``db = 2``
under ``[tool.flowdeco.limits]`` in ``pyproject.toml``) at most two ``db``
tasks run at once, whatever ``-w`` says; a task waiting for the pool holds
no worker::

    python -m flowdeco examples/monitored_etl.py --limit db=2 -w 4
"""

from __future__ import annotations

import logging
import sys

from flowdeco import task

log = logging.getLogger("examples.monitored_etl")

TABLES = {
    "customers": [{"id": 1, "name": "Ada"}, {"id": 2, "name": ""}, {"id": 3, "name": "Linus"}],
    "orders": [{"id": 10, "customer": 1}, {"id": 11, "customer": 3}],
    "products": [{"id": 100, "sku": "A-1"}],
}

#: alerts raised during this process's runs (the callbacks append here too)
ALERTS: list[str] = []


def page_on_call(alert) -> None:  # type: ignore[no-untyped-def]
    """``on_failure``: called on the scheduler thread with the task's outcome."""
    message = f"ALERT {alert.task} failed after {alert.attempt} attempts: {alert.error}"
    ALERTS.append(message)
    print(message, file=sys.stderr)


def note_retry(alert) -> None:  # type: ignore[no-untyped-def]
    """``on_retry``: the attempt that failed and the delay before the next one."""
    message = f"ALERT {alert.task} attempt {alert.attempt} failed ({alert.error}); " \
              f"retrying in {alert.delay:.2f}s"
    ALERTS.append(message)
    print(message, file=sys.stderr)


def read_table(name: str) -> list[dict]:
    rows = TABLES[name]
    log.info("read %d rows from %s", len(rows), name)
    return rows


@task(tags=["db"])
def customers() -> list[dict]:
    return read_table("customers")


@task(tags=["db"])
def orders() -> list[dict]:
    return read_table("orders")


@task(tags=["db"])
def products() -> list[dict]:
    return read_table("products")


@task
def clean(customers: list[dict]) -> list[dict]:
    good = []
    for row in customers:
        if not row["name"]:
            log.warning("customer %s has no name: dropped", row["id"])
            continue
        good.append(row)
    print(f"kept {len(good)} of {len(customers)} customers")
    return good


@task(retries=1, on_retry=note_retry, on_failure=page_on_call)
def publish(clean: list[dict], orders: list[dict], products: list[dict], ctx,
            fail_publish: bool = False) -> dict:
    print(f"publishing attempt {ctx.attempt}")
    if ctx.attempt == 1 or fail_publish:
        log.error("the warehouse did not answer (attempt %d)", ctx.attempt)
        raise TimeoutError("warehouse did not answer")
    report = {"customers": len(clean), "orders": len(orders), "products": len(products)}
    log.info("published %s", report)
    return report
