"""What an outside attacker's probe found beyond malformed bodies (see test_malformed_input.py): each
test failed before its fix."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Any
from urllib.parse import urlencode

import pytest
from aiohttp.test_utils import TestClient

from service import audit, log
from service.audit import AUDITOR
from service.cache import PRINCIPAL_CACHE
from service.config import Settings
from service.passwords import HASHER
from tests.helpers import decide, open_page, pkce, query, redirect_params

TOKEN = "/auth/oauth2/token"


async def test_an_oversized_username_is_refused_unread_and_never_stored_whole(client: TestClient, seeded, db) -> None:
    name = "a" * 60_000
    form = {"grant_type": "password", "client_id": "documentation", "username": name, "password": "x"}
    response = await client.post(TOKEN, data=form)
    assert response.status == 400
    assert (await response.json())["error"] == "invalid_grant"
    assert await db.login_attempts.count_documents({}) == 0  # no throttle write
    assert "username:" + name not in client.app[PRINCIPAL_CACHE]._entries  # no cached lookup
    await asyncio.gather(*client.app[AUDITOR].pending)  # audit writes run in the background
    stored = await db.audit_events.find({"event": "signin.failure"}).to_list(None)
    assert [len(event["username"]) for event in stored] == [83]  # 80 characters and "..."


async def test_the_sign_in_page_refuses_an_oversized_username_the_same_way(client: TestClient, seeded, db) -> None:
    _, challenge = pkce()
    _, html = await open_page(client, query(challenge))
    response = await decide(client, html, username="b" * 5000)
    assert response.status == 400
    assert "Invalid username or password." in await response.text()
    assert await db.login_attempts.count_documents({}) == 0


@pytest.mark.parametrize("username", ["root\n", "newbie\n", "x\ny"])
async def test_a_username_with_a_newline_cannot_sign_up(client: TestClient, seeded, username: str) -> None:
    body = {"username": username, "email": "twin@example.com", "password": "long enough pw"}
    response = await client.post("/api/v1/users/", json=body)
    assert response.status == 422, await response.text()
    assert "username" in (await response.json())["errors"]


async def test_a_code_challenge_with_a_final_newline_is_refused(client: TestClient, seeded) -> None:
    _, challenge = pkce()
    response = await client.get(
        f"/auth/oauth2/authorize?{urlencode(query(challenge + chr(10)))}", allow_redirects=False
    )
    assert response.status == 302
    assert redirect_params(response)["error"] == "invalid_request"


@pytest.mark.parametrize(
    "uri",
    [
        "http://evil.example\\@localhost/cb",
        "http://evil.example%5C@localhost/cb",
        "https://user:pass@app.example/cb",
        "http://x@127.0.0.1/cb",
        "https://exa_mple.com/cb",
        "https:///cb",
        "https://app.example:99999/cb",
    ],
)
async def test_redirect_uris_with_backslashes_user_info_or_bad_hosts_are_refused(
    client: TestClient, seeded, bearer, uri: str
) -> None:
    body = {"client_type": "public", "allowed_scopes": ["users:read"], "redirect_uris": [uri]}
    response = await client.post("/api/v1/auth/oauth2_clients/", json=body, headers=await bearer("user"))
    assert response.status == 422, await response.text()


async def test_the_sign_in_page_csp_names_the_redirect_origin_rebuilt_from_its_parts(
    client: TestClient, seeded, db
) -> None:
    uri = "https://App.Example:8443/cb?x=1"
    await db.oauth2_clients.update_one({"_id": "documentation"}, {"$push": {"redirect_uris": uri}})
    _, challenge = pkce()
    response, _ = await open_page(client, query(challenge, redirect_uri=uri))
    assert response.status == 200
    assert "form-action 'self' https://app.example:8443;" in response.headers["Content-Security-Policy"]


async def test_a_duplicate_sign_up_costs_no_password_hash(client: TestClient, seeded, monkeypatch) -> None:
    hasher = client.app[HASHER]
    hashed: list[Any] = []
    real_hash = hasher.hash

    async def counting_hash(password: str) -> str:
        hashed.append(password)
        return await real_hash(password)

    monkeypatch.setattr(hasher, "hash", counting_hash)
    for body in (
        {"username": "ROOT", "email": "fresh@example.com", "password": "long enough pw"},
        {"username": "fresh", "email": "ROOT@example.com", "password": "long enough pw"},
    ):
        response = await client.post("/api/v1/users/", json=body)
        assert response.status == 409, await response.text()
    assert hashed == []


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return dataclasses.replace(settings, oauth_rate_limit=0.01, oauth_rate_burst=3)


async def test_sign_up_is_under_the_per_address_limit(client: TestClient, seeded) -> None:
    statuses = []
    for n in range(5):
        body = {"username": f"burst{n}", "email": f"burst{n}@example.com", "password": "long enough pw"}
        response = await client.post("/api/v1/users", json=body)  # the slashless alias counts too
        statuses.append(response.status)
    assert statuses == [201, 201, 201, 429, 429]
    assert response.content_type == "application/problem+json"
    assert int(response.headers["Retry-After"]) > 0


def test_a_username_with_spaces_cannot_forge_fields_of_a_text_audit_line(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="service.audit"):
        audit.record("signin.failure", client_id="documentation", username="x client_id=evil")
    line = log.TextFormatter("%(message)s").format(caplog.records[-1])
    assert 'username="x client_id=evil"' in line
    assert line.count("client_id=") == 2
    assert "client_id=documentation" in line
