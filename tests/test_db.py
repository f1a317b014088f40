"""The database layer: three modes, the embedded server's lifecycle, indexes, migrations, outages."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer, unused_port
from pymongo.errors import ServerSelectionTimeoutError

from service.app import create_app
from service.config import Settings, SettingsError
from service.db import MONGO, Mongo, run_migrations
from service.embedded import EmbeddedServer, EmbeddedServerError
from tests.helpers import PROBLEM


async def test_mongomock_mode_connects_in_memory() -> None:
    mongo = Mongo(Settings(mongodb_url="mongomock://", mongodb_db="m"))
    await mongo.connect()
    try:
        await mongo.db.things.insert_one({"_id": 1})
        assert await mongo.db.things.count_documents({}) == 1
        assert mongo.embedded is None
    finally:
        await mongo.close()


async def test_mongomock_mode_without_the_mock_extra_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "mongomock_motor", None)  # as where requirements-mock.txt is not installed
    mongo = Mongo(Settings(mongodb_url="mongomock://", mongodb_db="m"))
    with pytest.raises(SettingsError, match=r"requirements-mock\.txt"):
        await mongo.connect()


async def test_url_mode_uses_the_given_server(tmp_path: Path) -> None:
    server = EmbeddedServer(tmp_path)
    await server.start()
    try:
        mongo = Mongo(Settings(mongodb_url=server.url, mongodb_db="u"))
        await mongo.connect()
        try:
            await mongo.ping()
            assert mongo.embedded is None
        finally:
            await mongo.close()
    finally:
        await server.close()


async def test_start_waits_for_a_database_that_comes_up_late(tmp_path: Path) -> None:
    """Compose under podman starts the API without waiting for the database's health check."""
    late = EmbeddedServer(tmp_path)
    late.port = unused_port()
    mongo = Mongo(Settings(mongodb_url=late.url, mongodb_db="late", mongodb_timeout_ms=300))
    connecting = asyncio.create_task(mongo.connect(wait=30.0))
    await asyncio.sleep(1.0)
    assert not connecting.done()
    await late.start()
    try:
        await asyncio.wait_for(connecting, 20)
        await mongo.db.things.insert_one({"_id": 1})
        await mongo.close()
    finally:
        await late.close()


async def test_start_gives_up_when_the_database_never_answers() -> None:
    url = f"mongodb://127.0.0.1:{unused_port()}/?directConnection=true"
    mongo = Mongo(Settings(mongodb_url=url, mongodb_db="never", mongodb_timeout_ms=200))
    started = asyncio.get_running_loop().time()
    with pytest.raises(ServerSelectionTimeoutError):
        await mongo.connect(wait=1.0)
    assert asyncio.get_running_loop().time() - started < 5
    assert mongo.client is None  # closed, nothing left running


async def test_embedded_mode_persists_data_across_restarts(tmp_path: Path) -> None:
    settings = Settings(mongodb_url=None, data_dir=tmp_path / "db", mongodb_db="e")
    first = Mongo(settings)
    await first.connect()
    assert first.embedded is not None
    process = first.embedded.process
    await first.db.notes.insert_one({"_id": "kept", "text": "hello"})
    await first.close()
    assert process is not None
    assert process.returncode is not None  # the child is gone, not orphaned

    second = Mongo(settings)
    await second.connect()
    try:
        assert await second.db.notes.find_one({"_id": "kept"}) == {"_id": "kept", "text": "hello"}
    finally:
        await second.close()


async def test_second_service_on_the_same_data_dir_fails_clearly(tmp_path: Path) -> None:
    first = EmbeddedServer(tmp_path)
    await first.start()
    try:
        with pytest.raises(EmbeddedServerError, match="already using the data directory"):
            await EmbeddedServer(tmp_path).start()
    finally:
        await first.close()


def test_serve_stops_the_embedded_server_on_sigterm(tmp_path: Path) -> None:
    env = {**os.environ, "SERVICE_DATA_DIR": str(tmp_path), "PORT": "0", "LOG_LEVEL": "WARNING"}
    env.pop("MONGODB_URL", None)
    with subprocess.Popen(
        [sys.executable, "-m", "service", "serve"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    ) as server:
        try:
            assert server.stdout is not None
            assert "Serving on" in server.stdout.readline()
            children = _children(server.pid)
            assert children, "the embedded database should run as a child process"
            server.terminate()
            assert server.wait(timeout=30) == 0
            for pid in children:
                assert not Path(f"/proc/{pid}").exists() or _is_zombie(pid), f"orphan {pid} left running"
        finally:
            if server.poll() is None:
                server.kill()


def _children(pid: int) -> list[int]:
    found = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(child) for child in found]


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except FileNotFoundError:
        return True


async def test_readyz_turns_503_when_the_database_stops_and_recovers(tmp_path: Path) -> None:
    settings = Settings(mongodb_url=None, data_dir=tmp_path, mongodb_db="r", mongodb_timeout_ms=500)
    app = create_app(settings)
    async with TestClient(TestServer(app)) as client:
        assert (await client.get("/readyz")).status == 200
        embedded = app[MONGO].embedded
        assert embedded is not None
        await embedded.stop()
        api = await client.get("/api/v1/users/me", headers={"Authorization": "Bearer some-token"})
        assert api.status == 503
        assert api.headers["Retry-After"] == "5"
        assert (await api.json(content_type=PROBLEM))["detail"] == "The database is unavailable; try again shortly."
        down = await client.get("/readyz")
        assert down.status == 503
        assert down.headers["Retry-After"] == "5"
        assert (await down.json(content_type=PROBLEM))["status"] == 503
        await embedded.start()
        for _ in range(50):
            if (await client.get("/readyz")).status == 200:
                break
            await asyncio.sleep(0.2)
        assert (await client.get("/readyz")).status == 200


async def test_migrations_run_once_and_in_order(client: TestClient, db) -> None:
    ran: list[str] = []

    def step(name: str):
        async def migrate(_db) -> None:
            ran.append(name)

        return (name, migrate)

    migrations = [step("a_first"), step("b_second")]
    assert await run_migrations(db, migrations) == ["a_first", "b_second"]
    assert await run_migrations(db, migrations) == []
    assert ran == ["a_first", "b_second"]
    records = await db.migrations.find({"_id": {"$in": ["a_first", "b_second"]}}).to_list(None)
    assert {record["state"] for record in records} == {"done"}


async def test_startup_applied_the_builtin_migrations(client: TestClient, db) -> None:
    assert await db.migrations.find_one({"_id": "0001_backfill_versions", "state": "done"}) is not None


def test_db_upgrade_and_openapi_commands(tmp_path: Path) -> None:
    env = {**os.environ, "SERVICE_DATA_DIR": str(tmp_path)}
    env.pop("MONGODB_URL", None)
    first = subprocess.run(
        [sys.executable, "-m", "service", "db", "upgrade"], env=env, capture_output=True, text=True, timeout=120
    )
    assert first.returncode == 0, first.stderr
    assert "0001_backfill_versions" in first.stdout
    again = subprocess.run(
        [sys.executable, "-m", "service", "db", "upgrade"], env=env, capture_output=True, text=True, timeout=120
    )
    assert "none pending" in again.stdout
    printed = subprocess.run(
        [sys.executable, "-m", "service", "openapi"], env=env, capture_output=True, text=True, timeout=60
    )
    assert orjson.loads(printed.stdout)["openapi"] == "3.0.3"
