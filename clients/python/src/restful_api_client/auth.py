"""Getting and keeping tokens: the strategies, the token store hook, and the one place that renews.

Refresh tokens rotate (RFC 6749 section 10.4, RFC 9700 section 4.14.2): presenting one twice may revoke
the whole family. `TokenManager` renews under one `asyncio.Lock`, and a task that saw its token refused
renews only if nobody replaced that token meanwhile, so any number of concurrent tasks sharing a client
spend each refresh token exactly once.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import inspect
import secrets
import time
import webbrowser
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Protocol, cast
from urllib.parse import quote

from aiohttp import web
from yarl import URL

from restful_api_client.dpop import DPoPKey
from restful_api_client.errors import OAuthError
from restful_api_client.models import DeviceAuthorization
from restful_api_client.transport import Response, Transport, retry_after


@dataclass
class TokenSet:
    """What the token endpoint gave (RFC 6749 section 5.1); `expires_at` in seconds since the epoch."""

    access_token: str
    token_type: str = "Bearer"  # noqa: S105 (a scheme name, not a secret)
    expires_at: float | None = None
    refresh_token: str | None = None
    scope: str = ""
    id_token: str | None = None

    @classmethod
    def from_response(cls, body: Mapping[str, Any]) -> TokenSet:
        expires_in = body.get("expires_in")
        return cls(
            access_token=str(body["access_token"]),
            token_type=str(body.get("token_type", "Bearer")),
            expires_at=time.time() + float(expires_in) if isinstance(expires_in, int | float) else None,
            refresh_token=body.get("refresh_token"),
            scope=str(body.get("scope", "")),
            id_token=body.get("id_token"),
        )

    def expiring(self, margin: float) -> bool:
        return self.expires_at is not None and self.expires_at - margin <= time.time()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form for stores (`TokenSet(**data)` reads it back)."""
        return asdict(self)


class TokenStore(Protocol):
    """Where tokens live between runs (a keyring, a file with mode 0600, a database). `save(None)` forgets."""

    async def load(self) -> TokenSet | None: ...

    async def save(self, tokens: TokenSet | None) -> None: ...


class MemoryTokenStore:
    """The default store: this process only."""

    def __init__(self, tokens: TokenSet | None = None) -> None:
        self.tokens = tokens

    async def load(self) -> TokenSet | None:
        return self.tokens

    async def save(self, tokens: TokenSet | None) -> None:
        self.tokens = tokens


class OAuth:
    """The authorization server's endpoints (RFC 8414 metadata, read once) and the token request."""

    def __init__(self, transport: Transport, base_url: URL, dpop: DPoPKey | None = None) -> None:
        self.transport = transport
        self.base_url = base_url
        self.dpop = dpop
        self._metadata: dict[str, Any] | None = None
        self._metadata_lock = asyncio.Lock()

    async def metadata(self) -> dict[str, Any]:
        async with self._metadata_lock:
            if self._metadata is None:
                url = self.base_url.join(URL(".well-known/oauth-authorization-server"))
                response = await self.transport.send("GET", url)
                if response.status != 200 or not isinstance(response.body, dict):
                    raise OAuthError("server_error", f"no authorization server metadata ({response.status})")
                self._metadata = response.body
            return self._metadata

    async def endpoint(self, name: str) -> URL:
        value = (await self.metadata()).get(name)
        if not isinstance(value, str):
            raise OAuthError("server_error", f"the authorization server has no {name}")
        return URL(value)

    async def token(self, form: Mapping[str, str], client_id: str | None, client_secret: str | None) -> TokenSet:
        """A token request; confidential clients authenticate with HTTP Basic (RFC 6749 section 2.3.1,
        which form-encodes the id and secret first), public ones name themselves in the form."""
        headers: dict[str, str] = {"Accept": "application/json"}
        body = dict(form)
        if client_secret is not None and client_id is not None:
            pair = f"{quote(client_id, safe='')}:{quote(client_secret, safe='')}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        elif client_id is not None:
            body["client_id"] = client_id
        url = await self.endpoint("token_endpoint")
        response = await self.send_proved("POST", url, headers, body)
        if response.status != 200:
            raise oauth_error(response)
        if not isinstance(response.body, dict) or "access_token" not in response.body:
            raise OAuthError("server_error", "the token response holds no access_token", response.status)
        return TokenSet.from_response(response.body)

    async def send_proved(self, method: str, url: URL, headers: Mapping[str, str], form: Mapping[str, str]) -> Response:
        """A form POST to the authorization server, with a DPoP proof when the client has a key; a
        `use_dpop_nonce` answer teaches the nonce and the request goes once more (RFC 9449 section 8)."""
        dpop = self.dpop
        if dpop is None:
            return await self.transport.send(method, url, headers=headers, form=form)

        def proof() -> dict[str, str]:
            return {"DPoP": dpop.proof(method, url)}

        response = await self.transport.send(method, url, headers=headers, form=form, fresh_headers=proof)
        learnt = dpop.learn(url, response.headers)
        if response.status == 400 and learnt and _error_code(response) == "use_dpop_nonce":
            response = await self.transport.send(method, url, headers=headers, form=form, fresh_headers=proof)
            dpop.learn(url, response.headers)
        return response


def _error_code(response: Response) -> str | None:
    return str(response.body.get("error")) if isinstance(response.body, dict) else None


def oauth_error(response: Response) -> OAuthError:
    body = response.body if isinstance(response.body, dict) else {}
    return OAuthError(
        str(body.get("error") or "server_error"),
        str(body.get("error_description") or response.reason),
        response.status,
        retry_after(response.headers),
    )


class AuthStrategy:
    """How the client gets its first tokens. `client_id`/`client_secret` also authenticate refreshes."""

    client_id: str | None = None
    client_secret: str | None = None
    #: whether `obtain` can run again unattended when refreshing is impossible (no refresh token, or refused)
    reobtainable: bool = True

    async def obtain(self, oauth: OAuth) -> TokenSet:
        raise NotImplementedError


def _scope(form: dict[str, str], scope: str | None) -> dict[str, str]:
    if scope:
        form["scope"] = scope
    return form


class ClientCredentials(AuthStrategy):
    """A confidential client acting as its owner (RFC 6749 section 4.4); no refresh token, so the SDK asks
    again when the access token expires."""

    def __init__(self, client_id: str, client_secret: str, scope: str | None = None) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.scope = scope

    async def obtain(self, oauth: OAuth) -> TokenSet:
        form = _scope({"grant_type": "client_credentials"}, self.scope)
        return await oauth.token(form, self.client_id, self.client_secret)


class Password(AuthStrategy):
    """The resource owner password grant (RFC 6749 section 4.3), for clients registered for it (the
    fixtures' public `documentation` client is). The password is kept to sign in again when the refresh
    token is refused (revoked or expired)."""

    def __init__(
        self,
        username: str,
        password: str,
        client_id: str = "documentation",
        client_secret: str | None = None,
        scope: str | None = None,
    ) -> None:
        self.username = username
        self.password = password
        self.client_id = client_id
        self.client_secret = client_secret
        self.scope = scope

    async def obtain(self, oauth: OAuth) -> TokenSet:
        form = _scope({"grant_type": "password", "username": self.username, "password": self.password}, self.scope)
        return await oauth.token(form, self.client_id, self.client_secret)


class StaticToken(AuthStrategy):
    """A token obtained elsewhere. With `refresh_token` and `client_id` the SDK renews it (rotation
    included); without, a refused token surfaces as `Unauthorized`."""

    reobtainable = False

    def __init__(
        self,
        access_token: str,
        *,
        refresh_token: str | None = None,
        client_id: str | None = None,
        client_secret: str | None = None,
        expires_at: float | None = None,
    ) -> None:
        self.tokens = TokenSet(access_token, refresh_token=refresh_token, expires_at=expires_at)
        self.client_id = client_id
        self.client_secret = client_secret

    async def obtain(self, oauth: OAuth) -> TokenSet:
        return self.tokens


def pkce_pair() -> tuple[str, str]:
    """A PKCE verifier and its S256 challenge (RFC 7636 section 4.1-4.2)."""
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


async def open_in_browser(url: str) -> None:
    """The default opener: the system browser, from a thread (`webbrowser.open` may block)."""
    await asyncio.to_thread(webbrowser.open, url)


_DONE_PAGE = "<!doctype html><title>Signed in</title><p>Signed in. You can close this window.</p>"
_FAILED_PAGE = "<!doctype html><title>Sign-in failed</title><p>Sign-in failed. You can close this window.</p>"


class AuthorizationCodePKCE(AuthStrategy):
    """Authorization code + PKCE for command-line tools (RFC 8252 section 7.3, RFC 7636): a one-shot
    redirect listener on the loopback interface, the browser sent to the authorization endpoint, the
    code exchanged for tokens. `open_browser` replaces the opener (tests drive the page themselves).

    `port=0` takes a free port; a server that matches redirect URIs exactly, ports included, needs the
    client registered with `http://127.0.0.1:<port><path>` and that port given here."""

    reobtainable = False  # needs a person: a refused refresh token surfaces instead of opening a browser

    def __init__(
        self,
        client_id: str,
        scope: str | None = None,
        *,
        client_secret: str | None = None,
        port: int = 0,
        path: str = "/callback",
        open_browser: Callable[[str], object] = open_in_browser,
        timeout: float = 300.0,
    ) -> None:
        self.client_id = self.public_id = client_id
        self.client_secret = client_secret
        self.scope = scope
        self.port = port
        self.path = path
        self.open_browser = open_browser
        self.timeout = timeout

    async def obtain(self, oauth: OAuth) -> TokenSet:
        verifier, challenge = pkce_pair()
        state = secrets.token_urlsafe(24)
        metadata = await oauth.metadata()
        outcome: asyncio.Future[dict[str, str]] = asyncio.get_running_loop().create_future()

        async def callback(request: web.Request) -> web.Response:
            params = dict(request.query)
            if params.get("state") != state:  # not our request (CSRF, RFC 6749 section 10.12): ignore it
                return web.Response(status=400, text=_FAILED_PAGE, content_type="text/html")
            if not outcome.done():
                outcome.set_result(params)
            page = _DONE_PAGE if "code" in params else _FAILED_PAGE
            return web.Response(text=page, content_type="text/html", headers={"Cache-Control": "no-store"})

        app = web.Application()
        app.router.add_get(self.path, callback)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, "127.0.0.1", self.port)
            await site.start()
            port = runner.addresses[0][1]
            redirect_uri = f"http://127.0.0.1:{port}{self.path}"
            query: dict[str, str] = {
                "response_type": "code",
                "client_id": self.public_id,
                "redirect_uri": redirect_uri,
                "state": state,
                "code_challenge": challenge,
                "code_challenge_method": "S256",
            }
            url = URL(str(metadata["authorization_endpoint"])).with_query(_scope(query, self.scope))
            opened = self.open_browser(str(url))
            if inspect.isawaitable(opened):
                await opened
            params = await asyncio.wait_for(outcome, self.timeout)
        finally:
            await runner.cleanup()
        issuer = params.get("iss")
        if issuer is not None and issuer != metadata.get("issuer"):  # RFC 9207: a mix-up attack
            raise OAuthError("invalid_request", "the authorization response names another issuer")
        if "code" not in params:
            raise OAuthError(params.get("error", "server_error"), params.get("error_description", ""))
        form = {
            "grant_type": "authorization_code",
            "code": params["code"],
            "redirect_uri": redirect_uri,
            "code_verifier": verifier,
        }
        return await oauth.token(form, self.client_id, self.client_secret)


DEVICE_CODE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"


async def _print_instructions(authorization: DeviceAuthorization) -> None:
    where = authorization.get("verification_uri_complete") or authorization["verification_uri"]
    print(f"To sign in, open {where} and enter the code {authorization['user_code']}")


class DeviceCode(AuthStrategy):
    """The device authorization grant (RFC 8628) for devices without a browser or a keyboard: ask for
    a user code, show it (`on_code`, default: print the URL and code), poll the token endpoint every
    `interval` seconds (5 unless the server says; `slow_down` adds 5, section 3.5) until the person
    approves, denies or the code expires. `sleep` is a hook for tests."""

    reobtainable = False  # needs a person

    def __init__(
        self,
        client_id: str,
        scope: str | None = None,
        *,
        client_secret: str | None = None,
        on_code: Callable[[DeviceAuthorization], object] = _print_instructions,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.client_id = self.public_id = client_id
        self.client_secret = client_secret
        self.scope = scope
        self.on_code = on_code
        self.sleep = sleep

    async def obtain(self, oauth: OAuth) -> TokenSet:
        endpoint = await oauth.endpoint("device_authorization_endpoint")
        form = _scope({"client_id": self.public_id}, self.scope)
        response = await oauth.send_proved("POST", endpoint, {"Accept": "application/json"}, form)
        if response.status != 200 or not isinstance(response.body, dict):
            raise oauth_error(response)
        authorization = cast(DeviceAuthorization, response.body)
        shown = self.on_code(authorization)
        if inspect.isawaitable(shown):
            await shown
        interval = float(authorization.get("interval", 5))
        deadline = time.monotonic() + float(authorization["expires_in"])
        poll = {"grant_type": DEVICE_CODE_GRANT, "device_code": authorization["device_code"]}
        while time.monotonic() < deadline:
            await self.sleep(interval)
            try:
                return await oauth.token(poll, self.public_id, self.client_secret)
            except OAuthError as error:
                if error.error == "slow_down":
                    interval += 5
                elif error.error != "authorization_pending":
                    raise
        raise OAuthError("expired_token", "the user code expired before anyone approved it")


class TokenManager:
    """The client's tokens: loaded from the store, obtained, refreshed (rotating), saved back."""

    def __init__(self, strategy: AuthStrategy, oauth: OAuth, store: TokenStore, margin: float = 30.0) -> None:
        self.strategy = strategy
        self.oauth = oauth
        self.store = store
        self.margin = margin
        self.refreshes = 0  # refresh-token grants sent: tests and metrics read it
        self._tokens: TokenSet | None = None
        self._loaded = False
        self._lock = asyncio.Lock()

    @property
    def tokens(self) -> TokenSet | None:
        return self._tokens

    async def current(self) -> TokenSet:
        """A token to send: the held one unless it is (about to be) expired."""
        tokens = self._tokens
        if tokens is not None and not tokens.expiring(self.margin):
            return tokens
        async with self._lock:
            if not self._loaded:
                self._loaded = True
                self._tokens = await self.store.load()
            tokens = self._tokens
            if tokens is None:
                return await self._keep(await self.strategy.obtain(self.oauth))
            if tokens.expiring(self.margin):
                return await self._renew(tokens)
            return tokens

    async def refused(self, used: TokenSet) -> TokenSet | None:
        """The API refused `used` (401): renew it, unless another task already did (then its result).
        None when nothing can be done unattended."""
        async with self._lock:
            if self._tokens is not None and self._tokens is not used:
                return self._tokens
            if used.refresh_token is None and not self.strategy.reobtainable:
                return None  # a bare token refused: the caller gets the API's 401
            return await self._renew(used)

    async def _renew(self, tokens: TokenSet) -> TokenSet:
        if tokens.refresh_token is not None:
            form = {"grant_type": "refresh_token", "refresh_token": tokens.refresh_token}
            self.refreshes += 1
            try:
                fresh = await self.oauth.token(form, self.strategy.client_id, self.strategy.client_secret)
            except OAuthError as error:
                if error.error != "invalid_grant" or not self.strategy.reobtainable:
                    await self._forget_if_dead(error)
                    raise
            else:
                if fresh.refresh_token is None:  # the server may keep the old one (RFC 6749 section 6)
                    fresh.refresh_token = tokens.refresh_token
                return await self._keep(fresh)
        elif not self.strategy.reobtainable:
            raise OAuthError("invalid_grant", "the token was refused and there is no refresh token", 401)
        return await self._keep(await self.strategy.obtain(self.oauth))

    async def _forget_if_dead(self, error: OAuthError) -> None:
        if error.error == "invalid_grant":
            self._tokens = None
            await self.store.save(None)

    async def _keep(self, tokens: TokenSet) -> TokenSet:
        self._tokens = tokens
        await self.store.save(tokens)
        return tokens
