"""OAuth2 client and token schemas."""

from __future__ import annotations

import re
from ipaddress import ip_address
from typing import Any
from urllib.parse import urlsplit

from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate, validates_schema

from service.auth.openapi import LOGOUT_URI_PATTERN, REDIRECT_URI_PATTERN
from service.patch import patch_schema
from service.schemas import IdField, PaginationSchema, StrictBoolean
from service.scopes import SCOPES, KnownScope

SCOPE = fields.String(validate=KnownScope())
AUTH_METHODS = ("client_secret_basic", "client_secret_post", "none")
# The grants a client may be registered for (RFC 7591 `grant_types`); the metadata's grant_types_supported.
GRANT_TYPES = (
    "authorization_code",
    "refresh_token",
    "client_credentials",
    "password",
    "urn:ietf:params:oauth:grant-type:device_code",  # RFC 8628
)
# Only an administrator may give a client these (RFC 9700 2.4: the password grant must not be used).
ADMIN_ONLY_GRANTS = frozenset({"password"})
MAX_REDIRECT_URIS = 20


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
    later on (but for a loopback port, see authorize), so nothing is normalised here."""
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


def validate_backchannel_logout_uri(uri: str) -> None:
    """OpenID Connect Back-Channel Logout 1.0 2.2: https, or http on a loopback host; never a fragment."""
    if "#" in uri:
        raise ValidationError("A back-channel logout URI must not contain a fragment.")
    validate_redirect_uri(uri)
    if urlsplit(uri).scheme.lower() not in ("https", "http"):
        raise ValidationError("A back-channel logout URI uses https (or http on a loopback host).")


def defaults_allowed(data: dict[str, Any]) -> bool:
    return set(data.get("default_scopes", [])) <= set(data.get("allowed_scopes", []))


def default_grant_types(client_type: str) -> list[str]:
    """What a new client may do unless it asks otherwise: never the password grant."""
    grants = ["authorization_code", "refresh_token"]
    return [*grants, "client_credentials"] if client_type == "confidential" else grants


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
    client_name = fields.String(dump_only=True, dump_default=None, allow_none=True)
    grant_types = fields.List(fields.String(metadata={"enum": list(GRANT_TYPES)}), dump_only=True)
    redirect_uris = fields.List(fields.String(), dump_only=True)
    post_logout_redirect_uris = fields.List(fields.String(), dump_only=True, dump_default=list)
    backchannel_logout_uri = fields.String(dump_only=True, dump_default=None, allow_none=True)
    first_party = fields.Boolean(dump_only=True, dump_default=False)
    dpop_bound_access_tokens = fields.Boolean(dump_only=True, dump_default=False)
    default_scopes = fields.List(fields.String(), dump_only=True)
    allowed_scopes = fields.List(fields.String(), dump_only=True)
    user_id = IdField(dump_only=True)
    created = fields.AwareDateTime(dump_only=True)
    updated = fields.AwareDateTime(dump_only=True)


class CreatedOAuth2ClientSchema(OAuth2ClientSchema):
    client_secret = fields.String(
        dump_only=True, metadata={"description": "Confidential clients only; shown this once, stored hashed."}
    )


class RotatedSecretSchema(Schema):
    client_id = fields.String(dump_only=True)
    client_secret = fields.String(dump_only=True, metadata={"description": "The new secret: shown this once."})
    previous_secret_expires_at = fields.AwareDateTime(
        dump_only=True, metadata={"description": "Until when the previous secret still authenticates the client."}
    )


class ConnectedAppSchema(Schema):
    """A client the user authorized (GET /users/me/authorizations)."""

    client_id = fields.String(dump_only=True)
    client_name = fields.String(
        dump_only=True, allow_none=True, metadata={"description": "The client's current name; null if it has none."}
    )
    scopes = fields.List(
        fields.String(), dump_only=True, metadata={"description": "Every scope the user granted it (a union)."}
    )
    first_used = fields.AwareDateTime(dump_only=True, metadata={"description": "Its first authorization."})
    last_used = fields.AwareDateTime(dump_only=True, metadata={"description": "The last code it was given."})


class SessionSchema(Schema):
    """A sign-in session at the authorization server (GET /users/me/sessions)."""

    id = fields.String(dump_only=True, attribute="sid", metadata={"description": "The session's `sid`."})
    created = fields.AwareDateTime(dump_only=True, metadata={"description": "The browser's first sign-in."})
    last_seen = fields.AwareDateTime(dump_only=True, metadata={"description": "Its last use (to the minute)."})
    user_agent = fields.String(dump_only=True, metadata={"description": "The browser that signed in."})
    address = fields.String(dump_only=True, metadata={"description": "The address it signed in from."})
    current = fields.Boolean(dump_only=True, metadata={"description": "The session this call comes from."})
    clients = fields.List(
        fields.String(), dump_only=True, metadata={"description": "The clients it signed in to (client_id)."}
    )


def _uris(*, max_items: int = MAX_REDIRECT_URIS) -> fields.List:
    return fields.List(
        fields.String(
            validate=[validate.Length(min=1, max=2000), validate_redirect_uri],
            metadata={"example": "https://app.example.com/callback", "pattern": REDIRECT_URI_PATTERN},
        ),
        load_default=list,
        validate=validate.Length(max=max_items),
    )


def _grant_types() -> fields.List:
    return fields.List(
        fields.String(validate=validate.OneOf(GRANT_TYPES)),
        validate=validate.Length(min=1, max=len(GRANT_TYPES)),
        metadata={
            "uniqueItems": True,
            "description": "The grants the token endpoint lets this client use. Default: authorization_code and "
            "refresh_token (and client_credentials for confidential clients); `password` only by an administrator.",
        },
    )


class ClientMetadataSchema(Schema):
    """What a client's owner may set at registration and change later (PATCH)."""

    class Meta:
        unknown = EXCLUDE

    client_name = fields.String(validate=validate.Length(min=1, max=100), allow_none=True, load_default=None)
    redirect_uris = _uris()
    post_logout_redirect_uris = _uris()
    backchannel_logout_uri = fields.String(
        validate=[validate.Length(min=1, max=2000), validate_backchannel_logout_uri],
        allow_none=True,
        load_default=None,
        metadata={
            "description": "OpenID Connect back-channel logout: https, or http on a loopback host.",
            "pattern": LOGOUT_URI_PATTERN,
        },
    )
    grant_types = _grant_types()
    dpop_bound_access_tokens = StrictBoolean(load_default=False)
    default_scopes = fields.List(SCOPE, load_default=list)
    allowed_scopes = fields.List(SCOPE, required=True, validate=validate.Length(min=1))

    @validates_schema
    def _grants_once(self, data: dict[str, Any], **_: Any) -> None:
        grants = data.get("grant_types")
        if grants is not None and len(set(grants)) != len(grants):
            raise ValidationError(["Each grant type once."], "grant_types")


class CreateOAuth2ClientSchema(ClientMetadataSchema):
    client_type = fields.String(required=True, validate=validate.OneOf(("public", "confidential")))
    first_party = StrictBoolean(
        load_default=False,
        metadata={"description": "Administrators only: the client is the service's own application."},
    )
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
        if not defaults_allowed(data):
            raise ValidationError(["Default scopes must be a subset of allowed scopes."], "default_scopes")

    @validates_schema
    def _grants_fit_the_type(self, data: dict[str, Any], **_: Any) -> None:
        if data.get("client_type") == "public" and "client_credentials" in (data.get("grant_types") or ()):
            raise ValidationError(["Public clients cannot use client_credentials."], "grant_types")


class ListOAuth2ClientsSchema(PaginationSchema):
    user_id = fields.String(metadata={"description": "Admins only: list this user's clients."})


class EditableClientSchema(ClientMetadataSchema):
    """A client's changeable fields, validated as a whole after a PATCH applies."""

    grant_types = _grant_types()
    first_party = StrictBoolean(load_default=False)


_URI_LIST = {
    "type": "array",
    "maxItems": MAX_REDIRECT_URIS,
    "items": {"type": "string", "minLength": 1, "maxLength": 2000, "pattern": REDIRECT_URI_PATTERN},
}
# The scopes a patch may name: filled by `document_scopes` once every domain has registered its own.
_SCOPE_ITEMS: dict[str, Any] = {"type": "string", "example": "users:read"}
_SCOPE_LIST = {"type": "array", "items": _SCOPE_ITEMS}


def document_scopes() -> None:
    """List the registered scopes in the PATCH document (the registry is filled as the app is built)."""
    _SCOPE_ITEMS["enum"] = list(SCOPES)


OAuth2ClientPatchOperationSchema = patch_schema(
    "OAuth2ClientPatchOperationSchema",
    {
        "/client_name": {"type": "string", "minLength": 1, "maxLength": 100, "nullable": True},
        "/redirect_uris": _URI_LIST,
        "/post_logout_redirect_uris": _URI_LIST,
        "/backchannel_logout_uri": {
            "type": "string",
            "minLength": 1,
            "maxLength": 2000,
            "pattern": LOGOUT_URI_PATTERN,
            "nullable": True,
        },
        "/default_scopes": _SCOPE_LIST,
        "/allowed_scopes": {**_SCOPE_LIST, "minItems": 1},
        "/grant_types": {
            "type": "array",
            "minItems": 1,
            "uniqueItems": True,
            "items": {"type": "string", "enum": list(GRANT_TYPES)},
        },
        "/dpop_bound_access_tokens": {"type": "boolean"},
        "/first_party": {"type": "boolean"},
    },
)
