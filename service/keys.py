"""The typed keys the web layer shares: the OpenAPI document and what a request carries through the
middlewares. Every other key lives beside the type it holds (config.SETTINGS, db.MONGO, cache.PRINCIPAL_CACHE,
passwords.HASHER, a domain's own state in that domain), so this module imports nothing of the service."""

from __future__ import annotations

from typing import Any

from aiohttp import web

openapi: web.AppKey[bytes] = web.AppKey("service.openapi", bytes)

request_id: web.RequestKey[str] = web.RequestKey("service.request_id", str)
# What the declared schema loaded: its shape is the route's schema, hence Any.
body: web.RequestKey[Any] = web.RequestKey("service.body")
query: web.RequestKey[dict[str, Any]] = web.RequestKey("service.query")
