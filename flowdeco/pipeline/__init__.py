"""Streaming pipelines: items flow through stages, each stage with its own worker pool.

::

    from flowdeco import Pipeline

    pipe = Pipeline("etl", queue_size=100, ordered=True)

    @pipe.stage(workers=2)
    def parse(line): ...

    @pipe.stage(workers=4, batch_size=50, retries=2, timeout=5.0)
    def enrich(records): ...          # a list in, one result per record out

    result = pipe.run(open("big.csv"))   # outputs, errors, metrics

Modules: :mod:`.pipe` declares (``Pipeline``, ``Stage``); :mod:`.engine` runs
(threads, bounded queues, the in-flight window); :mod:`.node` makes a
pipeline one task of a flow (``as_task``); :mod:`.result` holds what a run
produces.
"""

from .engine import BatchSizeError, PipelineStopped
from .node import live
from .pipe import Pipeline, Stage
from .result import ItemError, PipelineMetrics, PipelineResult, StageMetrics, StageWorkerMetrics

__all__ = ["BatchSizeError", "ItemError", "Pipeline", "PipelineMetrics", "PipelineResult",
           "PipelineStopped", "Stage", "StageMetrics", "StageWorkerMetrics", "live"]
