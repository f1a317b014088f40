"""OAuth2 client and token schemas."""

from __future__ import annotations

import re
from ipaddress import ip_address
from typing import Any
from urllib.parse import urlsplit

from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate, validates_schema

from service.auth.openapi import REDIRECT_URI_PATTERN
from service.schemas import IdField, PaginationSchema
from service.scopes import KnownScope

SCOPE = fields.String(validate=KnownScope())
AUTH_METHODS = ("client_secret_basic", "client_secret_post", "none")


LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")
# A DNS name (RFC 1123 labels) or an IPv4 address; IPv6 literals are checked by ipaddress.
_DNS_NAME = re.compile(
    r"(?=.{1,253}\Z)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)


def _valid_host(host: str) -> bool:
    try:
        ip_address(host)
    except ValueError:
        return _DNS_NAME.fullmatch(host) is not None
    return True


def validate_redirect_uri(uri: str) -> None:
    """RFC 9700 4.1 and RFC 8252 7: `https`, `http` on a loopback host, or a native app's private-use
    scheme with a period in it (`com.example.app:/cb`); never a fragment, a backslash or user info
    (browsers parse `http://evil.example\\@localhost/` as a request to evil.example). Matching is exact
    later on, so nothing is normalised here."""
    if "#" in uri:
        raise ValidationError("A redirect URI must not contain a fragment.")
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F or ch == "\\" for ch in uri):
        raise ValidationError("A redirect URI must not contain spaces, backslashes or control characters.")
    try:
        parts = urlsplit(uri)
        host, _ = parts.hostname, parts.port  # port: a malformed one raises
    except ValueError:
        raise ValidationError("Not a valid URI.") from None
    if not _SCHEME.fullmatch(parts.scheme):
        raise ValidationError("A redirect URI needs a scheme (https://, or com.example.app:/ for native apps).")
    if "@" in parts.netloc:
        raise ValidationError("A redirect URI must not contain user information (user@host).")
    scheme = parts.scheme.lower()
    if scheme in ("https", "http") and (not host or not _valid_host(host)):
        raise ValidationError("A redirect URI needs a valid host name or IP address.")
    if scheme == "https":
        return
    if scheme == "http" and host in LOOPBACK_HOSTS:
        return
    if scheme == "http":
        raise ValidationError("Plain http is allowed only on a loopback host (127.0.0.1, [::1], localhost).")
    if "." in scheme and parts.path:
        return
    raise ValidationError("Use https, http on a loopback host, or a private-use scheme like com.example.app:/cb.")


def web_origin(uri: str) -> str | None:
    """`scheme://host[:port]` of an http(s) URI, rebuilt from its parsed parts (never copied from the
    string), for a CSP source; None for other schemes or anything that does not parse."""
    try:
        parts = urlsplit(uri)
        host, port = parts.hostname, parts.port
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not host or not _valid_host(host):
        return None
    shown = f"[{host}]" if ":" in host else host
    return f"{parts.scheme.lower()}://{shown}" + (f":{port}" if port is not None else "")


class OAuth2ClientSchema(Schema):
    client_id = fields.String(attribute="_id", dump_only=True)
    client_type = fields.String(dump_only=True, metadata={"enum": ["public", "confidential"]})
    token_endpoint_auth_method = fields.Function(
        lambda client: (
            client.get("token_endpoint_auth_method") or ("none" if client["client_type"] == "public" else None)
        ),
        metadata={"type": "string", "enum": list(AUTH_METHODS), "nullable": True},
        dump_only=True,
    )
    redirect_uris = fields.List(fields.String(), dump_only=True)
    default_scopes = fields.List(fields.String(), dump_only=True)
    allowed_scopes = fields.List(fields.String(), dump_only=True)
    user_id = IdField(dump_only=True)
    created = fields.AwareDateTime(dump_only=True)


class CreatedOAuth2ClientSchema(OAuth2ClientSchema):
    client_secret = fields.String(
        dump_only=True, metadata={"description": "Confidential clients only; shown this once, stored hashed."}
    )


class CreateOAuth2ClientSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    client_type = fields.String(required=True, validate=validate.OneOf(("public", "confidential")))
    redirect_uris = fields.List(
        fields.String(
            validate=[validate.Length(min=1, max=2000), validate_redirect_uri],
            metadata={"example": "https://app.example.com/callback", "pattern": REDIRECT_URI_PATTERN},
        ),
        load_default=list,
        validate=validate.Length(max=20),
    )
    default_scopes = fields.List(SCOPE, load_default=list)
    allowed_scopes = fields.List(SCOPE, required=True, validate=validate.Length(min=1))
    token_endpoint_auth_method = fields.String(
        validate=validate.OneOf(AUTH_METHODS),
        metadata={
            "description": "How the client authenticates at the token endpoint (OpenID Connect registration): "
            "`none` for public clients; `client_secret_basic` (default) or `client_secret_post` for confidential ones."
        },
    )

    @validates_schema
    def _auth_method_fits_the_type(self, data: dict[str, Any], **_: Any) -> None:
        method = data.get("token_endpoint_auth_method")
        if method is not None and (method == "none") != (data.get("client_type") == "public"):
            raise ValidationError(
                ["Public clients use none; confidential ones a client secret."], "token_endpoint_auth_method"
            )

    @validates_schema
    def _defaults_are_allowed(self, data: dict[str, Any], **_: Any) -> None:
        if not set(data.get("default_scopes", [])) <= set(data.get("allowed_scopes", [])):
            raise ValidationError(["Default scopes must be a subset of allowed scopes."], "default_scopes")


class ListOAuth2ClientsSchema(PaginationSchema):
    user_id = fields.String(metadata={"description": "Admins only: list this user's clients."})
