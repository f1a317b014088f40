"""The second factor (TOTP, RFC 6238): enrollment, confirmation, the sign-in page's second step, codes used
once, drift, recovery codes, the shared failure budget, the password grant's refusal, removal, and the
secret encrypted at rest."""

from __future__ import annotations

import dataclasses
import os
import stat
from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
from aiohttp.test_utils import TestClient
from cryptography.fernet import Fernet

from service.app import create_app
from service.audit.trail import AUDITOR
from service.config import Settings, SettingsError
from service.crypto import hash_secret
from service.db import utcnow
from service.encryption import KEY_FILE, configured_keys
from tests.helpers import (
    PROBLEM,
    decide,
    enroll_totp,
    exchange,
    form_of,
    jwt_claims,
    open_page,
    pkce,
    query,
    redirect_params,
    steady_step,
    totp_code,
)

TOTP = "/api/v1/users/me/mfa/totp"
CONFIRM = "/api/v1/users/me/mfa/totp/confirm"
RECOVERY = "/api/v1/users/me/mfa/recovery-codes"
TOKEN = "/auth/oauth2/token"
SECOND_FACTOR = "this account signs in with a second factor: use the authorization-code flow"


async def me(client: TestClient, headers: dict[str, str]) -> dict:
    return await (await client.get("/api/v1/users/me", headers=headers)).json()


async def audit_events(client: TestClient, db, event: str) -> list[dict]:
    await client.app[AUDITOR].flush()
    return await db.audit_events.find({"event": event}).to_list(None)


async def password_step(client: TestClient, challenge: str, username: str = "user", password: str = "w"):
    """The sign-in page's first step for an account with a second factor: the code form (in a browser
    without a session: no single sign-on)."""
    client.session.cookie_jar.clear()
    _, html = await open_page(client, query(challenge, scope="openid users:read", nonce="n-1"))
    response = await decide(client, html, username=username, password=password)
    return response, await response.text()


async def code_step(client: TestClient, html: str, code: str):
    form = {**form_of(html), "action": "approve", "otp": code}
    return await client.post("/auth/oauth2/authorize", data=form, allow_redirects=False)


async def sign_in_with_code(client: TestClient, code: str) -> dict:
    """The whole authorization-code flow with password and `code`; the token response."""
    verifier, challenge = pkce()
    response, html = await password_step(client, challenge)
    assert response.status == 200, html
    done = await code_step(client, html, code)
    assert done.status == 303, await done.text()
    tokens = await exchange(client, redirect_params(done)["code"], verifier)
    assert tokens.status == 200, await tokens.text()
    return await tokens.json()


async def test_enrollment_is_inactive_until_a_code_confirms_it(client: TestClient, bearer, db) -> None:
    user = await bearer("user")
    await steady_step()
    started = await client.post(TOTP, json={"current_password": "w"}, headers=user)
    assert started.status == 201, await started.text()
    assert "no-store" in started.headers["Cache-Control"]
    body = await started.json()
    assert set(body) == {"secret", "otpauth_uri", "qr_svg"}
    uri = urlsplit(body["otpauth_uri"])
    assert (uri.scheme, uri.netloc) == ("otpauth", "totp")
    assert parse_qs(uri.query)["secret"] == [body["secret"]]
    assert parse_qs(uri.query)["issuer"] == ["127.0.0.1"]
    assert uri.path.endswith(":user")
    assert body["qr_svg"].startswith('<svg xmlns="http://www.w3.org/2000/svg"')
    assert body["qr_svg"].endswith("</svg>")
    assert (await me(client, user))["mfa"] == {"totp": False, "recovery_codes_left": 0}
    # Not active yet: the password grant still works.
    assert (await client.post(TOKEN, data=_password_form())).status == 200

    wrong = await client.post(
        CONFIRM, json={"code": "000000" if totp_code(body["secret"]) != "000000" else "111111"}, headers=user
    )
    assert wrong.status == 403
    assert wrong.content_type == PROBLEM
    confirmed = await client.post(CONFIRM, json={"code": totp_code(body["secret"])}, headers=user)
    assert confirmed.status == 200, await confirmed.text()
    assert "no-store" in confirmed.headers["Cache-Control"]
    codes = (await confirmed.json())["recovery_codes"]
    assert len(codes) == 10
    assert len(set(codes)) == 10
    assert (await me(client, user))["mfa"] == {"totp": True, "recovery_codes_left": 10}
    assert (await client.post(CONFIRM, json={"code": totp_code(body["secret"], 1)}, headers=user)).status == 409
    again = await client.post(TOTP, json={"current_password": "w"}, headers=user)
    assert again.status == 409  # an active second factor is removed first, never replaced
    assert [len(await audit_events(client, db, name)) for name in ("mfa.totp_enrolled", "mfa.totp_confirmed")] == [1, 1]


async def test_the_secret_is_encrypted_and_recovery_codes_are_digests(client: TestClient, bearer, db, settings) -> None:
    secret, codes = await enroll_totp(client, await bearer("user"))
    stored = await db.users.find_one({"username": "user"})
    assert secret not in str(stored)
    assert secret.lower() not in str(stored).lower()
    assert not any(code in str(stored) or code.replace("-", "") in str(stored) for code in codes)
    assert Fernet(settings.data_encryption_key[0]).decrypt(stored["mfa"]["secret"].encode()).decode() == secret
    assert sorted(stored["mfa"]["recovery_codes"]) == sorted(hash_secret(code.replace("-", "")) for code in codes)
    events = await db.audit_events.find({}).to_list(None)
    assert all(secret not in str(event) for event in events)


async def test_sign_in_with_password_then_code_gives_amr_otp(client: TestClient, bearer, db) -> None:
    secret, _ = await enroll_totp(client, await bearer("user"))
    verifier, challenge = pkce()
    response, html = await password_step(client, challenge)
    assert response.status == 200  # no redirect yet: the code form
    assert 'name="otp"' in html
    assert 'name="password"' not in html
    assert 'name="username"' not in html
    fields = form_of(html)
    assert fields["signin_token"]
    assert "w" not in fields.values()
    assert await db.oauth2_pending_signins.find_one({"_id": fields["signin_token"]}) is None  # stored hashed
    assert await db.oauth2_pending_signins.find_one({"_id": hash_secret(fields["signin_token"])}) is not None
    done = await code_step(client, html, totp_code(secret))
    assert done.status == 303, await done.text()
    params = redirect_params(done)
    assert params["state"] == "xyz"
    tokens = await (await exchange(client, params["code"], verifier)).json()
    claims = jwt_claims(tokens["id_token"])
    assert claims["amr"] == ["pwd", "otp"]
    assert claims["acr"] == "2"
    assert claims["nonce"] == "n-1"
    # The pending sign-in was used up; refreshed tokens keep how the user signed in.
    assert await db.oauth2_pending_signins.count_documents({}) == 0
    form = {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"], "client_id": "documentation"}
    refreshed = await (await client.post(TOKEN, data=form)).json()
    assert jwt_claims(refreshed["id_token"])["amr"] == ["pwd", "otp"]
    discovery = await (await client.get("/.well-known/openid-configuration")).json()
    assert {"amr", "acr"} <= set(discovery["claims_supported"])
    assert discovery["acr_values_supported"] == ["1", "2"]


async def test_without_a_second_factor_amr_is_pwd(client: TestClient, login) -> None:
    tokens = await login("user", "w", "openid")
    claims = jwt_claims(tokens["id_token"])
    assert claims["amr"] == ["pwd"]
    assert claims["acr"] == "1"


async def test_a_code_is_accepted_once(client: TestClient, bearer) -> None:
    user = await bearer("user")
    secret, _ = await enroll_totp(client, user)  # (confirmed with the previous step's code)
    code = totp_code(secret)
    await sign_in_with_code(client, code)
    _, challenge = pkce()
    _response, html = await password_step(client, challenge)
    replayed = await code_step(client, html, code)
    assert replayed.status == 400
    assert "wrong or was already used" in await replayed.text()
    assert 'name="otp"' in await replayed.text()  # the code form again, for another try
    # An older code than the last one used is refused too (the confirmation's).
    assert (await client.post(RECOVERY, json={"code": totp_code(secret, -1)}, headers=user)).status == 403
    assert (await client.post(RECOVERY, json={"code": code}, headers=user)).status == 403


async def test_one_step_of_drift_is_accepted_two_are_not(client: TestClient, bearer, signup, login) -> None:
    await signup("drifty", password="drifty password")
    headers = {"Authorization": f"Bearer {(await login('drifty', 'drifty password'))['access_token']}"}
    await steady_step()
    secret = (await (await client.post(TOTP, json={"current_password": "drifty password"}, headers=headers)).json())[
        "secret"
    ]
    for offset in (-2, 2):
        refused = await client.post(CONFIRM, json={"code": totp_code(secret, offset)}, headers=headers)
        assert refused.status == 403, offset
    assert (await client.post(CONFIRM, json={"code": totp_code(secret, -1)}, headers=headers)).status == 200
    assert (await client.post(RECOVERY, json={"code": totp_code(secret, 1)}, headers=headers)).status == 200


async def test_recovery_codes_are_single_use_and_regenerated(client: TestClient, bearer, db) -> None:
    user = await bearer("user")
    secret, codes = await enroll_totp(client, user)
    tokens = await sign_in_with_code(client, codes[0].upper())  # case and dashes do not matter
    assert jwt_claims(tokens["id_token"])["amr"] == ["pwd", "otp"]
    assert (await me(client, user))["mfa"] == {"totp": True, "recovery_codes_left": 9}
    _, challenge = pkce()
    _, html = await password_step(client, challenge)
    assert (await code_step(client, html, codes[0])).status == 400  # used up
    assert len(await audit_events(client, db, "mfa.recovery_code_used")) == 1

    regenerated = await client.post(RECOVERY, json={"code": totp_code(secret)}, headers=user)
    assert regenerated.status == 200, await regenerated.text()
    fresh = (await regenerated.json())["recovery_codes"]
    assert len(fresh) == 10
    assert not set(fresh) & set(codes)
    assert (await me(client, user))["mfa"]["recovery_codes_left"] == 10
    old = await client.post(RECOVERY, json={"code": codes[1]}, headers=user)
    assert old.status == 403  # the old ones stopped working
    assert (await client.post(RECOVERY, json={"code": fresh[0]}, headers=user)).status == 200
    assert len(await audit_events(client, db, "mfa.recovery_codes_regenerated")) == 2


async def test_eleven_wrong_codes_hit_the_shared_budget(client: TestClient, bearer, db) -> None:
    secret, _ = await enroll_totp(client, await bearer("user"))
    _, challenge = pkce()
    response, html = await password_step(client, challenge)
    assert response.status == 200
    wrong = "000000" if totp_code(secret) != "000000" else "111111"
    for _ in range(10):
        assert (await code_step(client, html, wrong)).status == 400
    throttled = await code_step(client, html, totp_code(secret))  # the 11th check: even a right code
    assert throttled.status == 429
    assert "Too many failed sign-in attempts" in await throttled.text()
    # The right password is throttled too, on the page and at the token endpoint, until the window passes.
    again, _ = await password_step(client, challenge)
    assert again.status == 429
    grant = await client.post(TOKEN, data=_password_form())
    assert grant.status == 429
    assert (await grant.json())["error"] == "slow_down"
    assert int(grant.headers["Retry-After"]) > 0
    assert len(await audit_events(client, db, "mfa.code_rejected")) == 10
    await db.login_attempts.update_one({"_id": "user"}, {"$set": {"window_start": utcnow() - timedelta(days=1)}})
    await sign_in_with_code(client, totp_code(secret))


async def test_wrong_codes_on_the_api_count_too(client: TestClient, bearer) -> None:
    user = await bearer("user")
    secret, _ = await enroll_totp(client, user)
    for _ in range(10):
        assert (await client.post(RECOVERY, json={"code": "999999-not"}, headers=user)).status == 403
    throttled = await client.post(RECOVERY, json={"code": totp_code(secret)}, headers=user)
    assert throttled.status == 429
    assert throttled.content_type == PROBLEM
    assert "Retry-After" in throttled.headers


async def test_the_password_grant_refuses_accounts_with_a_second_factor(client: TestClient, bearer) -> None:
    await enroll_totp(client, await bearer("user"))
    refused = await client.post(TOKEN, data=_password_form())
    assert refused.status == 400
    assert await refused.json() == {"error": "invalid_grant", "error_description": SECOND_FACTOR}
    wrong = await client.post(TOKEN, data=_password_form(password="not the password"))
    assert (await wrong.json())["error_description"] == "Invalid username or password."  # tells nothing more


async def test_the_user_removes_their_second_factor_with_password_and_code(client: TestClient, bearer, db) -> None:
    user = await bearer("user")
    secret, codes = await enroll_totp(client, user)
    remove = "DELETE"
    wrong_password = await client.request(
        remove, TOTP, json={"current_password": "x", "code": totp_code(secret)}, headers=user
    )
    assert wrong_password.status == 403
    wrong_code = await client.request(remove, TOTP, json={"current_password": "w", "code": "12345678"}, headers=user)
    assert wrong_code.status == 403
    assert (await client.request(remove, TOTP, json={"current_password": "w"}, headers=user)).status == 422
    removed = await client.request(remove, TOTP, json={"current_password": "w", "code": codes[3]}, headers=user)
    assert removed.status == 204, await removed.text()
    assert (await me(client, user))["mfa"] == {"totp": False, "recovery_codes_left": 0}
    assert "mfa" not in await db.users.find_one({"username": "user"})
    assert (await client.post(TOKEN, data=_password_form())).status == 200
    again = await client.request(remove, TOTP, json={"current_password": "w", "code": totp_code(secret)}, headers=user)
    assert again.status == 409
    assert (await client.post(RECOVERY, json={"code": totp_code(secret)}, headers=user)).status == 409
    [event] = await audit_events(client, db, "mfa.totp_removed")
    assert event["actor_id"] == event["subject_id"]


async def test_an_admin_removes_a_users_second_factor(client: TestClient, bearer, db) -> None:
    user = await bearer("user")
    await enroll_totp(client, user)
    user_id = (await me(client, user))["id"]
    path = f"/api/v1/users/{user_id}/mfa/totp"
    assert (await client.delete(path, headers=user)).status == 403  # admins only
    admin = await bearer("root")
    seen = await (await client.get(f"/api/v1/users/{user_id}", headers=admin)).json()
    assert seen["mfa"] == {"totp": True, "recovery_codes_left": 10}
    assert (await client.delete(path, headers=admin)).status == 204
    assert (await me(client, user))["mfa"]["totp"] is False
    assert (await client.post(TOKEN, data=_password_form())).status == 200
    assert (await client.delete(path, headers=admin)).status == 204  # nothing left to remove
    assert (await client.delete("/api/v1/users/65f0c0ffee0000000000beef/mfa/totp", headers=admin)).status == 404
    [event] = await audit_events(client, db, "mfa.totp_removed")
    assert event["by_admin"] is True
    assert event["subject_id"] == user_id
    assert event["actor_id"] != user_id


async def test_a_pending_sign_in_is_bound_to_its_request_and_used_once(client: TestClient, bearer) -> None:
    secret, codes = await enroll_totp(client, await bearer("user"))
    _, challenge = pkce()
    _, html = await password_step(client, challenge)
    # The same pending sign-in for another authorization request (another state) is refused.
    foreign = {**form_of(html), "state": "other", "action": "approve", "otp": totp_code(secret)}
    moved = await client.post("/auth/oauth2/authorize", data=foreign, allow_redirects=False)
    assert moved.status == 400
    assert 'name="password"' in await moved.text()
    forged = await code_step(client, html.replace(form_of(html)["signin_token"], "forged-value"), codes[0])
    assert forged.status == 400
    assert "enter your username and password again" in await forged.text()
    done = await code_step(client, html, totp_code(secret))
    assert done.status == 303
    # (the redirect ended the page's CSRF cookie: a new page, in a browser without the session, sets another)
    client.session.cookie_jar.clear()
    _, fresh = await open_page(client, query(challenge, scope="openid users:read", nonce="n-1"))
    reused = await code_step(client, html.replace(form_of(html)["csrf_token"], form_of(fresh)["csrf_token"]), codes[1])
    assert reused.status == 400
    assert 'name="password"' in await reused.text()
    # The CSRF cookie guards the second step as it does the first.
    client.session.cookie_jar.clear()
    assert (await code_step(client, html, codes[2])).status == 403


async def test_no_key_on_a_real_deployment_refuses_to_enable(aiohttp_client, settings, mongo_client, seeded) -> None:
    app = create_app(dataclasses.replace(settings, data_encryption_key=()), mongo_client=mongo_client)
    keyless = await aiohttp_client(app)
    form = {**_password_form(), "scope": "users:write users:read"}
    token = (await (await keyless.post(TOKEN, data=form)).json())["access_token"]
    headers = {"Authorization": f"Bearer {token}"}
    refused = await keyless.post(TOTP, json={"current_password": "w"}, headers=headers)
    assert refused.status == 409
    assert refused.content_type == PROBLEM
    assert "DATA_ENCRYPTION_KEY" in (await refused.json())["detail"]
    assert "mfa" not in await mongo_client[settings.mongodb_db].users.find_one({"username": "user"})


def test_the_embedded_mode_generates_a_private_key_once(tmp_path) -> None:
    embedded = Settings(mongodb_url=None, data_dir=tmp_path / "db")
    [key] = configured_keys(embedded)
    path = tmp_path / "db" / KEY_FILE
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert configured_keys(embedded) == (key,)  # reused across restarts
    Fernet(key.encode())  # a valid key
    given = Fernet.generate_key().decode()
    assert configured_keys(dataclasses.replace(embedded, data_encryption_key=(given,))) == (given,)
    assert configured_keys(Settings(mongodb_url="mongodb://db.example", data_dir=tmp_path / "other")) == ()
    assert not (tmp_path / "other").exists()


@pytest.mark.parametrize("value", ["short", "x" * 44, Fernet.generate_key().decode() + ",nope"])
def test_a_malformed_key_is_refused_at_start(value: str) -> None:
    with pytest.raises(SettingsError, match="DATA_ENCRYPTION_KEY") as refused:
        Settings.from_env({"DATA_ENCRYPTION_KEY": value})
    assert value not in str(refused.value)  # a key, even a broken one, is never repeated
    keys = [Fernet.generate_key().decode() for _ in range(2)]
    assert Settings.from_env({"DATA_ENCRYPTION_KEY": ",".join(keys)}).data_encryption_key == tuple(keys)
    assert keys[0] not in repr(Settings.from_env({"DATA_ENCRYPTION_KEY": keys[0]}))


def _password_form(username: str = "user", password: str = "w") -> dict[str, str]:
    return {"grant_type": "password", "username": username, "password": password, "client_id": "documentation"}
