"""Logging: one line per event, text or JSON, each carrying the request id of the request it belongs to."""

from __future__ import annotations

import contextvars
import logging
import re
import sys
from datetime import UTC, datetime

import orjson
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.http_exceptions import HttpProcessingError

from service.tracing import current_trace_id

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
        trace_id = current_trace_id()
        if trace_id:
            entry["trace_id"] = trace_id
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


TEXT_FORMAT = "%(asctime)s %(levelname)s %(process)d %(name)s [%(request_id)s] %(message)s"
_CONTROL = re.compile("[\x00-\x1f\x7f\x85\u2028\u2029]")


def escape_control(text: str) -> str:
    """Control characters as visible escapes (a newline becomes `\\n`), so logged values cannot forge lines."""
    return _CONTROL.sub(lambda match: match.group().encode("unicode_escape").decode(), text)


class TextFormatter(logging.Formatter):
    """One line per record whatever the values in it: a path or username with a newline in it cannot
    start a fake record. Tracebacks keep their lines, each indented, so none looks like a record."""

    def format(self, record: logging.LogRecord) -> str:
        safe = logging.makeLogRecord(
            {**record.__dict__, "msg": escape_control(record.getMessage()), "args": None, "exc_info": None}
        )
        safe.exc_text = None
        line = super().format(safe)
        if record.exc_info:
            lines = self.formatException(record.exc_info).splitlines()
            line += "".join(f"\n    {escape_control(text)}" for text in lines)
        return line


class MalformedRequestFilter(logging.Filter):
    """aiohttp logs a request it cannot parse at ERROR with a traceback that quotes the raw bytes:
    Authorization headers and form passwords would reach the log, a dozen lines per bad request. Keep
    one WARNING line that names the error, with nothing the client sent."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, HttpProcessingError):
            peer = record.args[0] if isinstance(record.args, tuple) and record.args else "-"
            record.msg, record.args = (
                "malformed HTTP request from %s refused: %s %s",
                (
                    peer,
                    error.code,
                    type(error).__name__,
                ),
            )
            record.exc_info = record.exc_text = None
            if record.levelno > logging.WARNING:
                record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


_MALFORMED_REQUESTS = MalformedRequestFilter()


def harden_aiohttp_logging() -> None:
    """Idempotent; the app factory calls it, since every server that runs the app needs it."""
    logging.getLogger("aiohttp.server").addFilter(_MALFORMED_REQUESTS)


def configure(level: str, fmt: str) -> None:
    """Send all logs to stderr in the chosen format; called once by the CLI."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    harden_aiohttp_logging()


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
