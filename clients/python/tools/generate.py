"""Writes `src/restful_api_client/models.py` from the served OpenAPI document.

    python tools/generate.py [--openapi FILE] [--output FILE]

Without `--openapi`, the document comes from `python -m service openapi` (the server's own command, run
with this interpreter, so run it from the server's virtualenv). The output is deterministic: the server's
test suite regenerates it and fails when the committed file drifts from what the server serves.

What it generates: a `TypedDict` per component schema that the SDK's resources use (and every schema they
reference), each JSON Patch operation schema as a union of one `TypedDict` per allowed path, and
`OPERATIONS`, the method and full path of each operation the SDK calls, by its `operationId`, and
`IDEMPOTENCY_KEYED`, the operations whose POST declares an `Idempotency-Key` header.
"""

from __future__ import annotations

import argparse
import json
import keyword
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

# The schemas of users, teams, members and OAuth2 clients, and of the errors and tokens the SDK reads.
ROOTS = (
    "User",
    "Signup",
    "UserPatchOperation",
    "Team",
    "CreateTeam",
    "TeamPatchOperation",
    "Membership",
    "AddMember",
    "MembershipPatchOperation",
    "OAuth2Client",
    "CreateOAuth2Client",
    "CreatedOAuth2Client",
    "Problem",
    "OAuth2Error",
    "TokenResponse",
    "DeviceAuthorization",
)

# The operations the SDK calls (a missing one fails the generation: the server changed under the SDK).
USED_OPERATIONS = (
    "getCurrentUser",
    "getUser",
    "listUsers",
    "createUser",
    "patchUser",
    "listTeams",
    "createTeam",
    "getTeam",
    "patchTeam",
    "deleteTeam",
    "listTeamMembers",
    "addTeamMember",
    "patchTeamMember",
    "removeTeamMember",
    "listOAuth2Clients",
    "createOAuth2Client",
    "getOAuth2Client",
    "deleteOAuth2Client",
    "serverMetadata",
    "token",
    "revokeToken",
    "authorize",
    "deviceAuthorization",
)

HEADER = '''"""Typed shapes of the API's JSON, generated from its OpenAPI document by tools/generate.py.

Do not edit: run `python clients/python/tools/generate.py` from the server's virtualenv instead (the
server's tests fail when this file and the served document disagree). Response objects are `total=False`
where the document marks no field required: read optional members with `.get()`.
"""

from __future__ import annotations

from typing import Any, Final, Literal, Required, TypedDict'''


def load(openapi: Path | None) -> dict[str, Any]:
    if openapi is not None:
        return dict(json.loads(openapi.read_text(encoding="utf-8")))
    output = subprocess.run(  # the server's own command: no shell, fixed arguments
        [sys.executable, "-m", "service", "openapi"], check=True, capture_output=True, text=True
    ).stdout
    return dict(json.loads(output))


def ref_name(ref: str) -> str:
    return ref.rsplit("/", 1)[-1]


def referenced(schema: Any) -> set[str]:
    """Every component name a schema refers to, at any depth."""
    found: set[str] = set()
    if isinstance(schema, dict):
        for key, value in schema.items():
            if key == "$ref" and isinstance(value, str):
                found.add(ref_name(value))
            else:
                found |= referenced(value)
    elif isinstance(schema, list):
        for item in schema:
            found |= referenced(item)
    return found


def closure(schemas: dict[str, Any], roots: tuple[str, ...]) -> list[str]:
    seen: set[str] = set()
    todo = [name for name in roots if name in schemas]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo.extend(sorted(referenced(schemas[name]) - seen))
    return sorted(seen)


def annotation(schema: dict[str, Any]) -> str:
    """The Python type of a JSON schema (string forms: the module uses postponed annotations)."""
    if "$ref" in schema:
        result = ref_name(schema["$ref"])
    elif "allOf" in schema and len(schema["allOf"]) == 1:
        result = annotation(schema["allOf"][0])
    elif "enum" in schema:
        result = "Literal[" + ", ".join(json.dumps(value) for value in schema["enum"]) + "]"
    else:
        kind = schema.get("type")
        if kind == "string":
            result = "str"
        elif kind == "integer":
            result = "int"
        elif kind == "number":
            result = "float"
        elif kind == "boolean":
            result = "bool"
        elif kind == "array":
            result = f"list[{annotation(schema.get('items', {}))}]"
        elif kind == "object" and "properties" not in schema:
            extra = schema.get("additionalProperties")
            result = f"dict[str, {annotation(extra)}]" if isinstance(extra, dict) and extra else "dict[str, Any]"
        else:
            result = "Any"
    if schema.get("nullable"):
        result += " | None"
    return result


WIDTH = 120  # the repository's line length; the output is what `ruff format` leaves unchanged


def exploded_literal(alias: str, schema: dict[str, Any]) -> str:
    values = "".join(f"    {json.dumps(value)},\n" for value in schema["enum"])
    return f"{alias} = Literal[\n{values}]"


def hoist_enums(name: str, field: str, schema: dict[str, Any], aliases: list[str]) -> dict[str, Any]:
    """A field whose enum makes a line too long gets a named Literal alias (`<Schema><Field>`)."""
    target = schema.get("items", schema) if schema.get("type") == "array" else schema
    if "enum" not in target or len(f"    {field}: Required[list[{annotation(target)}]]") <= WIDTH:
        return schema
    alias = name + camel(field)
    aliases.append(exploded_literal(alias, target))
    hoisted = {"$ref": alias, **({"nullable": True} if target.get("nullable") else {})}
    return {**schema, "items": hoisted} if target is not schema else hoisted


def typed_dict(name: str, schema: dict[str, Any]) -> str:
    properties: dict[str, Any] = schema.get("properties", {})
    required = set(schema.get("required", ()))
    total = bool(required) and required >= set(properties)
    description = (schema.get("description") or "").strip()
    aliases: list[str] = []
    lines = [f"class {name}(TypedDict{'' if total else ', total=False'}):"]
    if description:
        text = textwrap.fill(description, WIDTH - 4, initial_indent="    ", subsequent_indent="    ")
        newline = "\n" if "\n" in text else ""
        lines.append(f'    """{text.strip()}{newline}{"    " if newline else ""}"""')
        lines.append("")
    if not properties:
        lines.append("    pass")
    for field in sorted(properties):
        if not field.isidentifier() or keyword.iskeyword(field):
            raise SystemExit(f"{name}.{field}: not a Python identifier; extend the generator")
        kind = annotation(hoist_enums(name, field, properties[field], aliases))
        if not total and field in required:
            kind = f"Required[{kind}]"
        lines.append(f"    {field}: {kind}")
    return "\n\n\n".join([*aliases, "\n".join(lines)])


def camel(path: str) -> str:
    return "".join(part.capitalize() for part in re.split(r"[^A-Za-z0-9]+", path) if part)


def patch_union(name: str, schema: dict[str, Any]) -> str:
    """A JSON Patch operation schema (`oneOf` one object per path): one TypedDict per path, and the union."""
    blocks: list[str] = []
    members: list[str] = []
    for variant in schema["oneOf"]:
        path = variant["properties"]["path"]["enum"]
        member = name.removesuffix("Operation") + camel("_".join(path))
        members.append(member)
        blocks.append(typed_dict(member, variant))
    union = f"{name} = " + " | ".join(members)
    if len(union) > WIDTH:
        union = f"{name} = (\n    " + "\n    | ".join(members) + "\n)"
    blocks.append(union)
    return "\n\n\n".join(blocks)


def operations(document: dict[str, Any]) -> str:
    default = document.get("servers", [{"url": ""}])[0]["url"].rstrip("/")
    rows: dict[str, tuple[str, str]] = {}
    for path, item in document["paths"].items():
        base = item.get("servers", [{"url": default}])[0]["url"].rstrip("/")
        for method, operation in item.items():
            if isinstance(operation, dict) and "operationId" in operation:
                rows[operation["operationId"]] = (method.upper(), base + path)
    missing = sorted(set(USED_OPERATIONS) - set(rows))
    if missing:
        raise SystemExit(f"the document lacks operations the SDK calls: {', '.join(missing)}")
    lines = ["# The method and path (from the site root) of each operation the SDK calls, by operationId."]
    lines.append("OPERATIONS: Final[dict[str, tuple[str, str]]] = {")
    lines.extend(
        f"    {json.dumps(op)}: ({json.dumps(rows[op][0])}, {json.dumps(rows[op][1])}),"
        for op in sorted(USED_OPERATIONS)
    )
    lines.append("}")
    lines.append("")
    lines.append("")
    lines.append("# POSTs that declare an `Idempotency-Key` header: safe to resend after a dropped connection.")
    keyed = sorted(op for op in USED_OPERATIONS if rows[op][0] == "POST" and op in keyed_posts(document))
    lines.append("IDEMPOTENCY_KEYED: Final[frozenset[str]] = frozenset(")
    lines.append("    {" + "".join(f"\n        {json.dumps(op)}," for op in keyed) + ("\n    }" if keyed else "}"))
    lines.append(")")
    return "\n".join(lines)


def keyed_posts(document: dict[str, Any]) -> set[str]:
    found: set[str] = set()
    for item in document["paths"].values():
        shared = item.get("parameters", [])
        for method, operation in item.items():
            if method != "post" or not isinstance(operation, dict):
                continue
            for parameter in [*shared, *operation.get("parameters", [])]:
                if "$ref" in parameter:
                    parameter = document["components"]["parameters"][ref_name(parameter["$ref"])]
                if parameter.get("in") == "header" and parameter.get("name", "").lower() == "idempotency-key":
                    found.add(operation["operationId"])
    return found


def render(document: dict[str, Any]) -> str:
    schemas: dict[str, Any] = document["components"]["schemas"]
    blocks = [HEADER]
    for name in closure(schemas, ROOTS):
        schema = schemas[name]
        blocks.append(patch_union(name, schema) if "oneOf" in schema else typed_dict(name, schema))
    blocks.append(operations(document))
    return "\n\n\n".join(blocks) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--openapi", type=Path, help="the OpenAPI document (JSON); default: python -m service openapi")
    default_output = Path(__file__).resolve().parent.parent / "src" / "restful_api_client" / "models.py"
    parser.add_argument("--output", type=Path, default=default_output)
    args = parser.parse_args(argv)
    args.output.write_text(render(load(args.openapi)), encoding="utf-8")


if __name__ == "__main__":
    main()
