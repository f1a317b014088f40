"""Schemas shared by every domain: pagination and timestamps."""

from __future__ import annotations

from marshmallow import Schema, fields, validate


class PaginationSchema(Schema):
    offset = fields.Integer(load_default=0, validate=validate.Range(min=0), metadata={"description": "Items to skip."})
    limit = fields.Integer(
        load_default=20, validate=validate.Range(min=1, max=100), metadata={"description": "Items to return (1-100)."}
    )


class IdField(fields.String):
    """A MongoDB ObjectId, shown as its hex string."""

    def _serialize(self, value, attr, obj, **kwargs):  # type: ignore[no-untyped-def]
        return None if value is None else str(value)


class StrictBoolean(fields.Boolean):
    """JSON true/false only; marshmallow's default would also take "yes", 1 or "off"."""

    truthy = frozenset({True})
    falsy = frozenset({False})
