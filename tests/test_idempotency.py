"""Idempotency-Key on POST under /api/v1: replay, 422 for another request under the key, 409 while the
first runs, per caller, released on failure, a TTL index; one object across two processes."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from service.config import Settings
from service.db import utcnow
from service.errors import BadRequest
from service.idempotency import parse_key
from tests.helpers import service_processes, wait_ready

TEAMS = "/api/v1/teams/"


def keyed(headers: dict[str, str], key: str) -> dict[str, str]:
    return {**headers, "Idempotency-Key": key}


async def teams_titled(db, title: str) -> int:
    return await db.teams.count_documents({"title": title})


async def test_the_same_key_and_body_replays_the_first_answer_without_acting_again(
    client: TestClient, bearer, db
) -> None:
    headers = keyed(await bearer("root"), "create-builders-1")
    first = await client.post(TEAMS, json={"title": "Builders"}, headers=headers)
    assert first.status == 201, await first.text()
    assert "Idempotent-Replayed" not in first.headers
    again = await client.post(TEAMS, json={"title": "Builders"}, headers=headers)
    assert again.status == 201
    assert again.headers["Idempotent-Replayed"] == "true"
    assert await again.read() == await first.read()
    for name in ("Location", "ETag", "Content-Type"):
        assert again.headers[name] == first.headers[name]
    assert await teams_titled(db, "Builders") == 1
    # Another token of the same user through the same client is the same caller: replayed too.
    other_token = keyed(await bearer("root"), "create-builders-1")
    third = await client.post(TEAMS, json={"title": "Builders"}, headers=other_token)
    assert third.headers["Idempotent-Replayed"] == "true"
    assert await teams_titled(db, "Builders") == 1


async def test_the_same_key_with_another_body_is_422(client: TestClient, bearer, db) -> None:
    headers = keyed(await bearer("root"), "k-422")
    assert (await client.post(TEAMS, json={"title": "First"}, headers=headers)).status == 201
    other = await client.post(TEAMS, json={"title": "Second"}, headers=headers)
    assert other.status == 422
    assert other.content_type == "application/problem+json"
    assert "another request" in (await other.json())["detail"]
    assert await teams_titled(db, "Second") == 0
    # Another path under the same key is another request too.
    members = await client.post(
        f"{first_location(await db.teams.find_one({'title': 'First'}))}members/", json={}, headers=headers
    )
    assert members.status == 422


def first_location(team: dict[str, Any]) -> str:
    return f"{TEAMS}{team['_id']}/"


async def test_two_requests_at_once_with_one_key_create_one_team(client: TestClient, bearer, db) -> None:
    headers = keyed(await bearer("root"), "at-once")
    answers = await asyncio.gather(*(client.post(TEAMS, json={"title": "Racers"}, headers=headers) for _ in range(2)))
    statuses = sorted(answer.status for answer in answers)
    assert statuses in ([201, 201], [201, 409]), statuses
    replayed = [answer.headers.get("Idempotent-Replayed") for answer in answers if answer.status == 201]
    assert replayed.count(None) == 1  # exactly one of them ran
    assert await teams_titled(db, "Racers") == 1


async def test_a_key_still_running_is_409_and_one_lost_with_its_process_is_claimed_again(
    client: TestClient, bearer, db
) -> None:
    headers = keyed(await bearer("root"), "busy")
    assert (await client.post(TEAMS, json={"title": "Busy"}, headers=headers)).status == 201
    # As if that first request were still running, in this process or another.
    running = {"$set": {"state": "running", "created": utcnow()}, "$unset": {"status": "", "body": ""}}
    await db.idempotency_keys.update_one({"key": "busy"}, running)
    busy = await client.post(TEAMS, json={"title": "Busy"}, headers=headers)
    assert busy.status == 409
    assert busy.content_type == "application/problem+json"
    assert busy.headers["Retry-After"] == "1"
    assert await teams_titled(db, "Busy") == 1

    # Left running ten minutes ago: its process is gone, and the key may be claimed again.
    lost = {"$set": {"created": utcnow() - timedelta(minutes=10)}}
    await db.idempotency_keys.update_one({"key": "busy"}, lost)
    taken = await client.post(TEAMS, json={"title": "Busy"}, headers=headers)
    assert taken.status == 201
    assert "Idempotent-Replayed" not in taken.headers
    assert await teams_titled(db, "Busy") == 2
    replayed = await client.post(TEAMS, json={"title": "Busy"}, headers=headers)
    assert replayed.headers["Idempotent-Replayed"] == "true"
    assert (await replayed.json())["id"] == (await taken.json())["id"]


@pytest.mark.parametrize("key", ["x" * 256, "", "caf\u00e9", "tab\there"])
async def test_a_malformed_key_is_400(client: TestClient, bearer, db, key: str) -> None:
    headers = keyed(await bearer("root"), key)
    response = await client.post(TEAMS, json={"title": "Malformed"}, headers=headers)
    assert response.status == 400
    assert response.content_type == "application/problem+json"
    assert await teams_titled(db, "Malformed") == 0


def test_a_key_is_taken_bare_or_as_a_structured_field_string() -> None:
    assert parse_key(["abc-123"]) == "abc-123"
    assert parse_key(['"abc-123"']) == "abc-123"
    assert parse_key([r'"say \"hi\""']) == 'say "hi"'
    assert parse_key(["x" * 255]) == "x" * 255
    with pytest.raises(BadRequest):
        parse_key(["a", "b"])


async def test_another_callers_key_is_theirs_alone(client: TestClient, bearer, db) -> None:
    root = keyed(await bearer("root"), "shared-key")
    user = keyed(await bearer("user"), "shared-key")
    mine = await client.post(TEAMS, json={"title": "Mine"}, headers=root)
    theirs = await client.post(TEAMS, json={"title": "Mine"}, headers=user)
    assert mine.status == theirs.status == 201
    assert "Idempotent-Replayed" not in theirs.headers
    assert (await mine.json())["id"] != (await theirs.json())["id"]
    assert await teams_titled(db, "Mine") == 2
    # And another body from the other caller is not 422: the key is not the same key.
    other = await client.post(TEAMS, json={"title": "Other"}, headers=keyed(await bearer("user"), "k-other"))
    assert other.status == 201


async def test_a_failed_request_releases_its_key(client: TestClient, bearer, db) -> None:
    headers = keyed(await bearer("root"), "retry-me")
    invalid = await client.post(TEAMS, json={"title": ""}, headers=headers)
    assert invalid.status == 422
    assert await db.idempotency_keys.count_documents({"key": "retry-me"}) == 0
    fixed = await client.post(TEAMS, json={"title": "Fixed"}, headers=headers)
    assert fixed.status == 201
    assert "Idempotent-Replayed" not in fixed.headers


async def test_requests_without_a_key_or_without_a_caller_store_nothing(client: TestClient, bearer, db) -> None:
    assert (await client.post(TEAMS, json={"title": "Plain"}, headers=await bearer("root"))).status == 201
    body = {"username": "anon", "email": "anon@example.com", "password": "long enough pw"}
    signup = await client.post("/api/v1/users/", json=body, headers={"Idempotency-Key": "sign-up"})
    assert signup.status == 201
    assert "Idempotent-Replayed" not in signup.headers
    assert await db.idempotency_keys.count_documents({}) == 0
    # Ignored when well-formed; a malformed key is refused all the same.
    body = {"username": "anon2", "email": "anon2@example.com", "password": "long enough pw"}
    refused = await client.post("/api/v1/users/", json=body, headers={"Idempotency-Key": "x" * 256})
    assert refused.status == 400


async def test_keys_expire_after_a_day(client: TestClient, bearer, db) -> None:
    await client.post(TEAMS, json={"title": "Ttl"}, headers=keyed(await bearer("root"), "ttl"))
    indexes = await db.idempotency_keys.index_information()
    assert indexes["created_ttl"]["expireAfterSeconds"] == 24 * 3600
    assert indexes["caller_key"]["unique"] is True
    stored = await db.idempotency_keys.find_one({"key": "ttl"})
    assert stored["state"] == "done"
    assert stored["status"] == 201


async def test_the_openapi_document_declares_the_header_on_every_post(client: TestClient) -> None:
    document = await (await client.get("/api/v1/openapi.json")).json()
    # The OAuth2 endpoints are in the document too, under their own `servers` (outside /api/v1).
    posts = [item["post"] for item in document["paths"].values() if "post" in item and "servers" not in item]
    assert len(posts) >= 5
    for operation in posts:
        assert any(p.get("name") == "Idempotency-Key" and p["in"] == "header" for p in operation["parameters"])
        assert {"409", "422"} <= set(operation["responses"])


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return dataclasses.replace(settings, oauth_rate_burst=100_000)


async def test_two_processes_receiving_one_key_at_once_create_one_team(
    backend: str, settings: Settings, seeded, db, tmp_path: Path
) -> None:
    if backend != "secantus":
        pytest.skip("two processes need a database both can reach (--backend=secantus)")
    # One public URL for both, as behind one load balancer: a token is for the API both serve.
    replicas = service_processes(settings, 2, tmp_path, OAUTH_RATE_BURST="100000", PUBLIC_URL="http://api.test")
    with replicas as bases:
        async with aiohttp.ClientSession() as http:
            for base in bases:
                await wait_ready(http, base)
            form = {"grant_type": "password", "username": "root", "password": "q", "client_id": "documentation"}
            async with http.post(f"{bases[0]}/auth/oauth2/token", data=form) as signed_in:
                token = (await signed_in.json())["access_token"]

            async def post(base: str, key: str, title: str) -> tuple[int, str | None]:
                headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": key}
                async with http.post(f"{base}{TEAMS}", json={"title": title}, headers=headers) as response:
                    body = await response.read()
                    assert response.status in (201, 409), body
                    return response.status, response.headers.get("Idempotent-Replayed")

            for round_ in range(5):
                title = f"Replica {round_}"
                answers = await asyncio.gather(*(post(base, f"replicas-{round_}", title) for base in bases))
                assert sorted(status for status, _ in answers) in ([201, 201], [201, 409]), answers
                assert [replayed for status, replayed in answers if status == 201].count(None) == 1
                assert await teams_titled(db, title) == 1
                # Afterwards either process replays it.
                for base in bases:
                    assert await post(base, f"replicas-{round_}", title) == (201, "true")
