"""Settings come from the environment once; a bad value stops start-up with one clear line."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from service.config import ENVIRONMENT_VARIABLES, Settings, SettingsError


def test_defaults_when_environment_is_empty() -> None:
    settings = Settings.from_env({})
    assert settings.mongodb_url is None
    assert settings.data_dir == Path("var/db")
    assert settings.access_token_ttl == 3600
    assert settings.refresh_token_ttl == 14 * 24 * 3600
    assert settings.signup_enabled is True


def test_values_are_parsed() -> None:
    settings = Settings.from_env(
        {
            "MONGODB_URL": "mongodb://db:27017/?replicaSet=rs0",
            "MONGODB_DB": "prod",
            "PORT": "9000",
            "LOG_LEVEL": "debug",
            "LOG_FORMAT": "JSON",
            "SIGNUP_ENABLED": "false",
            "MAX_BODY_SIZE": "2048",
            "PUBLIC_URL": "https://api.example.com/",
        }
    )
    assert settings.port == 9000
    assert settings.log_level == "DEBUG"
    assert settings.log_format == "json"
    assert settings.signup_enabled is False
    assert settings.public_url == "https://api.example.com"


def test_settings_are_read_once_and_never_change() -> None:
    """What the process started with is what it runs with: later changes to the environment are not
    seen, and no code can change a setting in place (every field refuses assignment)."""
    environ = {"PORT": "9000", "SIGNUP_ENABLED": "false"}
    settings = Settings.from_env(environ)
    environ["PORT"] = "1"
    environ["SIGNUP_ENABLED"] = "true"
    assert (settings.port, settings.signup_enabled) == (9000, False)
    for field in dataclasses.fields(Settings):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(settings, field.name, getattr(settings, field.name))
    assert Settings.from_env(environ).port == 1  # a new read is the only way to new values


@pytest.mark.parametrize(
    ("name", "value", "hint"),
    [
        ("PORT", "http", "integer"),
        ("PORT", "70000", "between 0 and 65535"),
        ("LOG_FORMAT", "xml", "text, json"),
        ("LOG_LEVEL", "loud", "DEBUG"),
        ("SIGNUP_ENABLED", "maybe", "true or false"),
        ("MONGODB_URL", "postgres://x", "mongodb://"),
        ("MONGODB_DB", "a/b", "database name"),
        ("ACCESS_TOKEN_TTL", "0", "at least 1"),
        ("MAX_BODY_SIZE", "10", "at least 1024"),
        ("PUBLIC_URL", "ftp://x", "http"),
    ],
)
def test_bad_value_names_the_variable_and_what_it_accepts(name: str, value: str, hint: str) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({name: value})
    message = str(caught.value)
    assert message.startswith(f"{name}=")
    assert hint in message


def test_every_documented_variable_is_read() -> None:
    required = {
        "MONGODB_URL",
        "MONGODB_DB",
        "SERVICE_DATA_DIR",
        "HOST",
        "PORT",
        "LOG_LEVEL",
        "LOG_FORMAT",
        "ACCESS_TOKEN_TTL",
        "REFRESH_TOKEN_TTL",
        "SIGNUP_ENABLED",
        "MAX_BODY_SIZE",
        "PUBLIC_URL",
    }
    assert required <= set(ENVIRONMENT_VARIABLES)


def test_cli_refuses_to_start_with_one_clear_line() -> None:
    env = {**os.environ, "PORT": "not-a-port"}
    result = subprocess.run(
        [sys.executable, "-m", "service", "openapi"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["error: PORT='not-a-port' is invalid: expected an integer"]


def test_cli_help_on_every_command() -> None:
    for args in (["--help"], ["serve", "--help"], ["db", "--help"], ["db", "upgrade", "--help"], ["openapi", "--help"]):
        result = subprocess.run([sys.executable, "-m", "service", *args], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, args
        assert "usage:" in result.stdout
