"""The token endpoint: client authentication and the grants (password, client credentials, refresh
with rotation, authorization code with PKCE).

authlib's server classes are synchronous and would block on MongoDB, so these grant handlers are our
own async functions; they use authlib's RFC error classes and PKCE helper. A grant is a function of
(context, client, params) registered in GRANTS. One module (a little over 300 lines) because the
grants share client authentication, scope parsing and token issue, and nothing else uses them.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import unquote, urlsplit

from authlib.oauth2.base import OAuth2Error
from authlib.oauth2.rfc6749 import errors as oauth
from authlib.oauth2.rfc7636 import create_s256_code_challenge

from service.audit import trail as audit
from service.auth import dpop, oidc, principals, repository
from service.auth.repository import ClientDocument, CodeDocument, TokenDocument
from service.auth.signing import KEYRING
from service.context import Context
from service.crypto import hash_secret, new_token, secret_matches
from service.db import utcnow
from service.errors import TooManyRequests
from service.passwords import Overloaded
from service.scopes import SCOPES
from service.users import mfa
from service.users import repository as users_repository
from service.users.repository import UserDocument
from service.users.schemas import USERNAME_MAX
from service.users.signin import check_password, user_by_username

PKCE_VALUE = re.compile(r"[A-Za-z0-9._~-]{43,128}")  # RFC 7636 4.1 and 4.2: verifiers and challenges; fullmatch
SECRET_PARAMETERS = frozenset({"password", "client_secret", "code", "refresh_token", "code_verifier", "device_code"})
QUERY_PARAMETERS = frozenset({"grant_type", "client_id", "scope"})
# What RFC 6749, 7009, 7636, 7662 and OpenID Connect define at the token, revocation, introspection and
# authorization endpoints, plus the sign-in form's own fields: the only parameters read anywhere.
DEFINED_PARAMETERS = frozenset(
    {
        *SECRET_PARAMETERS,
        *QUERY_PARAMETERS,
        *("username", "redirect_uri", "token", "token_type_hint", "response_type", "response_mode", "state"),
        *("code_challenge", "code_challenge_method", "nonce", "prompt", "max_age", "id_token_hint", "login_hint"),
        *("display", "ui_locales", "acr_values", "claims", "request", "request_uri", "csrf_token", "action"),
        *("signin_token", "otp"),  # the sign-in page's second step (a pending sign-in and its code)
        "step",  # the consent screen's form
        *("post_logout_redirect_uri", "logout_hint"),  # RP-Initiated Logout 1.0
        "user_code",  # the device page (RFC 8628)
        "dpop_jkt",  # RFC 9449 10: the DPoP key an authorization code is bound to
        "resource",  # RFC 8707 resource indicators (may repeat)
    }
)


# --- request parsing and client authentication -----------------------------------------------


def single_values(pairs: Iterable[tuple[str, str]]) -> tuple[dict[str, str], frozenset[str]]:
    """The defined parameters among `pairs` (first value of each) and the names sent more than once.
    Unknown parameters are ignored, also when repeated (RFC 6749 3.1)."""
    params: dict[str, str] = {}
    repeated: set[str] = set()
    for name, value in pairs:
        if name not in DEFINED_PARAMETERS:
            continue
        if name == "resource":  # RFC 8707 2: the one that may repeat; its values, space-separated
            value = value if value and " " not in value else "\x00"  # (no URI has a space: kept invalid)
            params[name] = f"{params[name]} {value}" if name in params else value
        elif name in params:
            repeated.add(name)
        else:
            params[name] = value
    return params, frozenset(repeated)


# --- resource indicators (RFC 8707) --------------------------------------------------------------


class InvalidTargetError(OAuth2Error):  # type: ignore[misc]  # authlib is untyped
    """RFC 8707 2: a resource that is not an absolute URI, has a fragment, is unknown, or was not granted."""

    error = "invalid_target"


API_PATH = "/api/v1"


def api_identifier(issuer: str) -> str:
    """The API's resource identifier (RFC 8707), the audience of the tokens it accepts."""
    return f"{issuer}{API_PATH}"


def audience(ctx: Context, params: Mapping[str, str], granted: Iterable[str] | None = None) -> list[str]:
    """The resources a token is for: those asked (`resource`), else those granted before (a code's, the
    refreshed token's), else the API. Asking for one not granted before is invalid_target."""
    api = api_identifier(ctx.issuer)
    raw = params.get("resource")
    if raw is None:
        return list(granted or [api])
    asked: list[str] = []
    for value in raw.split(" "):
        parts = urlsplit(value)
        if not parts.scheme or not parts.netloc or "#" in value or not value.isprintable():
            raise InvalidTargetError("resource must be an absolute URI without a fragment (RFC 8707).")
        if value != api:
            raise InvalidTargetError(f"Unknown resource; this server protects {api}.")
        if value not in asked:
            asked.append(value)
    if granted is not None and not set(asked) <= set(granted):
        raise InvalidTargetError("The resource was not granted to this code or token.")
    return asked


def merge_parameters(form: Iterable[tuple[str, str]], query: Iterable[tuple[str, str]]) -> dict[str, str]:
    """One value per defined parameter; secrets only from the body; a defined parameter sent twice (or in
    both places) is invalid_request (RFC 6749 3.1, 3.2)."""
    query_params, repeated = single_values(query)
    body_params, body_repeated = single_values(form)
    for name in query_params:
        if name in SECRET_PARAMETERS:
            raise oauth.InvalidRequestError(f"'{name}' must not be sent in the query string.")
    query_params = {name: value for name, value in query_params.items() if name in QUERY_PARAMETERS}
    repeated = (repeated & QUERY_PARAMETERS) | body_repeated | (query_params.keys() & body_params.keys())
    if repeated:
        raise oauth.InvalidRequestError(f"'{sorted(repeated)[0]}' is repeated.")
    return {**query_params, **body_params}


def parse_basic(header: str | None) -> tuple[str, str] | None:
    """client_id and secret from HTTP Basic (form-urlencoded inside, RFC 6749 2.3.1)."""
    if not header or not header.lower().startswith("basic "):
        return None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise _invalid_client("Malformed Basic credentials.") from None
    client_id, sep, secret = decoded.partition(":")
    if not sep:
        raise _invalid_client("Malformed Basic credentials.")
    return unquote(client_id), unquote(secret)


def _invalid_client(description: str) -> oauth.InvalidClientError:
    return oauth.InvalidClientError(description, status_code=401)


async def authenticate_client(
    ctx: Context, params: dict[str, str], authorization: str | None, *, confidential_only: bool = False
) -> ClientDocument:
    """The calling client, by Basic, form secret or (public clients) client_id alone."""
    basic = parse_basic(authorization)
    if basic and ("client_secret" in params or params.get("client_id", basic[0]) != basic[0]):
        raise oauth.InvalidRequestError("Use one client authentication method.")
    client_id, secret = basic if basic else (params.get("client_id"), params.get("client_secret"))
    if not client_id:
        raise _invalid_client("Client authentication is required.")
    client = await principals.client(ctx.cache, ctx.db, client_id)
    if client is None:
        raise _invalid_client("Unknown client or wrong secret.")
    if client["client_type"] == "confidential":
        if secret is None or not _secret_fits(client, secret):
            raise _invalid_client("Unknown client or wrong secret.")
        registered = client.get("token_endpoint_auth_method")
        if registered is not None and registered != ("client_secret_basic" if basic else "client_secret_post"):
            raise _invalid_client(f"This client authenticates with {registered}.")
    elif secret:
        raise _invalid_client("Public clients have no secret.")
    if confidential_only and client["client_type"] != "confidential":
        raise _invalid_client("Only confidential clients may use this endpoint.")
    return client


def _secret_fits(client: ClientDocument, secret: str) -> bool:
    """The current secret, or the previous one while its overlap after a rotation lasts. Both digests are
    compared (in constant time) whichever matches, so the timing does not tell which one did."""
    stored, previous = client["secret_hash"], client.get("previous_secret_hash")
    current_fits = stored is not None and secret_matches(secret, stored)
    previous_fits = previous is not None and secret_matches(secret, previous)
    expires = client.get("previous_secret_expires")
    return current_fits or (previous_fits and expires is not None and expires > utcnow())


def parse_scope(requested: str | None, allowed: list[str], default: list[str]) -> list[str]:
    """Space-separated scopes; unknown or not allowed for the client is invalid_scope."""
    if requested is None or not requested.strip():
        return sorted(set(default))
    scopes = set(requested.split())
    if not scopes <= set(SCOPES) or not scopes <= set(allowed):
        raise oauth.InvalidScopeError("The requested scope is unknown or not allowed for this client.")
    return sorted(scopes)


# --- token issue ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Issue:
    """How a token comes to be: by which grant, with a refresh token or not, and what it carries over
    from the code or the token it replaces (its family, its code, when the user signed in, the nonce)."""

    grant: str
    refresh: bool = True
    family_id: str | None = None
    code_id: str | None = None
    auth_time: int | None = None
    nonce: str | None = None
    amr: tuple[str, ...] = ("pwd",)  # how the user signed in (RFC 8176), carried like auth_time
    sid: str | None = None  # the sign-in session a code came from, carried like auth_time
    audience: tuple[str, ...] = ()  # RFC 8707: the resources the token is for (none given: the API)


async def issue_token(
    ctx: Context, client: ClientDocument, user: Mapping[str, Any], scopes: list[str], issue: Issue
) -> dict[str, Any]:
    """Store a new token (hashes only) and return the RFC 6749 5.1 response; with scope `openid`, an ID
    token too (`auth_time`: when the user last signed in, carried from the code into its refreshes)."""
    grant, refresh, family_id, code_id = issue.grant, issue.refresh, issue.family_id, issue.code_id
    auth_time = issue.auth_time or int(time.time())
    now = utcnow()
    access_token = new_token()
    refresh_token = new_token() if refresh else None
    access_expires = now + timedelta(seconds=ctx.settings.access_token_ttl)
    refresh_expires = now + timedelta(seconds=ctx.settings.refresh_token_ttl) if refresh else None
    document: TokenDocument = {
        "_id": hash_secret(access_token),
        "family_id": family_id or secrets.token_hex(16),
        "code_id": code_id,
        "client_id": client["_id"],
        "user_id": user["_id"],
        "generation": user.get("token_generation", 0),
        "scopes": scopes,
        "access_expires": access_expires,
        "refresh_expires": refresh_expires,
        "expires_at": max(access_expires, refresh_expires or access_expires),
        "revoked": False,
        "rotated": False,
        "created": now,
        "auth_time": auth_time,
        "amr": list(issue.amr),
    }
    if issue.sid:
        document["sid"] = issue.sid
    document["aud"] = list(issue.audience) or [api_identifier(ctx.issuer)]
    proof = PROOF.get()
    if proof is not None:  # RFC 9449 5: bound to the proof's key; a public client's refresh token too
        document["jkt"] = proof.jkt
        if refresh_token and client["client_type"] != "confidential":
            document["refresh_jkt"] = proof.jkt
    if refresh_token:
        document["refresh_hash"] = hash_secret(refresh_token)
    await repository.insert_token(ctx.db, document)
    audit.record(
        "token.issued", actor_id=user["_id"], subject_id=user["_id"], client_id=client["_id"], grant_type=grant
    )
    response: dict[str, Any] = {
        # The RFC 6750 token type, not a secret (bandit B105 false positive).
        "token_type": "Bearer" if proof is None else "DPoP",  # nosec B105
        "access_token": access_token,
        "expires_in": ctx.settings.access_token_ttl,
        "scope": " ".join(scopes),
    }
    if refresh_token:
        response["refresh_token"] = refresh_token
    if "openid" in scopes and grant != "client_credentials":
        sign_in = oidc.SignIn(client["_id"], user, scopes, auth_time, issue.nonce, issue.amr, issue.sid)
        response["id_token"] = await oidc.id_token(
            ctx[KEYRING], ctx.issuer, sign_in, access_token, ctx.settings.access_token_ttl
        )
    return response


def required(params: dict[str, str], *names: str) -> list[str]:
    missing = [name for name in names if not params.get(name)]
    if missing:
        raise oauth.InvalidRequestError(f"Missing parameter: {', '.join(missing)}.")
    return [params[name] for name in names]


class UnverifiedEmail(oauth.InvalidGrantError):  # type: ignore[misc]  # authlib is untyped
    """REQUIRE_VERIFIED_EMAIL: a right password, but the account's address is not verified yet."""

    def __init__(self) -> None:
        super().__init__(
            "This account's email address is not verified yet: open the link mailed to it, "
            "or ask for a new one at /auth/email/resend."
        )


async def authenticate_user(ctx: Context, username: str, password: str, client_id: str) -> UserDocument:
    """The active user with this username and password; a deactivated account gets the same answer,
    at the same cost, as a wrong password (it must not confirm the password)."""
    if len(username) > USERNAME_MAX:  # no account has such a name: no lookup, no throttle write, no hash
        audit.record("signin.failure", client_id=client_id, username=f"{username[:USERNAME_MAX]}...")
        raise oauth.InvalidGrantError("Invalid username or password.")
    user: UserDocument | None = None

    async def active_users_hash() -> str | None:
        nonlocal user
        user = await user_by_username(ctx, username)
        return user["password_hash"] if user and user.get("is_active") else None

    try:
        verified = await check_password(ctx, username, password, active_users_hash)
    except TooManyRequests:
        audit.record("signin.throttled", client_id=client_id, username=username)
        raise
    if not verified or not user:
        subject = user["_id"] if user else None
        audit.record("signin.failure", subject_id=subject, client_id=client_id, username=username)
        raise oauth.InvalidGrantError("Invalid username or password.")
    if ctx.settings.require_verified_email and not user.get("email_verified", False):  # only after a right password
        audit.record("signin.failure", subject_id=user["_id"], client_id=client_id, reason="email_not_verified")
        raise UnverifiedEmail()
    audit.record("signin.success", actor_id=user["_id"], subject_id=user["_id"], client_id=client_id)
    if ctx.hasher.needs_rehash(user["password_hash"]):
        await users_repository.set_password_hash(ctx.db, user["_id"], await ctx.hasher.hash(password))
    return user


SECOND_FACTOR_REQUIRED = "this account signs in with a second factor: use the authorization-code flow"


async def password_grant(ctx: Context, client: ClientDocument, params: dict[str, str]) -> dict[str, Any]:
    username, password = required(params, "username", "password")
    scopes = parse_scope(params.get("scope"), client["allowed_scopes"], client["default_scopes"])
    user = await authenticate_user(ctx, username, password, client["_id"])
    if mfa.is_active(user):  # (after the password: who has a second factor is no one else's business)
        raise oauth.InvalidGrantError(SECOND_FACTOR_REQUIRED)
    return await issue_token(ctx, client, user, scopes, Issue("password", audience=tuple(audience(ctx, params))))


async def client_credentials_grant(ctx: Context, client: ClientDocument, params: dict[str, str]) -> dict[str, Any]:
    if client["client_type"] != "confidential":
        raise oauth.UnauthorizedClientError("Only confidential clients may use client_credentials.")
    scopes = parse_scope(params.get("scope"), client["allowed_scopes"], client["default_scopes"])
    resources = tuple(audience(ctx, params))
    owner = await users_repository.get_user(ctx.db, client["user_id"])
    if owner is None or not owner.get("is_active"):
        raise oauth.InvalidGrantError("The client's owner is deactivated.")
    return await issue_token(ctx, client, owner, scopes, Issue("client_credentials", refresh=False, audience=resources))


REFRESH_REPLAYED = "The refresh token was already used; its whole family is revoked."
CODE_REPLAYED = "The authorization code was already used; tokens issued from it are revoked."


async def _revoke_replayed(ctx: Context, issued: dict[str, Any], message: str) -> oauth.InvalidGrantError:
    """Revoke the tokens a replayed refresh token or code issued (`issued` selects them); the error to raise."""
    await principals.revoke_tokens(ctx.cache, ctx.db, issued)
    return oauth.InvalidGrantError(message)


async def refresh_token_grant(ctx: Context, client: ClientDocument, params: dict[str, str]) -> dict[str, Any]:
    """Rotate: the old refresh token is retired atomically; replaying a retired one revokes its family,
    unless its own client presents it again within REFRESH_REUSE_GRACE seconds of the rotation.

    Writes decide whether this request won or replays (never an earlier read), and the winner looks
    again once its new token is stored: a replay racing the rotation leaves nothing working."""
    (refresh_token,) = required(params, "refresh_token")
    digest = hash_secret(refresh_token)
    old = await repository.find_token(ctx.db, refresh_digest=digest)
    if old is None or old["client_id"] != client["_id"]:
        raise oauth.InvalidGrantError("The refresh token is invalid.")
    _check_refresh_binding(old)  # before the claim: a request without the key must not burn the token
    scopes = parse_scope(params.get("scope"), old["scopes"], old["scopes"])  # checked before the claim burns it
    resources = tuple(audience(ctx, params, old.get("aud")))
    family = {"family_id": old["family_id"]}
    claimed = await repository.claim_refresh_token(ctx.db, digest)
    in_grace = claimed is None and await _reused_within_grace(ctx, digest)
    if in_grace:  # rotated out a moment ago (a lost response, another tab): a fresh pair, same family
        audit.record("token.refresh_grace_reuse", subject_id=old["user_id"], client_id=client["_id"])
        claimed = old
    elif claimed is None:
        if await repository.note_replay(ctx.db, refresh_digest=digest):
            audit.record("token.refresh_reuse_detected", subject_id=old["user_id"], client_id=client["_id"])
            raise await _revoke_replayed(ctx, family, REFRESH_REPLAYED)
        raise oauth.InvalidGrantError("The refresh token is expired or revoked.")
    principals.forget_tokens(ctx.cache, {"_id": claimed["_id"]})  # its access token is retired with it
    response = await issue_token(
        ctx,
        client,
        await _still_current_user(ctx, claimed),
        scopes,
        Issue(
            "refresh_token",
            family_id=claimed["family_id"],
            code_id=claimed.get("code_id"),
            auth_time=claimed.get("auth_time"),
            amr=tuple(claimed.get("amr", ("pwd",))),
            sid=claimed.get("sid"),
            audience=resources,
        ),
    )
    # Looked at again once the new token is stored: a replay (or, in the grace window, a revocation of
    # the family) that raced this request leaves nothing working.
    if await repository.replayed_since_claimed(ctx.db, refresh_digest=digest) or (
        in_grace and await repository.is_void(ctx.db, digest)
    ):
        raise await _revoke_replayed(ctx, family, REFRESH_REPLAYED)
    return response


async def _reused_within_grace(ctx: Context, digest: str) -> bool:
    grace = ctx.settings.refresh_reuse_grace
    return bool(grace) and await repository.reuse_within_grace(ctx.db, digest, timedelta(seconds=grace))


def _check_refresh_binding(old: TokenDocument) -> None:
    """RFC 9449 5: a public client's bound refresh token needs a proof with its key; a family that is
    DPoP-bound stays so (a confidential client may refresh with another key, never without one)."""
    proof = PROOF.get()
    bound = old.get("refresh_jkt")
    if bound is not None and (proof is None or not secrets.compare_digest(proof.jkt, bound)):
        raise dpop.ProofError("This refresh token is bound to a DPoP key: send a proof signed with it.")
    if proof is None and old.get("jkt") is not None:
        raise dpop.ProofError("These tokens are DPoP-bound: send a DPoP proof to refresh them.")


async def _still_current_user(ctx: Context, grant: TokenDocument | CodeDocument) -> UserDocument:
    """The user a refresh token or code speaks for, if it still may (active, tokens not revoked since)."""
    user = await users_repository.get_user(ctx.db, grant["user_id"])
    if user is None or not repository.is_current(grant, user):
        raise oauth.InvalidGrantError("The account is deactivated or its tokens were revoked.")
    return user


async def authorization_code_grant(ctx: Context, client: ClientDocument, params: dict[str, str]) -> dict[str, Any]:
    """Exchange a single-use code; PKCE S256 checked; a replayed code revokes what it issued (its
    refreshes too: they carry its code_id).

    Everything is checked before the code is consumed, so another client (or a request with the wrong
    redirect URI or verifier) cannot burn the rightful client's code; only an exchange that succeeds,
    or a replay by the same client, uses it. As with refresh tokens, writes decide who won, and the
    winner looks again once its token is stored."""
    code, redirect_uri = required(params, "code", "redirect_uri")
    digest = hash_secret(code)
    stored = await repository.find_code(ctx.db, digest)
    if stored is None or stored["client_id"] != client["_id"]:
        raise oauth.InvalidGrantError("The authorization code is invalid.")
    if stored["expires_at"] <= utcnow():
        raise oauth.InvalidGrantError("The authorization code has expired.")
    if stored["redirect_uri"] != redirect_uri:
        raise oauth.InvalidGrantError("redirect_uri does not match the authorization request.")
    challenge = stored.get("code_challenge")
    verifier = params.get("code_verifier")
    if challenge:
        if verifier is not None and not PKCE_VALUE.fullmatch(verifier):
            raise oauth.InvalidRequestError("code_verifier must be 43 to 128 of A-Z a-z 0-9 . _ ~ - (RFC 7636).")
        if not verifier or not secrets.compare_digest(create_s256_code_challenge(verifier), challenge):
            raise oauth.InvalidGrantError("code_verifier does not match the code challenge.")
    elif verifier:
        raise oauth.InvalidRequestError("No code challenge was sent with the authorization request.")
    resources = tuple(audience(ctx, params, stored.get("resources")))
    bound, proof = stored.get("dpop_jkt"), PROOF.get()
    if bound is not None and (proof is None or not secrets.compare_digest(proof.jkt, bound)):
        raise dpop.ProofError("This code is bound to a DPoP key (dpop_jkt): send a proof signed with it.")
    issued = {"code_id": digest}
    if not await repository.claim_code(ctx.db, digest):
        if not await repository.note_replay(ctx.db, code_digest=digest):
            raise oauth.InvalidGrantError("The authorization code is invalid.")  # removed since it was read
        audit.record("token.code_reuse_detected", subject_id=stored["user_id"], client_id=client["_id"])
        raise await _revoke_replayed(ctx, issued, CODE_REPLAYED)
    response = await issue_token(
        ctx,
        client,
        await _still_current_user(ctx, stored),
        stored["scopes"],
        Issue(
            "authorization_code",
            code_id=digest,
            auth_time=stored.get("auth_time"),
            nonce=stored.get("nonce"),
            amr=tuple(stored.get("amr", ("pwd",))),
            sid=stored.get("sid"),
            audience=resources,
        ),
    )
    if await repository.replayed_since_claimed(ctx.db, code_digest=digest):
        raise await _revoke_replayed(ctx, issued, CODE_REPLAYED)
    return response


Grant = Callable[[Context, ClientDocument, dict[str, str]], Awaitable[dict[str, Any]]]
# service/auth/device.py adds the RFC 8628 device_code grant when it is imported (it builds on this module).
GRANTS: dict[str, Grant] = {
    "password": password_grant,
    "client_credentials": client_credentials_grant,
    "refresh_token": refresh_token_grant,
    "authorization_code": authorization_code_grant,
}


# The checked DPoP proof of the token request being served, if any (set by `token` around the grant):
# `issue_token` binds what it issues to its key, the refresh grant checks a bound refresh token against
# it. A context variable, so that every grant (the device grant too) keeps its (ctx, client, params) shape.
PROOF: ContextVar[dpop.Proof | None] = ContextVar("dpop_proof", default=None)


async def token(
    ctx: Context, params: dict[str, str], authorization: str | None, proof: dpop.Proof | None = None
) -> dict[str, Any]:
    """The token endpoint; `proof`: the request's checked DPoP proof (RFC 9449 5), which binds the tokens."""
    (grant_type,) = required(params, "grant_type")
    grant = GRANTS.get(grant_type)
    if grant is None:
        raise oauth.UnsupportedGrantTypeError(f"Unsupported grant_type '{grant_type}'.")
    if grant is password_grant and ctx.hasher.overloaded():
        raise Overloaded()  # before any database work: under a storm, a refusal must cost next to nothing
    client = await authenticate_client(ctx, params, authorization)
    if grant_type not in client["grant_types"]:  # RFC 6749 5.2; RFC 9700 2.4 for the password grant
        raise oauth.UnauthorizedClientError(f"This client is not registered for the {grant_type} grant.")
    if proof is None and client.get("dpop_bound_access_tokens"):  # RFC 9449 5.2
        raise dpop.ProofError("This client is registered with dpop_bound_access_tokens: send a DPoP proof.")
    bound = PROOF.set(proof)
    try:
        return await grant(ctx, client, params)
    finally:
        PROOF.reset(bound)
