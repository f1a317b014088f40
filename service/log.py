"""Logging: one line per event, text or JSON, each carrying the request id of the request it belongs to."""

from __future__ import annotations

import contextvars
import logging
import sys
from datetime import UTC, datetime

import orjson
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "request_id": getattr(record, "request_id", "-"),
            "message": record.getMessage(),
        }
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


TEXT_FORMAT = "%(asctime)s %(levelname)s %(process)d %(name)s [%(request_id)s] %(message)s"


def configure(level: str, fmt: str) -> None:
    """Send all logs to stderr in the chosen format; called once by the CLI."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


class AccessLogger(AbstractAccessLogger):
    """One line per request with its id, status and duration; never the query string (it may hold secrets)."""

    @property
    def enabled(self) -> bool:
        """aiohttp skips `log` entirely when access lines would be filtered out anyway."""
        return self.logger.isEnabledFor(logging.INFO)

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        request_id = response.headers.get("X-Request-ID", "-")
        fields = {
            "method": request.method,
            "path": request.rel_url.path,
            "status": response.status,
            "duration_ms": round(time * 1000, 2),
            "remote": request.remote,
            "bytes": response.body_length,
        }
        token = request_id_var.set(request_id)
        try:
            self.logger.info(
                "%s %s %s %.2fms",
                fields["method"],
                fields["path"],
                fields["status"],
                fields["duration_ms"],
                extra={"fields": fields},
            )
        finally:
            request_id_var.reset(token)
