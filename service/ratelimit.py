"""A per-client-address rate limit on the OAuth2 endpoints and the routes declared `per_address_limit`
(sign-up), token buckets in process.

The per-username sign-in throttle (in MongoDB, shared by every process) stops password guessing; this
limit stops one address from flooding the sign-in endpoints with cheap requests at all. It lives in
process memory on purpose: it is a first line that costs no database round trip, each process enforces
it for its share of the traffic, and the reverse proxy (ops/nginx.conf.template `limit_req`) holds the same line
for the whole deployment.

The per-token limit on the API (`API_RATE_LIMIT`, `API_RATE_BURST`) is the same kind of bucket, keyed by
the caller's access token, for the same reasons: no database round trip per request, per process.

Every response of a limited request says where its caller stands, in the structured-field syntax of
draft-ietf-httpapi-ratelimit-headers-10 (section 3 and 4): `RateLimit-Policy: "api";q=200;w=4` (q: the
burst, w: seconds an empty bucket takes to refill) and `RateLimit: "api";r=199;t=1` (r: requests left now,
t: seconds until the bucket is full again).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from ipaddress import IPv4Network, IPv6Network, ip_address
from typing import Any, NamedTuple, TypeVar

from aiohttp import web
from aiohttp.typedefs import Handler

from service.config import SETTINGS
from service.errors import problem_response
from service.responses import json_response

H = TypeVar("H", bound=Callable[..., Any])

OAUTH_PREFIX = "/auth/oauth2/"
# An address over its budget waits this long for its 429. A client that retries at once (a flood of
# connections in a loop) is slowed to a few requests a second per connection, instead of taking the
# event loop from everyone else; a polite client that honours Retry-After never notices.
TARPIT_SECONDS = 0.25


class Spent(NamedTuple):
    """What one request's spending left: `wait` 0.0 when allowed, else the seconds until a token is
    available; `remaining` whole tokens left; `reset` whole seconds until the bucket is full again."""

    wait: float
    remaining: int
    reset: int


class TokenBuckets:
    """`rate` requests a second per key, with bursts of up to `burst`; at most `max_keys` remembered
    (the least recently seen key is forgotten first, so memory stays bounded under spoofed addresses).
    `name` is the policy's name in the RateLimit headers."""

    def __init__(self, rate: float, burst: int, max_keys: int = 100_000, *, name: str = "oauth") -> None:
        self.rate = rate
        self.burst = float(burst)
        self.max_keys = max_keys
        self.name = name
        self.policy = f'"{name}";q={burst};w={max(1, math.ceil(burst / rate))}'
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, key: str) -> float:
        """Spend one token: 0.0 when allowed, else the seconds until one is available."""
        return self.spend(key).wait

    def spend(self, key: str) -> Spent:
        """Spend one token, and say what is left (for the RateLimit header)."""
        now = time.monotonic()
        tokens, last = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        wait = 0.0
        if tokens >= 1:
            tokens -= 1
        else:
            wait = (1 - tokens) / self.rate
        self._buckets[key] = (tokens, now)
        if len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return Spent(wait, math.floor(tokens), math.ceil((self.burst - tokens) / self.rate))


def _trusted(address: str, proxies: tuple[IPv4Network | IPv6Network, ...]) -> bool:
    try:
        parsed = ip_address(address)
    except ValueError:
        return False
    return any(parsed in network for network in proxies)


def client_address(request: web.BaseRequest, proxies: tuple[IPv4Network | IPv6Network, ...]) -> str:
    """The caller's address: the peer, unless the peer is a trusted proxy; then the nearest address in
    `X-Forwarded-For` that is not a trusted proxy (what a client writes there itself is ignored)."""
    peer = request.remote or "-"
    if not proxies or not _trusted(peer, proxies):
        return peer
    forwarded = [part.strip() for value in request.headers.getall("X-Forwarded-For", ()) for part in value.split(",")]
    forwarded = [address for address in forwarded if address]
    for address in reversed(forwarded):
        if not _trusted(address, proxies):
            return address
    return forwarded[0] if forwarded else peer


def per_address_limit(handler: H) -> H:
    """Put an anonymous route that does costly work (sign-up hashes a password) under the per-address
    budget of the OAuth2 endpoints; its refusals are problem details."""
    handler.__rate_limited__ = True  # type: ignore[attr-defined]
    return handler


@web.middleware
async def oauth_rate_limit_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """429 with Retry-After once an address exceeds its budget (after the tarpit): `slow_down` in RFC 6749
    shape on the OAuth2 endpoints, problem details on the API routes declared `per_address_limit`."""
    oauth = request.path.startswith(OAUTH_PREFIX)
    if not oauth and not getattr(request.match_info.handler, "__rate_limited__", False):
        return await handler(request)
    settings = request.config_dict[SETTINGS]
    limiter = request.config_dict[RATE_LIMITER]
    wait = _spend(request, limiter, client_address(request, settings.trusted_proxies))
    if wait:
        await asyncio.sleep(TARPIT_SECONDS)
        detail = "Too many requests from your address; slow down."
        headers = {"Retry-After": str(math.ceil(wait)), "Cache-Control": "no-store"}
        if not oauth:
            return problem_response(429, detail, headers=headers)
        return json_response({"error": "slow_down", "error_description": detail}, status=429, headers=headers)
    return await handler(request)


def over_api_budget(request: web.Request, limiter: TokenBuckets, token_id: str) -> web.Response | None:
    """Spend from the per-token budget of the API (`API_RATE_LIMITER`): a 429 problem with Retry-After
    once it is spent, else None. The bearer middleware calls it as soon as it knows the caller, so only
    authenticated requests spend it, keyed by the access token, and the hot path has no layer of its own
    for it; anonymous requests are the per-address limit's (`per_address_limit`)."""
    wait = _spend(request, limiter, token_id)
    if not wait:
        return None
    headers = {"Retry-After": str(math.ceil(wait)), "Cache-Control": "no-store"}
    return problem_response(429, "Too many requests with this access token; slow down.", headers=headers)


def _spend(request: web.Request, limiter: TokenBuckets, key: str) -> float:
    """Spend from `limiter` for `key`, noting the result for the response's RateLimit headers."""
    spent = limiter.spend(key)
    noted = request.get(RATE_LIMITS)
    if noted is None:
        request[RATE_LIMITS] = noted = []
    noted.append((limiter, spent))
    return spent.wait


async def advertise_rate_limits(request: web.BaseRequest, response: web.StreamResponse) -> None:
    """`on_response_prepare`: the RateLimit-Policy and RateLimit headers (draft-ietf-httpapi-ratelimit-
    headers-10 sections 3 and 4, Lists of Items) of every budget the request spent from, on whatever
    answers it (a success, a problem from any layer, the 429 itself)."""
    noted = request.get(RATE_LIMITS)
    if not noted:
        return
    headers = response.headers
    if len(noted) == 1:  # the usual case, on every API request: no list to join
        [(limiter, spent)] = noted
        headers["RateLimit-Policy"] = limiter.policy
        headers["RateLimit"] = f'"{limiter.name}";r={spent.remaining};t={spent.reset}'
        return
    headers["RateLimit-Policy"] = ", ".join(limiter.policy for limiter, _ in noted)
    headers["RateLimit"] = ", ".join(
        f'"{limiter.name}";r={spent.remaining};t={spent.reset}' for limiter, spent in noted
    )


RATE_LIMITER: web.AppKey[TokenBuckets] = web.AppKey("service.rate_limiter", TokenBuckets)
API_RATE_LIMITER: web.AppKey[TokenBuckets] = web.AppKey("service.api_rate_limiter", TokenBuckets)
RATE_LIMITS: web.RequestKey[list[tuple[TokenBuckets, Spent]]] = web.RequestKey("service.rate_limits", list)
