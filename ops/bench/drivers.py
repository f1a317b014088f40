"""Motor vs PyMongo's native AsyncMongoClient on the /users/me lookup (the token + principal query).

A measurement, not a second code path: the service uses Motor (as its owner asked); this shows what a
switch in service/db.py would buy. Same embedded server, same query, 32 concurrent lookups.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

from motor.motor_asyncio import AsyncIOMotorClient
from pymongo import AsyncMongoClient

from service.embedded import EmbeddedServer

PIPELINE = [
    {"$match": {"_id": "d" * 64, "revoked": False}},
    {"$lookup": {"from": "users", "localField": "user_id", "foreignField": "_id", "as": "user"}},
    {"$lookup": {"from": "oauth2_clients", "localField": "client_id", "foreignField": "_id", "as": "client"}},
    {"$limit": 1},
]


async def lookup(collection, native: bool) -> list:  # type: ignore[no-untyped-def]
    # PyMongo's async aggregate is a coroutine returning the cursor; Motor's returns the cursor itself.
    cursor = await collection.aggregate(PIPELINE) if native else collection.aggregate(PIPELINE)
    return await cursor.to_list(1)


async def measure(name: str, client, native: bool, rounds: int = 100, concurrency: int = 32) -> dict[str, float]:  # type: ignore[no-untyped-def]
    collection = client.bench.oauth2_tokens
    for _ in range(20):
        await lookup(collection, native)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(rounds):
        await asyncio.gather(*(lookup(collection, native) for _ in range(concurrency)))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    total = rounds * concurrency
    return {"driver": name, "ops_per_s": round(total / wall), "client_cpu_us_per_op": round(cpu / total * 1e6)}


async def main() -> None:
    server = EmbeddedServer(Path(tempfile.mkdtemp(prefix="drivers-")))
    await server.start()
    try:
        seed = AsyncMongoClient(server.url)
        await seed.bench.users.insert_one(
            {
                "_id": 1,
                "username": "root",
                "email": "root@example.com",
                "password_hash": "$argon2id$" + "x" * 90,
                "is_active": True,
            }
        )
        await seed.bench.oauth2_clients.insert_one({"_id": "documentation", "client_type": "public"})
        await seed.bench.oauth2_tokens.insert_one(
            {"_id": "d" * 64, "user_id": 1, "client_id": "documentation", "scopes": ["users:read"], "revoked": False}
        )
        await seed.close()
        results = []
        for _ in range(2):  # alternate, so neither gets the warmer machine
            results.append(await measure("motor 3.7 (threads)", AsyncIOMotorClient(server.url), native=False))
            native = AsyncMongoClient(server.url)
            results.append(await measure("pymongo AsyncMongoClient", native, native=True))
            await native.close()
        for result in results:
            print(result)
    finally:
        await server.close()


if __name__ == "__main__":
    asyncio.run(main())
