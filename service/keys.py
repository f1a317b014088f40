"""Every typed key for application and request state, in one place."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:  # annotations only: at runtime this module imports nothing of the service
    from service.audit import Auditor
    from service.auth.principals import PrincipalCache
    from service.auth.signin import HeldAttempts
    from service.auth.signing import KeyRing
    from service.config import Settings
    from service.db import Mongo
    from service.pagination import Cursors
    from service.passwords import PasswordHasher
    from service.principal import Principal
    from service.ratelimit import TokenBuckets

settings: web.AppKey[Settings] = web.AppKey("service.settings")
mongo: web.AppKey[Mongo] = web.AppKey("service.mongo")
openapi: web.AppKey[bytes] = web.AppKey("service.openapi")
hasher: web.AppKey[PasswordHasher] = web.AppKey("service.hasher")
principal_cache: web.AppKey[PrincipalCache] = web.AppKey("service.principal_cache")
held_attempts: web.AppKey[HeldAttempts] = web.AppKey("service.held_attempts")
rate_limiter: web.AppKey[TokenBuckets] = web.AppKey("service.rate_limiter")
cursors: web.AppKey[Cursors] = web.AppKey("service.cursors")
auditor: web.AppKey[Auditor] = web.AppKey("service.auditor")
keyring: web.AppKey[KeyRing] = web.AppKey("service.keyring")

request_id: web.RequestKey[str] = web.RequestKey("service.request_id")
# What the declared schema loaded: its shape is the route's schema, hence Any.
body: web.RequestKey[Any] = web.RequestKey("service.body")
query: web.RequestKey[dict[str, Any]] = web.RequestKey("service.query")
principal: web.RequestKey[Principal] = web.RequestKey("service.principal")
