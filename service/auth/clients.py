"""The OAuth2 clients resource (/api/v1/auth/oauth2_clients): create, list, read, change, rotate the
secret, delete."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from bson import ObjectId

from service import patch
from service.audit import trail as audit
from service.auth import repository
from service.auth.permissions import may_see_client
from service.auth.repository import ClientDocument
from service.auth.schemas import ADMIN_ONLY_GRANTS, EditableClientSchema, default_grant_types, defaults_allowed
from service.caller import Principal, is_admin
from service.context import Context
from service.crypto import hash_secret, new_token
from service.db import document_id, utcnow
from service.errors import Conflict, Forbidden, NotFound, PreconditionFailed, check_version
from service.pagination import Page, PageRequest
from service.schemas import load

EDITABLE_CLIENT = EditableClientSchema()
# The fields a PATCH may change (EditableClientSchema), in the order they are shown.
EDITABLE_FIELDS = (
    "client_name",
    "redirect_uris",
    "post_logout_redirect_uris",
    "backchannel_logout_uri",
    "default_scopes",
    "allowed_scopes",
    "grant_types",
    "dpop_bound_access_tokens",
    "first_party",
)

# --- OAuth2 clients (the /api/v1/auth/oauth2_clients resource) --------------------------------


def new_client_document(client_id: str, data: dict[str, Any], secret: str | None, owner_id: ObjectId) -> ClientDocument:
    now = utcnow()
    return {
        "_id": client_id,
        "client_type": data["client_type"],
        "token_endpoint_auth_method": data.get("token_endpoint_auth_method"),  # None: Basic or form
        "secret_hash": hash_secret(secret) if secret else None,
        "grant_types": list(data.get("grant_types") or default_grant_types(data["client_type"])),
        "client_name": data.get("client_name"),
        "redirect_uris": data["redirect_uris"],
        "post_logout_redirect_uris": data.get("post_logout_redirect_uris", []),
        "backchannel_logout_uri": data.get("backchannel_logout_uri"),
        "first_party": bool(data.get("first_party", False)),
        "dpop_bound_access_tokens": bool(data.get("dpop_bound_access_tokens", False)),
        "default_scopes": data["default_scopes"],
        "allowed_scopes": data["allowed_scopes"],
        "user_id": owner_id,
        "created": now,
        "updated": now,
        "version": 1,
    }


def check_may_grant(caller: Principal, before: Mapping[str, Any], after: Mapping[str, Any]) -> None:
    """Only an administrator may give a client the password grant (RFC 9700 2.4) or make it first-party;
    anyone who may edit the client may keep what it has, or take it away. 403 otherwise."""
    if is_admin(caller.user):
        return
    added = set(after.get("grant_types") or ()) - set(before.get("grant_types") or ())
    if added & ADMIN_ONLY_GRANTS:
        raise Forbidden("Only administrators may give a client the password grant.")
    if after.get("first_party") and not before.get("first_party"):
        raise Forbidden("Only administrators may make a client first-party.")


def _check_consistent(client: Mapping[str, Any], result: Mapping[str, Any]) -> None:
    """Rules that relate fields (or the client's type): a patch that breaks one leaves the client in a
    state it cannot be in, a conflict (RFC 5789 2.2), 409, not a malformed value."""
    if not defaults_allowed(dict(result)):
        raise Conflict("After this patch default_scopes would not be a subset of allowed_scopes.")
    if client["client_type"] == "public" and "client_credentials" in result["grant_types"]:
        raise Conflict("A public client cannot use client_credentials.")


async def register_client(ctx: Context, caller: Principal, data: dict[str, Any]) -> tuple[ClientDocument, str | None]:
    """The API's registration: the caller owns the client, and may ask only for what they may grant."""
    check_may_grant(caller, {}, data)
    return await create_client(ctx, caller.user_id, data)


async def create_client(ctx: Context, owner_id: ObjectId, data: dict[str, Any]) -> tuple[ClientDocument, str | None]:
    """Register a client (the operator's CLI calls this directly; the API through `register_client`); the
    secret of a confidential client is returned once and stored hashed."""
    secret = new_token(36) if data["client_type"] == "confidential" else None
    document = new_client_document(new_token(24), data, secret, owner_id)
    client = await repository.insert_client(ctx.db, document)
    audit.record("client.created", actor_id=owner_id, subject_id=owner_id, client_id=client["_id"])
    return client, secret


async def list_clients(ctx: Context, caller: Principal, user_id: str | None, request: PageRequest) -> Page:
    owner = caller.user_id
    if user_id is not None and user_id != str(caller.user_id):
        if not is_admin(caller.user):
            raise Forbidden("Only administrators may list another user's clients.")
        owner = document_id(user_id)
        if owner is None:
            return Page([], None, 0)
    return await repository.list_clients(ctx.db, owner, request, ctx.cursors)


async def get_visible_client(ctx: Context, caller: Principal, client_id: str) -> ClientDocument:
    client = await repository.get_client(ctx.db, client_id)
    if client is None or not may_see_client(caller.user, client):
        raise NotFound("No such OAuth2 client.")
    return client


async def patch_client(
    ctx: Context, caller: Principal, client_id: str, operations: list[dict[str, Any]], expected_version: int | None
) -> ClientDocument:
    """RFC 6902 on the editable fields, validated as a whole, written only over the version it read."""
    blind = patch.is_blind(operations, expected_version)

    async def attempt() -> ClientDocument | None:
        client = await get_visible_client(ctx, caller, client_id)
        check_version(expected_version, client)
        shown = editable(client)
        result = load(EDITABLE_CLIENT, patch.apply(shown, operations))
        _check_consistent(client, result)
        check_may_grant(caller, shown, result)
        changes = {name: value for name, value in result.items() if value != shown.get(name)}
        if not changes and not blind:
            return client
        updated = await repository.update_client(ctx.db, client["_id"], None if blind else client["version"], changes)
        if updated is not None:
            audit.record(
                "client.updated",
                actor_id=caller.user_id,
                subject_id=client["user_id"],
                client_id=client["_id"],
                fields=sorted(changes),
            )
        return updated

    return await patch.optimistically(attempt, expected_version, "OAuth2 client")


def editable(client: Mapping[str, Any]) -> dict[str, Any]:
    """The client's editable fields, with the defaults of those an older document lacks."""
    defaults: dict[str, Any] = {
        "client_name": None,
        "post_logout_redirect_uris": [],
        "backchannel_logout_uri": None,
        "dpop_bound_access_tokens": False,
        "first_party": False,
        "grant_types": default_grant_types(client["client_type"]),
    }
    return {name: client.get(name, defaults.get(name)) for name in EDITABLE_FIELDS}


async def rotate_secret(ctx: Context, caller: Principal, client_id: str) -> tuple[ClientDocument, str, datetime]:
    """A new secret for a confidential client, returned once and stored hashed; the current one keeps
    working for CLIENT_SECRET_OVERLAP seconds (a second rotation within them retires the older one now)."""
    client = await get_visible_client(ctx, caller, client_id)
    if client["client_type"] != "confidential" or not client["secret_hash"]:
        raise Conflict("A public client has no secret to rotate.")
    secret = new_token(36)
    expires = utcnow() + timedelta(seconds=ctx.settings.client_secret_overlap)
    changes = {
        "secret_hash": hash_secret(secret),
        "previous_secret_hash": client["secret_hash"],
        "previous_secret_expires": expires,
    }
    updated = await repository.update_client(ctx.db, client["_id"], client["version"], changes)
    if updated is None:  # changed (or rotated) by someone else between the read and the write
        raise Conflict("The OAuth2 client changed while its secret was rotated; try again.")
    audit.record(
        "client.secret_rotated", actor_id=caller.user_id, subject_id=client["user_id"], client_id=client["_id"]
    )
    return updated, secret, expires


async def delete_client(ctx: Context, caller: Principal, client_id: str, expected_version: int | None) -> None:
    client = await get_visible_client(ctx, caller, client_id)
    check_version(expected_version, client)
    deleted = await repository.delete_client(ctx.db, client["_id"], expected_version)
    if deleted:
        audit.record("client.deleted", actor_id=caller.user_id, subject_id=client["user_id"], client_id=client["_id"])
    if not deleted and expected_version is not None:  # changed or gone between the read and the delete
        raise PreconditionFailed("The OAuth2 client changed since you read it.")
