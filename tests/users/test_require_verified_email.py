"""REQUIRE_VERIFIED_EMAIL=true: a right password of an account whose address is not verified gets no
token (invalid_grant saying why), and the sign-in page offers the verification mail again."""

from __future__ import annotations

import dataclasses

import pytest
from aiohttp.test_utils import TestClient

from service.config import Settings
from tests.helpers import decide, hidden_field, mail_to, open_page, pkce, query, token_in

TOKEN = "/auth/oauth2/token"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return dataclasses.replace(settings, require_verified_email=True)


def grant(username: str, password: str) -> dict[str, str]:
    return {"grant_type": "password", "username": username, "password": password, "client_id": "documentation"}


async def test_an_unverified_address_gets_no_token_until_verified(client: TestClient, db, seeded, signup) -> None:
    await signup("jane")
    refused = await client.post(TOKEN, data=grant("jane", "long enough pw"))
    assert refused.status == 400
    body = await refused.json()
    assert body["error"] == "invalid_grant"
    assert "not verified" in body["error_description"]
    wrong = await client.post(TOKEN, data=grant("jane", "a wrong password"))
    assert (await wrong.json())["error_description"] == "Invalid username or password."  # says nothing more
    token = token_in((await mail_to(db, "jane@example.com"))[0])
    assert (await client.post("/api/v1/auth/email-verification", json={"token": token})).status == 204
    assert (await client.post(TOKEN, data=grant("jane", "long enough pw"))).status == 200


async def test_the_sign_in_page_says_why_and_offers_the_mail_again(client: TestClient, db, seeded, signup) -> None:
    await signup("jane")
    _, challenge = pkce()
    _, html = await open_page(client, query(challenge))
    response = await decide(client, html, username="jane", password="long enough pw")
    assert response.status == 400
    page = await response.text()
    assert "not verified" in page
    assert '<a id="resend" href="/auth/email/resend">' in page
    wrong = await decide(client, html, username="jane", password="not the password")
    assert 'id="resend"' not in await wrong.text()

    resend = await client.get("/auth/email/resend")
    csrf = hidden_field(await resend.text(), "csrf_token")
    answers = []
    for email in ("jane@example.com", "nobody@example.com"):
        sent = await client.post("/auth/email/resend", data={"email": email, "csrf_token": csrf})
        assert sent.status == 200
        answers.append(await sent.text())
    assert answers[0] == answers[1]
    assert len(await mail_to(db, "jane@example.com")) == 2
    assert await mail_to(db, "nobody@example.com") == []
    newest = token_in((await mail_to(db, "jane@example.com"))[0])
    assert (await client.post("/api/v1/auth/email-verification", json={"token": newest})).status == 204
    approved = await decide(client, html, username="jane", password="long enough pw")
    assert approved.status == 303
    assert "code=" in approved.headers["Location"]


async def test_a_verified_account_signs_in_and_fixture_accounts_start_unverified(
    client: TestClient, db, seeded
) -> None:
    await db.users.update_one({"username": "user"}, {"$set": {"email_verified": True}})
    assert (await client.post(TOKEN, data=grant("user", "w"))).status == 200
    assert (await client.post(TOKEN, data=grant("root", "q"))).status == 400  # fixtures start unverified
