"""Prometheus metrics on METRICS_PORT only: route templates, database commands, sign-ins, hashing."""

from __future__ import annotations

import dataclasses
import re

import aiohttp
from aiohttp.test_utils import TestClient, unused_port

from service.app import create_app
from service.config import Settings


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample in the exposition text (0 when absent)."""
    wanted = ",".join(f'{key}="{value}"' for key, value in labels.items())
    pattern = (
        rf"^{re.escape(name)}\{{{re.escape(wanted)}\}} ([0-9.e+-]+)$"
        if labels
        else rf"^{re.escape(name)} ([0-9.e+-]+)$"
    )
    match = re.search(pattern, text, re.M)
    return float(match.group(1)) if match else 0.0


async def scrape(port: int) -> str:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/metrics") as response:
        assert response.status == 200
        assert response.content_type == "text/plain"
        return await response.text()


async def test_metrics_are_served_on_their_own_port_with_route_templates(
    aiohttp_client, settings: Settings, mongo_client, seeded, backend: str
) -> None:
    port = unused_port()
    app = create_app(dataclasses.replace(settings, metrics_port=port), mongo_client=mongo_client)
    client: TestClient = await aiohttp_client(app)
    before = await scrape(port)
    form = {"grant_type": "password", "username": "user", "password": "w", "client_id": "documentation"}
    token = (await (await client.post("/auth/oauth2/token", data=form)).json())["access_token"]
    await client.post("/auth/oauth2/token", data={**form, "password": "wrong"})
    headers = {"Authorization": f"Bearer {token}"}
    me = await (await client.get("/api/v1/users/me", headers=headers)).json()
    await client.get(f"/api/v1/users/{me['id']}", headers=headers)
    await client.get("/api/v1/teams/000000000000000000000000", headers=headers)
    after = await scrape(port)

    def grew(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert grew("http_requests_total", method="GET", route="/api/v1/users/me", status="200") == 1
    assert grew("http_requests_total", method="GET", route="/api/v1/users/{user_id}", status="200") == 1
    assert grew("http_requests_total", method="GET", route="/api/v1/teams/{team_id}", status="404") == 1
    assert me["id"] not in after  # label values are templates, never raw paths
    assert grew("http_request_duration_seconds_count", method="POST", route="/auth/oauth2/token") == 2
    assert grew("signins_total", outcome="success") == 1
    assert grew("signins_total", outcome="failure") == 1
    assert grew("tokens_issued_total", grant_type="password") == 1
    assert grew("password_hash_seconds_count") >= 2
    assert "password_hash_queue_depth" in after
    assert "principal_cache_hits_total" in after
    if backend == "secantus":  # mongomock does not go through the driver's command monitoring
        assert grew("db_command_duration_seconds_count", command="find") >= 1
    assert (await client.get("/metrics")).status == 404  # never on the public port
