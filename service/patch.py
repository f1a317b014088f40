"""RFC 6902 JSON Patch with a per-resource whitelist of paths, applied atomically by `jsonpatch`."""

from __future__ import annotations

import copy
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, TypeVar

import jsonpatch
import jsonpointer
from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate, validates_schema

from service.errors import Conflict, PreconditionFailed, ValidationFailed

T = TypeVar("T")

OPERATIONS = ("test", "add", "replace")
_DOCUMENTED: dict[str, dict[str, Any]] = {}


class PatchOperationSchema(Schema):
    """One RFC 6902 operation. Every editable field is required, so `remove` could only fail, and
    `move`/`copy` would reach other paths: they are not offered. Members an operation does not
    define are ignored, as RFC 6902 section 4 requires."""

    class Meta:
        unknown = EXCLUDE

    op = fields.String(required=True, validate=validate.OneOf(OPERATIONS))
    path = fields.String(required=True, metadata={"example": "/first_name"})
    value = fields.Raw(allow_none=True, metadata={"description": "Required for add, replace and test."})

    test_only: frozenset[str] = frozenset()

    @validates_schema(pass_original=True)
    def _value_present(self, data: dict[str, Any], original: Any, **_: Any) -> None:
        if isinstance(original, dict) and "value" not in original:
            raise ValidationError(["A value is required for this operation."], "value")
        if data.get("path") in self.test_only and data.get("op") != "test":
            raise ValidationError([f"{data['path']} can only be tested."], "op")


def patch_schema(name: str, values: Mapping[str, dict[str, Any]], *, test_only: Iterable[str] = ()) -> type[Schema]:
    """A named schema for one operation on one of the `values` paths (each with its JSON Schema).

    Validation uses the marshmallow schema; the OpenAPI document gets a precise `oneOf` per path
    (see `documented_operations`), so generated clients and fuzzers send values of the right type.
    """
    allowed = tuple(values)
    probes = frozenset(test_only)
    _DOCUMENTED[name.removesuffix("Schema")] = {
        "oneOf": [
            {
                "type": "object",
                "properties": {
                    "op": {"type": "string", "enum": ["test"] if path in probes else list(OPERATIONS)},
                    "path": {"type": "string", "enum": [path]},
                    "value": value,
                },
                "required": ["op", "path", "value"],
            }
            for path, value in values.items()
        ]
    }
    return type(
        name,
        (PatchOperationSchema,),
        {"path": fields.String(required=True, validate=validate.OneOf(allowed)), "test_only": probes},
    )


def documented_operations() -> dict[str, dict[str, Any]]:
    """OpenAPI component schemas for the patch operations, by component name."""
    return _DOCUMENTED


def is_blind(operations: list[dict[str, Any]], expected_version: int | None) -> bool:
    """True when the outcome cannot depend on the stored state: only add/replace, and no If-Match.

    Such a patch may be written without the version guard (last writer wins, as the caller asked by
    sending no If-Match); one with a `test` or an If-Match must apply to exactly the version it read."""
    return expected_version is None and all(op["op"] in ("add", "replace") for op in operations)


# How often a patch without If-Match is re-applied to a document that keeps changing under it.
ATTEMPTS = 10


async def optimistically(attempt: Callable[[], Awaitable[T | None]], expected_version: int | None, what: str) -> T:
    """Optimistic concurrency, the one way every PATCH does it.

    `attempt()` reads the document, applies the patch and writes it only if the stored version is still
    the one it read; it returns None when a concurrent write won. With If-Match that is 412 at once
    (the caller's precondition no longer holds); without, the patch is applied again to the fresh
    document, up to ATTEMPTS times, then 409: a concurrent change is never overwritten unseen."""
    for _ in range(ATTEMPTS):
        result = await attempt()
        if result is not None:
            return result
        if expected_version is not None:
            raise PreconditionFailed(f"The {what} changed while the patch was applied.")
    raise Conflict(f"The {what} keeps changing; read it again and retry.")


def touched(operations: list[dict[str, Any]]) -> set[str]:
    """The top-level fields the operations write."""
    return {op["path"].lstrip("/").split("/", 1)[0] for op in operations if op["op"] != "test"}


def apply(document: dict[str, Any], operations: list[dict[str, Any]]) -> dict[str, Any]:
    """Apply all operations to a copy, or none: a failed `test` is 409, an impossible operation 422."""
    try:
        patched: dict[str, Any] = jsonpatch.apply_patch(copy.deepcopy(document), operations, in_place=False)
        return patched
    except jsonpatch.JsonPatchTestFailed as exc:
        raise Conflict(f"A test operation failed: {exc}") from None
    except (jsonpatch.JsonPatchConflict, jsonpatch.InvalidJsonPatch, jsonpointer.JsonPointerException) as exc:
        raise ValidationFailed({"_schema": [str(exc)]}, "The patch cannot be applied.") from None
