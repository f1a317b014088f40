"""Reading request bodies, guarded: the one path every handler reads a body through.

Whatever a client sends, a body that cannot be read is a `BodyError` with a 4xx status (400 malformed,
408 too slow, 413 too large, 415 not a type or coding we read), never a 500. The API turns it into
problem details, the OAuth2 endpoints into RFC 6749 `invalid_request`, the HTML pages into their error
page. aiohttp's own readers raise a dozen exception types on hostile input (a multipart without a
boundary, a bogus charset, a gzip body that is not gzip), so they are only ever called from here.
"""

from __future__ import annotations

import asyncio
import email.policy
import zlib
from email.parser import BytesParser
from typing import Any
from urllib.parse import parse_qsl

import orjson
from aiohttp import hdrs, web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from service.config import SETTINGS
from service.errors import ApiError

FORM_URLENCODED = "application/x-www-form-urlencoded"
MULTIPART_FORM = "multipart/form-data"
FORM_TYPES = (FORM_URLENCODED, MULTIPART_FORM)
JSON_TYPES = frozenset({"application/json", "application/json-patch+json"})
# Content codings of request bodies we decode (RFC 9110 8.4.1); the server is run with aiohttp's own
# decompression off (app.SERVE_OPTIONS), whose failures happen in its parser, outside the app.
_ZLIB_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
UTF8_CHARSETS = frozenset({None, "utf-8", "utf8", "us-ascii"})  # us-ascii is a subset of UTF-8
MAX_FIELDS = 100  # far above any form this service defines; a bound on parsing work


class BodyError(ApiError):
    """A body that cannot be read; `status` says why (400, 408, 413 or 415)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status


def malformed(detail: str) -> BodyError:
    return BodyError(400, detail)


def _coding(request: web.Request) -> str | None:
    """The body's content coding: None for identity, else a key of _ZLIB_WBITS; 415 for anything else."""
    coding = request.headers.get(hdrs.CONTENT_ENCODING, "").strip().lower()
    if coding in ("", "identity"):
        return None
    if coding not in _ZLIB_WBITS:
        raise BodyError(415, "Content-Encoding must be gzip, deflate or none.")
    return coding


def _decompress(data: bytes, coding: str, limit: int) -> bytes:
    """Decode a gzip or deflate body, at most `limit` bytes of it (a small bomb stays small)."""
    decoder = zlib.decompressobj(_ZLIB_WBITS[coding])
    try:
        plain = decoder.decompress(data, limit + 1)
    except zlib.error:
        raise malformed(f"The body is not valid {coding} data.") from None
    if len(plain) > limit:
        raise BodyError(413, "The request body is too large.")
    if not decoder.eof or decoder.unused_data:
        raise malformed(f"The body is not valid {coding} data.")
    return plain


def _check_charset(request: web.Request) -> None:
    charset = request.charset.lower() if request.charset else None
    if charset not in UTF8_CHARSETS:
        raise malformed("The body must be UTF-8 (charset=utf-8, or no charset).")


async def read_bytes(request: web.Request) -> bytes:
    """The body, decoded from its Content-Encoding: at most MAX_BODY_SIZE, read within BODY_READ_TIMEOUT."""
    coding = _coding(request)
    settings = request.config_dict[SETTINGS]
    try:
        async with asyncio.timeout(settings.body_read_timeout):
            data = await request.read()
    except TimeoutError:
        raise BodyError(408, "The request body arrived too slowly.") from None
    except web.HTTPRequestEntityTooLarge:
        raise BodyError(413, "The request body is too large.") from None
    except (RequestPayloadError, HttpProcessingError):  # broken chunked framing and the like
        raise malformed("The request body is malformed.") from None
    return _decompress(data, coding, settings.max_body_size) if coding else data


async def read_json(request: web.Request) -> Any:
    """The body as JSON: 415 for another media type, 400 for malformed or too deeply nested JSON."""
    if request.content_type not in JSON_TYPES:
        raise BodyError(415, "Send the body as application/json (or application/json-patch+json for PATCH).")
    _check_charset(request)
    raw = await read_bytes(request)
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise malformed("The body is not valid JSON.") from None
    if _json_depth(data, request.config_dict[SETTINGS].max_json_depth):
        raise malformed("The JSON body is nested too deeply.")
    return data


def _json_depth(value: Any, limit: int) -> bool:
    """True when `value` nests deeper than `limit` (iterative, so hostile input cannot blow the stack)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > limit:
                return True
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return False


async def read_form(request: web.Request) -> list[tuple[str, str]]:
    """The fields of a form body (urlencoded or multipart/form-data), in order, repeats kept: text only,
    UTF-8 only, no files, no nesting."""
    if request.content_type == FORM_URLENCODED:
        _check_charset(request)
        return _parse_urlencoded(await read_bytes(request))
    if request.content_type == MULTIPART_FORM:
        _check_charset(request)
        return _parse_multipart(request.headers[hdrs.CONTENT_TYPE], await read_bytes(request))
    raise malformed("Send the parameters as application/x-www-form-urlencoded or multipart/form-data.")


def _parse_urlencoded(raw: bytes) -> list[tuple[str, str]]:
    try:
        return parse_qsl(
            raw.decode("utf-8"), keep_blank_values=True, encoding="utf-8", errors="strict", max_num_fields=MAX_FIELDS
        )
    except UnicodeDecodeError:
        raise malformed("The form is not valid UTF-8.") from None
    except ValueError:
        raise malformed(f"The form has more than {MAX_FIELDS} fields.") from None


def _parse_multipart(content_type: str, raw: bytes) -> list[tuple[str, str]]:
    """multipart/form-data (RFC 7578) parsed by the standard library's MIME parser from the bytes already
    read (so the size and time bounds hold), strictly: any defect, nesting, file or other charset is 400."""
    message = BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1", "replace") + b"\r\n\r\n" + raw
    )
    boundary = message.get_boundary()
    if not boundary or len(boundary) > 70:  # RFC 2046 5.1.1: 1 to 70 characters
        raise malformed("A multipart/form-data body needs a boundary of 1 to 70 characters.")
    if raw.strip() == f"--{boundary}--".encode("latin-1", "replace"):
        return []  # a form with no fields: only the close delimiter (RFC 2046 5.1.1)
    if message.defects or not message.is_multipart():
        raise malformed("The multipart/form-data body is malformed.")
    fields: list[tuple[str, str]] = []
    for part in message.iter_parts():
        if part.is_multipart():
            raise malformed("Nested multipart bodies are not accepted.")
        disposition = part.get("Content-Disposition")
        params = getattr(disposition, "params", {})
        if part.get_content_disposition() != "form-data" or params.get("name") is None:
            raise malformed("Every part of the form needs Content-Disposition: form-data with a name.")
        if "filename" in params:
            raise malformed("File uploads are not accepted here.")
        if (part.get_content_charset() or "utf-8") not in UTF8_CHARSETS or part.defects:
            raise malformed("Every part of the form must be UTF-8 text.")
        payload = part.get_payload(decode=True)
        try:
            fields.append((params["name"], payload.decode("utf-8") if isinstance(payload, bytes) else ""))
        except UnicodeDecodeError:
            raise malformed("Every part of the form must be UTF-8 text.") from None
        if len(fields) > MAX_FIELDS:
            raise malformed(f"The form has more than {MAX_FIELDS} fields.")
    return fields
