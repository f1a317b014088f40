"""The OAuth2 clients resource (/api/v1/auth/oauth2_clients): create, list, read, delete."""

from __future__ import annotations

from typing import Any

from bson import ObjectId

from service.audit import trail as audit
from service.auth import repository
from service.auth.permissions import may_see_client
from service.auth.repository import ClientDocument
from service.caller import Principal, is_admin
from service.context import Context
from service.crypto import hash_secret, new_token
from service.db import document_id, utcnow
from service.errors import Forbidden, NotFound, PreconditionFailed, check_version
from service.pagination import Page, PageRequest

# --- OAuth2 clients (the /api/v1/auth/oauth2_clients resource) --------------------------------


def new_client_document(client_id: str, data: dict[str, Any], secret: str | None, owner_id: ObjectId) -> ClientDocument:
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


async def create_client(ctx: Context, owner_id: ObjectId, data: dict[str, Any]) -> tuple[ClientDocument, str | None]:
    """Register a client; the secret of a confidential client is returned once and stored hashed."""
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


async def delete_client(ctx: Context, caller: Principal, client_id: str, expected_version: int | None) -> None:
    client = await get_visible_client(ctx, caller, client_id)
    check_version(expected_version, client)
    deleted = await repository.delete_client(ctx.db, client["_id"], expected_version)
    if deleted:
        audit.record("client.deleted", actor_id=caller.user_id, subject_id=client["user_id"], client_id=client["_id"])
    if not deleted and expected_version is not None:  # changed or gone between the read and the delete
        raise PreconditionFailed("The OAuth2 client changed since you read it.")
