"""The compose stack, the image and the load balancer agree with what the service reads and serves."""

from __future__ import annotations

import json
import re
import smtplib
import subprocess
import sys
import time
import urllib.request
from email.message import EmailMessage
from pathlib import Path

import pytest
import yaml
from aiohttp.test_utils import unused_port

from service.app import create_app
from service.config import ENVIRONMENT_VARIABLES, Settings, smtp_server

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]


def routes() -> set[str]:
    app = create_app(Settings(mongodb_url="mongomock://"))
    return {resource.canonical for resource in app.router.resources()}


def test_every_dependency_exists_and_the_database_keeps_its_data_in_a_named_volume() -> None:
    for name, service in SERVICES.items():
        unknown = set(service.get("depends_on", {})) - set(SERVICES)
        assert not unknown, f"{name} waits for services that do not exist: {unknown}"
    images = {name for name, s in SERVICES.items() if "image" in s}
    database = (SERVICES["api"]["depends_on"].keys() - {"mail"}) & images  # the catcher keeps nothing
    for name in database:
        volumes = [v.split(":")[0] for v in SERVICES[name].get("volumes", [])]
        assert any(v in COMPOSE["volumes"] for v in volumes), f"{name} would lose its data with its container"
    # Optional services stay off unless asked for: a plain `up` starts only what the API needs.
    optional = {name for name, service in SERVICES.items() if service.get("profiles")}
    assert optional == {"prometheus"}


def test_every_variable_the_stack_sets_is_one_the_service_reads() -> None:
    for name in ("api", "fixtures"):
        unknown = set(SERVICES[name]["environment"]) - set(ENVIRONMENT_VARIABLES)
        assert not unknown, f"{name} sets variables the service ignores: {unknown}"
    dockerfile = (ROOT / "ops" / "Dockerfile").read_text()
    env_block = re.search(r"^ENV (.*?)(?=^\S)", dockerfile, re.S | re.M)
    assert env_block is not None
    names = set(re.findall(r"([A-Z_]+)=", env_block.group(1))) - {"PATH", "PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED"}
    assert names <= set(ENVIRONMENT_VARIABLES)


def test_health_checks_point_at_real_endpoints() -> None:
    served = routes()
    api_check = " ".join(SERVICES["api"]["healthcheck"]["test"])
    assert "/readyz" in api_check
    assert "/readyz" in served
    assert "/healthz" in served
    assert "/healthz" in (ROOT / "ops" / "Dockerfile").read_text()
    assert "test" in SERVICES["mongo"]["healthcheck"]


def test_startup_order_waits_for_a_healthy_database() -> None:
    assert SERVICES["api"]["depends_on"]["mongo"]["condition"] == "service_healthy"
    assert SERVICES["api"]["depends_on"]["fixtures"]["condition"] == "service_completed_successfully"
    assert SERVICES["fixtures"]["command"] == ["fixtures", "load"]
    assert SERVICES["nginx"]["depends_on"]["api"]["condition"] == "service_healthy"


def test_api_can_scale_behind_nginx() -> None:
    api = SERVICES["api"]
    assert "ports" not in api, "a fixed host port would stop `--scale api=3`"
    port = api["environment"]["PORT"]
    assert api["expose"][0] == port
    nginx = (ROOT / "ops" / "nginx.conf.template").read_text()
    assert f"set $api api:{port};" in nginx
    limit = re.search(r"client_max_body_size (\d+)k", nginx)
    assert limit is not None
    assert int(limit.group(1)) * 1024 == Settings().max_body_size


def test_observability_profile_scrapes_the_metrics_port_nginx_never_routes() -> None:
    port = SERVICES["api"]["environment"]["METRICS_PORT"]
    scrape = yaml.safe_load((ROOT / "ops" / "prometheus.yml").read_text())
    assert scrape["scrape_configs"][0]["dns_sd_configs"][0]["port"] == int(port)
    assert port in SERVICES["api"]["expose"]
    nginx = (ROOT / "ops" / "nginx.conf.template").read_text()
    assert f":{port}" not in nginx


class _ComposeTags(yaml.SafeLoader):
    """Reads compose's `!override` / `!reset` merge tags as the plain values they carry."""


_ComposeTags.add_constructor(
    "!override",
    lambda loader, node: (
        loader.construct_sequence(node) if isinstance(node, yaml.SequenceNode) else loader.construct_mapping(node)
    ),
)
PODMAN = ROOT / "ops" / "podman"
OVERRIDE = yaml.load((PODMAN / "compose.override.yml").read_text(), Loader=_ComposeTags)  # noqa: S506  # nosec B506 (a SafeLoader)


def test_podman_override_changes_only_the_database_nginx_and_the_base_image() -> None:
    """The stack `make compose-e2e` starts is the real one: the override swaps what cannot be had here."""
    assert set(OVERRIDE["services"]) == {"mongo", "mongo-init", "fixtures", "api", "nginx", "mail"}
    for name in ("api", "fixtures"):
        service = OVERRIDE["services"][name]
        assert set(service) == {"build", "environment"}
        assert set(service["build"]) == {"args"}
        assert set(service["environment"]) == {"MONGODB_URL"}
        assert service["build"]["args"]["PYTHON_IMAGE"] == "localhost/restful-api-server-base:bookworm"
    assert set(OVERRIDE["services"]["nginx"]) == {"image"}
    assert set(OVERRIDE["services"]["mail"]) == {"image"}
    # The data lives where the real stack keeps MongoDB's, in the same named volume.
    assert "--storage-path" in OVERRIDE["services"]["mongo"]["command"]
    assert "/data/db" in OVERRIDE["services"]["mongo"]["command"]
    assert "mongo-data:/data/db" in SERVICES["mongo"]["volumes"]


def test_the_api_sends_its_mail_to_the_stacks_catcher() -> None:
    """Mailpit for Docker users; under podman a catcher from Debian packages on the same ports."""
    api, catcher = SERVICES["api"], SERVICES["mail"]
    default = re.fullmatch(r"\$\{SMTP_URL:-(.+)\}", api["environment"]["SMTP_URL"])
    assert default is not None
    server = smtp_server(default.group(1))
    assert (server.host, server.port) == ("mail", 1025)
    assert str(server.port) in catcher["expose"]
    assert api["depends_on"]["mail"]["condition"] == "service_started"
    assert catcher["image"].startswith("axllent/mailpit:v")
    assert catcher["ports"] == ["${MAIL_WEB_PORT:-8025}:8025"]  # the web inbox; SMTP stays inside
    assert "profiles" not in catcher
    built = (PODMAN / "mailcatcher.Containerfile").read_text()
    assert "python3-aiosmtpd" in built
    assert "COPY mailcatcher.py " in built
    assert re.search(r"^EXPOSE 1025 8025$", built, re.M)
    e2e = (ROOT / "ops" / "compose_e2e.py").read_text()
    assert f'"{OVERRIDE["services"]["mail"]["image"]}": "mailcatcher.Containerfile"' in e2e


@pytest.fixture
def catcher(tmp_path: Path):
    """ops/podman/mailcatcher.py, run as the podman stack runs it (here with this venv's aiosmtpd)."""
    smtp_port, web_port = unused_port(), unused_port()
    env = {"MAIL_HOST": "127.0.0.1", "MAIL_SMTP_PORT": str(smtp_port), "MAIL_WEB_PORT": str(web_port)}
    with (
        (tmp_path / "catcher.log").open("wb") as log,
        subprocess.Popen([sys.executable, str(PODMAN / "mailcatcher.py")], env=env, stdout=log, stderr=log) as process,
    ):
        try:
            for _ in range(100):
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{web_port}/readyz", timeout=1).close()
                    break
                except OSError:
                    time.sleep(0.1)
            yield smtp_port, web_port
        finally:
            process.terminate()
            process.wait(timeout=10)


def test_the_podman_catcher_keeps_mail_and_serves_it_like_mailpit(catcher) -> None:
    smtp_port, web_port = catcher

    def get(path: str) -> bytes:
        with urllib.request.urlopen(f"http://127.0.0.1:{web_port}{path}", timeout=5) as response:
            return bytes(response.read())

    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = "no-reply@localhost", "Eve <eve@example.com>", "<Reset>"
    message["Message-ID"] = "<abc@localhost>"
    link = "http://127.0.0.1:8080/auth/password/reset?token=t0ken"
    message.set_content(f"follow {link}")
    message.add_alternative(f"<p><a href='{link}'>reset</a></p>", subtype="html")
    with smtplib.SMTP("127.0.0.1", smtp_port, timeout=10) as smtp:
        smtp.send_message(message)
    listed = json.loads(get("/api/v1/messages"))
    assert listed["total"] == 1
    [summary] = listed["messages"]
    assert summary["To"] == [{"Name": "Eve", "Address": "eve@example.com"}]
    assert summary["Subject"] == "<Reset>"
    assert summary["MessageID"] == "abc@localhost"
    raw = get(f"/api/v1/message/{summary['ID']}/raw")
    assert b"Message-ID: <abc@localhost>" in raw
    assert b"multipart/alternative" in raw
    detail = json.loads(get(f"/api/v1/message/{summary['ID']}"))
    assert "token=t0ken" in detail["Text"]
    assert "<a href=" in detail["HTML"]
    inbox = get("/").decode()
    assert "&lt;Reset&gt;" in inbox  # the subject is text on the page, not markup
    assert "<Reset>" not in inbox


def test_dockerfile_base_is_the_official_image_unless_told_otherwise() -> None:
    dockerfile = (ROOT / "ops" / "Dockerfile").read_text()
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in dockerfile
    assert re.findall(r"^FROM (\S+)", dockerfile, re.M) == ["${PYTHON_IMAGE}", "${PYTHON_IMAGE}"]


def test_nginx_template_works_under_docker_and_podman() -> None:
    lines = (ROOT / "ops" / "nginx.conf.template").read_text().splitlines()
    template = "\n".join(line.split("#")[0] for line in lines)  # directives, not comments
    assert "resolver ${NGINX_LOCAL_RESOLVERS} " in template
    assert "127.0.0.11" not in template  # Docker's DNS only
    assert " resolve" not in template  # `server ... resolve` needs nginx >= 1.27.3; Debian has 1.22
    nginx = SERVICES["nginx"]
    assert nginx["environment"]["NGINX_ENTRYPOINT_LOCAL_RESOLVERS"]
    assert "./ops/nginx.conf.template:/etc/nginx/templates/default.conf.template:ro" in nginx["volumes"]
    entrypoint = (PODMAN / "nginx-entrypoint.sh").read_text()
    assert "/etc/nginx/templates" in entrypoint
    assert "${NGINX_LOCAL_RESOLVERS}" in entrypoint


def test_podman_instructions_pin_the_same_database_version() -> None:
    pinned = re.search(r"^secantusdb==(\S+)", (ROOT / "requirements-embedded.txt").read_text(), re.M)
    assert pinned is not None
    assert f"SECANTUSDB_VERSION={pinned.group(1)} " in (ROOT / "ops" / "README.md").read_text()
