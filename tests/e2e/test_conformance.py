"""The served OpenAPI document, checked by tools nobody here wrote: schemathesis and a generated client."""

from __future__ import annotations

import asyncio
import importlib
import os
import sys
from pathlib import Path

import httpx
import orjson
import pytest

HERE = Path(__file__).resolve().parent
CHECKS = (
    "not_a_server_error,status_code_conformance,content_type_conformance,"
    "response_schema_conformance,response_headers_conformance"
)


async def run(*command: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> tuple[int, str]:
    """Run a tool while this test's event loop keeps serving the live server."""
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env, cwd=cwd
    )
    output, _ = await process.communicate()
    return process.returncode or 0, output.decode(errors="replace")


@pytest.mark.parametrize(("username", "password"), [("root", "q"), ("user", "w")])
async def test_schemathesis_finds_nothing(live_server: str, username: str, password: str, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "SCHEMATHESIS_HOOKS": "schemathesis_hooks",
        "PYTHONPATH": f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "E2E_BASE_URL": live_server,
        "E2E_USERNAME": username,
        "E2E_PASSWORD": password,
    }
    code, output = await run(
        sys.executable,
        "-m",
        "schemathesis.cli",
        "run",
        f"{live_server}/api/v1/openapi.json",
        "--url",
        f"{live_server}/api/v1",
        "--checks",
        CHECKS,
        # The OAuth2/OIDC endpoints live at the site root, not under --url; their own tests cover them.
        "--exclude-tag",
        "oauth2",
        "--phases",
        "examples,coverage,fuzzing,stateful",
        "--max-examples",
        os.environ.get("E2E_MAX_EXAMPLES", "40"),
        "--seed",
        "20261124",
        "--no-color",
        env=env,
        cwd=tmp_path,
    )
    print(output[-3000:])
    assert code == 0, output[-6000:]
    async with httpx.AsyncClient() as http:
        document = orjson.loads((await http.get(f"{live_server}/api/v1/openapi.json")).content)
    api_operations = sum(
        1
        for item in document["paths"].values()
        if "servers" not in item
        for method in item
        if method in ("get", "post", "patch", "delete")
    )
    assert f"Operations:       {api_operations} selected" in output  # every /api/v1 operation
    assert f"Tested: {api_operations}" in output
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
