"""Sequential ETL: Extract -> Transform -> Load.

A chain is just tasks that each take the previous one as a parameter: ``transform``
receives ``extract``'s result, ``load`` receives ``transform``'s.  flowdeco runs
them one after another because each needs the one before.

The functions stay plain functions, so ``transform({"records": 2})`` works
in a unit test without any engine.

Run it::

    python -m flowdeco examples/etl.py --no-state
"""

import time

from flowdeco import task


@task
def extract(ctx):
    time.sleep(0.005)  # pretend to read a source
    ctx.log.info("extracted", records=1000)
    return {"records": 1000}


@task
def transform(extract):
    return {"processed": extract["records"] * 2}


@task
def load(ctx, transform):
    loaded = transform["processed"]
    ctx.log.info("loaded", rows=loaded)
    return loaded
