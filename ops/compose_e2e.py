"""`make compose-e2e`: build the real image, start the real docker-compose.yml with three API replicas
behind nginx, and check through nginx on the published port what a user of the local stack relies on.

With a Docker engine it runs `docker compose` on the compose file as it is. Without one (these CI
machines) it runs podman + podman-compose: a Debian base image made with debootstrap stands in for the
official Python image (the Dockerfile's PYTHON_IMAGE argument), and ops/podman/compose.override.yml
swaps MongoDB for SecantusDB, nginx for Debian's and Mailpit for a catcher built from Debian packages. Prints `compose: N passed, M failed` last, exits
non-zero on any failure, and removes every container, network, volume and image it made.
"""

from __future__ import annotations

import asyncio
import email.policy
import json
import os
import re
import shutil
import socket
import subprocess  # nosec B404 - this script drives the container engine's command line
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
PODMAN = ROOT / "ops" / "podman"
PROJECT = "restful-api-server-e2e"
REPLICAS = 3
BASE_IMAGE = "localhost/restful-api-server-base:bookworm"
LOCAL_IMAGES = {  # image -> Containerfile in ops/podman, built FROM the base
    "localhost/restful-api-server-secantusdb:local": "secantusdb.Containerfile",
    "localhost/restful-api-server-nginx:local": "nginx.Containerfile",
    "localhost/restful-api-server-mailcatcher:local": "mailcatcher.Containerfile",
}
APT_PACKAGES = [
    "podman",
    "buildah",
    "runc",
    "fuse-overlayfs",
    "slirp4netns",
    "netavark",
    "aardvark-dns",
    "iptables",
    "debootstrap",
]
SIGN_IN = {"grant_type": "password", "client_id": "documentation", "username": "root", "password": "q"}
ROOT_EMAIL = "root@example.com"  # fixtures/users.json


def run(*args: str, check: bool = True, quiet: bool = False, **kwargs: object) -> subprocess.CompletedProcess[str]:
    """Run a command; its output is shown (for the CI log) unless `quiet`, and returned either way."""
    result = subprocess.run(args, capture_output=True, text=True, check=False, **kwargs)  # nosec B603
    if not quiet and (result.stdout.strip() or result.stderr.strip()):
        print(f"$ {' '.join(args)}\n{result.stdout}{result.stderr}".rstrip(), flush=True)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} exited with {result.returncode}:\n{result.stderr[-2000:]}")
    return result


class CheckFailed(AssertionError):
    """What a check found wrong."""


def expect(condition: object, detail: object = "") -> None:
    """`assert` that survives `python -O`: a check that cannot fail is no check."""
    if not condition:
        raise CheckFailed(str(detail))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Engine:
    """The container engine's command line, Docker or podman, as far as this test needs it."""

    name: str
    compose_cmd: list[str]
    override: list[str]  # extra compose files
    label: str  # the label compose puts the project name in
    env: dict[str, str] = field(default_factory=dict)
    images_before: set[str] = field(default_factory=set)  # everything else is ours, removed at the end

    @staticmethod
    def detect() -> Engine:
        if shutil.which("docker") and run("docker", "info", check=False, quiet=True).returncode == 0:
            return Engine("docker", ["docker", "compose"], [], "com.docker.compose.project")
        # BUILDAH_LAYERS=false: no intermediate images left behind to clean up.
        env = {
            "CONTAINERS_CONF": str(PODMAN / "containers.conf"),
            "BUILDAH_FORMAT": "docker",
            "BUILDAH_LAYERS": "false",
        }
        compose = [sys.executable, "-m", "podman_compose", "--in-pod", "false"]
        return Engine("podman", compose, ["-f", str(PODMAN / "compose.override.yml")], "io.podman.compose.project", env)

    def cli(self, *args: str, check: bool = True, quiet: bool = False) -> subprocess.CompletedProcess[str]:
        return run(self.name, *args, check=check, quiet=quiet, env={**os.environ, **self.env})

    def compose(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        files = ["-f", str(ROOT / "docker-compose.yml"), *self.override]
        return run(
            *self.compose_cmd, "-p", PROJECT, *files, *args, check=check, quiet=True, env={**os.environ, **self.env}
        )

    def up(self, *, build: bool = True) -> None:
        rebuild = ["--build"] if build else []
        if self.name == "docker":
            self.compose("up", "-d", *rebuild, "--scale", f"api={REPLICAS}", "--wait")
        else:
            # podman-compose 1.6 on podman 4.3 cannot honour `condition: service_healthy`, and the
            # `--requires` links it makes instead fail to start with a finished one-shot (fixtures)
            # among them: start in order without links; the services wait for the database themselves.
            self.compose("up", "-d", *rebuild, "--no-deps", "--scale", f"api={REPLICAS}")

    def down(self, *, volumes: bool) -> None:
        self.compose("down", *(["-v"] if volumes else []), check=False)
        # podman-compose's `down` knows only the replica count in the file, not `up --scale`'s.
        leftovers = self.containers()
        if leftovers:
            self.cli("rm", "-f", *leftovers, check=False, quiet=True)
        if volumes:
            for volume in self.volumes():
                self.cli("volume", "rm", "-f", volume, check=False, quiet=True)
        networks = self.cli("network", "ls", "-q", "--filter", f"label={self.label}={PROJECT}", check=False, quiet=True)
        for network in networks.stdout.split():
            self.cli("network", "rm", "-f", network, check=False, quiet=True)

    def containers(self, service: str | None = None) -> list[str]:
        service_label = "io.podman.compose.service" if self.name == "podman" else "com.docker.compose.service"
        filters = ["--filter", f"label={self.label}={PROJECT}"]
        if service:
            filters += ["--filter", f"label={service_label}={service}"]
        listed = self.cli("ps", "-a", "-q", "--no-trunc", *filters, quiet=True)
        return listed.stdout.split()

    def volumes(self) -> list[str]:
        listed = self.cli("volume", "ls", "-q", "--filter", f"label={self.label}={PROJECT}", quiet=True)
        return listed.stdout.split()

    def inspect(self, container: str) -> dict[str, object]:
        return dict(json.loads(self.cli("inspect", container, quiet=True).stdout)[0])

    def healthy(self, container: str) -> bool:
        if self.name == "podman":  # no systemd here to run the checks on a timer: run one now
            return self.cli("healthcheck", "run", container, check=False, quiet=True).returncode == 0
        state = self.inspect(container)["State"]
        return isinstance(state, dict) and state.get("Health", {}).get("Status") == "healthy"

    def logs(self, container: str) -> str:
        result = self.cli("logs", container, check=False, quiet=True)
        return result.stdout + result.stderr

    def image_ids(self) -> set[str]:
        return set(self.cli("images", "-a", "-q", "--no-trunc", quiet=True).stdout.split())

    def prepare(self) -> None:
        """podman only: the base image and the images the override file names, from Debian packages."""
        if self.name == "docker":
            return
        with tempfile.TemporaryDirectory(prefix="compose-e2e-") as tmp:
            rootfs = Path(tmp) / "rootfs"
            mirror = os.environ.get("DEBIAN_MIRROR", "http://deb.debian.org/debian")
            run(
                "debootstrap",
                "--variant=minbase",
                "--include=python3,python3-venv,python-is-python3,ca-certificates",
                "bookworm",
                str(rootfs),
                mirror,
                quiet=True,
            )
            # The host's CA bundle, so that pip inside the builds trusts what this machine trusts.
            shutil.copy("/etc/ssl/certs/ca-certificates.crt", rootfs / "etc/ssl/certs/ca-certificates.crt")
            shutil.rmtree(rootfs / "var/lib/apt/lists", ignore_errors=True)
            tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)  # nosec
            run("podman", "import", "-", BASE_IMAGE, stdin=tar.stdout, quiet=True, env={**os.environ, **self.env})
            tar.wait()
        secantusdb = next(
            line
            for line in (ROOT / "requirements-embedded.txt").read_text().splitlines()
            if line.startswith("secantusdb==")
        )
        for image, containerfile in LOCAL_IMAGES.items():
            self.cli(
                "build",
                "-q",
                "--build-arg",
                f"BASE_IMAGE={BASE_IMAGE}",
                "--build-arg",
                f"SECANTUSDB_VERSION={secantusdb.split('==')[1]}",
                "-f",
                str(PODMAN / containerfile),
                "-t",
                image,
                str(PODMAN),
                quiet=True,
            )

    def remove_images(self) -> None:
        """Every image that was not there before `prepare`: ours, tagged or left untagged by a build."""
        ours = self.image_ids() - self.images_before
        if ours:
            self.cli("rmi", "-f", *ours, check=False, quiet=True)


def install_podman() -> None:
    """What this needs on a fresh Debian machine without Docker (podman-compose is in requirements-dev)."""
    missing = [package for package in APT_PACKAGES if not _installed(package)]
    if not missing:
        return
    if os.geteuid() != 0:
        sys.exit(f"compose-e2e needs these Debian packages: {' '.join(missing)} (apt-get install, as root)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    run("apt-get", "update", "-q", quiet=True, env=env)
    run("apt-get", "install", "-y", "-q", "--no-install-recommends", *missing, quiet=True, env=env)


def _installed(package: str) -> bool:
    status = run("dpkg-query", "-W", "-f=${Status}", package, check=False, quiet=True)
    return status.returncode == 0 and status.stdout.endswith("installed")


class Checks:
    """Named checks: each prints one line; a failure does not stop the ones after it."""

    def __init__(self) -> None:
        self.passed = 0
        self.failed = 0

    @contextmanager
    def check(self, name: str) -> Iterator[Callable[[str], None]]:
        notes: list[str] = []
        try:
            yield notes.append
        except Exception as exc:  # noqa: BLE001 - a failed check is reported, and the next one runs
            self.failed += 1
            print(f"FAIL {name}: {type(exc).__name__}: {exc}", flush=True)
        else:
            self.passed += 1
            print(f"ok   {name}" + (f" ({'; '.join(notes)})" if notes else ""), flush=True)


class Stack:
    """The running stack, seen from outside: HTTP through nginx, and the engine for containers and logs."""

    def __init__(self, engine: Engine, base: str, inbox: str) -> None:
        self.engine = engine
        self.base = base
        self.inbox = inbox  # the mail catcher's web inbox (Mailpit's API)
        self.token = ""

    async def wait_ready(self, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as http:
            while True:
                replicas = self.engine.containers("api")
                healthy = [c for c in replicas if self.engine.healthy(c)]
                try:
                    async with http.get(f"{self.base}/readyz", timeout=aiohttp.ClientTimeout(total=3)) as response:
                        through_nginx = response.status == 200
                except (aiohttp.ClientError, TimeoutError):
                    through_nginx = False
                if len(healthy) == REPLICAS and through_nginx:
                    return
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{len(healthy)}/{REPLICAS} replicas healthy, nginx ready: {through_nginx}")
                await asyncio.sleep(1.0)

    async def request(self, method: str, path: str, *, expect: int, rid: str | None = None, **kwargs: object) -> object:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        if rid:
            headers["X-Request-ID"] = rid
        async with (
            aiohttp.ClientSession() as http,
            http.request(method, self.base + path, headers=headers, **kwargs) as response,
        ):  # type: ignore[arg-type]
            body = await response.read()
            if response.status != expect:
                raise AssertionError(f"{method} {path}: {response.status}, expected {expect}: {body[:300]!r}")
            if response.content_type.endswith("json"):
                return json.loads(body)
            return body.decode()

    async def sign_in(self, rid: str | None = None) -> None:
        self.token = ""
        answer = await self.request("POST", "/auth/oauth2/token", data=SIGN_IN, expect=200, rid=rid)
        expect(isinstance(answer, dict))
        self.token = str(answer["access_token"])

    async def mail_to(self, address: str, timeout: float = 60.0) -> EmailMessage:
        """The newest mail for `address` in the catcher, read over HTTP as a person's browser would."""
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as http:
            while True:
                async with http.get(f"{self.inbox}/api/v1/messages") as response:
                    listed = await response.json() if response.status == 200 else {"messages": []}
                found = [m for m in listed["messages"] if address in [to["Address"] for to in m["To"]]]
                if found:
                    async with http.get(f"{self.inbox}/api/v1/message/{found[0]['ID']}/raw") as response:
                        expect(response.status == 200, response.status)
                        message = BytesParser(policy=email.policy.default).parsebytes(await response.read())
                        if not isinstance(message, EmailMessage):
                            raise CheckFailed("not an RFC 5322 message")
                        return message
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no mail for {address} in {timeout:.0f} s: {listed}")
                await asyncio.sleep(0.5)

    def served_by(self, prefix: str) -> dict[str, list[str]]:
        """Request ids starting with `prefix`, by the replica whose JSON access log has them."""
        seen: dict[str, list[str]] = {}
        for container in self.engine.containers("api"):
            name = str(self.engine.inspect(container)["Name"]).lstrip("/")
            for line in self.engine.logs(container).splitlines():
                with suppress(ValueError):
                    entry = json.loads(line)
                    if entry.get("logger") == "aiohttp.access" and str(entry.get("request_id", "")).startswith(prefix):
                        seen.setdefault(name, []).append(entry["request_id"])
        return seen

    async def steady_load(self, seconds: float, workers: int, during: Callable[[], None], at: float) -> Counter[str]:
        """Idempotent GETs from `workers` clients for `seconds`; `during()` runs `at` seconds in.
        Counts outcomes: 'ok', 'ok-after' (answered after `during`), or the failure."""
        outcomes: Counter[str] = Counter()
        stop = time.monotonic() + seconds
        happened = asyncio.Event()
        headers = {"Authorization": f"Bearer {self.token}"}

        async def client(number: int) -> None:
            path = "/api/v1/users/me" if number % 2 else "/api/v1/teams/"
            async with aiohttp.ClientSession(headers=headers) as http:
                while time.monotonic() < stop:
                    try:
                        async with http.get(self.base + path, timeout=aiohttp.ClientTimeout(total=10)) as response:
                            await response.read()
                            outcome = "ok" if response.status == 200 else f"status {response.status}"
                    except (aiohttp.ClientError, TimeoutError) as exc:
                        outcome = type(exc).__name__
                    outcomes[outcome + ("-after" if happened.is_set() and outcome == "ok" else "")] += 1

        async def trigger() -> None:
            await asyncio.sleep(at)
            await asyncio.to_thread(during)
            happened.set()

        await asyncio.gather(trigger(), *(client(n) for n in range(workers)))
        return outcomes


async def exercise(engine: Engine, stack: Stack, checks: Checks) -> None:
    with checks.check("the stack starts and every replica is ready"):
        await stack.wait_ready()

    with checks.check("the fixtures one-shot ran exactly once") as note:
        runs = engine.containers("fixtures")
        expect(len(runs) == 1, f"{len(runs)} fixtures containers")
        state = engine.inspect(runs[0])["State"]
        expect(isinstance(state, dict) and state["Status"] == "exited" and state["ExitCode"] == 0, state)
        output = engine.logs(runs[0])
        fixture_users = len(json.loads((ROOT / "fixtures" / "users.json").read_text())["users"])
        expect(f"created: {fixture_users} users" in output, output)  # a fresh volume: all of them, once
        note(next(line for line in output.splitlines() if line.startswith("created: ")))

    with checks.check("the docs page loads through nginx"):
        page = await stack.request("GET", "/api/v1/", expect=200)
        expect(isinstance(page, str) and "swagger-ui" in page.lower(), page[:200])
        spec = await stack.request("GET", "/api/v1/openapi.json", expect=200)
        expect(isinstance(spec, dict) and spec["openapi"].startswith("3."))

    with checks.check("password grant as root, then /users/me"):
        await stack.sign_in(rid="e2e-token")
        me = await stack.request("GET", "/api/v1/users/me", expect=200)
        expect(isinstance(me, dict) and me["username"] == "root", me)
        users = await stack.request("GET", "/api/v1/users/", expect=200, params={"limit": "100"})
        expect(isinstance(users, list) and [u["username"] for u in users].count("root") == 1)

    team: dict[str, object] = {}
    with checks.check("create a team"):
        created = await stack.request("POST", "/api/v1/teams/", json={"title": "Compose e2e"}, expect=201)
        expect(isinstance(created, dict))
        team.update(created)

    with checks.check("requests reach all three replicas; a token from one works on the others") as note:
        for number in range(30):
            await stack.request("GET", "/api/v1/users/me", expect=200, rid=f"e2e-spread-{number}")
        issued_by = [name for name, rids in stack.served_by("e2e-token").items() if rids]
        spread = {name: len(rids) for name, rids in stack.served_by("e2e-spread-").items()}
        expect(len(issued_by) == 1, issued_by)
        expect(len(spread) == REPLICAS, f"30 requests reached only {spread}")
        note(f"token issued by {issued_by[0]}; 30 requests with it, all 200, served as {spread}")

    with checks.check("a password reset mail arrives in the catcher and its link works through nginx") as note:
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"{stack.base}/api/v1/auth/password-reset", json={"email": ROOT_EMAIL}) as response,
        ):
            status, body = response.status, await response.text()
        expect(status == 202, f"POST /api/v1/auth/password-reset: {status} {body[:300]}")
        message = await stack.mail_to(ROOT_EMAIL)
        expect(message.get_content_type() == "multipart/alternative", message.get_content_type())
        expect(message["Message-ID"] and message["From"], dict(message.items()))
        text = message.get_body(preferencelist=("plain",))
        html = message.get_body(preferencelist=("html",))
        expect(text is not None and html is not None, "a text and an HTML part")
        assert text is not None  # for the type checker; `expect` said so
        links = re.findall(r"https?://\S+/auth/password/reset\?token=[\w.~%-]+", text.get_content())
        expect(links and links[0].startswith(stack.base + "/"), f"the link should start with PUBLIC_URL: {links}")
        async with aiohttp.ClientSession() as http, http.get(links[0]) as response:
            page = await response.text()
            expect(response.status == 200, f"GET the reset link: {response.status} {page[:300]}")
        note(f"{message['Subject']!s}; {len(links[0])}-character link answered 200 through nginx")

    with checks.check("a replica killed under steady load costs no failed request") as note:
        victim = engine.containers("api")[0]
        outcomes = await stack.steady_load(8.0, 8, lambda: engine.cli("kill", victim, quiet=True), at=2.0)
        failures = {k: v for k, v in outcomes.items() if not k.startswith("ok")}
        expect(not failures, f"failed requests: {failures} (of {sum(outcomes.values())})")
        expect(outcomes["ok-after"] > 20, f"too few answers after the kill: {outcomes}")
        note(f"{outcomes['ok']} answered before the kill, {outcomes['ok-after']} after, 0 failed")

    with checks.check("down, then up: the data is still there (named volume)"):
        engine.down(volumes=False)
        expect(engine.volumes(), "the named volume went with `down`")
        engine.up(build=False)
        await stack.wait_ready()
        await stack.sign_in()
        again = await stack.request("GET", f"/api/v1/teams/{team['id']}", expect=200)
        expect(isinstance(again, dict) and again["title"] == "Compose e2e", again)

    with checks.check("down -v removes the data"):
        engine.down(volumes=True)
        expect(not engine.volumes(), engine.volumes())
        expect(not engine.containers(), engine.containers())


def main() -> int:
    started = time.monotonic()
    engine = Engine.detect()
    if engine.name == "podman":
        install_podman()
    port, mail_port = free_port(), free_port()
    os.environ.update(
        {
            "HTTP_PORT": str(port),
            "PUBLIC_URL": f"http://127.0.0.1:{port}",
            "MAIL_WEB_PORT": str(mail_port),
            # The failover check drives one token far past a client's budget: it measures lost
            # requests while a replica dies, not the per-token limit (tested on its own).
            "API_RATE_LIMIT": "1000000",
            "API_RATE_BURST": "1000000",
        }
    )
    checks = Checks()
    engine.images_before = engine.image_ids()
    print(f"compose-e2e: {engine.name}, project {PROJECT}, nginx on 127.0.0.1:{port}", flush=True)
    try:
        engine.down(volumes=True)  # what an interrupted earlier run left
        with checks.check("images build (the Dockerfile's FROM from the local base without a registry)"):
            engine.prepare()
            engine.up()
        if checks.failed == 0:
            stack = Stack(engine, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{mail_port}")
            asyncio.run(exercise(engine, stack, checks))
    finally:
        if checks.failed:
            for container in engine.containers():
                print(f"--- logs of {container[:12]}:\n{engine.logs(container)[-3000:]}", flush=True)
        engine.down(volumes=True)
        engine.remove_images()
    print(f"compose-e2e took {time.monotonic() - started:.0f} s", flush=True)
    print(f"compose: {checks.passed} passed, {checks.failed} failed", flush=True)
    return 1 if checks.failed else 0


if __name__ == "__main__":
    sys.exit(main())
