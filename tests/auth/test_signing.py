"""The key ring: one first key however many requests ask at once, and keys parsed once, off the event loop."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from service.auth import signing
from service.auth.jose import JsonWebKey
from service.auth.signing import KeyRing


@pytest.fixture
def imports(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The threads RSA private keys are parsed on, one entry per key parsed."""
    seen: list[str] = []
    parse = JsonWebKey.import_key

    def counted(raw: Any, options: Any = None) -> Any:
        seen.append(threading.current_thread().name)
        return parse(raw, options)

    monkeypatch.setattr(JsonWebKey, "import_key", counted)
    return seen


async def test_requests_at_once_on_a_new_database_make_one_first_key(db, imports: list[str]) -> None:
    await db.signing_keys.delete_many({})
    ring = KeyRing(db)
    found = await asyncio.gather(*(ring.signing_key() for _ in range(20)))
    assert await db.signing_keys.count_documents({}) == 1
    assert {key.kid for key in found} == {(await db.signing_keys.find_one({}))["_id"]}
    assert len(imports) == 1


async def test_a_reload_parses_only_new_keys_and_never_on_the_event_loop(db, imports: list[str]) -> None:
    ring = KeyRing(db)
    first = await ring.keys()
    assert len(imports) == len(first) >= 1
    assert threading.main_thread().name not in imports  # parsing an RSA key takes ~25 ms: not on the loop

    ring._loaded = 0  # the reload that happens every RELOAD_SECONDS
    stale = await asyncio.gather(*(ring.keys() for _ in range(10)))
    assert len(imports) == len(first)  # nothing parsed again
    assert all([key.kid for key in keys] == [key.kid for key in first] for keys in stale)

    added = await signing.add_key(db)
    ring._loaded = 0
    assert (await ring.keys())[0].kid == added  # the newest first
    assert len(imports) == len(first) + 1

    await db.signing_keys.delete_one({"_id": added})
    ring._loaded = 0
    assert [key.kid for key in await ring.keys()] == [key.kid for key in first]


def failing_reads(ring: KeyRing, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Make the ring's reads of the stored keys fail (the database away), a moment later; counts them."""
    reads: list[int] = []

    async def away() -> list[dict[str, Any]]:
        reads.append(1)
        await asyncio.sleep(0.05)
        raise ConnectionError("the database is away")

    monkeypatch.setattr(ring, "_stored", away)
    return reads


async def test_requests_waiting_for_a_failing_first_load_share_its_one_error(db, monkeypatch) -> None:
    ring = KeyRing(db)
    reads = failing_reads(ring, monkeypatch)
    results = await asyncio.gather(*(ring.keys() for _ in range(10)), return_exceptions=True)
    assert all(isinstance(result, ConnectionError) for result in results)
    assert len(reads) == 1  # one attempt, not ten in a row each waiting for the database


async def test_a_failed_periodic_reload_keeps_the_held_keys_and_waits_before_trying_again(
    db, monkeypatch, caplog: pytest.LogCaptureFixture
) -> None:
    ring = KeyRing(db)
    held = [key.kid for key in await ring.keys()]
    reads = failing_reads(ring, monkeypatch)
    ring._loaded = 0  # due for its periodic reload
    found = await asyncio.gather(*(ring.keys() for _ in range(5)))
    assert all([key.kid for key in keys] == held for keys in found)
    assert (await ring.signing_key()).kid == held[0]
    assert len(reads) == 1  # tried again only RETRY_SECONDS later
    warnings = [record for record in caplog.records if "reload failed" in record.getMessage()]
    assert len(warnings) == 1
