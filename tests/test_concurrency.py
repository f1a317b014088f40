"""The one optimistic-concurrency rule every PATCH follows (service.patch.optimistically)."""

from __future__ import annotations

import pytest

from service import patch
from service.errors import Conflict, PreconditionFailed


def lost_races(count: int, result: str = "written"):
    """An attempt that loses `count` races (a concurrent write won), then succeeds."""
    calls: list[int] = []

    async def attempt() -> str | None:
        calls.append(1)
        return None if len(calls) <= count else result

    return attempt, calls


async def test_a_lost_race_without_if_match_is_retried_on_the_fresh_document() -> None:
    attempt, calls = lost_races(3)
    assert await patch.optimistically(attempt, None, "team") == "written"
    assert len(calls) == 4


async def test_a_lost_race_with_if_match_is_412_at_once() -> None:
    attempt, calls = lost_races(1)
    with pytest.raises(PreconditionFailed, match="team changed"):
        await patch.optimistically(attempt, 7, "team")
    assert len(calls) == 1


async def test_a_document_that_keeps_changing_is_409_after_the_limit() -> None:
    attempt, calls = lost_races(1_000)
    with pytest.raises(Conflict, match="user keeps changing"):
        await patch.optimistically(attempt, None, "user")
    assert len(calls) == patch.ATTEMPTS
