"""Streaming ETL: Extract (2 workers) -> Transform (3 workers) -> Load (2 workers).

The seed's pipeline mode: every record flows through three stages, each with
its own worker pool, over bounded queues.  Stage 2 transforms record 1 while
stage 1 is still extracting record 2, so the whole run takes about as long as
the slowest stage, not the sum of the three.  Outputs come back in input
order.  ``load`` fails now and then like a flaky database; its retry policy
tries again without holding one of its workers while it waits.

The pipeline is one node of a flow: ``etl`` streams the records ``record_ids``
returns, and ``summary`` receives the node's ``PipelineResult`` (outputs,
per-item errors, per-stage metrics).

Run it::

    python -m flowdeco examples/etl_pipeline.py --no-state
    python examples/etl_pipeline.py                 # the pipeline alone, no flow
"""

import time

from flowdeco import Pipeline, Retry, task

pipe = Pipeline("etl", queue_size=10)


@pipe.stage(workers=2)
def extract(record):
    time.sleep(0.002)                     # pretend to read the source row
    return {**record, "raw": f"row-{record['id']}"}


@pipe.stage(workers=3)
def transform(record):
    time.sleep(0.003)                     # the slow, CPU-ish step gets the most workers
    return {**record, "value": record["id"] * 10, "raw": record["raw"].upper()}


@pipe.stage(workers=2, retry=Retry(retries=2, delay=0.01))
def load(record):
    # a retry receives the same record object, so it can count the tries itself
    record["tries"] = record.get("tries", 0) + 1
    if record["id"] % 7 == 0 and record["tries"] == 1:  # transient: retried after 10 ms
        raise ConnectionError(f"database busy while loading {record['id']}")
    time.sleep(0.002)
    return {**record, "loaded": True}


@task
def record_ids():
    return [{"id": i} for i in range(1, 31)]


etl = pipe.as_task("etl", source=record_ids)


@task
def summary(ctx, etl):
    m = etl.metrics
    out = {
        "loaded": len(etl.outputs),
        "failed": len(etl.errors),
        "first": etl.outputs[0],
        "retries": m.stages["load"].retries,
        "workers": {name: s.workers for name, s in m.stages.items()},
    }
    ctx.log.info("etl done", **{k: v for k, v in out.items() if k != "first"})
    return out


if __name__ == "__main__":
    result = pipe.run({"id": i} for i in range(1, 31))
    print(f"{len(result.outputs)} loaded, {len(result.errors)} failed "
          f"in {result.metrics.duration:.3f}s")
    for name, s in result.metrics.stages.items():
        print(f"  {name:<10} workers={s.workers} in={s.items_in} out={s.items_out} "
              f"retries={s.retries} p95={s.latency_p95 * 1e3:.1f}ms")
