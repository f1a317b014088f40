"""The authorization endpoint (RFC 6749 4.1 with PKCE, RFC 7636): checking the request, issuing the code."""

from __future__ import annotations

import enum
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import urlsplit

from authlib.oauth2.rfc6749 import errors as oauth
from authlib.oidc.core import errors as oidc_errors
from marshmallow import ValidationError

from service.auth import consent, oidc, repository, sessions
from service.auth.grants import PKCE_VALUE, InvalidTargetError, audience, parse_scope
from service.auth.repository import ClientDocument
from service.auth.schemas import validate_redirect_uri
from service.auth.signing import KEYRING
from service.context import Context
from service.crypto import hash_secret, new_token
from service.db import utcnow
from service.users.repository import UserDocument

SignedIn = tuple[sessions.SessionDocument, UserDocument]

# --- authorization endpoint (RFC 6749 4.1 + RFC 7636) -----------------------------------------

PROMPTS = frozenset({"none", "login", "consent", "select_account"})
MAX_AGE = re.compile(r"[0-9]{1,9}")
JKT = re.compile(r"[A-Za-z0-9_-]{43}")  # an RFC 7638 SHA-256 thumbprint, base64url; fullmatch
HINT_MAX = 4096  # an ID token of ours is about 1 KB; a longer "hint" is not one (and fits in a URL)


class AuthorizePageError(Exception):
    """The client or redirect URI cannot be trusted: show an error page, never redirect (RFC 6749 4.1.2.1)."""


# The netloc of an http loopback URI, exactly: the host as registered, then nothing but an optional port.
LOOPBACK_NETLOC = re.compile(r"(?P<host>127\.0\.0\.1|\[::1\]|localhost)(?::[0-9]{1,5})?")


def _registered(uri: str, registered: list[str]) -> bool:
    """Whether `uri` is one of the client's redirect URIs: the same string, except for the port of an http
    loopback URI (RFC 8252 7.3, RFC 9700 2.1), which a native app takes from the OS at the time of the
    request. Scheme, host, path and query still match exactly; the code is bound to the URI as sent."""
    if uri in registered:
        return True
    asked = _loopback_without_port(uri)
    return asked is not None and any(_loopback_without_port(value) == asked for value in registered)


def _loopback_without_port(uri: str) -> tuple[str, str, str, str] | None:
    """(host, path, query, fragment) of a plain http URI on a loopback host, else None (also for
    anything that is not a URI: this runs on what a request sends)."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return None
    netloc = LOOPBACK_NETLOC.fullmatch(parts.netloc)
    if parts.scheme != "http" or netloc is None:
        return None
    return netloc["host"], parts.path, parts.query, parts.fragment


@dataclass(frozen=True, slots=True)
class AuthorizationRequest:
    client: ClientDocument
    redirect_uri: str
    scopes: list[str]
    state: str | None
    code_challenge: str | None
    nonce: str | None = None
    prompts: frozenset[str] = frozenset()  # OpenID Connect `prompt`: none, login, consent, select_account
    max_age: int | None = None  # seconds since the last password sign-in beyond which it is asked again
    id_token_hint: str | None = None  # the ID token of who the client expects (checked in `next_step`)
    resources: tuple[str, ...] = ()  # RFC 8707: the resources asked for (none: the API)
    dpop_jkt: str | None = None  # RFC 9449 10: the DPoP key's thumbprint the code will be bound to

    def as_form(self) -> dict[str, str]:
        """The request as hidden form fields, re-validated when the form comes back."""
        fields = {
            "response_type": "code",
            "client_id": self.client["_id"],
            "redirect_uri": self.redirect_uri,
            "scope": " ".join(self.scopes),
        }
        if self.state is not None:
            fields["state"] = self.state
        if self.code_challenge:
            fields.update(code_challenge=self.code_challenge, code_challenge_method="S256")
        if self.nonce:
            fields["nonce"] = self.nonce
        if self.resources:
            fields["resource"] = " ".join(self.resources)  # (one, known resource at most: no space)
        if self.dpop_jkt:
            fields["dpop_jkt"] = self.dpop_jkt
        return fields


async def check_authorization_request(
    ctx: Context, params: Mapping[str, str], repeated: frozenset[str] = frozenset()
) -> AuthorizationRequest:
    """Validate an authorization request; errors after the redirect URI is trusted carry it (and state).
    `repeated` names the defined parameters sent more than once (RFC 6749 3.1: invalid_request)."""
    if repeated & {"client_id", "redirect_uri"}:
        raise AuthorizePageError("client_id and redirect_uri must each be sent once.")
    client = await repository.get_client(ctx.db, params.get("client_id", "")) if params.get("client_id") else None
    if client is None:
        raise AuthorizePageError("Unknown client.")
    redirect_uri = params.get("redirect_uri")
    if redirect_uri is None and len(client["redirect_uris"]) == 1:
        redirect_uri = client["redirect_uris"][0]
    if redirect_uri is None or not _registered(redirect_uri, client["redirect_uris"]):
        raise AuthorizePageError("The redirect URI is not registered for this client.")
    try:  # registered before the rules were tightened: never redirect there
        validate_redirect_uri(redirect_uri)
    except ValidationError:
        raise AuthorizePageError("The registered redirect URI is not allowed; register an https one.") from None
    state = params.get("state")
    where = {"redirect_uri": redirect_uri, "state": state}
    if repeated:
        raise oauth.InvalidRequestError(f"'{sorted(repeated)[0]}' is repeated.", **where)
    if params.get("response_mode", "query") != "query":
        raise oauth.InvalidRequestError("Only response_mode=query is supported.", **where)
    if params.get("response_type") != "code":
        raise oauth.UnsupportedResponseTypeError("Only response_type=code is supported.", **where)
    if "authorization_code" not in client["grant_types"]:  # its code could never be exchanged
        raise oauth.UnauthorizedClientError("This client is not registered for the authorization_code grant.", **where)
    if "request" in params:
        raise oidc_errors.RequestNotSupportedError("Request objects are not supported.", **where)
    if "request_uri" in params:
        raise oidc_errors.RequestURINotSupportedError("request_uri is not supported.", **where)
    prompts = frozenset(params.get("prompt", "").split())
    if not prompts <= PROMPTS:
        raise oauth.InvalidRequestError("prompt must be none, login, consent or select_account.", **where)
    if "none" in prompts and len(prompts) > 1:  # OpenID Connect Core 3.1.2.1
        raise oauth.InvalidRequestError("prompt=none cannot be combined with other values.", **where)
    max_age = params.get("max_age")
    if max_age is not None and not MAX_AGE.fullmatch(max_age):
        raise oauth.InvalidRequestError("max_age must be a number of seconds.", **where)
    hint = params.get("id_token_hint") or None
    if hint is not None and len(hint) > HINT_MAX:
        raise oauth.InvalidRequestError("id_token_hint is too long.", **where)
    try:
        resources = tuple(audience(ctx, params)) if "resource" in params else ()
    except InvalidTargetError as exc:
        raise InvalidTargetError(exc.description, **where) from None
    nonce = params.get("nonce") or None
    if nonce is not None and len(nonce) > 512:
        raise oauth.InvalidRequestError("nonce is too long.", **where)
    try:
        scopes = parse_scope(params.get("scope"), client["allowed_scopes"], client["default_scopes"])
    except oauth.InvalidScopeError as exc:
        raise oauth.InvalidScopeError(exc.description, **where) from None
    challenge = params.get("code_challenge")
    if challenge:
        if params.get("code_challenge_method") != "S256":
            raise oauth.InvalidRequestError("code_challenge_method must be S256.", **where)
        if not PKCE_VALUE.fullmatch(challenge):
            raise oauth.InvalidRequestError("code_challenge is malformed.", **where)
    elif client["client_type"] == "public":
        raise oauth.InvalidRequestError("Public clients must use PKCE (code_challenge with S256).", **where)
    dpop_jkt = params.get("dpop_jkt") or None
    if dpop_jkt is not None and not JKT.fullmatch(dpop_jkt):
        raise oauth.InvalidRequestError("dpop_jkt must be a base64url SHA-256 JWK thumbprint (RFC 9449 10).", **where)
    return AuthorizationRequest(
        client,
        redirect_uri,
        scopes,
        state,
        challenge or None,
        nonce,
        prompts,
        int(max_age) if max_age is not None else None,
        hint,
        resources,
        dpop_jkt,
    )


class Step(enum.Enum):
    """What an authorization request needs before its code."""

    SIGN_IN = "sign_in"
    CONSENT = "consent"
    CODE = "code"


async def next_step(ctx: Context, auth: AuthorizationRequest, signed: SignedIn | None) -> Step:
    """The sign-in form, the consent screen, or nothing (single sign-on) (OpenID Connect Core 3.1.2.3);
    with `prompt=none`, the error that says which was needed (3.1.2.6) instead."""
    where = {"redirect_uri": auth.redirect_uri, "state": auth.state}
    hinted = None
    if auth.id_token_hint is not None:
        claims = await oidc.verified_id_token(ctx[KEYRING], ctx.issuer, auth.id_token_hint)
        if claims is None:
            raise oauth.InvalidRequestError("id_token_hint is not an ID token this server issued.", **where)
        hinted = claims["sub"]
    if signed is None or _must_sign_in(auth, signed, hinted):
        if "none" in auth.prompts:
            raise oidc_errors.LoginRequiredError("The user must sign in.", **where)
        return Step.SIGN_IN
    missing = await consent.missing(ctx, signed[1]["_id"], auth.client, auth.scopes)
    if "consent" in auth.prompts or missing:
        if "none" in auth.prompts:
            raise oidc_errors.ConsentRequiredError("The user has not allowed this client these scopes.", **where)
        return Step.CONSENT
    return Step.CODE


def _must_sign_in(auth: AuthorizationRequest, signed: SignedIn, hinted: str | None) -> bool:
    session, user = signed
    if auth.prompts & {"login", "select_account"}:  # no account chooser: choosing is signing in again
        return True
    if auth.max_age is not None and time.time() - session["auth_time"] > auth.max_age:
        return True
    return hinted is not None and hinted != str(user["_id"])


async def issue_code(ctx: Context, request: AuthorizationRequest, signed: SignedIn) -> str:
    """A single-use, short-lived code bound to client, redirect URI, scopes, user and challenge; stored hashed.
    It carries the session's sign-in (`auth_time`, `amr`, `sid`) into the ID tokens it and its refreshes
    give; the session notes the client (for logout) and the grant is remembered (consent)."""
    session, user = signed
    code = new_token()
    document: repository.CodeDocument = {
        "_id": hash_secret(code),
        "client_id": request.client["_id"],
        "redirect_uri": request.redirect_uri,
        "scopes": request.scopes,
        "user_id": user["_id"],
        "generation": user.get("token_generation", 0),
        "code_challenge": request.code_challenge,
        "nonce": request.nonce,
        "auth_time": session["auth_time"],
        "amr": session["amr"],
        "sid": session["sid"],
        "resources": list(request.resources),
        "expires_at": utcnow() + timedelta(seconds=ctx.settings.auth_code_ttl),
        "used": False,
    }
    if request.dpop_jkt:
        document["dpop_jkt"] = request.dpop_jkt
    await repository.insert_code(ctx.db, document)
    await sessions.signed_in_to(ctx, session, request.client["_id"])
    await consent.remember(ctx, user["_id"], request.client["_id"], request.scopes)
    return code
