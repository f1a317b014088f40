"""Fixture files: validation, idempotent loading, and the CLI commands that use them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from service import fixtures
from service.passwords import HASHER


async def test_loading_twice_creates_nothing_new(client, app, db) -> None:
    first = await fixtures.load(db, app[HASHER], fixtures.default_files())
    assert first["users"] == 2
    assert first["oauth2_clients"] == 1
    second = await fixtures.load(db, app[HASHER], fixtures.default_files())
    assert second == {"users": 0, "oauth2_clients": 0, "teams": second["teams"]}
    assert second["teams"] == 0
    documentation = await db.oauth2_clients.find_one({"_id": "documentation"})
    assert documentation["client_type"] == "public"


async def test_bad_fixture_file_names_file_and_problem(client, app, db, tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"users": [{"username": "x y", "email": "nope"}]}')
    with pytest.raises(fixtures.FixtureError, match=r"bad\.json"):
        await fixtures.load(db, app[HASHER], [bad])
    assert await db.users.count_documents({}) == 0


async def test_client_with_unknown_owner_is_refused(client, app, db, tmp_path: Path) -> None:
    orphan = tmp_path / "orphan.json"
    orphan.write_text(
        '{"oauth2_clients": [{"client_id": "c", "client_type": "public", "owner": "ghost", "allowed_scopes": ["users:read"]}]}'
    )
    with pytest.raises(fixtures.FixtureError, match="unknown owner"):
        await fixtures.load(db, app[HASHER], [orphan])


def run_cli(tmp_path: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SERVICE_DATA_DIR": str(tmp_path), "ARGON2_MEMORY_KIB": "64", "ARGON2_TIME_COST": "1"}
    env.pop("MONGODB_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "service", *args], env=env, input=stdin, capture_output=True, text=True, timeout=120
    )


def test_cli_fixtures_users_and_clients(tmp_path: Path) -> None:
    loaded = run_cli(tmp_path, "fixtures", "load")
    assert loaded.returncode == 0, loaded.stderr
    assert "2 users" in loaded.stdout
    assert "0 users" in run_cli(tmp_path, "fixtures", "load").stdout
    created = run_cli(
        tmp_path,
        "users",
        "create",
        "--username",
        "ops",
        "--email",
        "ops@example.com",
        "--admin",
        "--password-stdin",
        stdin="operator password\n",
    )
    assert created.returncode == 0, created.stderr
    assert "created user ops" in created.stdout
    duplicate = run_cli(
        tmp_path,
        "users",
        "create",
        "--username",
        "OPS",
        "--email",
        "x@example.com",
        "--password-stdin",
        stdin="whatever12\n",
    )
    assert duplicate.returncode == 1
    assert "already exists" in duplicate.stderr
    client = run_cli(tmp_path, "clients", "create", "--owner", "ops", "--scope", "users:read")
    assert client.returncode == 0, client.stderr
    assert "client_secret:" in client.stdout
