"""The compose stack, the image and the load balancer agree with what the service reads and serves."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from service.app import create_app
from service.config import ENVIRONMENT_VARIABLES, Settings

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
    database = SERVICES["api"]["depends_on"].keys() & {name for name, s in SERVICES.items() if "image" in s}
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
    assert set(OVERRIDE["services"]) == {"mongo", "mongo-init", "fixtures", "api", "nginx"}
    for name in ("api", "fixtures"):
        service = OVERRIDE["services"][name]
        assert set(service) == {"build", "environment"}
        assert set(service["build"]) == {"args"}
        assert set(service["environment"]) == {"MONGODB_URL"}
        assert service["build"]["args"]["PYTHON_IMAGE"] == "localhost/restful-api-server-base:bookworm"
    assert set(OVERRIDE["services"]["nginx"]) == {"image"}
    # The data lives where the real stack keeps MongoDB's, in the same named volume.
    assert "--storage-path" in OVERRIDE["services"]["mongo"]["command"]
    assert "/data/db" in OVERRIDE["services"]["mongo"]["command"]
    assert "mongo-data:/data/db" in SERVICES["mongo"]["volumes"]


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
