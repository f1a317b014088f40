"""Logs: JSON lines with the request id; access log lines never carry query strings or secrets."""

from __future__ import annotations

import io
import logging

import orjson
from aiohttp.test_utils import TestClient, TestServer

from service import log
from service.app import create_app


async def test_json_access_log_carries_request_id_and_no_query(settings, mongo_client) -> None:  # type: ignore[no-untyped-def]
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(log.RequestIdFilter())
    handler.setFormatter(log.JsonFormatter())
    access = logging.getLogger("aiohttp.access")
    access.addHandler(handler)
    access.setLevel(logging.INFO)
    try:
        server = TestServer(create_app(settings, mongo_client=mongo_client))
        await server.start_server(access_log_class=log.AccessLogger)
        async with TestClient(server) as client:
            await client.get("/healthz?password=hunter2", headers={"X-Request-ID": "req-42"})
    finally:
        access.removeHandler(handler)
    lines = [orjson.loads(line) for line in stream.getvalue().splitlines()]
    entry = next(line for line in lines if line.get("path") == "/healthz")
    assert entry["request_id"] == "req-42"
    assert entry["status"] == 200
    assert entry["method"] == "GET"
    assert "hunter2" not in stream.getvalue()


def test_text_format_includes_request_id() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "hello", None, None)
    token = log.request_id_var.set("abc")
    try:
        log.RequestIdFilter().filter(record)
    finally:
        log.request_id_var.reset(token)
    assert logging.Formatter(log.TEXT_FORMAT).format(record).endswith(f"INFO {record.process} x [abc] hello")
