"""`async with Client(base_url, auth=...) as api:` — the session, the auth header, errors, paging."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator, Mapping
from types import TracebackType
from typing import Any
from urllib.parse import quote

import aiohttp
from yarl import URL

from restful_api_client.auth import AuthStrategy, MemoryTokenStore, OAuth, TokenManager, TokenSet, TokenStore
from restful_api_client.dpop import DPoPKey
from restful_api_client.errors import ApiError, ClientError, api_error
from restful_api_client.models import IDEMPOTENCY_KEYED, OPERATIONS
from restful_api_client.resources import OAuth2Clients, Teams, Users
from restful_api_client.transport import RateLimit, Response, RetryPolicy, Transport, rate_limits, retry_after

USER_AGENT = "restful-api-client/0.1 (+aiohttp)"

# One link-value of an RFC 8288 `Link` header: `<target>` and its parameters.
_LINK = re.compile(r'<([^>]*)>((?:\s*;\s*[A-Za-z0-9!#$&+.^_`|~-]+\s*(?:=\s*(?:"(?:[^"\\]|\\.)*"|[^;,\s]*))?)*)')
_PARAM = re.compile(r';\s*([A-Za-z0-9!#$&+.^_`|~-]+)\s*(?:=\s*("(?:[^"\\]|\\.)*"|[^;,\s]*))?')


def next_link(response: Response) -> URL | None:
    """The target of `Link: <...>; rel="next"` (RFC 8288; `rel` may list several types), resolved
    against the response's URL (the server sends a path)."""
    for header in response.headers.getall("Link", ()):
        for target, params in _LINK.findall(header):
            for name, value in _PARAM.findall(params):
                if name.lower() == "rel" and "next" in value.strip('"').lower().split():
                    return response.url.join(URL(target))
    return None


class Client:
    """The API's client. Use it as an async context manager (it owns an `aiohttp.ClientSession` unless
    given one); share one instance between tasks: token renewal is serialized inside.

    `auth`: one of the strategies in `restful_api_client.auth` (None: anonymous, e.g. for sign-up);
    `token_store`: where tokens are loaded from and saved to (default: memory);
    `retry`: the `RetryPolicy` for 429/503 and connection failures;
    `dpop`: True (or a `DPoPKey`) asks for DPoP-bound tokens (RFC 9449; needs the `dpop` extra)."""

    def __init__(
        self,
        base_url: str | URL,
        auth: AuthStrategy | None = None,
        *,
        token_store: TokenStore | None = None,
        retry: RetryPolicy | None = None,
        session: aiohttp.ClientSession | None = None,
        timeout: float = 30.0,
        refresh_margin: float = 30.0,
        dpop: bool | DPoPKey = False,
    ) -> None:
        self.base_url = URL(str(base_url).rstrip("/") + "/")
        self._auth = auth
        self._store: TokenStore = token_store or MemoryTokenStore()
        self._policy = retry or RetryPolicy()
        self._given_session = session
        self._session: aiohttp.ClientSession | None = None
        self._timeout = timeout
        self._margin = refresh_margin
        self._transport: Transport | None = None
        self._tokens: TokenManager | None = None
        #: the last `RateLimit` the API sent, by policy name (e.g. "api"): pace before a 429 does it
        self.rate_limits: dict[str, RateLimit] = {}
        self.dpop: DPoPKey | None = DPoPKey() if dpop is True else dpop or None
        self.users = Users(self)
        self.teams = Teams(self)
        self.clients = OAuth2Clients(self)

    async def __aenter__(self) -> Client:
        session = self._given_session or aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self._timeout), headers={"User-Agent": USER_AGENT}
        )
        self._session = session
        self._transport = Transport(session, self._policy)
        oauth = OAuth(self._transport, self.base_url, self.dpop)
        if self._auth is not None:
            self._tokens = TokenManager(self._auth, oauth, self._store, self._margin)
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None and self._given_session is None:
            await self._session.close()
        self._session = None

    @property
    def tokens(self) -> TokenManager:
        """The token manager (`.tokens`, `.refreshes`); only with `auth`."""
        if self._tokens is None:
            raise RuntimeError("this client has no auth (or is not entered: use `async with`)")
        return self._tokens

    def url(self, operation: str, **params: str) -> URL:
        """The URL of an operation by its OpenAPI operationId, path parameters filled in (escaped)."""
        _, template = OPERATIONS[operation]
        path = template.format(**{name: _segment(value) for name, value in params.items()})
        return self.base_url.join(URL(path.lstrip("/"), encoded=True))

    async def call(
        self,
        operation: str,
        path: Mapping[str, str] | None = None,
        *,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
    ) -> Response:
        """An operation by its OpenAPI operationId (method and path from the generated `OPERATIONS`).
        A POST whose operation declares `Idempotency-Key` may be resent after a dropped connection."""
        method, _ = OPERATIONS[operation]
        keyed = method == "POST" and operation in IDEMPOTENCY_KEYED
        url = self.url(operation, **(path or {}))
        return await self.request(
            method, url, json=json, headers=headers, idempotency_key=idempotency_key, resend_on_disconnect=keyed
        )

    async def request(
        self,
        method: str,
        url: URL,
        *,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
        resend_on_disconnect: bool = False,
    ) -> Response:
        """One API call: bearer token, one renewal on 401, retries (transport), errors as `ApiError`s.
        A POST carries an `Idempotency-Key` (a fresh uuid4 unless given), the same on every retry; it is
        resent after a dropped connection only with `resend_on_disconnect` (the server honours the key)
        or the policy's `retry_post_on_disconnect`."""
        if self._transport is None:
            raise RuntimeError("use the client as `async with Client(...) as api:`")
        sent = {"Accept": "application/json", **(headers or {})}
        if method == "POST":
            sent["Idempotency-Key"] = idempotency_key or str(uuid.uuid4())
        unsafe = resend_on_disconnect or (method == "POST" and self._policy.retry_post_on_disconnect)
        used: TokenSet | None = None
        if self._tokens is not None:
            used = await self._tokens.current()
        response = await self._send(method, url, json, sent, unsafe, used)
        if response.status == 401 and self._tokens is not None and used is not None:
            renewed = await self._tokens.refused(used)
            if renewed is not None:
                response = await self._send(method, url, json, sent, unsafe, renewed)
        for limit in rate_limits(response.headers):
            self.rate_limits[limit.policy] = limit
        if response.status >= 400:
            raise api_error(response.status, response.body, response.reason, retry_after(response.headers))
        return response

    async def _send(
        self, method: str, url: URL, json: Any, headers: dict[str, str], unsafe: bool, tokens: TokenSet | None
    ) -> Response:
        """Send with `tokens`: `Bearer`, or `DPoP` with a fresh proof per attempt (RFC 9449 section 7.1),
        sent once more when the server asks for a nonce it has just given."""
        transport = self._transport
        if transport is None:
            raise RuntimeError("the client is closed")
        if tokens is None:
            return await transport.send(method, url, headers=headers, json=json, retry_unsafe=unsafe)
        dpop = self.dpop if tokens.token_type.lower() == "dpop" else None
        scheme = "DPoP" if dpop is not None else "Bearer"
        sent = {**headers, "Authorization": f"{scheme} {tokens.access_token}"}
        if dpop is None:
            return await transport.send(method, url, headers=sent, json=json, retry_unsafe=unsafe)

        def proof() -> dict[str, str]:
            return {"DPoP": dpop.proof(method, url, tokens.access_token)}

        response = await transport.send(method, url, headers=sent, json=json, retry_unsafe=unsafe, fresh_headers=proof)
        learnt = dpop.learn(url, response.headers)
        if response.status == 401 and learnt and "use_dpop_nonce" in response.headers.get("WWW-Authenticate", ""):
            response = await transport.send(
                method, url, headers=sent, json=json, retry_unsafe=unsafe, fresh_headers=proof
            )
            dpop.learn(url, response.headers)
        return response

    async def paginate(self, url: URL, limit: int) -> AsyncIterator[Any]:
        """Every item of a list, page by page along `Link: rel="next"` (key paging: stable under
        concurrent inserts and deletes)."""
        next_url: URL | None = url.update_query(limit=str(limit))
        while next_url is not None:
            response = await self.request("GET", next_url)
            if not isinstance(response.body, list):
                raise ApiError(response.status, "Unexpected response", "a list was expected")
            for item in response.body:
                yield item
            next_url = next_link(response)
            if next_url is not None and next_url.origin() != self.base_url.origin():
                # The token goes wherever the link points: only ever to the API's own origin.
                raise ClientError(f"refusing to follow a next link to another origin: {next_url.origin()}")


def _segment(value: str) -> str:
    """A path parameter as one encoded segment ('/' and '?' never change the path)."""
    return quote(str(value), safe="")
