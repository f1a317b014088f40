"""The served OpenAPI document, checked by tools nobody here wrote: schemathesis and a generated client."""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import os
import sys
from pathlib import Path

import httpx
import orjson
import pytest

from service.config import Settings

HERE = Path(__file__).resolve().parent
FIXTURE_PASSWORDS = {"root": "q", "user": "w"}


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The per-address limit on /auth/oauth2/ and the per-token limit on the API would answer most of the
    fuzzer's requests with 429 (documented, and tested elsewhere); lifted here so that the operations are
    fuzzed, not rate limited."""
    return dataclasses.replace(
        settings,
        oauth_rate_limit=1_000_000.0,
        oauth_rate_burst=1_000_000,
        api_rate_limit=1_000_000.0,
        api_rate_burst=1_000_000,
    )


async def run(*command: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> tuple[int, str]:
    """Run a tool while this test's event loop keeps serving the live server."""
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env, cwd=cwd
    )
    output, _ = await process.communicate()
    return process.returncode or 0, output.decode(errors="replace")


async def _user_ids(base: str) -> dict[str, str]:
    ids = {}
    async with httpx.AsyncClient(base_url=base) as http:
        for username, password in FIXTURE_PASSWORDS.items():
            form = {"grant_type": "password", "client_id": "documentation", "username": username, "password": password}
            token = (await http.post("/auth/oauth2/token", data=form)).json()["access_token"]
            me = await http.get("/api/v1/users/me", headers={"Authorization": f"Bearer {token}"})
            ids[username] = me.json()["id"]
    return ids


@pytest.mark.parametrize("username", ["root", "user"])
async def test_schemathesis_finds_nothing(live_server: str, username: str, tmp_path: Path) -> None:
    """Every operation of the served document, the OAuth2/OIDC ones at the site root included (each path
    item's `servers` entry sends them there), all checks, all phases; any finding fails the test."""
    ids = await _user_ids(live_server)
    env = {
        **os.environ,
        "SCHEMATHESIS_HOOKS": "schemathesis_hooks",
        "PYTHONPATH": f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "E2E_BASE_URL": live_server,
        "E2E_USERNAME": username,
        "E2E_PASSWORD": FIXTURE_PASSWORDS[username],
        "E2E_MEMBER_ID": next(user_id for name, user_id in ids.items() if name != username),
    }
    code, output = await run(
        sys.executable,
        "-m",
        "schemathesis.cli",
        "--config-file",
        str(HERE / "schemathesis.toml"),
        "run",
        # No --url: the document's own servers give /api/v1 for the API and / for OAuth2 and discovery.
        f"{live_server}/api/v1/openapi.json",
        "--checks",
        "all",
        "--phases",
        "examples,coverage,fuzzing,stateful",
        "--max-examples",
        os.environ.get("E2E_MAX_EXAMPLES", "100"),
        "--seed",
        "20261124",
        "--no-color",
        env=env,
        cwd=tmp_path,
    )
    print(output[-3000:])
    assert code == 0, output[-12000:]
    async with httpx.AsyncClient() as http:
        document = orjson.loads((await http.get(f"{live_server}/api/v1/openapi.json")).content)
    operations = sum(
        1
        for item in document["paths"].values()
        for method in item
        if method in ("get", "post", "put", "patch", "delete")
    )
    assert f"Operations:       {operations} selected / {operations} total" in output  # every operation
    assert f"Tested: {operations}" in output
    assert " passed" in output


async def test_generated_client_signs_up_signs_in_and_builds_a_team(live_server: str, tmp_path: Path) -> None:
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    code, output = await run(
        str(Path(bin_dir) / "openapi-python-client"),
        "generate",
        "--url",
        f"{live_server}/api/v1/openapi.json",
        "--meta",
        "none",
        "--output-path",
        str(tmp_path / "api_client"),
        env=env,
        cwd=tmp_path,
    )
    assert code == 0, output
    assert "Warning" not in output, output
    sys.path.insert(0, str(tmp_path))
    try:
        client_module = importlib.import_module("api_client")
        from api_client.api.teams import add_team_member, create_team, list_team_members  # type: ignore[import-not-found]
        from api_client.api.users import create_user, get_current_user  # type: ignore[import-not-found]
        from api_client.models import AddMember, CreateTeam, Signup  # type: ignore[import-not-found]

        anonymous = client_module.Client(base_url=f"{live_server}/api/v1")
        async with anonymous as api:
            alice = await create_user.asyncio(
                client=api, body=Signup(username="alice", email="alice@example.com", password="alice's password")
            )
            bob = await create_user.asyncio(
                client=api, body=Signup(username="bob", email="bob@example.com", password="bob's password")
            )
        assert alice.username == "alice"
        async with httpx.AsyncClient() as http:
            token = (
                await http.post(
                    f"{live_server}/auth/oauth2/token",
                    data={
                        "grant_type": "password",
                        "client_id": "documentation",
                        "username": "alice",
                        "password": "alice's password",
                    },
                )
            ).json()["access_token"]
        async with client_module.AuthenticatedClient(base_url=f"{live_server}/api/v1", token=token) as api:
            me = await get_current_user.asyncio(client=api)
            assert me.id == alice.id
            team = await create_team.asyncio(client=api, body=CreateTeam(title="Generated"))
            member = await add_team_member.asyncio(team.id, client=api, body=AddMember(user_id=bob.id, is_leader=False))
            assert member.user.username == "bob"
            members = await list_team_members.asyncio(team.id, client=api)
            assert sorted((m.user.username, m.is_leader) for m in members) == [("alice", True), ("bob", False)]
    finally:
        sys.path.remove(str(tmp_path))
        for name in [m for m in sys.modules if m == "api_client" or m.startswith("api_client.")]:
            del sys.modules[name]
