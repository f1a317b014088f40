"""Dynamic client registration (RFC 7591) and its management (RFC 7592): the REGISTRATION policy,
initial access tokens (admins create them; hashed; optional expiry and use count), and the client
configuration endpoint behind a registration access token (hashed, replaced on every read and update).
Registered clients are ordinary OAuth2 client documents (service/auth/clients.py), validated by the
clients API's schema."""

from __future__ import annotations

import ipaddress
import re
import socket
from datetime import datetime, timedelta
from typing import Any, cast
from urllib.parse import urlsplit

from authlib.oauth2.base import OAuth2Error
from bson import ObjectId
from marshmallow import ValidationError
from pymongo import IndexModel, ReturnDocument

from service.audit import trail as audit
from service.auth import repository
from service.auth.clients import new_client_document
from service.auth.repository import ClientDocument
from service.auth.schemas import ADMIN_ONLY_GRANTS, CreateOAuth2ClientSchema
from service.caller import Principal, is_admin
from service.context import Context
from service.crypto import hash_secret, new_token, secret_matches
from service.db import Database, utcnow
from service.errors import Forbidden

POLICIES = ("closed", "token", "open")
REGISTER_PATH = "/auth/oauth2/register"
DEFAULT_SCOPE = "openid"
INDEXES: dict[str, list[IndexModel]] = {
    "oauth2_registration_tokens": [
        IndexModel("token_hash", unique=True),
        IndexModel("expires_at", expireAfterSeconds=0),  # a token with no expiry has no expires_at
    ],
}
CREATE_SCHEMA = CreateOAuth2ClientSchema()
# The RFC 7591 metadata a client may send (anything else is ignored, RFC 7591 2).
_URI_FIELDS = ("redirect_uris", "post_logout_redirect_uris")


class RegistrationError(OAuth2Error):  # type: ignore[misc]  # authlib is untyped
    """An RFC 7591 3.2.2 / RFC 6750 error in RFC 6749 JSON."""

    def __init__(self, error: str, description: str, status_code: int = 400) -> None:
        printable = re.sub(r"[^\x20-\x21\x23-\x5b\x5d-\x7e]", "'", description)
        super().__init__(description=printable, status_code=status_code, error=error)

    def get_headers(self) -> list[tuple[str, str]]:
        headers = super().get_headers()
        if self.status_code == 401:
            headers.append(("WWW-Authenticate", f'Bearer error="{self.error}"'))
        return cast(list[tuple[str, str]], headers)


def _invalid_token() -> RegistrationError:
    return RegistrationError("invalid_token", "A valid registration access token is required.", 401)


def bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, value = authorization.partition(" ")
    value = value.strip()
    return value if scheme.lower() == "bearer" and value else None


# --- initial access tokens ---------------------------------------------------------------------


async def create_initial_token(
    ctx: Context, creator_id: ObjectId | None, expires_in: int | None, max_uses: int | None
) -> tuple[str, dict[str, Any]]:
    """A new initial access token: returned once, stored hashed; `creator_id` (an admin, or None from the
    command line) will own the clients registered with it."""
    token = new_token(32)
    now = utcnow()
    document: dict[str, Any] = {
        "token_hash": hash_secret(token),
        "created_by": creator_id,
        "created": now,
        "max_uses": max_uses,
        "remaining": max_uses,  # None: unlimited
    }
    if expires_in is not None:
        document["expires_at"] = now + timedelta(seconds=expires_in)
    result = await ctx.db.oauth2_registration_tokens.insert_one(document)
    audit.record(
        "registration_token.created",
        actor_id=creator_id,
        token_id=str(result.inserted_id),
        expires_in=expires_in,
        max_uses=max_uses,
    )
    return token, {**document, "_id": result.inserted_id}


async def create_initial_token_as(
    ctx: Context, caller: Principal, expires_in: int | None, max_uses: int | None
) -> tuple[str, dict[str, Any]]:
    if not is_admin(caller.user):
        raise Forbidden("Only administrators may create initial access tokens.")
    return await create_initial_token(ctx, caller.user_id, expires_in, max_uses)


async def _consume_initial_token(db: Database, token: str, *, take: bool = True) -> dict[str, Any]:
    """One use of a live initial access token, taken in a single conditional write (concurrent
    registrations never exceed max_uses); 401 invalid_token when none is left. `take=False` only checks."""
    now = utcnow()
    query = {
        "token_hash": hash_secret(token),
        "$and": [
            {"$or": [{"expires_at": {"$exists": False}}, {"expires_at": {"$gt": now}}]},
            {"$or": [{"remaining": None}, {"remaining": {"$gt": 0}}]},
        ],
    }
    found = await db.oauth2_registration_tokens.find_one(query)
    if found is None:
        raise RegistrationError("invalid_token", "The initial access token is unknown, expired or used up.", 401)
    if not take or found.get("remaining") is None:
        return found
    taken = await db.oauth2_registration_tokens.find_one_and_update(
        query, {"$inc": {"remaining": -1}}, return_document=ReturnDocument.AFTER
    )
    if taken is None:
        raise RegistrationError("invalid_token", "The initial access token is unknown, expired or used up.", 401)
    return taken


# --- the request's metadata --------------------------------------------------------------------


def _metadata_error(description: str) -> RegistrationError:
    return RegistrationError("invalid_client_metadata", description)


def client_data(body: Any, policy: str, client: ClientDocument | None = None) -> dict[str, Any]:
    """RFC 7591 2 metadata -> the clients API's validated registration data; `client` when an existing
    registration is replaced (RFC 7592: it keeps its type, whatever the policy now is)."""
    if not isinstance(body, dict):
        raise _metadata_error("The body must be a JSON object of client metadata.")
    if "first_party" in body:
        raise _metadata_error("first_party cannot be registered dynamically.")
    grants = body.get("grant_types")
    if isinstance(grants, list) and set(grants) & ADMIN_ONLY_GRANTS:
        raise _metadata_error("The password grant cannot be registered dynamically.")
    response_types = body.get("response_types", ["code"])
    if not isinstance(response_types, list) or any(kind != "code" for kind in response_types):
        raise _metadata_error("Only the response type code is supported.")
    if client is None:
        default_method = "none" if policy == "open" else "client_secret_basic"
    else:
        default_method = "none" if client["client_type"] == "public" else "client_secret_basic"
    method = body.get("token_endpoint_auth_method", default_method)
    if method not in ("none", "client_secret_basic", "client_secret_post"):
        raise _metadata_error("token_endpoint_auth_method: none, client_secret_basic or client_secret_post.")
    if client is None and policy == "open" and method != "none":
        raise _metadata_error("Open registration accepts public clients only (token_endpoint_auth_method none).")
    kind = "public" if method == "none" else "confidential"
    if client is not None and kind != client["client_type"]:
        raise _metadata_error("A client cannot change between public and confidential.")
    scope = body.get("scope", DEFAULT_SCOPE)
    if not isinstance(scope, str) or not scope.split():
        raise _metadata_error("scope must be a space-separated string of scopes.")
    scopes = list(dict.fromkeys(scope.split()))
    data = {
        name: body[name]
        for name in ("redirect_uris", "post_logout_redirect_uris", "client_name", "backchannel_logout_uri")
        if name in body
    }
    data.update(
        client_type=kind,
        token_endpoint_auth_method=method,
        allowed_scopes=scopes,
        default_scopes=scopes,
        dpop_bound_access_tokens=body.get("dpop_bound_access_tokens", False),
    )
    if grants is not None:
        data["grant_types"] = grants
    if policy == "open" and isinstance(data.get("backchannel_logout_uri"), str):
        _refuse_internal_receiver(data["backchannel_logout_uri"])
    try:
        return cast(dict[str, Any], CREATE_SCHEMA.load(data))
    except ValidationError as exc:
        messages = cast(dict[str, Any], exc.messages)
        described = "; ".join(f"{field}: {message}" for field, message in sorted(messages.items(), key=str))
        if "redirect_uris" in messages:
            raise RegistrationError("invalid_redirect_uri", described) from None
        raise _metadata_error(described) from None


# Names that mean this machine without DNS (RFC 6761 .localhost, and Debian's /etc/hosts defaults).
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})
NAT64 = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052: the IPv4 address is the last 32 bits


def _refuse_internal_receiver(uri: str) -> None:
    """Under open registration anyone names the back-channel logout URI this server will POST to: an
    https URI on a name or a public address only, never a loopback name or a loopback, private or
    link-local address (however spelt, IPv4 inside IPv6 included), so an anonymous registrant cannot
    point the server at its own or its network's internal services. (A DNS name that resolves to an
    internal address is the deployment's egress rules' to stop.)"""
    refused = _metadata_error("backchannel_logout_uri: open registration takes an https URI on a public host only.")
    try:
        parts = urlsplit(uri)
        host = (parts.hostname or "").rstrip(".")
    except ValueError:
        raise refused from None
    address = _address_literal(host)
    internal = host in LOOPBACK_NAMES or host.endswith(".localhost") or (address is not None and not address.is_global)
    if parts.scheme != "https" or internal or (address is None and ":" in host):
        raise refused


def _address_literal(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address `host` spells, in any form the resolver takes (`127.1`, `0x7f.0.0.1`, `2130706433`
    are all 127.0.0.1 to it), or None for a name. An IPv6 address that carries an IPv4 one (mapped,
    IPv4-compatible, 6to4, NAT64, Teredo) is that IPv4 address: it is where the packets end up."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    if isinstance(address, ipaddress.IPv6Address):
        packed = int(address)
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address.sixtofour is not None:
            return address.sixtofour
        if address.teredo is not None:
            return address.teredo[1]
        if address in NAT64 or (packed >> 32 == 0 and packed > 1):  # NAT64, or IPv4-compatible (::a.b.c.d)
            return ipaddress.IPv4Address(packed & 0xFFFFFFFF)
    return address


def _timestamp(value: datetime) -> int:
    return int(value.timestamp())


def client_metadata(client: ClientDocument, issuer: str) -> dict[str, Any]:
    """The RFC 7591 3.2.1 / RFC 7592 3 view of a registered client (no secrets)."""
    method = client.get("token_endpoint_auth_method") or (
        "none" if client["client_type"] == "public" else "client_secret_basic"
    )
    shown: dict[str, Any] = {
        "client_id": client["_id"],
        "client_id_issued_at": _timestamp(client["created"]),
        "client_name": client.get("client_name"),
        "redirect_uris": client["redirect_uris"],
        "post_logout_redirect_uris": client.get("post_logout_redirect_uris", []),
        "backchannel_logout_uri": client.get("backchannel_logout_uri"),
        "grant_types": client["grant_types"],
        "response_types": ["code"],
        "token_endpoint_auth_method": method,
        "scope": " ".join(client["allowed_scopes"]),
        "dpop_bound_access_tokens": bool(client.get("dpop_bound_access_tokens", False)),
        "registration_client_uri": f"{issuer}{REGISTER_PATH}/{client['_id']}",
    }
    if client["client_type"] == "confidential":
        shown["client_secret_expires_at"] = 0
    return {name: value for name, value in shown.items() if value is not None}


# --- registration and management ---------------------------------------------------------------


async def register(ctx: Context, body: Any, authorization: str | None) -> dict[str, Any]:
    """RFC 7591 3: the policy, then the metadata; 201's body with the secrets shown once."""
    policy = ctx.settings.registration
    if policy == "closed":
        raise RegistrationError("access_denied", "Dynamic client registration is closed on this server.", 403)
    owner: ObjectId | None = None
    token = bearer_token(authorization)
    if policy == "token":
        if token is None:
            raise RegistrationError("invalid_token", "An initial access token (Authorization: Bearer) is needed.", 401)
        await _consume_initial_token(ctx.db, token, take=False)  # 401 before anything about the metadata
    data = client_data(body, policy)  # validated before a use of the initial access token is spent
    if policy == "token" and token is not None:
        owner = (await _consume_initial_token(ctx.db, token)).get("created_by")
    secret = new_token(36) if data["client_type"] == "confidential" else None
    access_token = new_token(32)
    document = new_client_document(new_token(24), data, secret, cast(ObjectId, owner))
    document["registration_token_hash"] = hash_secret(access_token)
    client = await repository.insert_client(ctx.db, document)
    audit.record("client.registered", actor_id=owner, subject_id=owner, client_id=client["_id"], policy=policy)
    shown = client_metadata(client, ctx.issuer)
    if secret:
        shown["client_secret"] = secret
    return {**shown, "registration_access_token": access_token}


async def registered_client(ctx: Context, client_id: str, authorization: str | None) -> ClientDocument:
    """The client whose registration access token the request carries; 401 invalid_token otherwise."""
    token = bearer_token(authorization)
    if token is None:
        raise _invalid_token()
    client = await repository.get_client(ctx.db, client_id)
    stored = client.get("registration_token_hash") if client else None
    if client is None or not stored or not secret_matches(token, stored):
        raise _invalid_token()
    return client


async def _take_token(
    ctx: Context, client: ClientDocument, changes: dict[str, Any] | None = None
) -> tuple[ClientDocument, str]:
    """Replace the registration access token the request proved by a new one (RFC 7592 3 and 2.2: a read
    or update response may carry a new one, and the old one is then invalid), together with `changes` to
    the metadata, in ONE conditional write on the proven token's hash: of two requests carrying the same
    token only one gets a new token (and makes its changes); the other is 401 invalid_token and changes
    nothing. The new token is returned once and stored hashed."""
    token = new_token(32)
    update: dict[str, Any] = {"$set": {**(changes or {}), "registration_token_hash": hash_secret(token)}}
    if changes:  # a metadata change is a new version (ETag) of the client; a bare rotation is not
        update["$set"]["updated"] = utcnow()
        update["$inc"] = {"version": 1}
    taken = await ctx.db.oauth2_clients.find_one_and_update(
        {"_id": client["_id"], "registration_token_hash": client.get("registration_token_hash")},
        update,
        return_document=ReturnDocument.AFTER,
    )
    if taken is None:  # another request rotated it (or deleted the client) since this one proved it
        raise _invalid_token()
    return cast(ClientDocument, taken), token


async def read(ctx: Context, client_id: str, authorization: str | None) -> dict[str, Any]:
    """RFC 7592 2.1: the client's metadata, with a new registration access token (the one sent stops
    working at once: a copied token is good for one use by whoever is first, and the client notices)."""
    client, token = await _take_token(ctx, await registered_client(ctx, client_id, authorization))
    audit.record("client.registration_token_rotated", subject_id=client["user_id"], client_id=client["_id"], via="read")
    return {**client_metadata(client, ctx.issuer), "registration_access_token": token}


async def update(ctx: Context, client_id: str, body: Any, authorization: str | None) -> dict[str, Any]:
    """RFC 7592 2.2: the request replaces the client's metadata (omitted fields take their defaults);
    client_id must be the client's, a client_secret sent must be the current one; the secret stays, the
    registration access token is replaced (in the same conditional write as the metadata) and the
    response carries the new one. A refused request changes neither."""
    client = await registered_client(ctx, client_id, authorization)
    if not isinstance(body, dict) or body.get("client_id") != client["_id"]:
        raise _metadata_error("The body must carry the client's client_id.")
    sent_secret = body.get("client_secret")
    if sent_secret is not None and not (
        isinstance(sent_secret, str) and client["secret_hash"] and secret_matches(sent_secret, client["secret_hash"])
    ):
        raise _metadata_error("client_secret is not the client's current secret; it cannot be changed here.")
    data = client_data(body, ctx.settings.registration, client)
    changes = {
        name: data[name]
        for name in (
            "client_name",
            "redirect_uris",
            "post_logout_redirect_uris",
            "backchannel_logout_uri",
            "dpop_bound_access_tokens",
            "allowed_scopes",
            "default_scopes",
            "token_endpoint_auth_method",
        )
    }
    changes["grant_types"] = new_client_document(client["_id"], data, None, client["user_id"])["grant_types"]
    updated, token = await _take_token(ctx, client, changes)
    ctx.cache.invalidate()  # its new rules apply at once (other processes follow the change stream)
    audit.record(
        "client.registration_updated", subject_id=client["user_id"], client_id=client["_id"], fields=sorted(changes)
    )
    audit.record(
        "client.registration_token_rotated", subject_id=client["user_id"], client_id=client["_id"], via="update"
    )
    return {**client_metadata(updated, ctx.issuer), "registration_access_token": token}


async def delete(ctx: Context, client_id: str, authorization: str | None) -> None:
    """RFC 7592 2.3: the client and its tokens go; the principal cache forgets them. The token is first
    taken by the same conditional write as a rotation (its replacement shown to nobody), so a token that a
    concurrent read or update has just rotated cannot delete the client."""
    client, _ = await _take_token(ctx, await registered_client(ctx, client_id, authorization))
    await repository.delete_client(ctx.db, client["_id"])  # its tokens and codes with it
    ctx.cache.invalidate()
    audit.record("client.registration_deleted", subject_id=client["user_id"], client_id=client["_id"])
