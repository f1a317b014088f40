"""OAuth2 client and token schemas."""

from __future__ import annotations

from typing import Any

from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate, validates_schema

from service.docs import SCOPES
from service.schemas import IdField, PaginationSchema

SCOPE = fields.String(validate=validate.OneOf(tuple(SCOPES)))


def _no_fragment(uri: str) -> None:
    if "#" in uri:
        raise ValidationError("A redirect URI must not contain a fragment.")


class OAuth2ClientSchema(Schema):
    client_id = fields.String(attribute="_id", dump_only=True)
    client_type = fields.String(dump_only=True, metadata={"enum": ["public", "confidential"]})
    redirect_uris = fields.List(fields.String(), dump_only=True)
    default_scopes = fields.List(fields.String(), dump_only=True)
    allowed_scopes = fields.List(fields.String(), dump_only=True)
    user_id = IdField(dump_only=True)
    created = fields.AwareDateTime(dump_only=True)


class CreatedOAuth2ClientSchema(OAuth2ClientSchema):
    client_secret = fields.String(
        dump_only=True, metadata={"description": "Confidential clients only; shown this once, stored hashed."}
    )


class CreateOAuth2ClientSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    client_type = fields.String(required=True, validate=validate.OneOf(("public", "confidential")))
    redirect_uris = fields.List(
        fields.Url(schemes={"http", "https"}, require_tld=False, validate=_no_fragment),
        load_default=list,
        validate=validate.Length(max=20),
    )
    default_scopes = fields.List(SCOPE, load_default=list)
    allowed_scopes = fields.List(SCOPE, required=True, validate=validate.Length(min=1))

    @validates_schema
    def _defaults_are_allowed(self, data: dict[str, Any], **_: Any) -> None:
        if not set(data.get("default_scopes", [])) <= set(data.get("allowed_scopes", [])):
            raise ValidationError(["Default scopes must be a subset of allowed scopes."], "default_scopes")


class ListOAuth2ClientsSchema(PaginationSchema):
    user_id = fields.String(metadata={"description": "Admins only: list this user's clients."})
