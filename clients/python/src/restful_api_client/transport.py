"""One HTTP exchange with bounded, jittered retries: `Retry-After` on 429/503, and connection failures.

What is retried (RFC 9110 section 9.2.2 says which methods are idempotent):
- 429 and 503 for every method: the server refused before acting ("nothing half-written"), and a POST
  carries the same `Idempotency-Key` on every attempt;
- 409 with `Retry-After` to a request carrying an `Idempotency-Key`: the first request with that key
  is still running (draft-ietf-httpapi-idempotency-key-header); the retry gets its answer replayed;
- a connection that could not be opened, for every method (nothing was sent);
- a connection that dropped after the request went out (or a timeout), for idempotent methods only,
  and for POST when `RetryPolicy.retry_post_on_disconnect` says the server honours `Idempotency-Key`.
The wait is the server's `Retry-After` (seconds or an HTTP date) when it sends one, else exponential
backoff; either gets up to `jitter` of itself added at random and is capped at `max_wait`. A server asking
for more than `max_wait` is not retried: the error surfaces with its `retry_after`.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from multidict import CIMultiDictProxy
from yarl import URL

from restful_api_client.errors import TransportError

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
RETRY_STATUSES = frozenset({429, 503})


@dataclass(frozen=True)
class RetryPolicy:
    """How hard the client tries. `attempts` counts the first try; `sleep` is a hook for tests."""

    attempts: int = 4
    backoff: float = 0.5
    max_wait: float = 30.0
    jitter: float = 0.1
    retry_post_on_disconnect: bool = False
    sleep: Callable[[float], Awaitable[None]] = field(default=asyncio.sleep, compare=False)

    def delay(self, attempt: int, retry_after: float | None) -> float:
        """The wait before try number `attempt + 1` (attempt counts from 1)."""
        base = retry_after if retry_after is not None else self.backoff * 2 ** (attempt - 1)
        return min(self.max_wait, base + base * self.jitter * random.random())  # noqa: S311 (jitter, not secrecy)


def retry_after(headers: Mapping[str, str]) -> float | None:
    """`Retry-After` in seconds from now (RFC 9110 section 10.2.3: delay-seconds or an HTTP date)."""
    value = headers.get("Retry-After", "").strip()
    if not value:
        return None
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


@dataclass(frozen=True)
class RateLimit:
    """One policy of a `RateLimit` header (draft-ietf-httpapi-ratelimit-headers: `"api";r=137;t=2`):
    `remaining` requests now, `reset` seconds until the budget is whole again, `seen` (time.monotonic())
    when the server said so."""

    policy: str
    remaining: int
    reset: float
    seen: float


_ITEM = re.compile(r'\s*"((?:[^"\\]|\\.)*)"((?:\s*;\s*[a-z*][a-z0-9_.*-]*(?:=[^;,]*)?)*)\s*(?:,|$)')
_PARAMETER = re.compile(r";\s*([a-z*][a-z0-9_.*-]*)(?:=([^;,]*))?")


def rate_limits(headers: Mapping[str, str]) -> list[RateLimit]:
    """The policies of a `RateLimit` header (a structured-field List of sf-string Items with `r` and
    `t`); anything unreadable is skipped, never an error."""
    found: list[RateLimit] = []
    now = time.monotonic()
    for name, params in _ITEM.findall(headers.get("RateLimit", "")):
        values = {key: value.strip() for key, value in _PARAMETER.findall(params)}
        if values.get("r", "").isdigit():
            reset = float(values["t"]) if values.get("t", "").isdigit() else 0.0
            found.append(RateLimit(name, int(values["r"]), reset, now))
    return found


@dataclass
class Response:
    """A finished exchange: the body is decoded JSON (None when empty or not JSON)."""

    status: int
    reason: str
    headers: CIMultiDictProxy[str]
    url: URL
    body: Any
    content_type: str


async def _read(response: aiohttp.ClientResponse) -> Response:
    raw = await response.read()
    body: Any = None
    if raw and response.content_type.endswith("json"):
        body = await response.json(content_type=None)
    return Response(response.status, response.reason or "", response.headers, response.url, body, response.content_type)


class Transport:
    """Sends requests on one `aiohttp.ClientSession` under a `RetryPolicy`."""

    def __init__(self, session: aiohttp.ClientSession, policy: RetryPolicy) -> None:
        self.session = session
        self.policy = policy

    async def send(
        self,
        method: str,
        url: URL,
        *,
        headers: Mapping[str, str] | None = None,
        json: Any = None,
        form: Mapping[str, str] | None = None,
        retry_unsafe: bool = False,
        fresh_headers: Callable[[], Mapping[str, str]] | None = None,
    ) -> Response:
        """The response of the last attempt (any status); `TransportError` when no attempt got one.
        `retry_unsafe`: a dropped connection may be retried for this non-idempotent request too;
        `fresh_headers`: headers made anew for every attempt (a DPoP proof is good for one request)."""
        policy = self.policy
        may_resend = method in IDEMPOTENT or retry_unsafe
        keyed = any(name.lower() == "idempotency-key" for name in headers or {})
        attempt = 0
        while True:
            attempt += 1
            try:
                sent = {**(headers or {}), **(fresh_headers() if fresh_headers is not None else {})}
                async with self.session.request(
                    method, url, headers=sent, json=json, data=form, allow_redirects=False
                ) as raw:
                    response = await _read(raw)
            except aiohttp.ClientConnectorError as error:  # never connected: nothing was sent
                if attempt >= policy.attempts:
                    raise TransportError(f"{method} {url}: {error}") from error
                await policy.sleep(policy.delay(attempt, None))
                continue
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError) as error:
                if not may_resend or attempt >= policy.attempts:
                    raise TransportError(f"{method} {url}: {error!r}") from error
                await policy.sleep(policy.delay(attempt, None))
                continue
            wait = retry_after(response.headers)
            in_flight = response.status == 409 and keyed and wait is not None  # the keyed first try still runs
            if (response.status not in RETRY_STATUSES and not in_flight) or attempt >= policy.attempts:
                return response
            if wait is not None and wait > policy.max_wait:
                return response  # the server asks for longer than the caller allows: surface it
            await policy.sleep(policy.delay(attempt, wait))
