"""Schemas shared by every domain: pagination (offset or cursor), field types, and `load` (422 on a misfit)."""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, ValidationError, fields, validate

from service.errors import ValidationFailed

MAX_OFFSET = 1_000_000_000
CURSOR_PATTERN = r"^[A-Za-z0-9_-]{2,489}\.[A-Za-z0-9_-]{22}$"


class PaginationSchema(Schema):
    offset = fields.Integer(
        load_default=0,
        # The driver takes a 64-bit skip; far beyond any real collection, and never a 500.
        validate=validate.Range(min=0, max=MAX_OFFSET),
        metadata={"description": "Items to skip."},
    )
    after = fields.String(
        validate=validate.Length(min=1, max=512),
        metadata={
            "description": 'Opaque cursor from a previous page\'s `Link: rel="next"`: pages by key, without a '
            "count (no X-Total-Count). Instead of offset (with a non-zero offset it is 422). Signed: only a "
            "cursor this list issued is valid, anything else is 422.",
            # service/pagination.py: base64url(payload) "." base64url(16-byte MAC), unpadded.
            "pattern": CURSOR_PATTERN,
        },
    )
    limit = fields.Integer(
        load_default=20,
        validate=validate.Range(min=1, max=100),
        metadata={"description": "Items to return (1-100)."},
    )


class IdField(fields.String):
    """A MongoDB ObjectId, shown as its hex string."""

    def _serialize(self, value: Any, attr: str | None, obj: Any, **kwargs: Any) -> str | None:
        return None if value is None else str(value)


class StrictBoolean(fields.Boolean):
    """JSON true/false only; marshmallow's default would also take "yes", 1 or "off"."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> bool:
        # A type check, not set membership: 0 == False and 1 == True in Python.
        if type(value) is not bool:
            raise self.make_error("invalid", input=value)
        return value


def load(schema: Any, data: Any) -> Any:
    """Validate `data` with a marshmallow schema; 422 with the field errors when it does not fit."""
    try:
        return schema.load(data)
    except ValidationError as exc:
        messages = exc.messages if isinstance(exc.messages, dict) else {"_schema": exc.messages}
        raise ValidationFailed(_stringify_keys(messages)) from None


def _stringify_keys(messages: Any) -> Any:
    if isinstance(messages, dict):
        return {str(key): _stringify_keys(value) for key, value in messages.items()}
    return messages


class FullMatch(validate.Regexp):
    """`validate.Regexp` that must match the whole value: `re.match` with `$` lets a final newline through
    (`root\n` beside `root`). The pattern itself is what the OpenAPI document shows."""

    def __call__(self, value: Any) -> Any:
        if self.regex.fullmatch(value) is None:
            raise ValidationError(self._format_error(value))
        return value
