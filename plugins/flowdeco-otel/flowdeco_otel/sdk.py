"""The tracer provider: the application's, or one built from the ``OTEL_*`` variables.

An application that set a tracer provider (``trace.set_tracer_provider``)
keeps it.  Otherwise, when ``OTEL_TRACES_EXPORTER`` names exporters (not
``none``) and ``OTEL_SDK_DISABLED`` is not true, the SDK's ``TracerProvider``
is set up once per process the way OpenTelemetry's auto-configuration does:
resource from ``OTEL_SERVICE_NAME`` / ``OTEL_RESOURCE_ATTRIBUTES`` (service
name ``flowdeco`` when neither names one), sampler from
``OTEL_TRACES_SAMPLER``, each exporter found by name in the
``opentelemetry_traces_exporter`` entry points (``console`` comes with the SDK,
``otlp`` with ``opentelemetry-exporter-otlp``, which reads
``OTEL_EXPORTER_OTLP_*``) behind a ``BatchSpanProcessor`` (``OTEL_BSP_*``).
With none of this, tracing is off and the plugin registers nothing.
"""

from __future__ import annotations

import os
import threading
from importlib.metadata import entry_points
from typing import Any

from opentelemetry import trace

from flowdeco import UsageError

_lock = threading.Lock()
#: the provider this module set up in this process (None: not yet, or not asked to)
_made: Any = None


def disabled() -> bool:
    """``OTEL_SDK_DISABLED=true``: no spans from flowdeco, whatever else is set."""
    return os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"


def _exporter_names() -> list[str]:
    raw = os.environ.get("OTEL_TRACES_EXPORTER", "")
    return [n.strip() for n in raw.split(",") if n.strip() and n.strip().lower() != "none"]


def active_provider() -> Any:
    """The tracer provider to trace runs with, or None when tracing is off.

    Builds the SDK provider from ``OTEL_*`` the first time it is asked for
    when the application set none (see the module docstring).
    """
    if disabled():
        return None
    provider = trace.get_tracer_provider()
    if isinstance(provider, trace.ProxyTracerProvider):
        provider = ensure_provider()
    if provider is None or isinstance(provider, (trace.NoOpTracerProvider,
                                                 trace.ProxyTracerProvider)):
        return None
    return provider


def ensure_provider() -> Any:
    """Set up the SDK provider from ``OTEL_*`` once, if asked and none is set; return it."""
    global _made
    if _made is not None or disabled() or not _exporter_names():
        return _made
    with _lock:
        if _made is not None:
            return _made
        if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
            return None  # the application set one meanwhile: not ours to replace
        provider = _build(_exporter_names())
        trace.set_tracer_provider(provider)
        _made = trace.get_tracer_provider()
        return _made


def _build(names: list[str]) -> Any:
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        raise UsageError(
            f"OTEL_TRACES_EXPORTER={os.environ['OTEL_TRACES_EXPORTER']} needs the OpenTelemetry "
            "SDK: pip install 'flowdeco-otel[sdk]' (or unset OTEL_TRACES_EXPORTER)") from None
    found = {ep.name: ep for ep in entry_points(group="opentelemetry_traces_exporter")}
    attrs: dict[str, str] = {}
    if not os.environ.get("OTEL_SERVICE_NAME") and \
            "service.name=" not in os.environ.get("OTEL_RESOURCE_ATTRIBUTES", ""):
        attrs["service.name"] = "flowdeco"
    provider = TracerProvider(resource=Resource.create(attrs))
    for name in names:
        ep = found.get(name)
        if ep is None:
            known = ", ".join(sorted(found)) or "none installed"
            raise UsageError(
                f"OTEL_TRACES_EXPORTER: no span exporter named {name!r} is installed "
                f"(known: {known}); install its package, e.g. opentelemetry-exporter-otlp")
        provider.add_span_processor(BatchSpanProcessor(ep.load()()))
    return provider
