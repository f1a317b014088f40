"""OpenTelemetry traces: off unless the standard variables point at a collector.

Set OTEL_EXPORTER_OTLP_ENDPOINT (or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) and OTEL_SERVICE_NAME; the SDK
reads the rest of the OTEL_* settings itself. Then every request gets a server span named by its
route (W3C `traceparent` from callers honoured), with child spans for each MongoDB command and each
password hash; the request id is a span attribute and JSON log lines carry the trace id. Off, the
API's no-op tracer costs nothing measurable.
"""

from __future__ import annotations

import functools
import os
from typing import Any

from opentelemetry import trace

tracer = trace.get_tracer("service")


def enabled() -> bool:
    return bool(os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


@functools.cache
def configure() -> Any:
    """Install the SDK and the driver's instrumentation once per process; None when tracing is off."""
    if not enabled():
        return None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.instrumentation.aiohttp_server import AioHttpServerInstrumentor
    from opentelemetry.instrumentation.pymongo import PymongoInstrumentor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create())
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    PymongoInstrumentor().instrument(tracer_provider=provider)
    # The aiohttp instrumentor reads its settings (excluded URLs, semantic conventions) when it
    # instruments, and would then patch every web.Application, the /api/v1 sub-app included (two
    # server spans per request). Let it read them, undo the patch, and add its middleware to the root
    # app only (`middlewares()`).
    server = AioHttpServerInstrumentor()
    server.instrument(tracer_provider=provider)
    server.uninstrument()
    return provider


def middlewares() -> list[Any]:
    """The server-span middleware (outermost), when tracing is on."""
    provider = configure()
    if provider is None:
        return []
    from opentelemetry.instrumentation.aiohttp_server import create_aiohttp_middleware

    return [create_aiohttp_middleware(provider)]


def current_trace_id() -> str | None:
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None
