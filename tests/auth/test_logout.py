"""RP-Initiated Logout 1.0 at /auth/oauth2/logout: who is signed out at once, who is asked, and where the
browser may be sent afterwards (only a registered post_logout_redirect_uri, never another)."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest
from aiohttp.test_utils import TestClient

from tests.auth.test_sessions import authorize, sign_in, tokens
from tests.helpers import form_of, redirect_params

LOGOUT = "/auth/oauth2/logout"
AFTER = "https://app.example/signed-out"


@pytest.fixture
async def registered(client: TestClient, seeded, bearer) -> None:
    """The documentation client registers a page to come back to after logout."""
    changed = await client.patch(
        "/api/v1/auth/oauth2_clients/documentation",
        json=[{"op": "replace", "path": "/post_logout_redirect_uris", "value": [AFTER]}],
        headers=await bearer("root"),
    )
    assert changed.status == 200, await changed.text()


async def id_token_of(client: TestClient) -> str:
    """An ID token through single sign-on (signing "user" in first if this browser has no session)."""
    verifier, response, _ = await authorize(client, scope="openid")
    if response.status == 200:
        await sign_in(client, scope="openid")
        verifier, response, _ = await authorize(client, scope="openid")
    return (await tokens(client, response, verifier))["id_token"]


async def signed_in(client: TestClient) -> bool:
    _, response, _ = await authorize(client, prompt="none")
    return "code" in redirect_params(response)


async def test_a_valid_hint_signs_out_at_once_and_returns_with_state(client: TestClient, registered, db) -> None:
    hint = await id_token_of(client)
    assert await db.sessions.count_documents({}) == 1
    response = await client.get(
        LOGOUT,
        params={"id_token_hint": hint, "post_logout_redirect_uri": AFTER, "state": "s-1"},
        allow_redirects=False,
    )
    assert response.status == 302
    location = urlsplit(response.headers["Location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == AFTER
    assert parse_qs(location.query) == {"state": ["s-1"]}
    assert await db.sessions.count_documents({}) == 0
    assert not await signed_in(client)  # the next prompt=none says login_required


async def test_a_post_from_the_relying_party_works_the_same_with_a_303(client: TestClient, registered) -> None:
    hint = await id_token_of(client)
    response = await client.post(
        LOGOUT,
        data={"id_token_hint": hint, "client_id": "documentation", "post_logout_redirect_uri": AFTER},
        allow_redirects=False,
    )
    assert response.status == 303
    assert response.headers["Location"] == AFTER
    assert not await signed_in(client)


async def test_without_a_hint_the_user_confirms(client: TestClient, registered, db) -> None:
    """A cross-site GET (a link, an image) only shows the confirmation: nobody is signed out by it."""
    await id_token_of(client)
    page = await client.get(LOGOUT, params={"client_id": "documentation", "post_logout_redirect_uri": AFTER})
    html = await page.text()
    assert page.status == 200
    assert "Sign out?" in html
    assert "API documentation" in html
    assert "form-action 'self' https://app.example" in page.headers["Content-Security-Policy"]
    assert await signed_in(client)
    stay = await client.post(LOGOUT, data={**form_of(html), "action": "stay"}, allow_redirects=False)
    assert stay.status == 200
    assert await signed_in(client)
    page = await client.get(LOGOUT, params={"client_id": "documentation", "post_logout_redirect_uri": AFTER})
    html = await page.text()
    confirmed = await client.post(LOGOUT, data={**form_of(html), "action": "logout"}, allow_redirects=False)
    assert confirmed.status == 303
    assert confirmed.headers["Location"] == AFTER
    assert not await signed_in(client)


async def test_a_forged_confirmation_signs_no_one_out(client: TestClient, registered) -> None:
    await id_token_of(client)
    page = await client.get(LOGOUT)
    form = form_of(await page.text())
    forged = await client.post(LOGOUT, data={**form, "csrf_token": "guess", "action": "logout"})
    assert forged.status == 403
    via_get = await client.get(LOGOUT, params={**form, "action": "logout"})
    assert via_get.status == 403
    assert await signed_in(client)


async def test_a_hint_for_another_user_asks_first(client: TestClient, registered) -> None:
    await sign_in(client, username="root", password="q", scope="openid")
    roots = await id_token_of(client)
    client.session.cookie_jar.clear()
    await id_token_of(client)  # "user" signs in in this browser
    page = await client.get(LOGOUT, params={"id_token_hint": roots})
    assert page.status == 200
    assert "Sign out?" in await page.text()
    assert await signed_in(client)


@pytest.mark.parametrize(
    "params",
    [
        {"client_id": "documentation", "post_logout_redirect_uri": "https://evil.example/"},
        {"post_logout_redirect_uri": AFTER},  # no client named: nothing to check it against
        {"client_id": "nobody", "post_logout_redirect_uri": AFTER},
        {"id_token_hint": "not-a-token", "post_logout_redirect_uri": AFTER},
        {"client_id": "documentation", "state": "x" * 2000},
    ],
)
async def test_a_request_that_cannot_be_honoured_is_an_error_page_never_a_redirect(
    client: TestClient, registered, params
) -> None:
    await id_token_of(client)
    response = await client.get(LOGOUT, params=params, allow_redirects=False)
    assert response.status == 400
    assert "Location" not in response.headers
    assert await signed_in(client)


async def test_a_hint_for_another_client_than_client_id_is_refused(client: TestClient, registered) -> None:
    hint = await id_token_of(client)
    response = await client.get(LOGOUT, params={"id_token_hint": hint, "client_id": "other"}, allow_redirects=False)
    assert response.status == 400
    assert await signed_in(client)


async def test_without_a_session_there_is_nothing_to_confirm(client: TestClient, registered) -> None:
    response = await client.get(LOGOUT)
    assert response.status == 200
    assert "You are signed out." in await response.text()


async def test_the_metadata_and_discovery_still_validate(client: TestClient, seeded) -> None:
    from authlib.oidc.discovery import OpenIDProviderMetadata

    metadata = await (await client.get("/.well-known/openid-configuration")).json()
    OpenIDProviderMetadata(metadata).validate()
    assert metadata["end_session_endpoint"].endswith(LOGOUT)
