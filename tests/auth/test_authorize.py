"""Authorization code flow with PKCE: the sign-in/consent page, its refusals, and the code exchange."""

from __future__ import annotations

from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
from aiohttp.test_utils import TestClient

from service.auth import authorize
from service.db import utcnow
from tests.helpers import (
    decide,
    exchange,
    get_code,
    open_page,
    pkce,
    query,
    redirect_params,
)


async def test_full_flow_signs_in_and_the_token_works(client: TestClient, seeded) -> None:
    verifier, challenge = pkce()
    response, html = await open_page(client, query(challenge))
    assert response.status == 200
    assert response.content_type == "text/html"
    assert "documentation" in html
    assert "users:read" in html
    assert "<script" not in html
    assert "form-action 'self' http://127.0.0.1:8080" in response.headers["Content-Security-Policy"]
    code = await get_code(client, challenge)
    token = await exchange(client, code, verifier)
    assert token.status == 200
    body = await token.json()
    assert body["scope"] == "users:read"
    me = await client.get("/api/v1/users/me", headers={"Authorization": f"Bearer {body['access_token']}"})
    assert (await me.json())["username"] == "user"


async def test_what_the_request_carries_is_escaped_on_the_page(client: TestClient, seeded) -> None:
    """The page is a template with autoescape: a hostile `state` stays a value, never markup."""
    _, challenge = pkce()
    hostile = '"><script>alert(1)</script><input value="'
    response, html = await open_page(client, query(challenge, state=hostile))
    assert response.status == 200
    assert "<script>" not in html
    assert 'value="&#34;&gt;&lt;script&gt;alert(1)&lt;/script&gt;&lt;input value=&#34;"' in html


async def test_codes_are_stored_hashed(client: TestClient, seeded, db) -> None:
    _, challenge = pkce()
    code = await get_code(client, challenge)
    assert await db.oauth2_codes.count_documents({}) == 1
    assert code not in str(await db.oauth2_codes.find_one({}))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"client_id": "nobody"}, "Unknown client"),
        ({"redirect_uri": "https://evil.example.com/cb"}, "not registered"),
        # A loopback port may vary (RFC 8252 7.3); nothing else about the URI may.
        ({"redirect_uri": "http://127.0.0.1:9/api/v1/static/other.html"}, "not registered"),
        ({"redirect_uri": "http://127.0.0.1:9/api/v1/static/oauth2-redirect.html?x=1"}, "not registered"),
        ({"redirect_uri": "https://127.0.0.1:9/api/v1/static/oauth2-redirect.html"}, "not registered"),
        ({"redirect_uri": "http://127.0.0.2:8080/api/v1/static/oauth2-redirect.html"}, "not registered"),
        ({"redirect_uri": "http://127.0.0.1.evil.example:8080/api/v1/static/oauth2-redirect.html"}, "not registered"),
        ({"redirect_uri": "http://evil@127.0.0.1:8080/api/v1/static/oauth2-redirect.html"}, "not registered"),
        ({"redirect_uri": "http://127.0.0.1:port/api/v1/static/oauth2-redirect.html"}, "not registered"),
        ({"redirect_uri": "http://[::1/api/v1/static/oauth2-redirect.html"}, "not registered"),  # not a URI
        ({"redirect_uri": "http://[vx.evil]/api/v1/static/oauth2-redirect.html"}, "not registered"),
        ({"client_id": ""}, "Unknown client"),
    ],
)
async def test_bad_client_or_redirect_shows_an_error_page_and_never_redirects(
    client: TestClient, seeded, override, message
) -> None:
    _, challenge = pkce()
    response, html = await open_page(client, query(challenge, **override))
    assert response.status == 400
    assert "Location" not in response.headers
    assert message in html


async def test_a_native_app_may_use_any_loopback_port_and_its_code_is_bound_to_that_one(
    client: TestClient, seeded
) -> None:
    """RFC 8252 7.3: a CLI listens on whatever port the OS gives it, so the port of a registered http
    loopback URI may differ; the token request must then name the URI exactly as the code was sent to."""
    verifier, challenge = pkce()
    ephemeral = "http://127.0.0.1:53117/api/v1/static/oauth2-redirect.html"
    _, html = await open_page(client, query(challenge, redirect_uri=ephemeral))
    response = await decide(client, html)
    assert response.status == 303
    location = response.headers["Location"]
    assert location.startswith(f"{ephemeral}?")
    code = parse_qs(urlsplit(location).query)["code"][0]
    registered = await exchange(client, code, verifier)  # the registered port: not where the code went
    assert (await registered.json())["error"] == "invalid_grant"
    sso, _ = await open_page(client, query(challenge, redirect_uri=ephemeral))  # signed in: no form again
    assert sso.headers["Location"].startswith(f"{ephemeral}?")
    code = parse_qs(urlsplit(sso.headers["Location"]).query)["code"][0]
    exchanged = await exchange(client, code, verifier, redirect_uri=ephemeral)
    assert exchanged.status == 200, await exchanged.text()


@pytest.mark.parametrize(
    ("asked", "matches"),
    [
        ("http://[::1]:53117/cb", True),
        ("http://[::1]/cb", True),
        ("http://[::1]x/cb", False),  # urlsplit reads host ::1 in both: the netloc must be exactly host[:port]
        ("http://[::1]evil.example/cb", False),
        ("http://[::1]:1:2/cb", False),
        ("http://[::1]:/cb", False),
        ("https://[::1]:53117/cb", False),
        ("http://[::1]:53117/cb/", False),
    ],
)
def test_only_the_port_of_a_loopback_uri_may_differ(asked: str, matches: bool) -> None:
    assert authorize._registered(asked, ["http://[::1]:8000/cb"]) is matches


async def test_missing_challenge_for_a_public_client_redirects_with_error(client: TestClient, seeded) -> None:
    response, _ = await open_page(client, query(None))
    assert response.status == 302
    params = redirect_params(response)
    assert params["error"] == "invalid_request"
    assert params["state"] == "xyz"


async def test_plain_challenge_is_refused(client: TestClient, seeded) -> None:
    verifier, _ = pkce()
    response, _ = await open_page(client, query(None, code_challenge=verifier, code_challenge_method="plain"))
    assert redirect_params(response)["error"] == "invalid_request"


@pytest.mark.parametrize(
    ("override", "error"),
    [({"response_type": "token"}, "unsupported_response_type"), ({"scope": "root:everything"}, "invalid_scope")],
)
async def test_other_request_errors_redirect(client: TestClient, seeded, override, error) -> None:
    _, challenge = pkce()
    response, _ = await open_page(client, query(challenge, **override))
    assert redirect_params(response)["error"] == error


async def test_deny_redirects_with_access_denied(client: TestClient, seeded, db) -> None:
    _, challenge = pkce()
    _, html = await open_page(client, query(challenge))
    response = await decide(client, html, action="deny")
    assert response.status == 303
    assert redirect_params(response) == {"error": "access_denied", "state": "xyz"}
    assert await db.oauth2_codes.count_documents({}) == 0


async def test_missing_or_wrong_csrf_token_is_refused(client: TestClient, seeded) -> None:
    _, challenge = pkce()
    _, html = await open_page(client, query(challenge))
    forged = await decide(client, html, csrf_token="forged")
    assert forged.status == 403
    client.session.cookie_jar.clear()
    no_cookie = await decide(client, html)
    assert no_cookie.status == 403
    assert "Location" not in no_cookie.headers


async def test_wrong_password_reshows_the_form(client: TestClient, seeded) -> None:
    _, challenge = pkce()
    _, html = await open_page(client, query(challenge))
    response = await decide(client, html, password="nope")
    assert response.status == 400
    text = await response.text()
    assert "Invalid username or password." in text
    assert "csrf_token" in text


async def test_wrong_or_missing_verifier_is_invalid_grant(client: TestClient, seeded) -> None:
    _, challenge = pkce()
    other_verifier, _ = pkce()
    code = await get_code(client, challenge)
    wrong = await exchange(client, code, other_verifier)
    assert wrong.status == 400
    assert (await wrong.json())["error"] == "invalid_grant"
    code2 = await get_code(client, challenge)
    missing = await exchange(client, code2, None)
    assert (await missing.json())["error"] == "invalid_grant"


async def test_reused_code_is_refused_and_revokes_its_tokens(client: TestClient, seeded) -> None:
    verifier, challenge = pkce()
    code = await get_code(client, challenge)
    first = await (await exchange(client, code, verifier)).json()
    again = await exchange(client, code, verifier)
    assert again.status == 400
    assert (await again.json())["error"] == "invalid_grant"
    me = await client.get("/api/v1/users/me", headers={"Authorization": f"Bearer {first['access_token']}"})
    assert me.status == 401


async def test_a_reused_code_revokes_the_refreshes_of_its_token_too(client: TestClient, seeded) -> None:
    """RFC 6749 4.1.2: every token issued on the strength of the code, its refreshed ones included."""
    verifier, challenge = pkce()
    code = await get_code(client, challenge)
    first = await (await exchange(client, code, verifier)).json()
    form = {"grant_type": "refresh_token", "refresh_token": first["refresh_token"], "client_id": "documentation"}
    second = await (await client.post("/auth/oauth2/token", data=form)).json()
    assert (await exchange(client, code, verifier)).status == 400
    me = await client.get("/api/v1/users/me", headers={"Authorization": f"Bearer {second['access_token']}"})
    assert me.status == 401


async def test_expired_code_is_refused(client: TestClient, seeded, db) -> None:
    verifier, challenge = pkce()
    code = await get_code(client, challenge)
    await db.oauth2_codes.update_many({}, {"$set": {"expires_at": utcnow() - timedelta(seconds=1)}})
    response = await exchange(client, code, verifier)
    assert (await response.json())["error"] == "invalid_grant"


async def test_code_is_bound_to_redirect_uri_and_client(client: TestClient, seeded, register_client) -> None:
    verifier, challenge = pkce()
    code = await get_code(client, challenge)
    other_uri = await exchange(
        client, code, verifier, redirect_uri="http://localhost:8080/api/v1/static/oauth2-redirect.html"
    )
    assert (await other_uri.json())["error"] == "invalid_grant"
    code2 = await get_code(client, challenge)
    created = await register_client("user", client_type="public")
    other_client = await exchange(client, code2, verifier, client_id=created["client_id"])
    assert (await other_client.json())["error"] == "invalid_grant"
