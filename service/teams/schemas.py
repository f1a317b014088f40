"""Team and membership schemas."""

from __future__ import annotations

from marshmallow import EXCLUDE, Schema, fields, validate

from service.patch import patch_schema
from service.schemas import IdField, StrictBoolean
from service.users.schemas import BaseUserSchema

TITLE = validate.Length(min=1, max=50)


class TeamSchema(Schema):
    id = IdField(attribute="_id", dump_only=True)
    title = fields.String(dump_only=True)
    created = fields.AwareDateTime(dump_only=True)
    updated = fields.AwareDateTime(dump_only=True)


class CreateTeamSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    title = fields.String(required=True, validate=TITLE, metadata={"example": "Platform"})


class EditableTeamSchema(Schema):
    title = fields.String(required=True, validate=TITLE)


class MembershipSchema(Schema):
    user = fields.Nested(BaseUserSchema, dump_only=True)
    is_leader = fields.Boolean(dump_only=True)
    created = fields.AwareDateTime(dump_only=True)


class AddMemberSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    user_id = fields.String(required=True, validate=validate.Length(min=1, max=64))
    is_leader = StrictBoolean(load_default=False)


class EditableMembershipSchema(Schema):
    is_leader = StrictBoolean(required=True)


TeamPatchOperationSchema = patch_schema(
    "TeamPatchOperationSchema", {"/title": {"type": "string", "minLength": 1, "maxLength": 50}}
)
MembershipPatchOperationSchema = patch_schema("MembershipPatchOperationSchema", {"/is_leader": {"type": "boolean"}})
