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

With no provider configured, this module registers nothing and imports no
OpenTelemetry: the only cost is one check per run, none per task.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any

from flowdeco import hookimpl

if TYPE_CHECKING:  # pragma: no cover
    from flowdeco.config import Config

    from .spans import Tracing

__all__ = ["Tracing"]

_NAME = "otel-tracing"


def __getattr__(name: str) -> Any:
    if name == "Tracing":  # imported on first use: OpenTelemetry stays unimported when idle
        from .spans import Tracing
        return Tracing
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def may_trace() -> bool:
    """Whether a provider can be configured, asked without importing OpenTelemetry:
    an application sets one through ``opentelemetry.trace`` (so it was imported),
    or ``OTEL_TRACES_EXPORTER`` / ``OTEL_PYTHON_TRACER_PROVIDER`` ask for one."""
    env = os.environ
    return "opentelemetry.trace" in sys.modules or bool(env.get("OTEL_TRACES_EXPORTER")) \
        or bool(env.get("OTEL_PYTHON_TRACER_PROVIDER"))


@hookimpl
def flowdeco_collection_finish(config: "Config") -> None:
    """Register a :class:`Tracing` for this run when a provider is configured.

    Asked after collection, so a provider the flow module sets up when it is
    imported counts; a ``Tracing`` passed in ``plugins=`` is left alone.
    """
    pm = config.pluginmanager
    if pm.get_plugin(_NAME) is not None or not may_trace():
        return
    from .sdk import active_provider
    from .spans import Tracing
    if any(isinstance(p, Tracing) for p in pm.get_plugins()):
        return
    provider = active_provider()
    if provider is not None:
        pm.register(Tracing(provider), _NAME)


@hookimpl
def flowdeco_unconfigure(config: "Config") -> None:
    pm = config.pluginmanager
    plugin = pm.get_plugin(_NAME)
    if plugin is not None:
        pm.unregister(plugin)
