"""Settings: one frozen object read from the environment once, validated up front."""

from __future__ import annotations

import base64
import binascii
import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.utils import parseaddr
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from aiohttp import web

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_FORMATS = ("text", "json")


class SettingsError(ValueError):
    """A setting has a value the service cannot run with; the message names it."""


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the service reads from its environment."""

    mongodb_url: str | None = None
    mongodb_db: str = "service"
    mongodb_timeout_ms: int = 3000
    data_dir: Path = Path("var/db")
    host: str = "127.0.0.1"
    port: int = 8080
    log_level: str = "INFO"
    log_format: str = "text"
    access_token_ttl: int = 3600
    refresh_token_ttl: int = 14 * 24 * 3600
    refresh_reuse_grace: int = 10  # seconds a rotated-out refresh token may be presented again (0: never)
    client_secret_overlap: int = 24 * 3600  # seconds a rotated-out client secret keeps working
    dpop_nonces: str = "token"  # where a DPoP server nonce is demanded (RFC 9449 8, 9): off, token or all
    registration: str = "closed"  # dynamic client registration (RFC 7591): closed, token or open
    auth_code_ttl: int = 60
    device_code_ttl: int = 600  # RFC 8628 device and user code lifetime, seconds
    session_idle_ttl: int = 8 * 3600  # a sign-in session unused this long ends, seconds
    session_max_ttl: int = 30 * 24 * 3600  # and ends this long after the sign-in, used or not
    signup_enabled: bool = True
    max_body_size: int = 64 * 1024
    max_json_depth: int = 32
    body_read_timeout: float = 10.0  # a body fed a byte at a time must not hold a connection for minutes
    public_url: str | None = None
    login_max_failures: int = 10
    login_window: int = 15 * 60
    argon2_time_cost: int = 2
    argon2_memory_kib: int = 19 * 1024
    workers: int = 1
    principal_cache: bool = True
    hash_queue_wait_ms: int = 250
    oauth_rate_limit: float = 20.0
    oauth_rate_burst: int = 100
    api_rate_limit: float = 50.0  # per access token, requests/s, per process
    api_rate_burst: int = 200
    trusted_proxies: tuple[IPv4Network | IPv6Network, ...] = ()
    audit_ttl: int = 90 * 24 * 3600
    metrics_port: int | None = None
    # Fernet keys for secrets kept at rest (TOTP); the first encrypts. Never shown (repr), never stored.
    data_encryption_key: tuple[str, ...] = dataclasses.field(default=(), repr=False)
    email_token_ttl: int = 24 * 3600  # a verification link's lifetime, seconds
    reset_token_ttl: int = 30 * 60  # a password reset link's lifetime, seconds
    require_verified_email: bool = False
    smtp_url: str | None = field(default=None, repr=False)  # may hold the SMTP password
    smtp_timeout: float = 30.0
    mail_from: str = "no-reply@localhost"
    mail_dir: Path | None = None  # development delivery; None: SERVICE_DATA_DIR/../mail
    mail_dev: bool = False
    mail_max_attempts: int = 8
    mail_retry_seconds: float = 15.0  # the first retry's delay; each later one doubles (jittered)
    mail_poll_seconds: float = 5.0

    @property
    def mongomock(self) -> bool:
        return self.mongodb_url is not None and self.mongodb_url.startswith("mongomock://")

    @property
    def mail_directory(self) -> Path:
        """Where development delivery writes `.eml` files: MAIL_DIR, or `mail` beside the embedded
        database's directory."""
        return self.mail_dir if self.mail_dir is not None else self.data_dir.parent / "mail"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from `environ` (default `os.environ`); raise SettingsError on the first bad value."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name, (attr, parse) in _VARIABLES.items():
            raw = env.get(name)
            if raw is None or raw == "":
                continue
            try:
                values[attr] = parse(raw)
            except ValueError as exc:
                shown = "(not shown: it may hold a password)" if name in _SECRET_VARIABLES else repr(raw)
                raise SettingsError(f"{name}={shown} is invalid: {exc}") from None
        return dataclasses.replace(cls(), **values)


def _int(low: int, high: int | None = None) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise ValueError("expected an integer") from None
        if value < low or (high is not None and value > high):
            bound = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise ValueError(f"expected an integer {bound}")
        return value

    return parse


def _bool(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


def _choice(options: tuple[str, ...], upper: bool = False) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().upper() if upper else raw.strip().lower()
        if value not in options:
            raise ValueError(f"expected one of {', '.join(options)}")
        return value

    return parse


def _mongodb_url(raw: str) -> str:
    if not raw.startswith(("mongodb://", "mongodb+srv://", "mongomock://")):
        raise ValueError("expected a mongodb://, mongodb+srv:// or mongomock:// URL")
    return raw


def _db_name(raw: str) -> str:
    if any(ch in raw for ch in '/\\. "$') or len(raw) > 63:
        raise ValueError('expected a MongoDB database name (no /\\. "$ or spaces, at most 63 characters)')
    return raw


def _public_url(raw: str) -> str:
    if not raw.startswith(("http://", "https://")):
        raise ValueError("expected an http:// or https:// URL")
    return raw.rstrip("/")


def _host(raw: str) -> str:
    if any(ch.isspace() for ch in raw):
        raise ValueError("expected a host name or IP address")
    return raw


def _float(low: float, high: float) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            raise ValueError("expected a number") from None
        if not low <= value <= high:
            raise ValueError(f"expected a number between {low:g} and {high:g}")
        return value

    return parse


@dataclass(frozen=True, slots=True)
class SmtpServer:
    """Where and how the mail sender connects, from SMTP_URL."""

    host: str
    port: int
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    implicit_tls: bool = False  # smtps://: TLS from the first byte (port 465)
    starttls: bool = False  # smtp+starttls://: plain, then STARTTLS before anything else (port 587)


_SMTP_SCHEMES = {"smtp": (25, False, False), "smtps": (465, True, False), "smtp+starttls": (587, False, True)}


def smtp_server(url: str) -> SmtpServer:
    """`smtp://[user:pass@]host[:port]`, `smtps://...` or `smtp+starttls://...`; the error never
    repeats the URL (it may hold the password)."""
    if any(ch.isspace() for ch in url):
        raise ValueError("expected smtp://, smtps:// or smtp+starttls://[user:password@]host[:port]")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ValueError("expected smtp://, smtps:// or smtp+starttls://[user:password@]host[:port]") from None
    if parts.scheme not in _SMTP_SCHEMES:
        raise ValueError("expected an smtp://, smtps:// or smtp+starttls:// URL")
    if not parts.hostname or parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError("expected smtp://, smtps:// or smtp+starttls://[user:password@]host[:port] (no path or query)")
    default_port, implicit_tls, starttls = _SMTP_SCHEMES[parts.scheme]
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    if password is not None and username is None:
        raise ValueError("a password needs a user name (smtp://user:password@host)")
    return SmtpServer(parts.hostname, port or default_port, username, password, implicit_tls, starttls)


def _smtp_url(raw: str) -> str:
    smtp_server(raw)
    return raw


def _mail_from(raw: str) -> str:
    """`address@domain` or `Name <address@domain>`, one line."""
    _, address = parseaddr(raw)
    if "\r" in raw or "\n" in raw or "@" not in address or any(ch.isspace() for ch in address):
        raise ValueError("expected a mail address, e.g. no-reply@example.com or Example <no-reply@example.com>")
    return raw.strip()


def _networks(raw: str) -> tuple[IPv4Network | IPv6Network, ...]:
    """Comma-separated addresses or CIDR ranges, e.g. `10.0.0.0/8,127.0.0.1`."""
    try:
        return tuple(ip_network(part.strip(), strict=False) for part in raw.split(",") if part.strip())
    except ValueError:
        raise ValueError("expected comma-separated IP addresses or CIDR ranges") from None


def data_encryption_keys(raw: str) -> tuple[str, ...]:
    """DATA_ENCRYPTION_KEY: comma-separated Fernet keys (URL-safe base64 of 32 random bytes each); the
    first encrypts, every one decrypts (a new key goes first, the old one stays until nothing needs it)."""
    keys = tuple(part.strip() for part in raw.split(",") if part.strip())
    if not keys:
        raise ValueError("expected one or more comma-separated Fernet keys")
    for key in keys:
        try:
            decoded = base64.urlsafe_b64decode(key.encode("ascii")) if len(key) == 44 else b""
        except (binascii.Error, UnicodeEncodeError, ValueError):
            decoded = b""
        if len(decoded) != 32:
            raise ValueError(
                "each key must be URL-safe base64 of 32 random bytes (44 characters), as "
                "`python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'` prints"
            )
    return keys


_VARIABLES: dict[str, tuple[str, Callable[[str], Any]]] = {
    "MONGODB_URL": ("mongodb_url", _mongodb_url),
    "MONGODB_DB": ("mongodb_db", _db_name),
    "MONGODB_TIMEOUT_MS": ("mongodb_timeout_ms", _int(100, 600_000)),
    "SERVICE_DATA_DIR": ("data_dir", Path),
    "HOST": ("host", _host),
    "PORT": ("port", _int(0, 65535)),
    "LOG_LEVEL": ("log_level", _choice(LOG_LEVELS, upper=True)),
    "LOG_FORMAT": ("log_format", _choice(LOG_FORMATS)),
    "ACCESS_TOKEN_TTL": ("access_token_ttl", _int(1)),
    "REFRESH_TOKEN_TTL": ("refresh_token_ttl", _int(1)),
    "REFRESH_REUSE_GRACE": ("refresh_reuse_grace", _int(0, 300)),
    "CLIENT_SECRET_OVERLAP": ("client_secret_overlap", _int(0, 30 * 24 * 3600)),
    "DPOP_NONCES": ("dpop_nonces", _choice(("off", "token", "all"))),
    "REGISTRATION": ("registration", _choice(("closed", "token", "open"))),
    "AUTH_CODE_TTL": ("auth_code_ttl", _int(1, 600)),
    "DEVICE_CODE_TTL": ("device_code_ttl", _int(60, 3600)),
    "SESSION_IDLE_TTL": ("session_idle_ttl", _int(60, 365 * 24 * 3600)),
    "SESSION_MAX_TTL": ("session_max_ttl", _int(60, 365 * 24 * 3600)),
    "SIGNUP_ENABLED": ("signup_enabled", _bool),
    "MAX_BODY_SIZE": ("max_body_size", _int(1024)),
    "BODY_READ_TIMEOUT": ("body_read_timeout", _float(0.1, 3600)),
    "PUBLIC_URL": ("public_url", _public_url),
    "LOGIN_MAX_FAILURES": ("login_max_failures", _int(1)),
    "LOGIN_WINDOW": ("login_window", _int(1)),
    "ARGON2_TIME_COST": ("argon2_time_cost", _int(1)),
    "ARGON2_MEMORY_KIB": ("argon2_memory_kib", _int(8)),
    "WORKERS": ("workers", _int(1, 64)),
    "PRINCIPAL_CACHE": ("principal_cache", _bool),
    "HASH_QUEUE_WAIT_MS": ("hash_queue_wait_ms", _int(1, 60_000)),
    "OAUTH_RATE_LIMIT": ("oauth_rate_limit", _float(0.01, 1_000_000)),
    "OAUTH_RATE_BURST": ("oauth_rate_burst", _int(1, 1_000_000)),
    "API_RATE_LIMIT": ("api_rate_limit", _float(0.01, 1_000_000)),
    "API_RATE_BURST": ("api_rate_burst", _int(1, 1_000_000)),
    "TRUSTED_PROXIES": ("trusted_proxies", _networks),
    "AUDIT_TTL": ("audit_ttl", _int(60)),
    "METRICS_PORT": ("metrics_port", _int(1, 65535)),
    "DATA_ENCRYPTION_KEY": ("data_encryption_key", data_encryption_keys),
    "EMAIL_TOKEN_TTL": ("email_token_ttl", _int(60, 30 * 24 * 3600)),
    "RESET_TOKEN_TTL": ("reset_token_ttl", _int(60, 24 * 3600)),
    "REQUIRE_VERIFIED_EMAIL": ("require_verified_email", _bool),
    "SMTP_URL": ("smtp_url", _smtp_url),
    "SMTP_TIMEOUT": ("smtp_timeout", _float(1, 600)),
    "MAIL_FROM": ("mail_from", _mail_from),
    "MAIL_DIR": ("mail_dir", Path),
    "MAIL_DEV": ("mail_dev", _bool),
    "MAIL_MAX_ATTEMPTS": ("mail_max_attempts", _int(1, 100)),
    "MAIL_RETRY_SECONDS": ("mail_retry_seconds", _float(0.01, 86_400)),
    "MAIL_POLL_SECONDS": ("mail_poll_seconds", _float(0.01, 3600)),
}
_SECRET_VARIABLES = frozenset({"SMTP_URL", "DATA_ENCRYPTION_KEY"})

ENVIRONMENT_VARIABLES = tuple(_VARIABLES)


SETTINGS: web.AppKey[Settings] = web.AppKey("service.settings", Settings)
