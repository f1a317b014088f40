"""Every OAuth2 scope a token can carry, with the sentence the consent page and the docs show for it."""

from __future__ import annotations

SCOPES = {
    "auth:read": "Read your OAuth2 clients",
    "auth:write": "Create and delete your OAuth2 clients",
    "users:read": "Read users",
    "users:write": "Change users",
    "teams:read": "Read teams",
    "teams:write": "Change teams",
    "openid": "Sign you in to the application (OpenID Connect): your user id",
    "profile": "Your name and username",
    "email": "Your email address",
}
