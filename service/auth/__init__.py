"""Auth domain: the OAuth2 / OpenID Connect authorization server (token, authorize, revoke, introspect,
discovery, JWKS, UserInfo at the site root), OAuth2 clients under /api/v1, and bearer tokens: the
middleware that resolves them into callers for every `@requires` route."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from service import scopes
from service.auth import (
    backchannel,
    connected_routes,
    consent,
    device,
    device_routes,
    dpop,
    registration,
    registration_routes,
    repository,
    routes,
    second_factor,
    session_routes,
    sessions,
    signing,
)
from service.auth import openapi as auth_openapi
from service.auth import schemas as auth_schemas
from service.cache import follower_ctx
from service.config import SETTINGS
from service.context import Context
from service.db import MONGO, STORAGE
from service.openapi import add_parts
from service.users.service import TOKENS_REVOKED

SCOPES = {
    "auth:read": "Read your OAuth2 clients",
    "auth:write": "Create, change and delete your OAuth2 clients",
    "openid": "Sign you in to the application (OpenID Connect): your user id",
    "profile": "Your name and username",
    "email": "Your email address",
}
MIGRATIONS = (
    ("0002_documentation_client_oidc_scopes", repository.documentation_client_may_sign_in),
    ("0008_client_grant_types", repository.clients_keep_their_grants),
    ("0009_documentation_client_first_party", repository.documentation_client_is_first_party),
)


def setup(root: web.Application, api: web.Application) -> None:
    """After the domains whose scopes the docs list (users, teams): the OAuth2 scheme names them all."""
    indexes = {**repository.INDEXES, **signing.INDEXES, **second_factor.INDEXES, **device.INDEXES}
    root[STORAGE].declare(indexes, MIGRATIONS)
    root[STORAGE].declare(registration.INDEXES)
    root[STORAGE].declare(consent.INDEXES)
    root[STORAGE].declare(sessions.INDEXES)
    root[STORAGE].declare(backchannel.INDEXES)
    root[STORAGE].declare(dpop.INDEXES)  # the replay cache of DPoP proofs (TTL)
    scopes.register(SCOPES)
    auth_schemas.document_scopes()  # every domain's scopes are registered by now (auth comes last)
    root.cleanup_ctx.append(_keyring_ctx)
    root.cleanup_ctx.append(backchannel.deliverer_ctx)  # signs with the key ring; stops before the database
    root.cleanup_ctx.append(follower_ctx(repository.watch_principal_changes))
    root[TOKENS_REVOKED].append(_mark_revoked)
    root.add_routes(routes.oauth_routes)
    root.add_routes(device_routes.device_routes)
    api.router.add_routes(routes.routes)
    api.router.add_routes(connected_routes.routes)  # /users/me/authorizations: the caller's connected apps
    root.add_routes(session_routes.logout_routes)
    api.router.add_routes(session_routes.routes)  # /users/me/sessions
    root.add_routes(registration_routes.registration_routes)
    api.router.add_routes(registration_routes.routes)
    add_parts(
        api, paths=auth_openapi.PATHS, schemas=auth_openapi.SCHEMAS, security_schemes=auth_openapi.security_schemes()
    )
    add_parts(api, paths=registration_routes.PATHS, security_schemes=registration_routes.SECURITY_SCHEMES)


async def _keyring_ctx(app: web.Application) -> AsyncIterator[None]:
    app[signing.KEYRING] = signing.KeyRing(app[MONGO].db)
    app[dpop.DPOP] = dpop.DPoPState(app[MONGO].db, app[SETTINGS].dpop_nonces)
    yield


async def _mark_revoked(ctx: Context, user_id: object) -> None:
    """A password change or reset, or a deactivation: the user's tokens are marked revoked and their
    sign-in sessions end (their clients get back-channel logout)."""
    await repository.revoke_tokens(ctx.db, {"user_id": user_id})
    await sessions.end_for_user(ctx, user_id)
