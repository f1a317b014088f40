"""Logs: JSON lines with the request id; access log lines never carry query strings or secrets."""

from __future__ import annotations

import asyncio
import io
import logging
import sys

import orjson
from aiohttp.test_utils import TestClient, TestServer

from service import log
from service.app import create_app


async def test_json_access_log_carries_request_id_and_no_query(settings, mongo_client) -> None:
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


async def _serve_with_text_log(settings, mongo_client, logger_names):
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(log.RequestIdFilter())
    handler.setFormatter(log.TextFormatter(log.TEXT_FORMAT))
    loggers = [logging.getLogger(name) for name in logger_names]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
    server = TestServer(create_app(settings, mongo_client=mongo_client))
    await server.start_server(access_log_class=log.AccessLogger)

    def detach() -> None:
        for logger in loggers:
            logger.removeHandler(handler)

    return stream, server, detach


async def test_a_path_with_a_newline_cannot_forge_a_log_line(settings, mongo_client) -> None:
    stream, server, detach = await _serve_with_text_log(settings, mongo_client, ["aiohttp.access"])
    forged = "2026-01-01 00:00:00,000 INFO 1 aiohttp.access [-] POST /auth/oauth2/token 200"
    try:
        async with TestClient(server) as client:
            await client.get(f"/x%0a{forged.replace(' ', '%20')}%0d%1b[31m")
    finally:
        detach()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1, lines
    assert "/x\\n2026-01-01" in lines[0]
    assert "\\r\\x1b[31m" in lines[0]


def test_a_traceback_keeps_its_lines_but_none_looks_like_a_record() -> None:
    try:
        raise ValueError("boom\n2026-01-01 00:00:00,000 INFO forged")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed %s", ("a\nb",), sys.exc_info())
    record.request_id = "-"
    lines = log.TextFormatter(log.TEXT_FORMAT).format(record).splitlines()
    assert lines[0].endswith("failed a\\nb")
    assert all(line.startswith("    ") for line in lines[1:])
    assert any("forged" in line for line in lines[1:])


async def test_a_malformed_request_logs_one_warning_and_nothing_it_sent(settings, mongo_client) -> None:
    stream, server, detach = await _serve_with_text_log(settings, mongo_client, ["aiohttp.server"])
    secret_request = (
        b"POST /auth/oauth2/token HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer SECRET-TOKEN-123\n"
        b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 25\r\n\r\npassword=hunter2-password"
    )
    try:
        reader, writer = await asyncio.open_connection(server.host, server.port)
        writer.write(secret_request)
        await writer.drain()
        answer = await reader.read()
        writer.close()
    finally:
        detach()
        await server.close()
    assert answer.split(b"\r\n")[0].endswith(b" 400 Bad Request")
    assert b"aiohttp" not in answer.split(b"\r\n\r\n")[0]  # no versions in the Server header either
    logged = stream.getvalue()
    assert len(logged.splitlines()) == 1, logged
    assert " WARNING " in logged
    assert "malformed HTTP request" in logged
    for leaked in ("SECRET-TOKEN", "hunter2", "Authorization", "Traceback"):
        assert leaked not in logged
