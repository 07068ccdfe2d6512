"""Sub-flows: a reusable validation flow, and nesting three levels deep.

``validation`` is a ``Flow`` of three chained checks.  Its first task takes a
``data`` parameter that names no inner task, so each node built from the flow
binds it to a different outer task::

    validate_users  = validation.as_task("validate_users",  bind={"data": "fetch_users"})
    validate_orders = validation.as_task("validate_orders", bind={"data": "fetch_orders"})

Each node runs its own copy of the checks, named ``validate_users.check_format``
and so on.  An outer task receives a node's result (its sink task's result,
here ``check_integrity``'s) through a parameter named after the node.

The second part nests flows: ``prepare`` contains a node of ``clean``, which
contains a node of ``normalize``.  Free parameters (``raw``) are bound by name
from the enclosing flows, so ``normalize``'s ``raw`` is bound at the top level
to ``fetch_names``.  Inner names are qualified with every level:
``prepare.clean.normalize.strip``.

Run it::

    python -m flowdeco examples/subflows.py --no-state
    python -m flowdeco examples/subflows.py --collect-only
"""

from flowdeco import Flow, task

# ------------------------------------------------------- reusable validation

validation = Flow("validation")


@validation.task
def check_format(data):
    bad = [r for r in data if not isinstance(r, dict) or "id" not in r]
    if bad:
        raise ValueError(f"malformed records: {bad!r}")
    return data


@validation.task
def check_schema(check_format):
    fields = set(check_format[0]) if check_format else set()
    if any(set(r) != fields for r in check_format):
        raise ValueError("records do not share one schema")
    return {"records": check_format, "fields": sorted(fields)}


@validation.task
def check_integrity(check_schema):
    ids = [r["id"] for r in check_schema["records"]]
    if len(ids) != len(set(ids)):
        raise ValueError("duplicate ids")
    return {"valid": True, "count": len(ids), "fields": check_schema["fields"]}


@task
def fetch_users():
    return [{"id": 1, "name": "ada"}, {"id": 2, "name": "grace"}]


@task
def fetch_orders():
    return [{"id": 10, "user": 1}, {"id": 11, "user": 2}, {"id": 12, "user": 2}]


validate_users = validation.as_task("validate_users", bind={"data": "fetch_users"})
validate_orders = validation.as_task("validate_orders", bind={"data": "fetch_orders"})


@task
def load(ctx, validate_users, validate_orders):
    loaded = validate_users["count"] + validate_orders["count"]
    ctx.log.info("loaded", rows=loaded)
    return loaded


# ------------------------------------------------------- three levels deep

normalize = Flow("normalize")          # level 3


@normalize.task
def strip(raw):
    return [s.strip() for s in raw]


@normalize.task
def lowercase(strip):
    return [s.lower() for s in strip]


clean = Flow("clean")                  # level 2
clean.add(normalize.as_task("normalize"))


@clean.task
def dedupe(normalize):
    return sorted(set(normalize))


prepare_flow = Flow("prepare")         # level 1
prepare_flow.add(clean.as_task("clean"))


@prepare_flow.task
def index(clean):
    return {name: i for i, name in enumerate(clean)}


@task
def fetch_names():
    return ["  Ada", "grace ", "ADA", "Linus"]


prepare = prepare_flow.as_task("prepare", bind={"raw": "fetch_names"})


@task
def names_report(prepare):
    return {"unique": len(prepare), "index": prepare}
