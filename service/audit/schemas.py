"""Audit event schemas."""

from __future__ import annotations

from marshmallow import Schema, fields, validate

from service.audit.trail import EVENTS
from service.schemas import IdField, PaginationSchema


class AuditEventSchema(Schema):
    id = IdField(attribute="_id", dump_only=True)
    event = fields.String(dump_only=True, metadata={"enum": list(EVENTS)})
    created = fields.AwareDateTime(dump_only=True)
    actor_id = fields.String(dump_only=True, allow_none=True, metadata={"description": "The user who acted."})
    subject_id = fields.String(dump_only=True, allow_none=True, metadata={"description": "The user acted upon."})
    client_id = fields.String(dump_only=True, allow_none=True)
    request_id = fields.String(dump_only=True, allow_none=True)
    client_address = fields.String(dump_only=True, allow_none=True)
    username = fields.String(dump_only=True, metadata={"description": "Sign-in events: the name tried."})
    grant_type = fields.String(dump_only=True, metadata={"description": "token.issued: the grant used."})


class ListAuditEventsSchema(PaginationSchema):
    user_id = fields.String(
        validate=validate.Length(max=64), metadata={"description": "Events where this user acted or was acted upon."}
    )
    event = fields.String(validate=validate.OneOf(EVENTS), metadata={"description": "Only this kind of event."})
