"""Password reset by mail: one answer whatever the address, the hourly limits, single-use short-lived
tokens voided by newer mails and password changes, every token revoked, and the pages."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import statistics
import time
from datetime import timedelta
from ipaddress import ip_network

import pytest
from aiohttp.test_utils import TestClient

from service.audit import AUDITOR
from service.config import Settings
from service.crypto import hash_secret
from service.db import utcnow
from tests.helpers import PROBLEM, enroll_totp, hidden_field, link_in, mail_to, token_in, with_current_password

RESET = "/api/v1/auth/password-reset"
CONFIRM = "/api/v1/auth/password-reset/confirm"
ACCEPTED = {"detail": "If an account has this address, a link to choose a new password is on its way."}
INVALID = "This password reset link is invalid, used or expired; ask for a new one."


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The test client's requests come from 127.0.0.1, trusted as a proxy so a test can speak for many
    client addresses through X-Forwarded-For."""
    return dataclasses.replace(settings, trusted_proxies=(ip_network("127.0.0.1/32"),))


def origin(n: int) -> dict[str, str]:
    return {"X-Forwarded-For": f"10.0.{n // 250}.{n % 250 + 1}"}


async def ask(client: TestClient, email: str, headers: dict[str, str] | None = None):
    return await client.post(RESET, json={"email": email}, headers=headers or {})


async def password_grant(client: TestClient, username: str, password: str):
    form = {"grant_type": "password", "username": username, "password": password, "client_id": "documentation"}
    return await client.post("/auth/oauth2/token", data=form)


async def test_a_known_and_an_unknown_address_get_the_same_answer(client: TestClient, db, signup) -> None:
    await signup("jane")
    answers = []
    for email in ("jane@example.com", "nobody@example.com", "JANE@EXAMPLE.COM"):
        response = await ask(client, email)
        assert response.status == 202
        answers.append((response.headers["Content-Type"], await response.read(), sorted(response.headers)))
    assert answers[0] == answers[1] == answers[2]
    assert await response.json() == ACCEPTED
    assert await mail_to(db, "nobody@example.com") == []
    mails = await mail_to(db, "jane@example.com")
    assert [message["subject"] for message in mails] == ["Choose a new password"] * 2 + ["Verify your email address"]
    assert link_in(mails[0]).startswith(f"http://{client.host}:{client.port}/auth/password/reset?token=")
    # the newer mail voided the older
    assert await db.mail_tokens.count_documents({"purpose": "reset", "email_key": "jane@example.com"}) == 1


async def delivered(db) -> None:
    """Wait until the background sender has delivered what was queued: its work (after an answer to a
    known address) must not land in the next measured request."""
    for _ in range(500):
        if not await db.outbox.count_documents({"state": {"$in": ["queued", "sending"]}}):
            return
        await asyncio.sleep(0.005)
    raise AssertionError("the outbox did not drain")


async def test_known_and_unknown_addresses_take_the_same_time(client: TestClient, db, signup) -> None:
    """Same work either way (counters, lookup, a token made, the mail rendered, the same writes): the
    median answer times stay within a small margin of each other."""
    for i in range(12):
        await signup(f"known{i}")
    timings: dict[str, list[float]] = {"known": [], "unknown": []}
    for round_ in range(3):
        for i in range(12):
            kinds = ("known", "unknown") if (round_ + i) % 2 else ("unknown", "known")
            for kind in kinds:
                await delivered(db)
                started = time.perf_counter()
                response = await ask(client, f"{kind}{i}@example.com", origin(round_ * 100 + i * 2 + (kind == "known")))
                timings[kind].append(time.perf_counter() - started)
                assert response.status == 202
    known, unknown = statistics.median(timings["known"]), statistics.median(timings["unknown"])
    assert abs(known - unknown) < max(0.002, 0.35 * min(known, unknown)), (known, unknown)
    assert await db.outbox.count_documents({"subject": "Choose a new password", "state": "sent"}) == 36


async def test_an_unknown_address_gets_decoy_writes_of_the_same_kinds(client: TestClient, db, signup) -> None:
    """A write that changes nothing is cheaper than one that does (no journal flush, no majority to wait
    for), so an unknown address gets real writes: a token stored for an account id no account has, the
    newer request's deleting the older one, and the mail stored as a void message nobody receives."""
    await signup("jane")
    await delivered(db)
    added: list[tuple[int, int]] = []
    for name in ("jane", "nobody", "jane", "nobody"):
        tokens, messages = await db.mail_tokens.count_documents({}), await db.outbox.count_documents({})
        assert (await ask(client, f"{name}@example.com", origin(len(added)))).status == 202
        added.append(
            (await db.mail_tokens.count_documents({}) - tokens, await db.outbox.count_documents({}) - messages)
        )
    assert added == [(1, 1), (1, 1), (0, 1), (0, 1)]  # a second request's token replaces the first's
    decoy = await db.mail_tokens.find_one({"purpose": "reset", "email_key": "nobody@example.com"})
    assert decoy is not None
    assert await db.users.find_one({"_id": decoy["user_id"]}) is None
    await delivered(db)
    voids = await db.outbox.find({"state": "void"}).to_list(None)
    assert [(m["to"], m["attempts"], m["subject"]) for m in voids] == [("", 0, "Choose a new password")] * 2
    assert all(m["expires_at"] <= m["created"] + timedelta(minutes=1) for m in voids)  # then the TTL index takes it
    assert await mail_to(db, "nobody@example.com") == []


async def test_one_address_gets_at_most_three_mails_an_hour(client: TestClient, db, signup) -> None:
    await signup("jane")
    statuses = [(await ask(client, "jane@example.com", origin(i))).status for i in range(8)]
    assert statuses == [202] * 3 + [429] * 5
    refused = await ask(client, "Jane@Example.com", origin(50))
    assert refused.status == 429
    assert refused.content_type == PROBLEM
    assert 3000 < int(refused.headers["Retry-After"]) <= 3601
    assert len([m for m in await mail_to(db, "jane@example.com") if m["subject"] == "Choose a new password"]) == 3
    # An address without an account is limited the same way, so a 429 tells nothing either.
    assert [(await ask(client, "nobody@example.com", origin(60 + i))).status for i in range(4)] == [202] * 3 + [429]


async def test_one_client_address_gets_at_most_ten_requests_an_hour(client: TestClient, db, signup) -> None:
    await signup("jane")
    statuses = [(await ask(client, f"someone{i}@example.com", origin(7))).status for i in range(10)]
    assert statuses == [202] * 10
    refused = await ask(client, "jane@example.com", origin(7))
    assert refused.status == 429
    assert "Retry-After" in refused.headers
    assert [m["subject"] for m in await mail_to(db, "jane@example.com")] == ["Verify your email address"]
    assert (await ask(client, "jane@example.com", origin(8))).status == 202  # another address still may


async def test_a_reset_changes_the_password_and_revokes_every_token(
    client: TestClient, app, db, signup, seeded
) -> None:
    await signup("jane")
    old = await (await password_grant(client, "jane", "long enough pw")).json()
    headers = {"Authorization": f"Bearer {old['access_token']}"}
    assert (await client.get("/api/v1/users/me", headers=headers)).status == 200
    assert (await ask(client, "jane@example.com")).status == 202
    token = token_in((await mail_to(db, "jane@example.com"))[0])
    assert await db.mail_tokens.find_one({"_id": hash_secret(token)}) is not None

    response = await client.post(CONFIRM, json={"token": token, "password": "a brand new one"})
    assert response.status == 204
    assert (await client.get("/api/v1/users/me", headers=headers)).status == 401
    refresh = {"grant_type": "refresh_token", "refresh_token": old["refresh_token"], "client_id": "documentation"}
    assert (await client.post("/auth/oauth2/token", data=refresh)).status == 400
    assert (await password_grant(client, "jane", "long enough pw")).status == 400
    fresh = await password_grant(client, "jane", "a brand new one")
    assert fresh.status == 200
    me = await client.get(
        "/api/v1/users/me", headers={"Authorization": f"Bearer {(await fresh.json())['access_token']}"}
    )
    assert (await me.json())["email_verified"] is True  # the link proved the address
    again = await client.post(CONFIRM, json={"token": token, "password": "yet another one"})
    assert again.status == 400
    assert (await again.json())["detail"] == INVALID
    await app[AUDITOR].flush()
    events = [event["event"] for event in await db.audit_events.find().to_list(None)]
    assert {"password.reset_requested", "password.reset_completed", "password.reset_refused"} <= set(events)
    assert all(token not in str(event) for event in await db.audit_events.find().to_list(None))


async def test_unknown_altered_expired_and_foreign_tokens_are_refused_alike(
    client: TestClient, db, signup, seeded
) -> None:
    await signup("jane")
    verify_token = token_in((await mail_to(db, "jane@example.com"))[0])
    assert (await ask(client, "jane@example.com")).status == 202
    token = token_in((await mail_to(db, "jane@example.com"))[0])
    altered = token[:-1] + ("A" if token[-1] != "A" else "B")
    details = []
    for candidate in ("x" * 43, altered, verify_token):
        response = await client.post(CONFIRM, json={"token": candidate, "password": "a brand new one"})
        assert response.status == 400
        details.append((await response.json())["detail"])
    await db.mail_tokens.update_one(
        {"_id": hash_secret(token)}, {"$set": {"expires_at": utcnow() - timedelta(seconds=1)}}
    )
    expired = await client.post(CONFIRM, json={"token": token, "password": "a brand new one"})
    details.append((await expired.json())["detail"])
    assert details == [INVALID] * 4
    assert (await password_grant(client, "jane", "long enough pw")).status == 200  # nothing changed


async def test_a_newer_mail_voids_the_older_link(client: TestClient, db, signup) -> None:
    await signup("jane")
    assert (await ask(client, "jane@example.com")).status == 202
    first = token_in((await mail_to(db, "jane@example.com"))[0])
    assert (await ask(client, "jane@example.com")).status == 202
    second = token_in((await mail_to(db, "jane@example.com"))[0])
    assert first != second
    assert (await client.post(CONFIRM, json={"token": first, "password": "a brand new one"})).status == 400
    assert (await client.post(CONFIRM, json={"token": second, "password": "a brand new one"})).status == 204


async def test_a_password_change_voids_the_links_mailed_before_it(client: TestClient, db, signup, seeded) -> None:
    user = await signup("jane")
    assert (await ask(client, "jane@example.com")).status == 202
    token = token_in((await mail_to(db, "jane@example.com"))[0])
    signed_in = await (await password_grant(client, "jane", "long enough pw")).json()
    change = with_current_password(
        {"op": "replace", "path": "/password", "value": "changed by patch"}, "long enough pw"
    )
    headers = {"Authorization": f"Bearer {signed_in['access_token']}"}
    assert (await client.patch(f"/api/v1/users/{user['id']}", json=change, headers=headers)).status == 200
    response = await client.post(CONFIRM, json={"token": token, "password": "a brand new one"})
    assert response.status == 400
    assert (await password_grant(client, "jane", "changed by patch")).status == 200


async def test_a_link_that_raced_a_password_change_still_changes_nothing(
    client: TestClient, db, signup, seeded
) -> None:
    """The token document outlived the change (a write between the void and the change): the generation
    it was issued against decides."""
    await signup("jane")
    assert (await ask(client, "jane@example.com")).status == 202
    token = token_in((await mail_to(db, "jane@example.com"))[0])
    await db.users.update_one({"username": "jane"}, {"$inc": {"token_generation": 1}})
    assert (await client.post(CONFIRM, json={"token": token, "password": "a brand new one"})).status == 400
    assert (await password_grant(client, "jane", "long enough pw")).status == 200


async def test_a_deactivated_account_gets_no_mail_and_its_links_stop_working(client: TestClient, db, signup) -> None:
    await signup("jane")
    assert (await ask(client, "jane@example.com")).status == 202
    token = token_in((await mail_to(db, "jane@example.com"))[0])
    await db.users.update_one({"username": "jane"}, {"$set": {"is_active": False}})
    assert (await ask(client, "jane@example.com")).status == 202
    assert len(await mail_to(db, "jane@example.com")) == 2  # the sign-up's and the first reset's
    assert (await client.post(CONFIRM, json={"token": token, "password": "a brand new one"})).status == 400


@pytest.mark.parametrize(
    "body",
    [
        {"token": "t" * 43, "password": "short"},
        {"token": "t" * 43, "password": "p" * 1025},
        {"token": "t" * 43},
        {"password": "long enough pw"},
        {"token": "", "password": "long enough pw"},
    ],
)
async def test_a_bad_confirmation_body_is_422(client: TestClient, body) -> None:
    response = await client.post(CONFIRM, json=body)
    assert response.status == 422
    assert response.content_type == PROBLEM


@pytest.mark.parametrize(
    "email",
    ["jane@example.com\r\nBcc: all@example.com", "jane@example.com\n", "not an address", "", "a" * 250 + "@x.io"],
)
async def test_a_bad_address_is_422_and_queues_nothing(client: TestClient, db, email: str) -> None:
    response = await ask(client, email)
    assert response.status == 422
    assert await db.outbox.count_documents({}) == 0


async def test_the_token_in_a_link_is_never_logged(client: TestClient, db, signup, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.INFO, logger="aiohttp.access")  # before the first connection: aiohttp asks then
    await signup("jane")
    assert (await ask(client, "jane@example.com")).status == 202
    link = link_in((await mail_to(db, "jane@example.com"))[0])
    token = token_in((await mail_to(db, "jane@example.com"))[0])
    path = link.split(str(client.port), 1)[1]
    assert (await client.get(path)).status == 200
    page = await client.get(path)
    csrf = hidden_field(await page.text(), "csrf_token")
    form = {"token": token, "password": "a brand new one", "password_again": "a brand new one", "csrf_token": csrf}
    assert (await client.post("/auth/password/reset", data=form)).status == 200
    assert (await client.post(CONFIRM, json={"token": token, "password": "a brand new one"})).status == 400
    access = [record.getMessage() for record in caplog.records if record.name == "aiohttp.access"]
    assert any("/auth/password/reset" in line for line in access)
    # Development delivery (no SMTP_URL) logs its links on purpose; nothing else may hold the token.
    others = [record for record in caplog.records if record.name != "service.mail"]
    assert not [record.getMessage() for record in others if token in str(vars(record))]


# --- the pages ----------------------------------------------------------------------------------------


async def test_the_sign_in_page_links_to_the_forgot_password_page(client: TestClient, seeded) -> None:
    from tests.helpers import open_page, query

    _, html = await open_page(client, query(None, code_challenge="x" * 43, code_challenge_method="S256"))
    assert '<a id="forgot" href="/auth/password/forgot">Forgot password?</a>' in html


async def test_the_forgot_page_answers_alike_and_the_reset_page_sets_the_password(
    client: TestClient, db, signup, seeded
) -> None:
    await signup("jane")
    page = await client.get("/auth/password/forgot")
    assert page.status == 200
    assert page.headers["Cache-Control"].startswith("no-store")
    csrf = hidden_field(await page.text(), "csrf_token")
    answers = []
    for email in ("nobody@example.com", "jane@example.com"):
        response = await client.post("/auth/password/forgot", data={"email": email, "csrf_token": csrf})
        assert response.status == 200
        answers.append(await response.text())
    assert answers[0] == answers[1]
    assert "If an account has this address" in answers[0]
    forged = await client.post("/auth/password/forgot", data={"email": "jane@example.com", "csrf_token": "forged"})
    assert forged.status == 403
    invalid = await client.post("/auth/password/forgot", data={"email": "no address", "csrf_token": csrf})
    assert invalid.status == 400
    assert "Not a valid email address." in await invalid.text()

    link = link_in((await mail_to(db, "jane@example.com"))[0])
    reset_page = await client.get(link.split(str(client.port), 1)[1])
    html = await reset_page.text()
    token, csrf = hidden_field(html, "token"), hidden_field(html, "csrf_token")
    differ = {"token": token, "password": "a brand new one", "password_again": "another", "csrf_token": csrf}
    assert (await client.post("/auth/password/reset", data=differ)).status == 400
    short = {**differ, "password": "short", "password_again": "short"}
    assert (await client.post("/auth/password/reset", data=short)).status == 400
    assert (await password_grant(client, "jane", "long enough pw")).status == 200  # still the old one
    done = await client.post("/auth/password/reset", data={**differ, "password_again": "a brand new one"})
    assert done.status == 200
    assert "Your password is changed" in await done.text()
    assert (await password_grant(client, "jane", "a brand new one")).status == 200
    used = await client.post("/auth/password/reset", data={**differ, "password_again": "a brand new one"})
    assert used.status == 400
    assert "invalid, used or expired" in await used.text()


async def test_the_forgot_page_shows_the_limit(client: TestClient, db) -> None:
    page = await client.get("/auth/password/forgot")
    csrf = hidden_field(await page.text(), "csrf_token")
    statuses = []
    for _ in range(4):
        response = await client.post("/auth/password/forgot", data={"email": "jane@example.com", "csrf_token": csrf})
        statuses.append(response.status)
    assert statuses == [200, 200, 200, 429]
    assert "Retry-After" in response.headers
    assert "text/html" in response.headers["Content-Type"]


@pytest.mark.smtp
async def test_the_reset_mail_arrives_over_smtp_and_its_link_works(client: TestClient, db, signup, smtp_server) -> None:
    await signup("jane")
    [verification] = await smtp_server.wait_for(1)
    assert verification["To"] == "jane@example.com"
    assert verification["Subject"] == "Verify your email address"
    assert (await ask(client, "jane@example.com")).status == 202
    _, message = await smtp_server.wait_for(2)
    assert message["Subject"] == "Choose a new password"
    text, html = message.iter_parts()
    found = re.search(r"/auth/password/reset\?token=([A-Za-z0-9_-]+)", text.get_content())
    assert found
    token = found.group(1)
    assert f"token={token}" in html.get_content()
    assert (await client.post(CONFIRM, json={"token": token, "password": "a brand new one"})).status == 204
    assert (await client.post(CONFIRM, json={"token": token, "password": "a brand new one"})).status == 400


async def test_a_reset_leaves_the_second_factor_in_place(client: TestClient, db, seeded, bearer) -> None:
    await enroll_totp(client, await bearer("user"))
    assert (await ask(client, "user@example.com")).status == 202
    token = token_in((await mail_to(db, "user@example.com"))[0])
    assert (await client.post(CONFIRM, json={"token": token, "password": "a brand new one"})).status == 204
    refused = await password_grant(client, "user", "a brand new one")
    assert refused.status == 400
    assert "second factor" in (await refused.json())["error_description"]
