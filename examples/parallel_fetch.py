"""Parallel fetch: three independent "API calls", then one aggregate.

``fetch_users``, ``fetch_products`` and ``fetch_orders`` take no task as a
parameter, so they are independent and run at the same time (bounded by
``--workers``).  ``aggregate`` names all three and waits for them.  The calls
are simulated with a 10 ms sleep each: with enough workers the whole flow takes
about 10 ms, not 30.

Run it::

    python -m flowdeco examples/parallel_fetch.py --no-state
    python -m flowdeco examples/parallel_fetch.py --no-state -w 1   # one at a time
"""

import time

from flowdeco import task


def _fetch_api(path, rows):
    time.sleep(0.01)  # simulated network latency
    return [{"id": i, "source": path} for i in range(1, rows + 1)]


@task(tags=["api"])
def fetch_users():
    return _fetch_api("/users", 3)


@task(tags=["api"])
def fetch_products():
    return _fetch_api("/products", 5)


@task(tags=["api"])
def fetch_orders():
    return _fetch_api("/orders", 8)


@task
def aggregate(ctx, fetch_users, fetch_products, fetch_orders):
    counts = {"users": len(fetch_users), "products": len(fetch_products),
              "orders": len(fetch_orders)}
    ctx.log.info("aggregated", **counts)
    return {**counts, "total": sum(counts.values())}
