"""Resilience: retries with back-off, a circuit breaker, and a timeout in one flow.

A small pricing dashboard talks to four services:

- **quotes** is flaky: the first two requests of every run are dropped, the
  third is answered.  ``quotes`` retries with exponential back-off (0.02 s,
  then 0.04 s, with ±10 % seeded jitter) and succeeds on attempt 3.
- **inventory** is healthy.  It sits behind its own breaker, which stays closed.
- **legacy ERP** is dead (connection refused).  ``erp_orders`` and
  ``erp_invoices`` share the ``legacy-erp`` breaker (threshold 2): after two
  refused connections it opens, and every later attempt fails fast with
  ``CircuitOpenError`` without touching the endpoint.  Their retry policy
  waits between attempts instead of hammering the breaker; ``ERP.calls``
  stays at 2 however many attempts are made.
- **reports** hangs.  ``monthly_report`` has ``timeout=0.1`` and fails with
  ``TaskTimeout`` (the ``hang`` run parameter says for how long the service
  hangs: an hour by default; the run does not wait for it).

``dashboard(quotes, inventory)`` is built from the healthy results;
``reconcile`` needs the ERP data and is skipped.

Run it::

    python -m flowdeco examples/resilient_api.py --no-state

Expected: **exit code 1** (some tasks fail on purpose) with
``3 succeeded, 3 failed, 1 skipped``: ``quotes`` (3 attempts), ``inventory``
and ``dashboard`` succeed; ``erp_orders`` and ``erp_invoices`` fail with
``CircuitOpenError`` and ``monthly_report`` with ``TaskTimeout``;
``reconcile`` is skipped.  The console shows ``task_retrying`` lines with
each delay and a ``circuit_opened`` line for ``legacy-erp``.  Run it on
threads (the default): services and breakers here live in the process that
runs the tasks.
"""

from __future__ import annotations

import threading
import time
from collections import Counter

from flowdeco import CircuitBreaker, Retry, task

# --------------------------------------------------------------------------- fake services


class FlakyService:
    """Drops the first ``failures`` requests of each run, then answers."""

    def __init__(self, failures: int):
        self.failures = failures
        self._requests: Counter[str] = Counter()
        self._lock = threading.Lock()

    def get(self, run_id: str, what: str) -> dict:
        with self._lock:
            self._requests[run_id] += 1
            n = self._requests[run_id]
        if n <= self.failures:
            raise ConnectionResetError(f"quotes API dropped request {n}")
        return {"what": what, "EURUSD": 1.08, "GBPUSD": 1.27}


class DeadService:
    """Refuses every connection; counts the calls that reached it."""

    def __init__(self) -> None:
        self.calls = 0
        self._lock = threading.Lock()

    def get(self, what: str) -> dict:
        with self._lock:
            self.calls += 1
        raise ConnectionRefusedError(f"legacy ERP refused the connection ({what})")


QUOTES = FlakyService(failures=2)
ERP = DeadService()

# --------------------------------------------------------------------------- policies

#: exponential back-off for the flaky API: 0.02 s, 0.04 s, 0.08 s (±10 %)
QUOTES_RETRY = Retry(retries=3, backoff="exponential", delay=0.02, max_delay=0.5,
                     jitter=0.1, seed=7, on=(ConnectionError, TimeoutError))

#: for the ERP calls: a refused connection and an open breaker are both worth a wait
ERP_RETRY = Retry(retries=2, delay=0.01)

legacy_erp = CircuitBreaker("legacy-erp", threshold=2, reset_after=30.0)
inventory_api = CircuitBreaker("inventory-api", threshold=5, reset_after=30.0)

# --------------------------------------------------------------------------- the flow


@task(retry=QUOTES_RETRY)
def quotes(ctx):
    """Exchange rates from the flaky API (fails twice per run, then answers)."""
    ctx.log.info("requesting quotes", attempt=ctx.attempt)
    return QUOTES.get(ctx.run_id, "fx")


@task(circuit="inventory-api")
def inventory():
    """Stock levels from the healthy API, through a breaker that stays closed."""
    return {"widgets": 120, "gadgets": 35}


@task(circuit=legacy_erp, retry=ERP_RETRY)
def erp_orders():
    return ERP.get("orders")


@task(circuit=legacy_erp, retry=ERP_RETRY)
def erp_invoices():
    return ERP.get("invoices")


@task(timeout=0.1)
def monthly_report(hang: float = 3600.0):
    """The report service hangs for ``hang`` seconds; the attempt gives up after 0.1 s."""
    time.sleep(hang)
    return "report"


@task
def dashboard(quotes, inventory):
    """Built from the healthy services only."""
    value = inventory["widgets"] * 2.5 * quotes["EURUSD"]
    return {"stock_value_usd": round(value, 2), "items": sum(inventory.values())}


@task
def reconcile(erp_orders, erp_invoices):
    """Needs the ERP: skipped while it is down."""
    return len(erp_orders) - len(erp_invoices)
