"""A real Prometheus server (Debian's package) scrapes the service and answers PromQL about it."""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import subprocess
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer, unused_port

from service import fixtures
from service.app import create_app
from service.db import MONGO
from service.passwords import HASHER

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"


async def test_prometheus_scrapes_the_request_rate_of_a_route(tmp_path: Path, settings, mongo_client) -> None:
    if not Path(PROMETHEUS).exists():
        pytest.fail("Prometheus is missing: apt-get install prometheus (.ci/run does)")
    metrics_port, prometheus_port = unused_port(), unused_port()
    app = create_app(dataclasses.replace(settings, metrics_port=metrics_port), mongo_client=mongo_client)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    await fixtures.load(app[MONGO].db, app[HASHER], fixtures.default_files())
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: api\n    static_configs: [{{targets: ['127.0.0.1:{metrics_port}']}}]\n"
    )
    with (
        (tmp_path / "prometheus.log").open("wb") as log,
        subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'data'}",
                f"--web.listen-address=127.0.0.1:{prometheus_port}",
            ],
            stdout=log,
            stderr=log,
        ) as prometheus,
    ):
        try:
            base = f"http://127.0.0.1:{server.port}"
            async with aiohttp.ClientSession() as http:
                form = {"grant_type": "password", "username": "user", "password": "w", "client_id": "documentation"}
                async with http.post(f"{base}/auth/oauth2/token", data=form) as response:
                    token = (await response.json())["access_token"]
                headers = {"Authorization": f"Bearer {token}"}
                query = 'sum(rate(http_requests_total{route="/api/v1/users/me",status="200"}[5s]))'
                deadline = time.monotonic() + 45
                rate = 0.0
                while time.monotonic() < deadline and rate <= 0:
                    for _ in range(20):  # steady traffic: ~40 requests a second
                        async with http.get(f"{base}/api/v1/users/me", headers=headers) as me:
                            assert me.status == 200
                        await asyncio.sleep(0.025)
                    try:
                        async with http.get(
                            f"http://127.0.0.1:{prometheus_port}/api/v1/query", params={"query": query}
                        ) as answer:
                            result = (await answer.json())["data"]["result"]
                            rate = float(result[0]["value"][1]) if result else 0.0
                    except aiohttp.ClientError:
                        pass  # Prometheus is still starting
            assert rate > 0, "Prometheus never saw a request rate for the route"
            print(f"\nprometheus: {query} = {rate:.1f}/s")
        finally:
            prometheus.terminate()
            prometheus.wait(timeout=30)
            await server.close()
