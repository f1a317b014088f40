"""`serve --workers 2`: two processes share the port, both serve, and all of it stops cleanly."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import orjson
from aiohttp.test_utils import unused_port


def wait_ready(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise AssertionError("the workers did not become ready")


def descendants(pid: int) -> set[int]:
    found: set[int] = set()
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        found |= {int(child), *descendants(int(child))}
    return found


def test_two_workers_serve_and_stop_cleanly(tmp_path: Path, secantus_url: str | None) -> None:
    port, metrics_port = unused_port(), unused_port()
    env = {
        **os.environ,
        "LOG_FORMAT": "json",
        "PORT": str(port),
        "SERVICE_DATA_DIR": str(tmp_path),
        "ARGON2_MEMORY_KIB": "64",
        "ARGON2_TIME_COST": "1",
        "MONGODB_DB": f"w{port}",
        "METRICS_PORT": str(metrics_port),
    }
    env.pop("MONGODB_URL", None)
    if secantus_url:
        env["MONGODB_URL"] = secantus_url
        env["MAIL_DEV"] = "true"  # a real database without SMTP_URL: development delivery, on purpose
    log = tmp_path / "stderr.log"
    with (
        open(log, "wb") as stderr,
        subprocess.Popen(
            [sys.executable, "-m", "service", "serve", "--workers", "2"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        ) as master,
    ):
        try:
            wait_ready(port)
            family = descendants(master.pid)
            assert len(family) >= 2
            for _ in range(60):  # fresh connections, so the kernel spreads them over both workers
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
                    assert response.status == 200
            # One scrape target for the whole server: the master sums what every worker counted.
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as response:
                exposition = response.read().decode()
            served = re.search(
                r'^http_requests_total\{method="GET",route="/healthz",status="200"\} ([0-9.e+]+)$', exposition, re.M
            )
            assert served is not None, exposition[:2000]
            assert float(served.group(1)) >= 60
            before = descendants(master.pid)
            master.send_signal(signal.SIGHUP)  # rolling reload: new workers, no gap in service
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and len(descendants(master.pid) & before) > len(before) - 2:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
                    assert response.status == 200
                time.sleep(0.2)
            family |= descendants(master.pid)
            assert len(descendants(master.pid) - before) >= 2, "SIGHUP should have replaced both workers"
            master.send_signal(signal.SIGTERM)
            assert master.wait(timeout=60) == 0
        finally:
            if master.poll() is None:
                master.kill()
    entries = [orjson.loads(line) for line in log.read_bytes().splitlines() if line.startswith(b"{")]
    serving = {entry["pid"] for entry in entries if entry.get("path") == "/healthz"}
    assert len(serving) >= 2, f"requests were served by {serving}"
    for pid in family:
        assert not Path(f"/proc/{pid}").exists(), f"process {pid} outlived the master"
