"""Users domain: accounts, sign-up, and password checks with their per-username throttle."""

from __future__ import annotations

from aiohttp import web

from service import scopes
from service.db import STORAGE
from service.encryption import DATA_KEYS, DataKeys, data_keys_ctx
from service.users import account_routes, mailtokens, mfa_routes, repository, routes
from service.users.service import TOKENS_REVOKED
from service.users.signin import HELD_ATTEMPTS, HeldAttempts

SCOPES = {"users:read": "Read users", "users:write": "Change users"}


def setup(root: web.Application, api: web.Application) -> None:
    root[HELD_ATTEMPTS] = HeldAttempts()
    root[TOKENS_REVOKED] = []  # the domains that store tokens add themselves (auth)
    root[STORAGE].declare({**repository.INDEXES, **mailtokens.INDEXES})
    scopes.register(SCOPES)
    api.router.add_routes(routes.routes)
    api.router.add_routes(account_routes.routes)  # email verification and password reset
    root.add_routes(account_routes.pages)  # the pages their mailed links open
    root[DATA_KEYS] = DataKeys()  # the second factor's secrets are encrypted at rest
    root.cleanup_ctx.append(data_keys_ctx)
    api.router.add_routes(mfa_routes.routes)
