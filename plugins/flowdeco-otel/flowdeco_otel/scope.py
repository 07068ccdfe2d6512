"""What an attempt carries to its worker: its span's context (``flowdeco_attempt_scope``).

Imported in worker processes and on Dask workers, so it imports only the
OpenTelemetry API.  A :class:`LocalScope` (threads, sync) holds the attempt's
span itself; a :class:`RemoteScope` holds the W3C trace context text
(whatever ``OTEL_PROPAGATORS`` inject, by default ``traceparent``), which
pickles.  Entering either makes the attempt's span the current span, so a
span the task body opens is its child.
"""

from __future__ import annotations

from typing import Any

from opentelemetry import context, propagate, trace


class LocalScope:
    """The attempt's span made current on a thread of this process."""

    __slots__ = ("span", "token")

    def __init__(self, span: trace.Span):
        self.span = span
        self.token: Any = None

    def __enter__(self) -> None:
        self.token = context.attach(trace.set_span_in_context(self.span))

    def __exit__(self, *exc: Any) -> None:
        context.detach(self.token)


class RemoteScope:
    """The attempt's span context, as propagation headers, made current in a worker."""

    __slots__ = ("carrier", "token")

    def __init__(self, carrier: dict[str, str]):
        self.carrier = carrier
        self.token: Any = None

    def __enter__(self) -> None:
        from .sdk import ensure_provider  # a worker process exports its own spans (OTEL_*)
        ensure_provider()
        self.token = context.attach(propagate.extract(self.carrier))

    def __exit__(self, *exc: Any) -> None:
        context.detach(self.token)

    def __reduce__(self) -> Any:
        return (RemoteScope, (self.carrier,))


def remote_scope(span: trace.Span) -> RemoteScope:
    """A :class:`RemoteScope` for ``span`` (on the scheduler thread)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=trace.set_span_in_context(span))
    return RemoteScope(carrier)
