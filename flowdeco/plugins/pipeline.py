"""Pipeline plugin: the options of pipeline stages are checked like the options of tasks.

A pipeline node (:meth:`flowdeco.Pipeline.as_task`) is a task with the option
``pipeline=`` (its :class:`~flowdeco.Pipeline`), which this plugin claims.  At
collection it refuses a stage that sets an option whose plugin is off -- a
stage with ``retries=``/``retry=`` under ``-p no:retry``, ``timeout=`` under
``-p no:timeout`` -- with the collection error a task setting that option
gets, so disabling a plugin reaches pipelines too.  ``-p no:pipeline`` refuses
pipeline nodes themselves.

The stages' policies are the core's (:mod:`flowdeco.policies`), applied by the
pipeline engine; a standalone ``Pipeline.run()`` has no plugin manager and
applies them as declared.

Cost: one look at the graph's index per run; nothing per task.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import CollectionError
from ..manager import hookimpl

if TYPE_CHECKING:  # pragma: no cover
    from ..config import Config
    from ..graph import Graph
    from ..pipeline import Pipeline

NAME = "pipeline"

#: (Stage attribute, the task option a plugin must claim, how the stage spells it, the
#: built-in plugin that claims it)
_STAGE_OPTIONS = (("retry", "retry", "retries=/retry=", "retry"),
                  ("timeout", "timeout", "timeout=", "timeout"))


@hookimpl
def flowdeco_task_options() -> list[str]:
    return ["pipeline"]


@hookimpl
def flowdeco_collection_finish(config: "Config", graph: "Graph") -> None:
    nodes = graph.using("pipeline")
    if not nodes:
        return
    claimed = {name for names in config.hook.flowdeco_task_options() for name in names}
    for v in nodes:
        pipe: Pipeline = v.spec.options["pipeline"]  # type: ignore[union-attr]
        for stage in pipe.stages:
            for attr, option, spelled, plugin in _STAGE_OPTIONS:
                if getattr(stage, attr) is not None and option not in claimed:
                    raise CollectionError(
                        f"task {v.name!r}: stage {stage.name!r} of pipeline {pipe.name!r} "
                        f"sets {spelled} but no active plugin handles it (is the {plugin} "
                        f"plugin disabled with -p no:{plugin}? enable it or drop the option)")
