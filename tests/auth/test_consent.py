"""Remembered consent (service/auth/consent.py) and the connected apps API: missing / remember / forget,
the list and the revocation through HTTP (every token of that client for that user stops at once, and
nothing else does), the route next to the users domain's, the consent page template and the indexes."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from typing import Any

import aiohttp_jinja2
import pytest
from aiohttp.test_utils import TestClient, TestServer

from service.app import create_app
from service.audit import AUDITOR
from service.auth import consent
from service.cache import PRINCIPAL_CACHE
from service.context import Context
from tests.helpers import (
    AUTHORIZE,
    REDIRECT,
    exchange,
    form_of,
    get_code,
    open_page,
    pkce,
    plan_stages,
    query,
    redirect_params,
)

LIST = "/api/v1/users/me/authorizations"
ME = "/api/v1/users/me"
TOKEN = "/auth/oauth2/token"


def context_of(client: TestClient) -> Context:
    return Context.of_app(client.app, str(client.make_url("")).rstrip("/"))


async def user_id(db: Any, username: str) -> Any:
    return (await db.users.find_one({"username": username}))["_id"]


async def stored_client(db: Any, client_id: str) -> Any:
    return await db.oauth2_clients.find_one({"_id": client_id})


@pytest.fixture
async def other_app(client: TestClient, bearer, db) -> str:
    """A second public client (not first party) that may use the password grant: created by an admin."""
    body = {
        "client_type": "public",
        "client_name": "Other <App>",
        "allowed_scopes": ["users:read", "auth:read", "auth:write"],
        "grant_types": ["password", "refresh_token"],
    }
    response = await client.post("/api/v1/auth/oauth2_clients/", json=body, headers=await bearer("root"))
    assert response.status == 201, await response.text()
    return str((await response.json())["client_id"])


async def tokens(client: TestClient, username: str, password: str, client_id: str) -> dict[str, Any]:
    form = {"grant_type": "password", "username": username, "password": password, "client_id": client_id}
    form["scope"] = "users:read auth:read auth:write"
    response = await client.post(TOKEN, data=form)
    assert response.status == 200, await response.text()
    return dict(await response.json())


def auth(token: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {token['access_token']}"}


async def refresh(client: TestClient, token: dict[str, Any], client_id: str) -> tuple[int, dict[str, Any]]:
    form = {"grant_type": "refresh_token", "refresh_token": token["refresh_token"], "client_id": client_id}
    response = await client.post(TOKEN, data=form)
    return response.status, dict(await response.json())


# --- the domain functions ------------------------------------------------------------------------


async def test_missing_is_every_scope_not_granted_yet_and_remember_unions(client, db, seeded, other_app) -> None:
    ctx, user = context_of(client), await user_id(db, "user")
    app = await stored_client(db, other_app)
    assert await consent.missing(ctx, user, app, ["users:read", "auth:read", "users:read"]) == [
        "users:read",
        "auth:read",
    ]
    await consent.remember(ctx, user, other_app, ["users:read"])
    first = await db.oauth2_consents.find_one({"user_id": user, "client_id": other_app})
    assert first["scopes"] == ["users:read"]
    assert first["first_used"] == first["last_used"]
    assert await consent.missing(ctx, user, app, ["users:read"]) == []
    assert await consent.missing(ctx, user, app, ["auth:read", "users:read"]) == ["auth:read"]
    await asyncio.sleep(0.01)
    await consent.remember(ctx, user, other_app, ["auth:read", "users:read"])
    later = await db.oauth2_consents.find_one({"user_id": user, "client_id": other_app})
    assert sorted(later["scopes"]) == ["auth:read", "users:read"]  # a union, each once
    assert later["first_used"] == first["first_used"]
    assert later["last_used"] > first["last_used"]
    assert await consent.missing(ctx, user, app, ["auth:read", "users:read"]) == []
    assert await db.oauth2_consents.count_documents({}) == 1
    # Another user's consent is theirs alone.
    assert await consent.missing(ctx, await user_id(db, "root"), app, ["users:read"]) == ["users:read"]


async def test_a_first_party_client_never_asks_but_is_remembered(client, db, seeded, other_app) -> None:
    ctx, user = context_of(client), await user_id(db, "user")
    await db.oauth2_clients.update_one({"_id": other_app}, {"$set": {"first_party": True}})
    app = await stored_client(db, other_app)
    assert await consent.missing(ctx, user, app, ["users:read", "auth:write"]) == []
    await consent.remember(ctx, user, other_app, ["users:read"])
    assert await db.oauth2_consents.count_documents({"user_id": user, "client_id": other_app}) == 1


async def test_concurrent_first_grants_make_one_consent(client, db, seeded, other_app) -> None:
    ctx, user = context_of(client), await user_id(db, "user")
    await asyncio.gather(*(consent.remember(ctx, user, other_app, [scope]) for scope in ("users:read", "auth:read")))
    (stored,) = await db.oauth2_consents.find({"user_id": user}).to_list(None)
    assert sorted(stored["scopes"]) == ["auth:read", "users:read"]


async def test_forget_removes_the_consent_and_says_whether_there_was_anything(client, db, seeded, other_app) -> None:
    ctx, user = context_of(client), await user_id(db, "user")
    assert await consent.forget(ctx, user, other_app) is False
    await consent.remember(ctx, user, other_app, ["users:read"])
    assert await consent.forget(ctx, user, other_app) is True
    assert await db.oauth2_consents.count_documents({}) == 0
    app = await stored_client(db, other_app)
    assert await consent.missing(ctx, user, app, ["users:read"]) == ["users:read"]  # asked again
    # Live tokens without a consent (a password grant) are still something to take away.
    await tokens(client, "user", "w", other_app)
    assert await consent.forget(ctx, user, other_app) is True
    assert await db.oauth2_tokens.count_documents({"client_id": other_app, "revoked": False}) == 0
    assert await consent.forget(ctx, user, other_app) is False


async def test_forget_drops_the_clients_unexchanged_codes(client, db, seeded) -> None:
    verifier, challenge = pkce()
    code = await get_code(client, challenge)
    ctx, user = context_of(client), await user_id(db, "user")
    assert await consent.forget(ctx, user, "documentation") is True
    response = await exchange(client, code, verifier)
    assert response.status == 400
    assert (await response.json())["error"] == "invalid_grant"


# --- the connected apps API ------------------------------------------------------------------------


async def test_the_list_shows_remembered_clients_with_their_names(client, db, bearer, other_app) -> None:
    ctx, user = context_of(client), await user_id(db, "user")
    headers = await bearer("user")
    empty = await client.get(LIST, headers=headers)
    assert empty.status == 200
    assert await empty.json() == []
    await consent.remember(ctx, user, other_app, ["users:read", "auth:read"])
    await consent.remember(ctx, user, "documentation", ["users:read"])
    await consent.remember(ctx, await user_id(db, "root"), "documentation", ["auth:read"])  # someone else's
    response = await client.get(LIST, headers=headers)
    assert response.status == 200
    listed = await response.json()
    assert [app["client_id"] for app in listed] == sorted(["documentation", other_app])
    mine = {app["client_id"]: app for app in listed}
    assert mine[other_app]["client_name"] == "Other <App>"
    assert sorted(mine[other_app]["scopes"]) == ["auth:read", "users:read"]
    assert mine["documentation"]["scopes"] == ["users:read"]
    assert mine["documentation"]["client_name"] == (await stored_client(db, "documentation")).get("client_name")
    for app in listed:
        assert set(app) == {"client_id", "client_name", "scopes", "first_used", "last_used"}
        assert datetime.fromisoformat(app["first_used"]) <= datetime.fromisoformat(app["last_used"])
    # A deleted client is not listed.
    deleted = await client.delete(f"/api/v1/auth/oauth2_clients/{other_app}", headers=await bearer("root"))
    assert deleted.status == 204
    after = await (await client.get(LIST, headers=headers)).json()
    assert [app["client_id"] for app in after] == ["documentation"]
    assert await db.oauth2_consents.count_documents({"client_id": other_app}) == 0  # not kept for a namesake


async def test_sign_ins_through_the_authorization_page_are_listed_and_a_revoked_one_asks_again(
    client, db, bearer
) -> None:
    created = await client.post(
        "/api/v1/auth/oauth2_clients/",
        json={"client_type": "public", "client_name": "Photo Printer", "redirect_uris": [REDIRECT]}
        | {"default_scopes": ["users:read"], "allowed_scopes": ["users:read"]},
        headers=await bearer("root"),
    )
    other = (await created.json())["client_id"]
    await get_code(client, pkce()[1])  # signs in at the first-party client: no consent screen, but remembered
    headers = await bearer("user")
    listed = await (await client.get(LIST, headers=headers)).json()
    assert [(app["client_id"], app["scopes"]) for app in listed] == [("documentation", ["users:read"])]
    _, html = await open_page(client, query(pkce()[1], client_id=other))  # the session signs in; consent asks
    assert "Photo Printer" in html
    assert 'name="password"' not in html
    allowed = await client.post(AUTHORIZE, data={**form_of(html), "action": "approve"}, allow_redirects=False)
    assert "code" in redirect_params(allowed)
    listed = await (await client.get(LIST, headers=headers)).json()
    assert {app["client_id"]: app["client_name"] for app in listed} == {
        "documentation": "API documentation (Swagger UI)",
        other: "Photo Printer",
    }
    assert (await client.delete(f"{LIST}/{other}", headers=headers)).status == 204
    silent, _ = await open_page(client, query(pkce()[1], client_id=other, prompt="none"))
    assert redirect_params(silent)["error"] == "consent_required"  # asked again
    _, html = await open_page(client, query(pkce()[1], client_id=other))
    assert "Photo Printer" in html
    listed = await (await client.get(LIST, headers=headers)).json()
    assert [app["client_id"] for app in listed] == ["documentation"]


async def test_revoking_stops_that_clients_tokens_for_that_user_only(backend, client, db, seeded, other_app) -> None:
    ctx = context_of(client)
    user, root = await user_id(db, "user"), await user_id(db, "root")
    mine = await tokens(client, "user", "w", other_app)
    mine_elsewhere = await tokens(client, "user", "w", "documentation")
    theirs = await tokens(client, "root", "q", other_app)
    await consent.remember(ctx, user, other_app, ["users:read"])
    await consent.remember(ctx, root, other_app, ["users:read"])
    for token in (mine, mine_elsewhere, theirs):  # each one is in the principal cache now (when it is live)
        assert (await client.get(ME, headers=auth(token))).status == 200
    cache = client.app[PRINCIPAL_CACHE]
    hits = cache.hits
    assert (await client.get(ME, headers=auth(mine))).status == 200
    if backend == "secantus":  # the cache follows the change stream there: the token is served from it
        assert cache.hits > hits

    response = await client.delete(f"{LIST}/{other_app}", headers=auth(mine_elsewhere))
    assert response.status == 204
    assert (await client.get(ME, headers=auth(mine))).status == 401  # at once
    status, body = await refresh(client, mine, other_app)
    assert (status, body["error"]) == (400, "invalid_grant")
    assert (await client.get(ME, headers=auth(mine_elsewhere))).status == 200
    assert (await client.get(ME, headers=auth(theirs))).status == 200
    status, renewed = await refresh(client, theirs, other_app)
    assert status == 200
    assert (await client.get(ME, headers=auth(renewed))).status == 200
    assert await db.oauth2_consents.count_documents({"user_id": user}) == 0
    assert await db.oauth2_consents.count_documents({"user_id": root}) == 1
    await client.app[AUDITOR].flush()
    event = await db.audit_events.find_one({"event": "consent.revoked"})
    assert event is not None
    assert event["client_id"] == other_app
    assert event["tokens_revoked"] == 1
    assert str(user) in {str(subject) for subject in event.get("user_ids", [event.get("subject_id")])}
    # Signing in again gives a working token (the revocation was of the tokens, not of the client).
    again = await tokens(client, "user", "w", other_app)
    assert (await client.get(ME, headers=auth(again))).status == 200


async def test_the_revocation_reaches_another_instance_at_once(
    backend, client, settings, mongo_client, db, seeded, other_app
) -> None:
    """The other instance's cache drops the token when the change stream brings the revocation, well
    before an entry's MAX_AGE (30 s) would. Timed from the revocation's answer with a one-second bound:
    the propagation (one stream wait plus 0.1 s by design) is what is measured, not how fast a loaded
    machine answers the DELETE."""
    if backend != "secantus":
        pytest.skip("change streams need the real wire-protocol server (--backend=secantus)")
    mine = await tokens(client, "user", "w", other_app)
    await consent.remember(context_of(client), await user_id(db, "user"), other_app, ["users:read"])
    async with TestClient(TestServer(create_app(settings, mongo_client=mongo_client))) as other:
        cache = other.app[PRINCIPAL_CACHE]
        for _ in range(200):  # until the other instance serves the token from its cache
            hits = cache.hits
            assert (await other.get(ME, headers=auth(mine))).status == 200
            if cache.hits > hits:
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError("the other instance never served the token from its cache")
        assert (await client.delete(f"{LIST}/{other_app}", headers=auth(mine))).status == 204
        started = time.monotonic()
        while (await other.get(ME, headers=auth(mine))).status != 401:
            assert time.monotonic() - started < 1.0, "the other instance still takes the token"
            await asyncio.sleep(0.01)


async def test_nobody_revokes_someone_elses_authorization(client, db, seeded, bearer, other_app) -> None:
    user = await user_id(db, "user")
    mine = await tokens(client, "user", "w", other_app)
    await consent.remember(context_of(client), user, other_app, ["users:read"])
    response = await client.delete(f"{LIST}/{other_app}", headers=await bearer("root"))  # root has none
    assert response.status == 404
    assert response.headers["Content-Type"].startswith("application/problem+json")
    assert (await client.get(ME, headers=auth(mine))).status == 200
    assert await db.oauth2_consents.count_documents({"user_id": user}) == 1


async def test_unknown_authorizations_are_404(client, bearer, other_app) -> None:
    headers = await bearer("user")
    for client_id in ("no-such-client", other_app):  # the second: a client the user never used
        response = await client.delete(f"{LIST}/{client_id}", headers=headers)
        assert response.status == 404, client_id


async def test_the_scopes_are_required(client, bearer, other_app) -> None:
    read_only = await bearer("user", scope="auth:read")
    assert (await client.get(LIST, headers=read_only)).status == 200
    assert (await client.delete(f"{LIST}/{other_app}", headers=read_only)).status == 403
    assert (await client.get(LIST, headers=await bearer("user", scope="users:read"))).status == 403
    assert (await client.get(LIST)).status == 401


async def test_the_users_domain_routes_do_not_take_users_me_authorizations(client, db, bearer) -> None:
    headers = await bearer("user")
    response = await client.get(LIST, headers=headers)
    assert response.status == 200
    assert isinstance(await response.json(), list)
    me = await (await client.get(ME, headers=headers)).json()
    assert me["username"] == "user"  # /users/me is still the users domain's
    someone = await user_id(db, "user")
    assert (await client.get(f"/api/v1/users/{someone}/authorizations", headers=headers)).status == 404
    document = await (await client.get("/api/v1/openapi.json")).json()
    operations = (
        document["paths"]["/users/me/authorizations"],
        document["paths"]["/users/me/authorizations/{client_id}"],
    )
    assert operations[0]["get"]["operationId"] == "listMyAuthorizations"
    assert operations[1]["delete"]["operationId"] == "revokeMyAuthorization"
    assert "404" in operations[1]["delete"]["responses"]


# --- the consent page template ---------------------------------------------------------------------


def test_the_consent_page_shows_the_client_the_scopes_and_the_form(app) -> None:
    template = aiohttp_jinja2.get_env(app).get_template("consent.html")
    html = template.render(
        client_name="Reports <b>",
        client_id="abc",
        scopes=[("users:read", "Read users & more")],
        hidden=[("client_id", "abc"), ("state", '"x"')],
        csrf="tok",
    )
    assert "Reports &lt;b&gt;" in html
    assert "Read users &amp; more" in html
    assert '<input type="hidden" name="client_id" value="abc">' in html
    assert '<input type="hidden" name="state" value="&#34;x&#34;">' in html
    assert '<input type="hidden" name="csrf_token" value="tok">' in html
    assert 'name="action" value="approve"' in html
    assert 'name="action" value="deny"' in html
    assert "Username" not in html
    assert 'type="password"' not in html
    unnamed = template.render(client_name=None, client_id="abc", scopes=[], hidden=[], csrf_token="t2")
    assert "<strong>abc</strong>" in unnamed
    assert 'name="csrf_token" value="t2"' in unnamed


# --- indexes -------------------------------------------------------------------------------------


async def test_the_consent_lookup_and_the_list_use_the_index(backend, client, db, seeded, other_app) -> None:
    if backend != "secantus":
        pytest.skip("explain plans are the real server's (--backend=secantus)")
    ctx, user = context_of(client), await user_id(db, "user")
    for client_id in (other_app, "documentation"):
        await consent.remember(ctx, user, client_id, ["users:read"])
    await consent.remember(ctx, await user_id(db, "root"), other_app, ["users:read"])
    lookup = db.oauth2_consents.find({"user_id": user, "client_id": other_app}, {"scopes": 1}).limit(1)
    listing = db.oauth2_consents.find({"user_id": user}).sort(consent.BY_USER_AND_CLIENT)
    for cursor in (lookup, listing):
        stages = plan_stages((await cursor.explain())["queryPlanner"]["winningPlan"])
        names = [stage["stage"] for stage in stages]
        assert "COLLSCAN" not in names, names
        scans = [stage for stage in stages if stage["stage"] == "IXSCAN"]
        assert scans, names
        assert all(dict(scan["keyPattern"]) == {"user_id": 1, "client_id": 1} for scan in scans), names
    stages = plan_stages(
        (await db.oauth2_consents.find({"client_id": other_app}).explain())["queryPlanner"]["winningPlan"]
    )
    assert [dict(stage["keyPattern"]) for stage in stages if stage["stage"] == "IXSCAN"] == [{"client_id": 1}]
    indexes = await db.oauth2_consents.index_information()
    assert any(spec["key"] == consent.BY_USER_AND_CLIENT and spec.get("unique") for spec in indexes.values())
