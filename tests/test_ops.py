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


def test_stack_has_the_expected_services() -> None:
    assert set(SERVICES) == {"mongo", "mongo-init", "fixtures", "api", "nginx", "prometheus"}
    assert SERVICES["prometheus"]["profiles"] == ["observability"]  # optional, off by default
    assert SERVICES["mongo"]["image"].startswith("mongo:8")
    assert "--replSet" in SERVICES["mongo"]["command"]
    assert "mongo-data" in COMPOSE["volumes"]


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
    nginx = (ROOT / "ops" / "nginx.conf").read_text()
    assert f"server api:{port}" in nginx
    limit = re.search(r"client_max_body_size (\d+)k", nginx)
    assert limit is not None
    assert int(limit.group(1)) * 1024 == Settings().max_body_size


def test_observability_profile_scrapes_the_metrics_port_nginx_never_routes() -> None:
    port = SERVICES["api"]["environment"]["METRICS_PORT"]
    scrape = yaml.safe_load((ROOT / "ops" / "prometheus.yml").read_text())
    assert scrape["scrape_configs"][0]["dns_sd_configs"][0]["port"] == int(port)
    assert port in SERVICES["api"]["expose"]
    nginx = (ROOT / "ops" / "nginx.conf").read_text()
    assert f":{port}" not in nginx
