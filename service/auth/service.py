"""The OAuth2 server: client authentication, grants, rotation, revocation, introspection, metadata.

authlib's server classes are synchronous and would block on MongoDB, so these grant handlers are our
own async functions; they use authlib's RFC error classes, PKCE helper and metadata model. A grant
is a function of (context, client, params) registered in GRANTS, so the authorization-code grant
slots in next to the others.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, timedelta
from typing import Any
from urllib.parse import unquote

from authlib.oauth2.rfc6749 import errors as oauth
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from authlib.oidc.core import errors as oidc_errors
from bson import ObjectId
from marshmallow import ValidationError

from service import audit
from service.auth import oidc, repository
from service.auth.permissions import may_see_client
from service.auth.schemas import validate_redirect_uri
from service.auth.signin import check_password
from service.auth.signing import KeyRing
from service.config import Settings
from service.crypto import hash_secret, new_token, secret_matches
from service.db import Database, document_id, utcnow
from service.docs import SCOPES
from service.errors import Forbidden, NotFound, PreconditionFailed, TooManyRequests
from service.http import check_version
from service.pagination import Cursors, Page, PageRequest
from service.passwords import Overloaded, PasswordHasher
from service.security import Principal
from service.users import repository as users_repository
from service.users.permissions import is_admin

SECRET_PARAMETERS = frozenset({"password", "client_secret", "code", "refresh_token", "code_verifier"})
QUERY_PARAMETERS = frozenset({"grant_type", "client_id", "scope"})


@dataclass(frozen=True, slots=True)
class Context:
    db: Database
    hasher: PasswordHasher
    settings: Settings
    keyring: KeyRing
    issuer: str


# --- request parsing and client authentication -----------------------------------------------


def merge_parameters(form: Mapping[str, list[str]], query: Mapping[str, list[str]]) -> dict[str, str]:
    """One value per parameter; secrets only from the body; repeats are invalid_request (RFC 6749 3.2)."""
    params: dict[str, str] = {}
    for source, allowed in ((query, QUERY_PARAMETERS), (form, None)):
        for name, values in source.items():
            if allowed is not None and name in SECRET_PARAMETERS:
                raise oauth.InvalidRequestError(f"'{name}' must not be sent in the query string.")
            if allowed is not None and name not in allowed:
                continue
            if len(values) != 1 or name in params:
                raise oauth.InvalidRequestError(f"'{name}' is repeated.")
            params[name] = values[0]
    return params


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
    db: Database, params: dict[str, str], authorization: str | None, *, confidential_only: bool = False
) -> dict[str, Any]:
    """The calling client, by Basic, form secret or (public clients) client_id alone."""
    basic = parse_basic(authorization)
    if basic and ("client_secret" in params or params.get("client_id", basic[0]) != basic[0]):
        raise oauth.InvalidRequestError("Use one client authentication method.")
    client_id, secret = basic if basic else (params.get("client_id"), params.get("client_secret"))
    if not client_id:
        raise _invalid_client("Client authentication is required.")
    client = await repository.get_client(db, client_id)
    if client is None:
        raise _invalid_client("Unknown client or wrong secret.")
    if client["client_type"] == "confidential":
        if secret is None or not secret_matches(secret, client["secret_hash"]):
            raise _invalid_client("Unknown client or wrong secret.")
        registered = client.get("token_endpoint_auth_method")
        if registered is not None and registered != ("client_secret_basic" if basic else "client_secret_post"):
            raise _invalid_client(f"This client authenticates with {registered}.")
    elif secret:
        raise _invalid_client("Public clients have no secret.")
    if confidential_only and client["client_type"] != "confidential":
        raise _invalid_client("Only confidential clients may use this endpoint.")
    return client


def parse_scope(requested: str | None, allowed: list[str], default: list[str]) -> list[str]:
    """Space-separated scopes; unknown or not allowed for the client is invalid_scope."""
    if requested is None or not requested.strip():
        return sorted(set(default))
    scopes = set(requested.split())
    if not scopes <= set(SCOPES) or not scopes <= set(allowed):
        raise oauth.InvalidScopeError("The requested scope is unknown or not allowed for this client.")
    return sorted(scopes)


# --- token issue ------------------------------------------------------------------------------


async def issue_token(
    ctx: Context,
    client: dict[str, Any],
    user: dict[str, Any],
    scopes: list[str],
    *,
    grant: str,
    refresh: bool = True,
    family_id: str | None = None,
    code_id: str | None = None,
    auth_time: int | None = None,
    nonce: str | None = None,
) -> dict[str, Any]:
    """Store a new token (hashes only) and return the RFC 6749 5.1 response; with scope `openid`, an ID
    token too (`auth_time`: when the user last signed in, carried from the code into its refreshes)."""
    auth_time = auth_time or int(time.time())
    now = utcnow()
    access_token = new_token()
    refresh_token = new_token() if refresh else None
    access_expires = now + timedelta(seconds=ctx.settings.access_token_ttl)
    refresh_expires = now + timedelta(seconds=ctx.settings.refresh_token_ttl) if refresh else None
    document = {
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
    }
    if refresh_token:
        document["refresh_hash"] = hash_secret(refresh_token)
    await repository.insert_token(ctx.db, document)
    audit.record(
        "token.issued", actor_id=user["_id"], subject_id=user["_id"], client_id=client["_id"], grant_type=grant
    )
    response: dict[str, Any] = {
        # The RFC 6750 token type, not a secret (bandit B105 false positive).
        "token_type": "Bearer",  # nosec B105
        "access_token": access_token,
        "expires_in": ctx.settings.access_token_ttl,
        "scope": " ".join(scopes),
    }
    if refresh_token:
        response["refresh_token"] = refresh_token
    if "openid" in scopes and grant != "client_credentials":
        response["id_token"] = await oidc.id_token(
            ctx.keyring,
            issuer=ctx.issuer,
            client_id=client["_id"],
            user=user,
            scopes=scopes,
            access_token=access_token,
            auth_time=auth_time,
            lifetime=ctx.settings.access_token_ttl,
            nonce=nonce,
        )
    return response


def _required(params: dict[str, str], *names: str) -> list[str]:
    missing = [name for name in names if not params.get(name)]
    if missing:
        raise oauth.InvalidRequestError(f"Missing parameter: {', '.join(missing)}.")
    return [params[name] for name in names]


async def authenticate_user(ctx: Context, username: str, password: str, client_id: str) -> dict[str, Any]:
    """The active user with this username and password; a deactivated account gets the same answer,
    at the same cost, as a wrong password (it must not confirm the password)."""
    user: dict[str, Any] | None = None

    async def active_users_hash() -> str | None:
        nonlocal user
        user = await users_repository.get_user_by_username(ctx.db, username)
        return user["password_hash"] if user and user.get("is_active") else None

    try:
        verified = await check_password(ctx.db, ctx.hasher, ctx.settings, username, password, active_users_hash)
    except TooManyRequests:
        audit.record("signin.throttled", client_id=client_id, username=username)
        raise
    if not verified or not user:
        subject = user["_id"] if user else None
        audit.record("signin.failure", subject_id=subject, client_id=client_id, username=username)
        raise oauth.InvalidGrantError("Invalid username or password.")
    audit.record("signin.success", actor_id=user["_id"], subject_id=user["_id"], client_id=client_id)
    if ctx.hasher.needs_rehash(user["password_hash"]):
        await users_repository.set_password_hash(ctx.db, user["_id"], await ctx.hasher.hash(password))
    return user


async def password_grant(ctx: Context, client: dict[str, Any], params: dict[str, str]) -> dict[str, Any]:
    username, password = _required(params, "username", "password")
    scopes = parse_scope(params.get("scope"), client["allowed_scopes"], client["default_scopes"])
    user = await authenticate_user(ctx, username, password, client["_id"])
    return await issue_token(ctx, client, user, scopes, grant="password")


async def client_credentials_grant(ctx: Context, client: dict[str, Any], params: dict[str, str]) -> dict[str, Any]:
    if client["client_type"] != "confidential":
        raise oauth.UnauthorizedClientError("Only confidential clients may use client_credentials.")
    scopes = parse_scope(params.get("scope"), client["allowed_scopes"], client["default_scopes"])
    owner = await users_repository.get_user(ctx.db, client["user_id"])
    if owner is None or not owner.get("is_active"):
        raise oauth.InvalidGrantError("The client's owner is deactivated.")
    return await issue_token(ctx, client, owner, scopes, grant="client_credentials", refresh=False)


async def refresh_token_grant(ctx: Context, client: dict[str, Any], params: dict[str, str]) -> dict[str, Any]:
    """Rotate: the old refresh token is retired atomically; replaying a retired one revokes its family."""
    (refresh_token,) = _required(params, "refresh_token")
    digest = hash_secret(refresh_token)
    old = await repository.find_token(ctx.db, refresh_digest=digest)
    if old is None or old["client_id"] != client["_id"]:
        raise oauth.InvalidGrantError("The refresh token is invalid.")
    scopes = parse_scope(params.get("scope"), old["scopes"], old["scopes"])
    claimed = await repository.claim_refresh_token(ctx.db, digest)
    if claimed is None:
        if old.get("rotated"):
            await repository.revoke_tokens(ctx.db, {"family_id": old["family_id"]})
            audit.record("token.refresh_reuse_detected", subject_id=old["user_id"], client_id=client["_id"])
            raise oauth.InvalidGrantError("The refresh token was already used; its whole family is revoked.")
        raise oauth.InvalidGrantError("The refresh token is expired or revoked.")
    user = await users_repository.get_user(ctx.db, claimed["user_id"])
    if user is None or not repository.is_current(claimed, user):
        raise oauth.InvalidGrantError("The account is deactivated or its tokens were revoked.")
    return await issue_token(
        ctx,
        client,
        user,
        scopes,
        grant="refresh_token",
        family_id=claimed["family_id"],
        auth_time=claimed.get("auth_time"),
    )


async def authorization_code_grant(ctx: Context, client: dict[str, Any], params: dict[str, str]) -> dict[str, Any]:
    """Exchange a single-use code; PKCE S256 checked; a replayed code revokes what it issued.

    Everything is checked before the code is consumed, so another client (or a request with the wrong
    redirect URI or verifier) cannot burn the rightful client's code; only an exchange that succeeds,
    or a replay by the same client, uses it."""
    code, redirect_uri = _required(params, "code", "redirect_uri")
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
        if not verifier or not secrets.compare_digest(create_s256_code_challenge(verifier), challenge):
            raise oauth.InvalidGrantError("code_verifier does not match the code challenge.")
    elif verifier:
        raise oauth.InvalidRequestError("No code challenge was sent with the authorization request.")
    if stored.get("used") or not await repository.claim_code(ctx.db, digest):
        await repository.revoke_tokens(ctx.db, {"code_id": digest})
        audit.record("token.code_reuse_detected", subject_id=stored["user_id"], client_id=client["_id"])
        raise oauth.InvalidGrantError("The authorization code was already used; tokens issued from it are revoked.")
    user = await users_repository.get_user(ctx.db, stored["user_id"])
    if user is None or not repository.is_current(stored, user):
        raise oauth.InvalidGrantError("The account is deactivated or its tokens were revoked.")
    return await issue_token(
        ctx,
        client,
        user,
        stored["scopes"],
        grant="authorization_code",
        code_id=digest,
        auth_time=stored.get("auth_time"),
        nonce=stored.get("nonce"),
    )


Grant = Callable[[Context, dict[str, Any], dict[str, str]], Awaitable[dict[str, Any]]]
GRANTS: dict[str, Grant] = {
    "password": password_grant,
    "client_credentials": client_credentials_grant,
    "refresh_token": refresh_token_grant,
    "authorization_code": authorization_code_grant,
}


async def token(ctx: Context, params: dict[str, str], authorization: str | None) -> dict[str, Any]:
    (grant_type,) = _required(params, "grant_type")
    grant = GRANTS.get(grant_type)
    if grant is None:
        raise oauth.UnsupportedGrantTypeError(f"Unsupported grant_type '{grant_type}'.")
    if grant is password_grant and ctx.hasher.overloaded():
        raise Overloaded()  # before any database work: under a storm, a refusal must cost next to nothing
    client = await authenticate_client(ctx.db, params, authorization)
    return await grant(ctx, client, params)


# --- revocation and introspection ------------------------------------------------------------


async def _find_any(db: Database, token_value: str, hint: str | None) -> dict[str, Any] | None:
    digest = hash_secret(token_value)
    order = ("refresh", "access") if hint == "refresh_token" else ("access", "refresh")
    for kind in order:
        found = await repository.find_token(
            db, **({"access_digest": digest} if kind == "access" else {"refresh_digest": digest})
        )
        if found is not None:
            found["_kind"] = kind
            return found
    return None


async def revoke(db: Database, params: dict[str, str], authorization: str | None) -> None:
    """RFC 7009: revoke the client's own token; a refresh token takes its family with it."""
    client = await authenticate_client(db, params, authorization)
    (value,) = _required(params, "token")
    found = await _find_any(db, value, params.get("token_type_hint"))
    if found is None or found["client_id"] != client["_id"]:
        return  # RFC 7009 2.2: unknown tokens are not an error
    if found["_kind"] == "refresh":
        await repository.revoke_tokens(db, {"family_id": found["family_id"]})
    else:
        await repository.revoke_tokens(db, {"_id": found["_id"]})
    audit.record("token.revoked", subject_id=found["user_id"], client_id=client["_id"], token_kind=found["_kind"])


async def introspect(db: Database, params: dict[str, str], authorization: str | None, issuer: str) -> dict[str, Any]:
    """RFC 7662 for confidential clients, about their own tokens only."""
    client = await authenticate_client(db, params, authorization, confidential_only=True)
    (value,) = _required(params, "token")
    found = await _find_any(db, value, params.get("token_type_hint"))
    if found is None or found["client_id"] != client["_id"] or found["revoked"]:
        return {"active": False}
    expires = found["access_expires"] if found["_kind"] == "access" else found["refresh_expires"]
    if expires <= utcnow():
        return {"active": False}
    user = await users_repository.get_user(db, found["user_id"])
    if user is None or not repository.is_current(found, user):
        return {"active": False}
    return {
        "active": True,
        "scope": " ".join(found["scopes"]),
        "client_id": found["client_id"],
        "username": user["username"],
        "token_type": "Bearer" if found["_kind"] == "access" else "refresh_token",
        "exp": int(expires.timestamp()),
        "iat": int(found["created"].replace(tzinfo=found["created"].tzinfo or UTC).timestamp()),
        "sub": str(user["_id"]),
        "iss": issuer,
    }


def metadata(issuer: str) -> dict[str, Any]:
    """RFC 8414 authorization server metadata."""
    auth_methods = ["client_secret_basic", "client_secret_post", "none"]
    return {
        "issuer": issuer,
        "authorization_endpoint": f"{issuer}/auth/oauth2/authorize",
        "token_endpoint": f"{issuer}/auth/oauth2/token",
        "revocation_endpoint": f"{issuer}/auth/oauth2/revoke",
        "introspection_endpoint": f"{issuer}/auth/oauth2/introspect",
        "scopes_supported": list(SCOPES),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": list(GRANTS),
        "token_endpoint_auth_methods_supported": auth_methods,
        "revocation_endpoint_auth_methods_supported": auth_methods,
        "introspection_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "code_challenge_methods_supported": ["S256"],
        "service_documentation": f"{issuer}/api/v1/",
    }


# --- OAuth2 clients (the /api/v1/auth/oauth2_clients resource) --------------------------------


def new_client_document(client_id: str, data: dict[str, Any], secret: str | None, owner_id: ObjectId) -> dict[str, Any]:
    now = utcnow()
    return {
        "_id": client_id,
        "client_type": data["client_type"],
        "token_endpoint_auth_method": data.get("token_endpoint_auth_method"),  # None: Basic or form
        "secret_hash": hash_secret(secret) if secret else None,
        "redirect_uris": data["redirect_uris"],
        "default_scopes": data["default_scopes"],
        "allowed_scopes": data["allowed_scopes"],
        "user_id": owner_id,
        "created": now,
        "updated": now,
        "version": 1,
    }


async def create_client(db: Database, owner_id: ObjectId, data: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """Register a client; the secret of a confidential client is returned once and stored hashed."""
    secret = new_token(36) if data["client_type"] == "confidential" else None
    document = new_client_document(new_token(24), data, secret, owner_id)
    client = await repository.insert_client(db, document)
    audit.record("client.created", actor_id=owner_id, subject_id=owner_id, client_id=client["_id"])
    return client, secret


async def list_clients(
    db: Database, caller: Principal, user_id: str | None, request: PageRequest, cursors: Cursors
) -> Page:
    owner = caller.user_id
    if user_id is not None and user_id != str(caller.user_id):
        if not is_admin(caller.user):
            raise Forbidden("Only administrators may list another user's clients.")
        owner = document_id(user_id)
        if owner is None:
            return Page([], None, 0)
    return await repository.list_clients(db, owner, request, cursors)


async def get_visible_client(db: Database, caller: Principal, client_id: str) -> dict[str, Any]:
    client = await repository.get_client(db, client_id)
    if client is None or not may_see_client(caller.user, client):
        raise NotFound("No such OAuth2 client.")
    return client


async def delete_client(db: Database, caller: Principal, client_id: str, expected_version: int | None) -> None:
    client = await get_visible_client(db, caller, client_id)
    check_version(expected_version, client)
    deleted = await repository.delete_client(db, client["_id"], expected_version)
    if deleted:
        audit.record("client.deleted", actor_id=caller.user_id, subject_id=client["user_id"], client_id=client["_id"])
    if not deleted and expected_version is not None:  # changed or gone between the read and the delete
        raise PreconditionFailed("The OAuth2 client changed since you read it.")


# --- authorization endpoint (RFC 6749 4.1 + RFC 7636) -----------------------------------------

_CHALLENGE = re.compile(r"^[A-Za-z0-9._~-]{43,128}$")


class AuthorizePageError(Exception):
    """The client or redirect URI cannot be trusted: show an error page, never redirect (RFC 6749 4.1.2.1)."""


@dataclass(frozen=True, slots=True)
class AuthorizationRequest:
    client: dict[str, Any]
    redirect_uri: str
    scopes: list[str]
    state: str | None
    code_challenge: str | None
    nonce: str | None = None

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
        return fields


async def check_authorization_request(db: Database, params: Mapping[str, str]) -> AuthorizationRequest:
    """Validate an authorization request; errors after the redirect URI is trusted carry it (and state)."""
    client = await repository.get_client(db, params.get("client_id", "")) if params.get("client_id") else None
    if client is None:
        raise AuthorizePageError("Unknown client.")
    redirect_uri = params.get("redirect_uri")
    if redirect_uri is None and len(client["redirect_uris"]) == 1:
        redirect_uri = client["redirect_uris"][0]
    if redirect_uri is None or redirect_uri not in client["redirect_uris"]:
        raise AuthorizePageError("The redirect URI is not registered for this client.")
    try:  # registered before the rules were tightened: never redirect there
        validate_redirect_uri(redirect_uri)
    except ValidationError:
        raise AuthorizePageError("The registered redirect URI is not allowed; register an https one.") from None
    state = params.get("state")
    where = {"redirect_uri": redirect_uri, "state": state}
    if params.get("response_type") != "code":
        raise oauth.UnsupportedResponseTypeError("Only response_type=code is supported.", **where)
    if "request" in params:
        raise oidc_errors.RequestNotSupportedError("Request objects are not supported.", **where)
    if "request_uri" in params:
        raise oidc_errors.RequestURINotSupportedError("request_uri is not supported.", **where)
    prompts = set(params.get("prompt", "").split())
    if "none" in prompts:  # the sign-in page keeps no session, so it can never sign in silently
        raise oidc_errors.LoginRequiredError("This server always asks the user to sign in.", **where)
    if not prompts <= {"login", "consent", "select_account"}:
        raise oauth.InvalidRequestError("prompt must be none, login, consent or select_account.", **where)
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
        if not _CHALLENGE.match(challenge):
            raise oauth.InvalidRequestError("code_challenge is malformed.", **where)
    elif client["client_type"] == "public":
        raise oauth.InvalidRequestError("Public clients must use PKCE (code_challenge with S256).", **where)
    return AuthorizationRequest(client, redirect_uri, scopes, state, challenge or None, nonce)


async def issue_code(ctx: Context, request: AuthorizationRequest, user: dict[str, Any]) -> str:
    """A single-use, short-lived code bound to client, redirect URI, scopes, user and challenge; stored hashed."""
    code = new_token()
    await repository.insert_code(
        ctx.db,
        {
            "_id": hash_secret(code),
            "client_id": request.client["_id"],
            "redirect_uri": request.redirect_uri,
            "scopes": request.scopes,
            "user_id": user["_id"],
            "generation": user.get("token_generation", 0),
            "code_challenge": request.code_challenge,
            "nonce": request.nonce,
            "auth_time": int(time.time()),  # the user signed in just now, on the page
            "expires_at": utcnow() + timedelta(seconds=ctx.settings.auth_code_ttl),
            "used": False,
        },
    )
    return code
