"""The repository's HTTP contract (docs/api.md) and the served OpenAPI document describe the same routes."""

from __future__ import annotations

import re
from pathlib import Path

import orjson
from aiohttp.test_utils import TestClient

API_DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"


def contract_routes() -> set[tuple[str, str]]:
    """(method, path) for every row of the contract's route tables."""
    routes = set()
    for methods, path in re.findall(
        r"^\| ((?:GET|POST|PATCH|DELETE)(?:, (?:GET|POST|PATCH|DELETE))*) \| `([^`]+)`", API_DOC.read_text(), re.M
    ):
        for method in methods.split(", "):
            routes.add((method.lower(), path))
    return routes


async def test_every_route_in_the_contract_is_in_the_openapi_document_and_back(client: TestClient) -> None:
    document = orjson.loads(await (await client.get("/api/v1/openapi.json")).read())
    served = {
        (method, path if "servers" in item else f"/api/v1{path}")
        for path, item in document["paths"].items()
        for method in item
        if method in ("get", "post", "patch", "delete")
    }
    contract = contract_routes() - {("get", "/healthz"), ("get", "/readyz"), ("get", "/metrics")}
    assert contract, "no routes found in docs/api.md"
    assert contract - served == set(), "in docs/api.md but not served"
    undocumented = {(m, p) for m, p in served - contract if p not in ("/api/v1/openapi.json",)}
    assert undocumented == set(), "served but not in docs/api.md"
