"""RFC 6902 JSON Patch with a per-resource whitelist of paths, applied atomically by `jsonpatch`."""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

import jsonpatch
import jsonpointer
from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from service.errors import Conflict, ValidationFailed

OPERATIONS = ("test", "add", "remove", "replace")


class PatchOperationSchema(Schema):
    """One RFC 6902 operation; `move` and `copy` are not offered (they would reach other paths)."""

    op = fields.String(required=True, validate=validate.OneOf(OPERATIONS))
    path = fields.String(required=True, metadata={"example": "/first_name"})
    value = fields.Raw(allow_none=True, metadata={"description": "Required for add, replace and test."})

    @validates_schema(pass_original=True)
    def _value_present(self, data: dict[str, Any], original: Any, **_: Any) -> None:
        if data.get("op") in ("add", "replace", "test") and isinstance(original, dict) and "value" not in original:
            raise ValidationError(["A value is required for this operation."], "value")


def patch_schema(name: str, paths: Iterable[str]) -> type[Schema]:
    """A named schema for one operation restricted to `paths` (documented as an enum in OpenAPI)."""
    allowed = tuple(paths)
    return type(
        name,
        (PatchOperationSchema,),
        {"path": fields.String(required=True, validate=validate.OneOf(allowed))},
    )


def apply(document: dict[str, Any], operations: list[dict[str, Any]]) -> dict[str, Any]:
    """Apply all operations to a copy, or none: a failed `test` is 409, an impossible operation 422."""
    try:
        return jsonpatch.apply_patch(copy.deepcopy(document), operations, in_place=False)
    except jsonpatch.JsonPatchTestFailed as exc:
        raise Conflict(f"A test operation failed: {exc}") from None
    except (jsonpatch.JsonPatchConflict, jsonpatch.InvalidJsonPatch, jsonpointer.JsonPointerException) as exc:
        raise ValidationFailed({"_schema": [str(exc)]}, "The patch cannot be applied.") from None
