"""Audit domain: the security audit trail (service/audit/trail.py) and its admin API.

Every other domain records through `audit.record(...)`; nothing here knows them."""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Handler

from service.audit import routes
from service.audit.trail import AUDITOR, EVENTS, INDEXES, Auditor, auditor_ctx, bind, record, unbind
from service.config import SETTINGS
from service.db import STORAGE
from service.ratelimit import client_address

__all__ = ["AUDITOR", "EVENTS", "INDEXES", "Auditor", "bind", "record", "setup", "unbind"]


def setup(root: web.Application, api: web.Application) -> None:
    root[STORAGE].declare(INDEXES)
    root.cleanup_ctx.append(auditor_ctx)
    root.middlewares.append(audit_middleware)  # innermost: handlers record, with the request bound
    api.router.add_routes(routes.routes)


@web.middleware
async def audit_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Events recorded while handling a request go to this process's auditor, with the caller's address."""
    token = bind(request.config_dict[AUDITOR], client_address(request, request.config_dict[SETTINGS].trusted_proxies))
    try:
        return await handler(request)
    finally:
        unbind(token)
