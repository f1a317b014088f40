"""Email verification: the mail sign-up sends, the API that uses its token, the pages its link opens, a
change of address, and what the token endpoint and UserInfo say about it."""

from __future__ import annotations

from datetime import timedelta

import pytest
from aiohttp.test_utils import TestClient

from service import mail
from service.audit import AUDITOR
from service.context import Context
from service.crypto import hash_secret
from service.db import utcnow
from tests.helpers import PROBLEM, hidden_field, link_in, mail_to, token_in, with_current_password

VERIFY = "/api/v1/auth/email-verification"
RESEND = "/api/v1/users/me/email-verification"
INVALID = "This verification link is invalid, used or expired; ask for a new one."


async def signed_up(signup, login, username: str = "jane", **extra: str) -> dict[str, str]:
    """Sign `username` up; Authorization headers for them (every scope)."""
    await signup(username, **extra)
    token = await login(username, "long enough pw")
    return {"Authorization": f"Bearer {token['access_token']}"}


async def me(client: TestClient, headers: dict[str, str]) -> dict:
    response = await client.get("/api/v1/users/me", headers=headers)
    assert response.status == 200
    return await response.json()


async def test_sign_up_mails_a_link_whose_token_verifies_the_address_once(
    client: TestClient, app, db, signup, login
) -> None:
    headers = await signed_up(signup, login)
    assert (await me(client, headers))["email_verified"] is False
    [message] = await mail_to(db, "jane@example.com")
    assert message["subject"] == "Verify your email address"
    link = link_in(message)
    assert link.startswith(f"http://{client.host}:{client.port}/auth/email/verify?token=")
    assert link in message["html"]
    token = token_in(message)
    assert len(token) >= 43  # 32 random bytes, base64url
    stored = await db.mail_tokens.find_one({"purpose": "verify"})
    assert stored["_id"] == hash_secret(token)  # only the digest is kept
    assert token not in str(stored)
    before = (await me(client, headers))["updated"]

    response = await client.post(VERIFY, json={"token": token})
    assert response.status == 204
    user = await me(client, headers)
    assert user["email_verified"] is True
    assert user["updated"] != before
    again = await client.post(VERIFY, json={"token": token})
    assert again.status == 400
    assert again.content_type == PROBLEM
    assert (await again.json())["detail"] == INVALID
    await app[AUDITOR].flush()
    events = [event["event"] for event in await db.audit_events.find().to_list(None)]
    assert {"email.verification_sent", "email.verified", "email.verification_refused"} <= set(events)
    assert all(token not in str(event) for event in await db.audit_events.find().to_list(None))


async def test_unknown_altered_expired_and_foreign_tokens_get_one_answer_and_change_nothing(
    client: TestClient, db, signup, login
) -> None:
    headers = await signed_up(signup, login)
    token = token_in((await mail_to(db, "jane@example.com"))[0])
    altered = token[:-1] + ("A" if token[-1] != "A" else "B")
    reset = await client.post("/api/v1/auth/password-reset", json={"email": "jane@example.com"})
    assert reset.status == 202
    reset_token = token_in((await mail_to(db, "jane@example.com"))[0])
    details = []
    for candidate in ("x" * 43, altered, reset_token):  # unknown, altered, a reset link's (foreign)
        response = await client.post(VERIFY, json={"token": candidate})
        assert response.status == 400
        details.append((await response.json())["detail"])
    await db.mail_tokens.update_one({"_id": hash_secret(token)}, {"$set": {"expires_at": utcnow() - timedelta(1)}})
    expired = await client.post(VERIFY, json={"token": token})
    assert expired.status == 400
    details.append((await expired.json())["detail"])
    assert details == [INVALID] * 4
    assert (await me(client, headers))["email_verified"] is False
    # The verification token is no reset token either.
    foreign = await client.post("/api/v1/auth/password-reset/confirm", json={"token": token, "password": "a new one!"})
    assert foreign.status == 400


@pytest.mark.parametrize("body", [{}, {"token": ""}, {"token": 5}, {"token": "x" * 513}])
async def test_a_malformed_verification_body_is_422(client: TestClient, body) -> None:
    response = await client.post(VERIFY, json=body)
    assert response.status == 422
    assert response.content_type == PROBLEM


async def test_asking_again_is_202_then_429_beyond_three_mails_an_hour(client: TestClient, db, signup, login) -> None:
    headers = await signed_up(signup, login)
    for _ in range(2):  # the sign-up's mail was the first of three
        response = await client.post(RESEND, headers=headers)
        assert response.status == 202
        assert (await response.json())["detail"]
    refused = await client.post(RESEND, headers=headers)
    assert refused.status == 429
    assert refused.content_type == PROBLEM
    assert 3000 < int(refused.headers["Retry-After"]) <= 3601
    assert len(await mail_to(db, "jane@example.com")) == 3
    # Every link sent works until one is used (a resend does not void the earlier ones).
    tokens = [token_in(message) for message in await mail_to(db, "jane@example.com")]
    assert (await client.post(VERIFY, json={"token": tokens[-1]})).status == 204


async def test_asking_again_needs_users_write_and_an_unverified_address(client: TestClient, db, signup, login) -> None:
    await signup("jane")
    read_only = await login("jane", "long enough pw", "users:read")
    response = await client.post(RESEND, headers={"Authorization": f"Bearer {read_only['access_token']}"})
    assert response.status == 403
    assert (await client.post(RESEND)).status == 401
    headers = await signed_up(signup, login, "john")
    assert (
        await client.post(VERIFY, json={"token": token_in((await mail_to(db, "john@example.com"))[0])})
    ).status == 204
    verified = await client.post(RESEND, headers=headers)
    assert verified.status == 409
    assert len(await mail_to(db, "john@example.com")) == 1


async def test_a_new_address_is_unverified_until_its_own_link_is_opened(client: TestClient, db, signup, login) -> None:
    headers = await signed_up(signup, login)
    old_token = token_in((await mail_to(db, "jane@example.com"))[0])
    assert (await client.post(VERIFY, json={"token": old_token})).status == 204
    stale = await client.post(RESEND, headers=headers)  # a link for the old address, before the change
    assert stale.status == 409
    change = with_current_password({"op": "replace", "path": "/email", "value": "jane@elsewhere.org"}, "long enough pw")
    user = await me(client, headers)
    response = await client.patch(f"/api/v1/users/{user['id']}", json=change, headers=headers)
    assert response.status == 200, await response.text()
    assert (await response.json())["email_verified"] is False
    [notice, _] = await mail_to(db, "jane@example.com")
    assert notice["subject"] == "Your email address was changed"
    assert "jane@elsewhere.org" in notice["text"]
    assert "http" not in notice["text"]  # a notice, no link
    [verify] = await mail_to(db, "jane@elsewhere.org")
    assert (await me(client, headers))["email_verified"] is False
    assert (await client.post(VERIFY, json={"token": token_in(verify)})).status == 204
    assert (await me(client, headers))["email_verified"] is True


async def test_a_link_for_a_former_address_verifies_nothing(client: TestClient, db, signup, login) -> None:
    headers = await signed_up(signup, login)
    old_token = token_in((await mail_to(db, "jane@example.com"))[0])
    change = with_current_password({"op": "replace", "path": "/email", "value": "jane@elsewhere.org"}, "long enough pw")
    user = await me(client, headers)
    assert (await client.patch(f"/api/v1/users/{user['id']}", json=change, headers=headers)).status == 200
    response = await client.post(VERIFY, json={"token": old_token})
    assert response.status == 400
    assert (await response.json())["detail"] == INVALID
    assert (await me(client, headers))["email_verified"] is False


async def test_names_are_escaped_in_the_html_part_and_kept_in_the_text(client: TestClient, db, signup) -> None:
    await signup("mallory", first_name='<img src=x onerror="alert(1)">')
    [message] = await mail_to(db, "mallory@example.com")
    assert "<img" not in message["html"]
    assert "&lt;img src=x onerror=&#34;alert(1)&#34;&gt;" in message["html"]
    assert 'Hello <img src=x onerror="alert(1)">,' in message["text"]


@pytest.mark.parametrize(
    "address", ["jane@example.com\r\nBcc: all@example.com", "jane@example.com\n", "ja\rne@example.com"]
)
async def test_line_breaks_in_an_address_are_refused_before_any_mail(client: TestClient, db, address: str) -> None:
    body = {"username": "jane", "email": address, "password": "long enough pw"}
    response = await client.post("/api/v1/users/", json=body)
    assert response.status == 422
    assert await db.outbox.count_documents({}) == 0
    assert await db.users.count_documents({"username": "jane"}) == 0


async def test_the_mail_module_refuses_a_header_with_a_line_break(client: TestClient, app, db) -> None:
    ctx = Context.of_app(app, "http://localhost")
    with pytest.raises(mail.MailError):
        await mail.send(ctx, "a@example.com\r\nBcc: b@example.com", "verify_email", {"name": "x", "link": "y"})
    assert await db.outbox.count_documents({}) == 0


async def test_userinfo_id_token_and_discovery_carry_email_verified(client: TestClient, db, signup, login) -> None:
    await signup("jane")
    token = await login("jane", "long enough pw", "openid email")
    headers = {"Authorization": f"Bearer {token['access_token']}"}
    info = await (await client.get("/auth/oauth2/userinfo", headers=headers)).json()
    assert info["email"] == "jane@example.com"
    assert info["email_verified"] is False
    assert (
        await client.post(VERIFY, json={"token": token_in((await mail_to(db, "jane@example.com"))[0])})
    ).status == 204
    fresh = await login("jane", "long enough pw", "openid email")
    info = await (
        await client.get("/auth/oauth2/userinfo", headers={"Authorization": f"Bearer {fresh['access_token']}"})
    ).json()
    assert info["email_verified"] is True
    from authlib.jose import JsonWebKey, jwt

    keys = JsonWebKey.import_key_set(await (await client.get("/auth/oauth2/jwks")).json())
    assert jwt.decode(fresh["id_token"], keys)["email_verified"] is True
    no_email = await login("jane", "long enough pw", "openid profile")
    info = await (
        await client.get("/auth/oauth2/userinfo", headers={"Authorization": f"Bearer {no_email['access_token']}"})
    ).json()
    assert "email_verified" not in info
    discovery = await (await client.get("/.well-known/openid-configuration")).json()
    assert "email_verified" in discovery["claims_supported"]


async def test_users_stored_before_verification_existed_read_as_unverified(
    client: TestClient, db, seeded, bearer
) -> None:
    await db.users.update_many({}, {"$unset": {"email_verified": ""}})
    user = await me(client, await bearer("user"))
    assert user["email_verified"] is False


# --- the page the link opens -------------------------------------------------------------------------


async def test_the_page_verifies_on_its_button_never_on_the_get(client: TestClient, db, signup, login) -> None:
    headers = await signed_up(signup, login)
    link = link_in((await mail_to(db, "jane@example.com"))[0])
    token = token_in((await mail_to(db, "jane@example.com"))[0])
    path = link.split(f"{client.port}", 1)[1]
    for _ in range(2):  # a mail scanner opening the link twice uses nothing
        page = await client.get(path)
        assert page.status == 200
        assert page.headers["Cache-Control"].startswith("no-store")
        assert "form-action 'self'" in page.headers["Content-Security-Policy"]
        html = await page.text()
        assert 'action="/auth/email/verify"' in html
    assert (await me(client, headers))["email_verified"] is False
    forged = await client.post("/auth/email/verify", data={"token": token, "csrf_token": "forged"})
    assert forged.status == 403
    assert (await me(client, headers))["email_verified"] is False
    done = await client.post(
        "/auth/email/verify", data={"token": token, "csrf_token": hidden_field(html, "csrf_token")}
    )
    assert done.status == 200
    assert "verified" in await done.text()
    assert (await me(client, headers))["email_verified"] is True
    again = await client.post(
        "/auth/email/verify", data={"token": token, "csrf_token": hidden_field(html, "csrf_token")}
    )
    assert again.status == 400
    assert "invalid, used or expired" in await again.text()


async def test_the_page_refuses_a_missing_token_and_a_repeated_field(client: TestClient) -> None:
    assert (await client.get("/auth/email/verify")).status == 400
    page = await client.get("/auth/email/verify?token=abc")
    csrf = hidden_field(await page.text(), "csrf_token")
    repeated = await client.post("/auth/email/verify", data=[("token", "a"), ("token", "b"), ("csrf_token", csrf)])
    assert repeated.status == 400
    not_a_form = await client.post("/auth/email/verify", json={"token": "a"})
    assert not_a_form.status == 400
    assert "text/html" in not_a_form.headers["Content-Type"]


async def test_the_resend_page_makes_decoy_writes_for_an_address_that_gets_no_mail(
    client: TestClient, db, signup, login
) -> None:
    """The page's answer is the same whether the address has an unverified account, a verified one or
    none, and so are its writes (a write that changes something costs more than none): a token no
    account can use and a void message nobody receives. Its limits are per address asked for, whatever
    the account has spent elsewhere (jane's sign-up took one of her account's three mails)."""
    await signup("jane")
    await signup("vera")
    await db.users.update_one({"username": "vera"}, {"$set": {"email_verified": True}})
    csrf = hidden_field(await (await client.get("/auth/email/resend")).text(), "csrf_token")
    added: list[tuple[int, int, int]] = []
    for name in ["jane", "nobody", "vera"] * 3 + ["jane"]:
        tokens, messages = await db.mail_tokens.count_documents({}), await db.outbox.count_documents({})
        sent = await client.post("/auth/email/resend", data={"email": f"{name}@example.com", "csrf_token": csrf})
        stored = await db.mail_tokens.count_documents({}) - tokens, await db.outbox.count_documents({}) - messages
        added.append((sent.status, *stored))
    assert added == [(200, 1, 1)] * 9 + [(429, 0, 0)]
    assert [m["subject"] for m in await mail_to(db, "jane@example.com")] == ["Verify your email address"] * 4
    assert len(await mail_to(db, "vera@example.com")) == 1  # her sign-up's
    assert await mail_to(db, "nobody@example.com") == []
    voids = await db.outbox.find({"state": "void"}).to_list(None)
    assert [(m["to"], m["subject"]) for m in voids] == [("", "Verify your email address")] * 6
    accounts = [u["_id"] for u in await db.users.find({}, {"_id": 1}).to_list(None)]
    stand_ins = await db.mail_tokens.find({"user_id": {"$nin": accounts}}).to_list(None)
    assert sorted(t["email_key"] for t in stand_ins) == ["nobody@example.com"] * 3 + ["vera@example.com"] * 3
