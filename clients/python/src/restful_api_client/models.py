"""Typed shapes of the API's JSON, generated from its OpenAPI document by tools/generate.py.

Do not edit: run `python clients/python/tools/generate.py` from the server's virtualenv instead (the
server's tests fail when this file and the served document disagree). Response objects are `total=False`
where the document marks no field required: read optional members with `.get()`.
"""

from __future__ import annotations

from typing import Any, Final, Literal, Required, TypedDict


class AddMember(TypedDict, total=False):
    is_leader: bool
    user_id: Required[str]


class BaseUser(TypedDict, total=False):
    first_name: str
    id: str
    last_name: str
    middle_name: str
    username: str


CreateOAuth2ClientAllowedScopes = Literal[
    "users:read",
    "users:write",
    "teams:read",
    "teams:write",
    "auth:read",
    "auth:write",
    "openid",
    "profile",
    "email",
]


CreateOAuth2ClientDefaultScopes = Literal[
    "users:read",
    "users:write",
    "teams:read",
    "teams:write",
    "auth:read",
    "auth:write",
    "openid",
    "profile",
    "email",
]


CreateOAuth2ClientGrantTypes = Literal[
    "authorization_code",
    "refresh_token",
    "client_credentials",
    "password",
    "urn:ietf:params:oauth:grant-type:device_code",
]


class CreateOAuth2Client(TypedDict, total=False):
    """`default_scopes` must be a subset of `allowed_scopes` (else 422); a public client cannot have the
    client_credentials grant.
    """

    allowed_scopes: Required[list[CreateOAuth2ClientAllowedScopes]]
    backchannel_logout_uri: str | None
    client_name: str | None
    client_type: Required[Literal["public", "confidential"]]
    default_scopes: list[CreateOAuth2ClientDefaultScopes]
    dpop_bound_access_tokens: bool
    first_party: bool
    grant_types: list[CreateOAuth2ClientGrantTypes]
    post_logout_redirect_uris: list[str]
    redirect_uris: list[str]
    token_endpoint_auth_method: Literal["client_secret_basic", "client_secret_post", "none"]


class CreateTeam(TypedDict):
    title: str


CreatedOAuth2ClientGrantTypes = Literal[
    "authorization_code",
    "refresh_token",
    "client_credentials",
    "password",
    "urn:ietf:params:oauth:grant-type:device_code",
]


class CreatedOAuth2Client(TypedDict, total=False):
    allowed_scopes: list[str]
    backchannel_logout_uri: str | None
    client_id: str
    client_name: str | None
    client_secret: str
    client_type: Literal["public", "confidential"]
    created: str
    default_scopes: list[str]
    dpop_bound_access_tokens: bool
    first_party: bool
    grant_types: list[CreatedOAuth2ClientGrantTypes]
    post_logout_redirect_uris: list[str]
    redirect_uris: list[str]
    token_endpoint_auth_method: Literal["client_secret_basic", "client_secret_post", "none"] | None
    updated: str
    user_id: str


class DeviceAuthorization(TypedDict, total=False):
    device_code: Required[str]
    expires_in: Required[int]
    interval: int
    user_code: Required[str]
    verification_uri: Required[str]
    verification_uri_complete: Required[str]


class Membership(TypedDict, total=False):
    created: str
    is_leader: bool
    user: BaseUser


class MembershipPatchIsLeader(TypedDict):
    op: Literal["test", "add", "replace"]
    path: Literal["/is_leader"]
    value: bool


MembershipPatchOperation = MembershipPatchIsLeader


class MfaStatus(TypedDict, total=False):
    recovery_codes_left: int
    totp: bool


OAuth2ClientGrantTypes = Literal[
    "authorization_code",
    "refresh_token",
    "client_credentials",
    "password",
    "urn:ietf:params:oauth:grant-type:device_code",
]


class OAuth2Client(TypedDict, total=False):
    allowed_scopes: list[str]
    backchannel_logout_uri: str | None
    client_id: str
    client_name: str | None
    client_type: Literal["public", "confidential"]
    created: str
    default_scopes: list[str]
    dpop_bound_access_tokens: bool
    first_party: bool
    grant_types: list[OAuth2ClientGrantTypes]
    post_logout_redirect_uris: list[str]
    redirect_uris: list[str]
    token_endpoint_auth_method: Literal["client_secret_basic", "client_secret_post", "none"] | None
    updated: str
    user_id: str


class OAuth2Error(TypedDict, total=False):
    error: Required[str]
    error_description: str


class Problem(TypedDict, total=False):
    detail: str
    errors: dict[str, Any]
    status: int
    title: str
    type: str


class Signup(TypedDict, total=False):
    email: Required[str]
    first_name: str
    last_name: str
    middle_name: str
    password: Required[str]
    username: Required[str]


class Team(TypedDict, total=False):
    created: str
    id: str
    title: str
    updated: str


class TeamPatchTitle(TypedDict):
    op: Literal["test", "add", "replace"]
    path: Literal["/title"]
    value: str


TeamPatchOperation = TeamPatchTitle


class TokenResponse(TypedDict, total=False):
    access_token: Required[str]
    expires_in: Required[int]
    id_token: str
    refresh_token: str
    scope: Required[str]
    token_type: Required[Literal["Bearer"]]


class User(TypedDict, total=False):
    created: str
    email: str
    email_verified: bool
    first_name: str
    id: str
    is_active: bool
    is_admin: bool
    is_regular_user: bool
    last_name: str
    mfa: MfaStatus
    middle_name: str
    updated: str
    username: str


class UserPatchFirstName(TypedDict):
    op: Literal["test", "add", "replace"]
    path: Literal["/first_name"]
    value: str


class UserPatchMiddleName(TypedDict):
    op: Literal["test", "add", "replace"]
    path: Literal["/middle_name"]
    value: str


class UserPatchLastName(TypedDict):
    op: Literal["test", "add", "replace"]
    path: Literal["/last_name"]
    value: str


class UserPatchEmail(TypedDict):
    op: Literal["test", "add", "replace"]
    path: Literal["/email"]
    value: str


class UserPatchPassword(TypedDict):
    op: Literal["test", "add", "replace"]
    path: Literal["/password"]
    value: str


class UserPatchIsActive(TypedDict):
    op: Literal["test", "add", "replace"]
    path: Literal["/is_active"]
    value: bool


class UserPatchIsRegularUser(TypedDict):
    op: Literal["test", "add", "replace"]
    path: Literal["/is_regular_user"]
    value: bool


class UserPatchIsAdmin(TypedDict):
    op: Literal["test", "add", "replace"]
    path: Literal["/is_admin"]
    value: bool


class UserPatchCurrentPassword(TypedDict):
    op: Literal["test"]
    path: Literal["/current_password"]
    value: str


UserPatchOperation = (
    UserPatchFirstName
    | UserPatchMiddleName
    | UserPatchLastName
    | UserPatchEmail
    | UserPatchPassword
    | UserPatchIsActive
    | UserPatchIsRegularUser
    | UserPatchIsAdmin
    | UserPatchCurrentPassword
)


# The method and path (from the site root) of each operation the SDK calls, by operationId.
OPERATIONS: Final[dict[str, tuple[str, str]]] = {
    "addTeamMember": ("POST", "/api/v1/teams/{team_id}/members/"),
    "authorize": ("GET", "/auth/oauth2/authorize"),
    "createOAuth2Client": ("POST", "/api/v1/auth/oauth2_clients/"),
    "createTeam": ("POST", "/api/v1/teams/"),
    "createUser": ("POST", "/api/v1/users/"),
    "deleteOAuth2Client": ("DELETE", "/api/v1/auth/oauth2_clients/{client_id}"),
    "deleteTeam": ("DELETE", "/api/v1/teams/{team_id}"),
    "deviceAuthorization": ("POST", "/auth/oauth2/device_authorization"),
    "getCurrentUser": ("GET", "/api/v1/users/me"),
    "getOAuth2Client": ("GET", "/api/v1/auth/oauth2_clients/{client_id}"),
    "getTeam": ("GET", "/api/v1/teams/{team_id}"),
    "getUser": ("GET", "/api/v1/users/{user_id}"),
    "listOAuth2Clients": ("GET", "/api/v1/auth/oauth2_clients/"),
    "listTeamMembers": ("GET", "/api/v1/teams/{team_id}/members/"),
    "listTeams": ("GET", "/api/v1/teams/"),
    "listUsers": ("GET", "/api/v1/users/"),
    "patchTeam": ("PATCH", "/api/v1/teams/{team_id}"),
    "patchTeamMember": ("PATCH", "/api/v1/teams/{team_id}/members/{user_id}"),
    "patchUser": ("PATCH", "/api/v1/users/{user_id}"),
    "removeTeamMember": ("DELETE", "/api/v1/teams/{team_id}/members/{user_id}"),
    "revokeToken": ("POST", "/auth/oauth2/revoke"),
    "serverMetadata": ("GET", "/.well-known/oauth-authorization-server"),
    "token": ("POST", "/auth/oauth2/token"),
}


# POSTs that declare an `Idempotency-Key` header: safe to resend after a dropped connection.
IDEMPOTENCY_KEYED: Final[frozenset[str]] = frozenset(
    {
        "addTeamMember",
        "createOAuth2Client",
        "createTeam",
        "createUser",
    }
)
