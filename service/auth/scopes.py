"""Every OAuth2 scope a token can carry, with the sentence the consent page and the docs show for it.

One registry, kept by the authorization server, because it is what validates every scope a client
registers or a token request asks for; each name starts with the domain it guards (`users:`,
`teams:`, `auth:`), and the OpenID Connect ones are the authorization server's own. A new domain
adds its two lines here and uses them in its routes' `@requires(...)`."""

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
