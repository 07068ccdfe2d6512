"""flowdeco-otel: OpenTelemetry spans for flowdeco runs, tasks and attempts.

Installed, it is found through the ``flowdeco`` entry-point group (``-p
no:otel`` disables it).  For each run it makes a span per run, per task and
per attempt (see :mod:`flowdeco_otel.spans` for the tree and attributes),
and makes each attempt's span the current span on the worker that runs it
-- a thread, a worker process, a Dask worker -- so spans a task body opens
nest under its attempt.

Configuration is OpenTelemetry's own: an application that set a tracer
provider is traced with it; otherwise ``OTEL_TRACES_EXPORTER`` (``console``,
``otlp``, ...) with ``OTEL_SERVICE_NAME``, ``OTEL_EXPORTER_OTLP_ENDPOINT``,
``OTEL_TRACES_SAMPLER``, ... sets up the SDK (:mod:`flowdeco_otel.sdk`);
``OTEL_SDK_DISABLED=true`` turns it off.  In code:
``flowdeco.run(flow, plugins=[flowdeco_otel.Tracing(provider)])``.

With no provider configured, this module registers nothing: the only cost
is one check per run, none per task.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from flowdeco import hookimpl

from .spans import Tracing

if TYPE_CHECKING:  # pragma: no cover
    from flowdeco.config import Config

__all__ = ["Tracing"]

_NAME = "otel-tracing"


@hookimpl
def flowdeco_collection_finish(config: "Config") -> None:
    """Register a :class:`Tracing` for this run when a provider is configured.

    Asked after collection, so a provider the flow module sets up when it is
    imported counts; a ``Tracing`` passed in ``plugins=`` is left alone.
    """
    pm = config.pluginmanager
    if pm.get_plugin(_NAME) is not None or \
            any(isinstance(p, Tracing) for p in pm.get_plugins()):
        return
    from .sdk import active_provider
    provider = active_provider()
    if provider is not None:
        pm.register(Tracing(provider), _NAME)


@hookimpl
def flowdeco_unconfigure(config: "Config") -> None:
    pm = config.pluginmanager
    plugin = pm.get_plugin(_NAME)
    if plugin is not None:
        pm.unregister(plugin)
