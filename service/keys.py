"""Every typed key for application and request state, in one place."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from service.config import Settings
from service.db import Mongo

if TYPE_CHECKING:
    from service.audit import Auditor
    from service.auth.signing import KeyRing
    from service.pagination import Cursors
    from service.passwords import PasswordHasher
    from service.ratelimit import TokenBuckets
    from service.security import Principal, PrincipalCache

settings = web.AppKey("service.settings", Settings)
mongo = web.AppKey("service.mongo", Mongo)
openapi = web.AppKey("service.openapi", bytes)
hasher: web.AppKey[PasswordHasher] = web.AppKey("service.hasher")
principal_cache: web.AppKey[PrincipalCache] = web.AppKey("service.principal_cache")
rate_limiter: web.AppKey[TokenBuckets] = web.AppKey("service.rate_limiter")
cursors: web.AppKey[Cursors] = web.AppKey("service.cursors")
auditor: web.AppKey[Auditor] = web.AppKey("service.auditor")
keyring: web.AppKey[KeyRing] = web.AppKey("service.keyring")

request_id = web.RequestKey("service.request_id", str)
body = web.RequestKey("service.body", Any)
query = web.RequestKey("service.query", dict)
principal: web.RequestKey[Principal] = web.RequestKey("service.principal")
