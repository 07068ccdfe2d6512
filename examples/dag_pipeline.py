"""A five-stage DAG: fetch, fan out, transform, aggregate, report.

The graph comes entirely from parameter names:

1. four parallel fetches (``fetch_users``, ``fetch_orders``, ``fetch_products``,
   ``fetch_inventory``) -- no dependencies, they start together;
2. a fan-out to two processing paths: ``customer_path`` needs users and
   orders, ``catalog_path`` needs products and inventory;
3. three transformations that join both paths.  They become ready at the
   same moment, and ``priority`` decides which starts first when workers are
   scarce (higher first): ``transform_orders`` (10), ``transform_customers``
   (5), ``transform_stock`` (1).  Try ``-w 1`` to see it;
4. four parallel aggregations over the transformed data;
5. ``report``, which depends on all four aggregations.

Run it::

    python -m flowdeco examples/dag_pipeline.py --no-state
    python -m flowdeco examples/dag_pipeline.py --no-state -w 1
    python -m flowdeco examples/dag_pipeline.py --graph mermaid
"""

import time

from flowdeco import task

# ---------------------------------------------------------------- stage 1


def _simulated_fetch(rows):
    time.sleep(0.01)  # simulated I/O
    return rows


@task(tags=["stage1", "fetch"])
def fetch_users():
    return _simulated_fetch([{"id": 1, "name": "ada"}, {"id": 2, "name": "grace"},
                             {"id": 3, "name": "linus"}])


@task(tags=["stage1", "fetch"])
def fetch_orders():
    return _simulated_fetch([
        {"id": 100, "user": 1, "sku": "kb", "qty": 1},
        {"id": 101, "user": 1, "sku": "mouse", "qty": 2},
        {"id": 102, "user": 2, "sku": "kb", "qty": 3},
        {"id": 103, "user": 3, "sku": "screen", "qty": 1},
    ])


@task(tags=["stage1", "fetch"])
def fetch_products():
    return _simulated_fetch({"kb": 50.0, "mouse": 20.0, "screen": 200.0})


@task(tags=["stage1", "fetch"])
def fetch_inventory():
    return _simulated_fetch({"kb": 12, "mouse": 3, "screen": 1})


# ---------------------------------------------------------------- stage 2: fan-out


@task(tags=["stage2"])
def customer_path(fetch_users, fetch_orders):
    """Users with their orders."""
    return {u["name"]: [o for o in fetch_orders if o["user"] == u["id"]] for u in fetch_users}


@task(tags=["stage2"])
def catalog_path(fetch_products, fetch_inventory):
    """Products with price and stock."""
    return {sku: {"price": price, "stock": fetch_inventory.get(sku, 0)}
            for sku, price in fetch_products.items()}


# ---------------------------------------------------------------- stage 3: transform


@task(priority=10, tags=["stage3"])
def transform_orders(customer_path, catalog_path):
    """Order lines priced from the catalog (the critical path: highest priority)."""
    return [{"customer": name, "sku": o["sku"], "qty": o["qty"],
             "amount": o["qty"] * catalog_path[o["sku"]]["price"]}
            for name, orders in customer_path.items() for o in orders]


@task(priority=5, tags=["stage3"])
def transform_customers(customer_path, catalog_path):
    """Spend per customer."""
    return {name: sum(o["qty"] * catalog_path[o["sku"]]["price"] for o in orders)
            for name, orders in customer_path.items()}


@task(priority=1, tags=["stage3"])
def transform_stock(customer_path, catalog_path):
    """Stock left after the ordered quantities ship."""
    demand = {}
    for orders in customer_path.values():
        for o in orders:
            demand[o["sku"]] = demand.get(o["sku"], 0) + o["qty"]
    return {sku: p["stock"] - demand.get(sku, 0) for sku, p in catalog_path.items()}


# ---------------------------------------------------------------- stage 4: aggregate


@task(tags=["stage4"])
def total_revenue(transform_orders):
    return sum(line["amount"] for line in transform_orders)


@task(tags=["stage4"])
def top_product(transform_orders):
    units = {}
    for line in transform_orders:
        units[line["sku"]] = units.get(line["sku"], 0) + line["qty"]
    return max(units, key=units.get)


@task(tags=["stage4"])
def best_customer(transform_customers):
    return max(transform_customers, key=transform_customers.get)


@task(tags=["stage4"])
def low_stock(transform_stock):
    return sorted(sku for sku, left in transform_stock.items() if left < 5)


# ---------------------------------------------------------------- stage 5: report


@task(tags=["stage5"])
def report(ctx, total_revenue, top_product, best_customer, low_stock):
    out = {"revenue": total_revenue, "top_product": top_product,
           "best_customer": best_customer, "low_stock": low_stock}
    ctx.log.info("report ready", **out)
    return out
