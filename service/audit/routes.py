"""/api/v1/audit: the security audit trail, for admins."""

from __future__ import annotations

from aiohttp import web
from aiohttp_apigami import docs, querystring_schema

from service import keys
from service.audit.schemas import AuditEventSchema, ListAuditEventsSchema
from service.audit.trail import list_events
from service.context import Context
from service.openapi import responds
from service.pagination import PageRequest
from service.responses import page
from service.security import requires

routes = web.RouteTableDef()
EVENTS = AuditEventSchema(many=True)


@routes.get("/audit/", allow_head=False)
@docs(
    tags=["audit"],
    summary="Security events, newest first",
    description="Sign-ins and their failures, tokens issued and revoked, refresh reuse, password, email, role "
    "and activation changes, OAuth2 clients created and deleted. Never a secret.",
    operation_id="listAuditEvents",
)
@requires("auth:read", admin=True)
@querystring_schema(ListAuditEventsSchema)
@responds(EVENTS, headers=("X-Total-Count", "Link"), errors=(422,))
async def list_audit_events(request: web.Request) -> web.Response:
    query = request[keys.query]
    found = await list_events(Context.of(request), query, PageRequest.from_query(query))
    return page(request, EVENTS.dump(found.items), found)
