"""OpenTelemetry traces, received by an OTLP/HTTP endpoint in the test and decoded with opentelemetry-proto.

The service runs as its own process (tracing is process-wide), on its embedded database."""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from aiohttp.test_utils import TestServer, unused_port
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.helpers import wait_ready

ROOT = Path(__file__).resolve().parents[1]


async def test_a_request_span_has_the_database_command_as_its_child(tmp_path: Path) -> None:
    spans: list[Any] = []

    async def receive(request: web.Request) -> web.Response:
        export = ExportTraceServiceRequest()
        export.ParseFromString(await request.read())
        spans.extend(
            span for resource in export.resource_spans for scope in resource.scope_spans for span in scope.spans
        )
        return web.Response(status=200)

    collector = web.Application()
    collector.router.add_post("/v1/traces", receive)
    receiver = TestServer(collector, host="127.0.0.1")
    await receiver.start_server()
    port = unused_port()
    env = {
        **{k: v for k, v in os.environ.items() if k != "MONGODB_URL"},
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver.port}",
        "OTEL_SERVICE_NAME": "api-under-test",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "SERVICE_DATA_DIR": str(tmp_path / "db"),
        "PORT": str(port),
        "LOG_FORMAT": "json",
        "ARGON2_TIME_COST": "1",
        "ARGON2_MEMORY_KIB": "64",
    }
    trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
    caller = {"traceparent": f"00-{trace_id}-{parent_id}-01", "X-Request-ID": "traced-request"}
    with (
        (tmp_path / "service.log").open("wb") as log,
        subprocess.Popen(
            [sys.executable, "-m", "service", "serve"], cwd=ROOT, env=env, stdout=log, stderr=log
        ) as service,
    ):
        try:
            base = f"http://127.0.0.1:{port}"
            async with aiohttp.ClientSession() as http:
                await wait_ready(http, base)
                form = {"grant_type": "password", "username": "user", "password": "w", "client_id": "documentation"}
                async with http.post(f"{base}/auth/oauth2/token", data=form, headers=caller) as signed_in:
                    token = (await signed_in.json())["access_token"]
                async with http.get(
                    f"{base}/api/v1/users/me", headers={**caller, "Authorization": f"Bearer {token}"}
                ) as me:
                    assert me.status == 200
            for _ in range(100):
                names = {span.name for span in spans if span.trace_id.hex() == trace_id}
                if {"POST /auth/oauth2/token", "GET /api/v1/users/me"} <= names and len(names) > 3:
                    break
                await asyncio.sleep(0.1)
        finally:
            service.terminate()
            service.wait(timeout=30)
            await receiver.close()
    ours = [span for span in spans if span.trace_id.hex() == trace_id]
    by_name = {span.name: span for span in ours}
    me_span = by_name["GET /api/v1/users/me"]
    assert me_span.parent_span_id.hex() == parent_id  # the caller's traceparent was honoured
    attributes = {a.key: a.value.string_value for a in me_span.attributes}
    assert attributes["http.request.id"] == "traced-request"
    children = [span for span in ours if span.parent_span_id == me_span.span_id]
    assert any("aggregate" in span.name or "find" in span.name for span in children), [s.name for s in children]
    token_span = by_name["POST /auth/oauth2/token"]
    hashes = [span for span in ours if span.name == "password hash" and span.parent_span_id == token_span.span_id]
    assert hashes, [span.name for span in ours]
    lines = [
        orjson.loads(line) for line in (tmp_path / "service.log").read_bytes().splitlines() if line.startswith(b"{")
    ]
    assert any(line.get("trace_id") == trace_id for line in lines), "no log line carries the trace id"
