"""Builds the app through the real factory on the chosen backend.

`--backend=mongomock` (default; or TEST_BACKEND) runs on mongomock-motor in memory;
`--backend=secantus` starts one real `secantusd-py` wire-protocol server for the session and
gives every test its own database on it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import email.policy
import os
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer, unused_port
from aiosmtpd.controller import Controller

from service import fixtures
from service.app import SERVE_OPTIONS, create_app
from service.config import Settings
from service.db import MONGO, Client, create_client
from service.embedded import EmbeddedServer
from service.passwords import HASHER


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--backend",
        choices=("mongomock", "secantus"),
        default=os.environ.get("TEST_BACKEND", "mongomock"),
        help="database backend for the API tests",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "smtp: the test's app delivers mail over SMTP to the `smtp_server` fixture")


def pytest_report_header(config: pytest.Config) -> str:
    return f"database backend: {config.getoption('--backend')}"


@pytest.fixture(scope="session")
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.config.getoption("--backend"))


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"secantusd-py exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("secantusd-py did not start in time")


@pytest.fixture(scope="session")
def secantus_url(backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str | None]:
    """The URL of the session's real server (fail points enabled for fault tests), or None on mongomock."""
    if backend != "secantus":
        yield None
        return
    port = unused_port()
    storage = tmp_path_factory.mktemp("secantus")
    # The service's own EmbeddedServer command line, run synchronously: it lives for the whole session.
    server = EmbeddedServer(storage, port, extra_args=("--enable-test-commands",))
    with (
        open(storage / "server.log", "wb") as server_log,
        subprocess.Popen(server.argv(), stdout=server_log, stderr=server_log) as process,
    ):
        try:
            wait_for_port(port, process)
            yield f"mongodb://127.0.0.1:{port}/?directConnection=true"
        finally:
            process.terminate()
            process.wait(timeout=30)


@dataclasses.dataclass
class Received:
    """One message the test SMTP server accepted: the envelope and the parsed message."""

    sender: str
    recipients: list[str]
    message: EmailMessage


class SmtpServer:
    """A real SMTP server (aiosmtpd) on a free loopback port, in its own thread. `answer` set to an SMTP
    reply (e.g. "451 4.3.0 try later") refuses every message with it; `stop()`/`start()` take it away
    and bring it back on the same port."""

    def __init__(self) -> None:
        self.port = unused_port()
        self.url = f"smtp://127.0.0.1:{self.port}"
        self.received: list[Received] = []
        self.answer: str | None = None
        self._lock = threading.Lock()
        self._controller: Controller | None = None

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # aiosmtpd's hook name
        if self.answer is not None:
            return self.answer
        message = BytesParser(policy=email.policy.default).parsebytes(envelope.original_content)
        assert isinstance(message, EmailMessage)
        with self._lock:
            self.received.append(Received(envelope.mail_from, list(envelope.rcpt_tos), message))
        return "250 2.0.0 OK"

    @property
    def messages(self) -> list[EmailMessage]:
        with self._lock:
            return [item.message for item in self.received]

    def start(self) -> None:
        self._controller = Controller(self, hostname="127.0.0.1", port=self.port)
        self._controller.start()

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[EmailMessage]:
        """The first `count` messages, once that many arrived (AssertionError after `timeout`)."""
        deadline = time.monotonic() + timeout
        while len(self.messages) < count:
            assert time.monotonic() < deadline, f"{len(self.messages)} of {count} messages arrived"
            await asyncio.sleep(0.02)
        return self.messages[:count]


@pytest.fixture
def smtp_server() -> Iterator[SmtpServer]:
    """A real SMTP server for the test; `@pytest.mark.smtp` points the test's app at it."""
    server = SmtpServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def settings(secantus_url: str | None, tmp_path, request: pytest.FixtureRequest) -> Settings:
    settings = Settings(
        mongodb_url=secantus_url or "mongomock://",
        mongodb_db=f"test_{uuid.uuid4().hex[:12]}",
        mongodb_timeout_ms=3000,
        # Cheap hashing keeps the suite fast; production parameters are benchmarked separately.
        argon2_time_cost=1,
        argon2_memory_kib=64,
        # A fixed test key for secrets kept encrypted (TOTP); a real deployment sets DATA_ENCRYPTION_KEY.
        data_encryption_key=("hCLk7a6zDKhBFRCXHpQYbNmAdMjnRQGHyDmeZDlgibU=",),
        # Mail: development delivery into the test's directory, unless the test asks for SMTP. The
        # sender wakes for the app's own messages at once; it looks for others' rarely, so that idle
        # polls stay out of the database operations tests count.
        mail_dev=True,
        mail_dir=tmp_path / "mail",
        mail_poll_seconds=60.0,
    )
    if request.node.get_closest_marker("smtp"):
        server: SmtpServer = request.getfixturevalue("smtp_server")
        settings = dataclasses.replace(settings, smtp_url=server.url, smtp_timeout=5.0)
    return settings


@pytest.fixture
async def mongo_client(settings: Settings) -> AsyncIterator[Client]:
    assert settings.mongodb_url is not None
    client = create_client(settings.mongodb_url, settings.mongodb_timeout_ms)
    yield client
    if not settings.mongomock:
        await client.drop_database(settings.mongodb_db)
    client.close()


@pytest.fixture
def app(settings: Settings, mongo_client: Client) -> web.Application:
    return create_app(settings, mongo_client=mongo_client)


@pytest.fixture
async def client(aiohttp_client, app: web.Application) -> TestClient:
    """A client of the app served the way `serve` serves it (the production access logger included)."""
    server = TestServer(app)
    await server.start_server(**SERVE_OPTIONS)
    return await aiohttp_client(server)


@pytest.fixture
def db(client: TestClient, settings: Settings, mongo_client: Client):
    """The test's database, after the app has started (indexes and migrations done)."""
    return mongo_client[settings.mongodb_db]


@pytest.fixture
async def seeded(client: TestClient, app: web.Application, db):
    """The development fixtures (root/q admin, user/w regular, public `documentation` client)."""
    return await fixtures.load(db, app[HASHER], fixtures.default_files())


@pytest.fixture
def login(client: TestClient, seeded):
    """Sign in through the real token endpoint: `await login("root", "q")` -> token response."""

    async def sign_in(username: str, password: str, scope: str | None = None, client_id: str = "documentation"):
        form = {"grant_type": "password", "username": username, "password": password, "client_id": client_id}
        if scope is not None:
            form["scope"] = scope
        response = await client.post("/auth/oauth2/token", data=form)
        assert response.status == 200, await response.text()
        return await response.json()

    return sign_in


@pytest.fixture
def bearer(login):
    """`await bearer("root")` -> Authorization headers for a fixture user (all scopes unless given)."""
    passwords = {"root": "q", "user": "w"}

    async def headers(username: str, scope: str | None = None, password: str | None = None) -> dict[str, str]:
        token = await login(username, password or passwords[username], scope)
        return {"Authorization": f"Bearer {token['access_token']}"}

    return headers


@pytest.fixture
def signup(client: TestClient):
    """Create a user through the public sign-up endpoint."""

    async def create(username: str, password: str = "long enough pw", **extra: str):
        body = {"username": username, "email": f"{username}@example.com", "password": password, **extra}
        response = await client.post("/api/v1/users/", json=body)
        assert response.status == 201, await response.text()
        return await response.json()

    return create


@pytest.fixture
def register_client(client: TestClient, bearer):
    """`await register_client("user", client_type=..., allowed_scopes=[...])` -> the created client (with secret)."""

    async def create(owner: str = "user", **body: Any):
        payload = {"client_type": "confidential", "allowed_scopes": ["users:read"], **body}
        response = await client.post("/api/v1/auth/oauth2_clients/", json=payload, headers=await bearer(owner))
        assert response.status == 201, await response.text()
        return await response.json()

    return create


@pytest.fixture
async def live_server(settings, mongo_client) -> AsyncIterator[str]:
    """The service on a free port (a real socket, for browsers and other processes) with the fixtures
    loaded; the docs client may redirect to its Swagger UI and to `<base>/cb` (a test relying party)."""
    app = create_app(settings, mongo_client=mongo_client)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server(**SERVE_OPTIONS)
    base = f"http://127.0.0.1:{server.port}"
    db = app[MONGO].db
    await fixtures.load(db, app[HASHER], fixtures.default_files())
    await db.oauth2_clients.update_one(
        {"_id": "documentation"},
        {"$push": {"redirect_uris": {"$each": [f"{base}/api/v1/static/oauth2-redirect.html", f"{base}/cb"]}}},
    )
    yield base
    await server.close()
