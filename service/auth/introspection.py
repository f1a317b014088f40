"""Token revocation (RFC 7009), introspection (RFC 7662) and server metadata (RFC 8414)."""

from __future__ import annotations

from datetime import UTC
from typing import Any

from service.audit import trail as audit
from service.auth import principals, repository
from service.auth.dpop import ALGORITHMS
from service.auth.grants import GRANTS, api_identifier, authenticate_client, required
from service.context import Context
from service.crypto import hash_secret
from service.db import Database, utcnow
from service.scopes import SCOPES
from service.users import repository as users_repository

# --- revocation and introspection ------------------------------------------------------------


async def _find_any(db: Database, token_value: str, hint: str | None) -> dict[str, Any] | None:
    digest = hash_secret(token_value)
    order = ("refresh", "access") if hint == "refresh_token" else ("access", "refresh")
    for kind in order:
        found = await repository.find_token(
            db, **({"access_digest": digest} if kind == "access" else {"refresh_digest": digest})
        )
        if found is not None:
            return {**found, "_kind": kind}
    return None


async def revoke(ctx: Context, params: dict[str, str], authorization: str | None) -> None:
    """RFC 7009: revoke the client's own token; a refresh token takes its family with it."""
    client = await authenticate_client(ctx, params, authorization)
    db = ctx.db
    (value,) = required(params, "token")
    found = await _find_any(db, value, params.get("token_type_hint"))
    if found is None or found["client_id"] != client["_id"]:
        return  # RFC 7009 2.2: unknown tokens are not an error
    query = {"family_id": found["family_id"]} if found["_kind"] == "refresh" else {"_id": found["_id"]}
    await principals.revoke_tokens(ctx.cache, db, query)
    audit.record("token.revoked", subject_id=found["user_id"], client_id=client["_id"], token_kind=found["_kind"])


async def introspect(ctx: Context, params: dict[str, str], authorization: str | None) -> dict[str, Any]:
    """RFC 7662 for confidential clients, about their own tokens only."""
    client = await authenticate_client(ctx, params, authorization, confidential_only=True)
    db, issuer = ctx.db, ctx.issuer
    (value,) = required(params, "token")
    found = await _find_any(db, value, params.get("token_type_hint"))
    if found is None or found["client_id"] != client["_id"] or found["revoked"]:
        return {"active": False}
    expires = found["access_expires"] if found["_kind"] == "access" else found["refresh_expires"]
    if expires <= utcnow():
        return {"active": False}
    user = await users_repository.get_user(db, found["user_id"])
    if user is None or not repository.is_current(found, user):
        return {"active": False}
    bound = found.get("jkt") if found["_kind"] == "access" else found.get("refresh_jkt")
    return {
        **({"cnf": {"jkt": bound}} if bound else {}),  # RFC 9449 6.2: the key the token is bound to
        "active": True,
        "scope": " ".join(found["scopes"]),
        "client_id": found["client_id"],
        "username": user["username"],
        "token_type": ("DPoP" if bound else "Bearer") if found["_kind"] == "access" else "refresh_token",
        "exp": int(expires.timestamp()),
        "iat": int(found["created"].replace(tzinfo=found["created"].tzinfo or UTC).timestamp()),
        "sub": str(user["_id"]),
        "iss": issuer,
        "aud": found.get("aud") or [api_identifier(issuer)],  # RFC 8707; tokens from before audiences: the API
    }


def metadata(issuer: str, registration: bool = False) -> dict[str, Any]:
    """RFC 8414 authorization server metadata; `registration_endpoint` only when REGISTRATION is not closed."""
    auth_methods = ["client_secret_basic", "client_secret_post", "none"]
    registration_endpoint = {"registration_endpoint": f"{issuer}/auth/oauth2/register"} if registration else {}
    return {
        "issuer": issuer,
        "authorization_endpoint": f"{issuer}/auth/oauth2/authorize",
        "token_endpoint": f"{issuer}/auth/oauth2/token",
        "revocation_endpoint": f"{issuer}/auth/oauth2/revoke",
        "introspection_endpoint": f"{issuer}/auth/oauth2/introspect",
        "device_authorization_endpoint": f"{issuer}/auth/oauth2/device_authorization",
        "scopes_supported": list(SCOPES),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": list(GRANTS),
        "token_endpoint_auth_methods_supported": auth_methods,
        "revocation_endpoint_auth_methods_supported": auth_methods,
        "introspection_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "code_challenge_methods_supported": ["S256"],
        "authorization_response_iss_parameter_supported": True,  # RFC 9207
        "dpop_signing_alg_values_supported": list(ALGORITHMS),  # RFC 9449 5.1
        "service_documentation": f"{issuer}/api/v1/",
        **registration_endpoint,
    }


OPENID_SCOPES = frozenset({"openid", "profile", "email"})  # the authorization server's, not the API's


def resource_metadata(issuer: str) -> dict[str, Any]:
    """RFC 9728 protected resource metadata of the API: which authorization server issues its tokens,
    the scopes it understands, how tokens are sent (the header; DPoP-bound or bearer)."""
    return {
        "resource": api_identifier(issuer),
        "authorization_servers": [issuer],
        "scopes_supported": [scope for scope in SCOPES if scope not in OPENID_SCOPES],
        "bearer_methods_supported": ["header"],
        "dpop_signing_alg_values_supported": list(ALGORITHMS),
        "dpop_bound_access_tokens_required": False,
        "resource_name": "RESTful API Server",
        "resource_documentation": f"{issuer}/api/v1/",
    }
