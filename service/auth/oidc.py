"""OpenID Connect on authlib's building blocks: ID tokens, UserInfo claims, discovery metadata.

authlib's OIDC server classes are synchronous, so as for OAuth2 the endpoints are ours; the JWT
signing (`authlib.jose`), `at_hash` and the metadata model (`authlib.oidc.discovery`) are authlib's.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from authlib.oidc.core.util import create_half_hash

from service.auth.jose import JoseError, JsonWebKey, jwt
from service.auth.signing import ALGORITHM, KeyRing

PROFILE_CLAIMS = ("name", "given_name", "middle_name", "family_name", "preferred_username", "updated_at")
CLAIMS_SUPPORTED = (
    "sub",
    "iss",
    "aud",
    "exp",
    "iat",
    "auth_time",
    "nonce",
    "at_hash",
    "amr",
    "acr",
    "sid",
    *PROFILE_CLAIMS,
    "email",
    "email_verified",
)


def user_claims(user: Mapping[str, Any], scopes: list[str] | frozenset[str]) -> dict[str, Any]:
    """The claims about `user` that `scopes` allow; `sub` is the user's stable id. A name part the user
    left empty is omitted, not an empty string (OpenID Connect Core 5.3.2)."""
    claims: dict[str, Any] = {"sub": str(user["_id"])}
    if "profile" in scopes:
        names = (user.get("first_name"), user.get("middle_name"), user.get("last_name"))
        claims.update(
            name=" ".join(part for part in names if part) or user["username"],
            preferred_username=user["username"],
            updated_at=int(user["updated"].timestamp()),
        )
        parts = {"given_name": names[0], "middle_name": names[1], "family_name": names[2]}
        claims.update({claim: value for claim, value in parts.items() if value})
    if "email" in scopes:
        claims["email"] = user["email"]
        claims["email_verified"] = bool(user.get("email_verified", False))
    return claims


@dataclass(frozen=True, slots=True)
class SignIn:
    """What an ID token tells a client about a sign-in: who, to which client, with which scopes, when."""

    client_id: str
    user: Mapping[str, Any]
    scopes: list[str]
    auth_time: int
    nonce: str | None = None
    amr: tuple[str, ...] = ("pwd",)  # RFC 8176: how the user proved who they are
    sid: str | None = None  # the sign-in session (Front/Back-Channel Logout 1.0), absent for the password grant


# `acr`: "1" for a password alone, "2" for a password and a second factor (a one-time code).
ACR_VALUES = ("1", "2")


def acr(amr: tuple[str, ...]) -> str:
    return "2" if "otp" in amr else "1"


async def id_token(keyring: KeyRing, issuer: str, sign_in: SignIn, access_token: str, lifetime: int) -> str:
    """An OpenID Connect Core 1.0 ID token, RS256, with the signing key's `kid` in its header."""
    key = await keyring.signing_key()
    now = int(time.time())
    payload = {
        "iss": issuer,
        "aud": sign_in.client_id,
        "iat": now,
        "exp": now + lifetime,
        "auth_time": sign_in.auth_time,
        "amr": list(sign_in.amr),
        "acr": acr(sign_in.amr),
        "at_hash": create_half_hash(access_token, ALGORITHM).decode(),
        **user_claims(sign_in.user, sign_in.scopes),
    }
    if sign_in.nonce:
        payload["nonce"] = sign_in.nonce
    if sign_in.sid:
        payload["sid"] = sign_in.sid
    header = {"alg": ALGORITHM, "kid": key.kid, "typ": "JWT"}
    signed = await asyncio.get_running_loop().run_in_executor(None, jwt.encode, header, payload, key.key)
    return bytes(signed).decode()


async def verified_id_token(keyring: KeyRing, issuer: str, token: str) -> dict[str, Any] | None:
    """The claims of an ID token this server signed, or None. An expired one is fine: a hint names who the
    client last saw signed in, however long ago (OpenID Connect Core 3.1.2.1, RP-Initiated Logout 2)."""
    keys = JsonWebKey.import_key_set({"keys": [key.public_jwk() for key in await keyring.keys()]})
    try:
        claims = jwt.decode(token, keys)
    except (JoseError, ValueError, TypeError, KeyError):  # not a JWT, another signer, garbage
        return None
    if claims.get("iss") != issuer or not isinstance(claims.get("sub"), str):
        return None
    return dict(claims)


def discovery(oauth_metadata: dict[str, Any], issuer: str) -> dict[str, Any]:
    """OpenID Connect Discovery 1.0 on top of the RFC 8414 metadata (same issuer and endpoints)."""
    return {
        **oauth_metadata,
        "userinfo_endpoint": f"{issuer}/auth/oauth2/userinfo",
        "jwks_uri": f"{issuer}/auth/oauth2/jwks",
        "end_session_endpoint": f"{issuer}/auth/oauth2/logout",  # RP-Initiated Logout 1.0
        "backchannel_logout_supported": True,  # Back-Channel Logout 1.0, with `sid` in the logout token
        "backchannel_logout_session_supported": True,
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": [ALGORITHM],
        "claims_supported": list(CLAIMS_SUPPORTED),
        "acr_values_supported": list(ACR_VALUES),
        "prompt_values_supported": ["none", "login", "consent", "select_account"],
        "request_parameter_supported": False,
        "request_uri_parameter_supported": False,
        "claims_parameter_supported": False,
    }
