"""`serve --workers N`: a small master that keeps N worker processes serving one port (SO_REUSEPORT).

Each worker is a full `serve` process with its own database client; the kernel spreads connections
between them. With the embedded database the master starts it once and hands its URL to the workers.
SIGTERM/SIGINT stop the workers gracefully (they drain in-flight requests) and then the database;
SIGHUP replaces the workers one at a time (a rolling reload with no moment without a listener); a
worker that dies unexpectedly is replaced.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import subprocess  # nosec B404
import sys
import tempfile
import time

from prometheus_client import CollectorRegistry, multiprocess, start_http_server

from service import fixtures
from service.app import upgrade
from service.config import Settings
from service.db import Mongo
from service.passwords import PasswordHasher

log = logging.getLogger(__name__)
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


async def _prepare_embedded(settings: Settings) -> Mongo:
    """Start the embedded database once for all workers; upgrade it and load first-run fixtures."""
    mongo = Mongo(settings)
    await mongo.connect()
    await upgrade(mongo.settings, mongo.db)
    hasher = PasswordHasher(settings.argon2_time_cost, settings.argon2_memory_kib)
    try:
        await fixtures.load_on_first_run(mongo.db, hasher)
    finally:
        hasher.close()
    return mongo


class Master:
    def __init__(self, settings: Settings, host: str, port: int, workers: int) -> None:
        self.settings, self.host, self.port, self.count = settings, host, port, workers
        self.workers: list[subprocess.Popen[bytes]] = []
        self.signal: int | None = None
        self.metrics_dir: str | None = None

    def _spawn(self, env: dict[str, str]) -> subprocess.Popen[bytes]:
        command = [
            sys.executable,
            "-m",
            "service",
            "serve",
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--reuse-port",
        ]
        return subprocess.Popen(command, env=env)  # noqa: S603  # nosec B603

    def _on_signal(self, signum: int, _frame: object) -> None:
        self.signal = signum

    def run(self) -> int:
        mongo: Mongo | None = None
        loop = asyncio.new_event_loop()
        env = {**os.environ, "WORKERS": "1"}  # a worker must not become a master itself
        self.metrics_dir = self._serve_metrics(env)
        if self.settings.mongodb_url is None:
            mongo = loop.run_until_complete(_prepare_embedded(self.settings))
            if mongo.embedded is None:
                raise RuntimeError("the embedded database did not start")
            env["MONGODB_URL"] = mongo.embedded.url
            env.setdefault("MAIL_DEV", "true")  # the embedded database is development: mail to files
            env.setdefault("MAIL_DIR", str(self.settings.mail_directory))
        for signum in (*_STOP_SIGNALS, signal.SIGHUP):
            signal.signal(signum, self._on_signal)
        try:
            self.workers = [self._spawn(env) for _ in range(self.count)]
            print(
                f"Serving on http://{self.host}:{self.port} with {self.count} workers "
                f"(pids {', '.join(str(w.pid) for w in self.workers)})",
                flush=True,
            )
            while self.signal not in _STOP_SIGNALS:
                if self.signal == signal.SIGHUP:
                    self.signal = None
                    self._rolling_restart(env)
                for i, worker in enumerate(self.workers):
                    if worker.poll() is not None and self.signal is None:
                        log.warning("worker %d exited with %s; starting another", worker.pid, worker.returncode)
                        self._forget(worker.pid)
                        self.workers[i] = self._spawn(env)
                time.sleep(0.2)
            return self._stop_all()
        finally:
            if self.metrics_dir is not None:
                shutil.rmtree(self.metrics_dir, ignore_errors=True)
            if mongo is not None:
                loop.run_until_complete(mongo.close())
            loop.close()

    def _serve_metrics(self, env: dict[str, str]) -> str | None:
        """With METRICS_PORT: workers write to a shared multiprocess directory, the master serves the sum."""
        if self.settings.metrics_port is None:
            return None
        directory = tempfile.mkdtemp(prefix="service-metrics-")
        env["PROMETHEUS_MULTIPROC_DIR"] = directory  # workers record there; only the master listens
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]  # prometheus-client leaves it unannotated
        start_http_server(self.settings.metrics_port, addr=self.host, registry=registry)
        return directory

    def _forget(self, pid: int) -> None:
        """Live gauges (in flight, queue depth) stop counting a worker that is gone."""
        if self.metrics_dir is not None:
            multiprocess.mark_process_dead(pid, path=self.metrics_dir)  # type: ignore[no-untyped-call]  # same

    def _rolling_restart(self, env: dict[str, str]) -> None:
        for i, old in enumerate(list(self.workers)):
            self.workers[i] = self._spawn(env)
            time.sleep(1.0)  # let the new worker bind before the old one stops listening
            old.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                old.wait(timeout=35)
            self._forget(old.pid)
        log.info("reloaded %d workers", len(self.workers))

    def _stop_all(self) -> int:
        for worker in self.workers:
            if worker.poll() is None:
                worker.terminate()
        codes = []
        for worker in self.workers:
            try:
                codes.append(worker.wait(timeout=35))
            except subprocess.TimeoutExpired:
                worker.kill()
                codes.append(worker.wait())
        return 0 if all(code in (0, -signal.SIGTERM) for code in codes) else 1
