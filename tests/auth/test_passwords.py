"""argon2id hashing: unknown users cost a real verification, parameters upgrade on sign-in."""

from __future__ import annotations

import dataclasses

import argon2
from aiohttp.test_utils import TestClient

from service.app import create_app
from service.passwords import HASHER, PasswordHasher


class CountingArgon2(argon2.PasswordHasher):
    calls = 0

    def verify(self, hash, password):
        CountingArgon2.calls += 1
        return super().verify(hash, password)


async def test_unknown_user_still_runs_a_full_verification() -> None:
    hasher = PasswordHasher(time_cost=1, memory_kib=64, threads=1)
    hasher._argon2 = CountingArgon2(time_cost=1, memory_cost=64, parallelism=1)
    try:
        CountingArgon2.calls = 0
        assert await hasher.verify(None, "anything") is False
        assert CountingArgon2.calls == 1
        real = await hasher.hash("secret")
        assert await hasher.verify(real, "secret") is True
        assert await hasher.verify(real, "wrong") is False
        assert await hasher.verify("not-a-hash", "secret") is False
    finally:
        hasher.close()


async def test_hashes_are_upgraded_on_sign_in(aiohttp_client, settings, mongo_client, login, db) -> None:
    old = (await db.users.find_one({"username": "user"}))["password_hash"]
    assert "t=1" in old
    stronger = dataclasses.replace(settings, argon2_time_cost=2)
    client: TestClient = await aiohttp_client(create_app(stronger, mongo_client=mongo_client))
    response = await client.post(
        "/auth/oauth2/token",
        data={"grant_type": "password", "username": "user", "password": "w", "client_id": "documentation"},
    )
    assert response.status == 200
    new = (await db.users.find_one({"username": "user"}))["password_hash"]
    assert "t=2" in new
    assert client.app[HASHER].needs_rehash(new) is False


async def test_throttling_counts_across_server_instances(
    aiohttp_client, client, settings, mongo_client, seeded
) -> None:
    other = await aiohttp_client(create_app(settings, mongo_client=mongo_client))
    form = {"grant_type": "password", "username": "user", "password": "bad", "client_id": "documentation"}
    for i in range(10):
        await (client if i % 2 else other).post("/auth/oauth2/token", data=form)
    for instance in (client, other):
        blocked = await instance.post("/auth/oauth2/token", data={**form, "password": "w"})
        assert blocked.status == 429


async def test_hashing_threads_run_at_lower_priority() -> None:
    import os
    import threading

    hasher = PasswordHasher(time_cost=1, memory_kib=64, threads=1)
    try:
        niceness = await hasher._run(lambda: os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        assert niceness >= os.getpriority(os.PRIO_PROCESS, 0) + 1
    finally:
        hasher.close()
