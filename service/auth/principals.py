"""The cached principals of the auth domain: access tokens (with their user) and OAuth2 clients, read
through the platform's principal cache (service/cache.py), and revocations that evict just what they
revoked."""

from __future__ import annotations

from typing import Any

from service.auth import repository as tokens
from service.cache import Dependency, PrincipalCache

# What a revocation selects tokens by (see `revoke_tokens`), and the dependency each names: a cached
# token depends on its own document, and on its family and its code, so a revocation evicts just them.
TOKEN_GROUPS = {"_id": "oauth2_tokens", "family_id": "oauth2_tokens.family_id", "code_id": "oauth2_tokens.code_id"}


async def live_token(cache: PrincipalCache, db: Any, digest: str) -> dict[str, Any] | None:
    """The live access token with its user (see `find_live_access_token`); a dead one is not kept."""

    def read_from(token: dict[str, Any] | None) -> list[Dependency] | None:
        if token is None:
            return None
        groups = [(group, token.get(field)) for field, group in TOKEN_GROUPS.items()]
        return [*groups, ("users", token["user_id"]), ("oauth2_clients", token["client_id"])]

    return await cache.fetch(
        f"token:{digest}",
        lambda: tokens.find_live_access_token(db, digest),
        read_from,
        lambda token: token["access_expires"] if token else None,
    )


async def client(cache: PrincipalCache, db: Any, client_id: str) -> tokens.ClientDocument | None:
    return await cache.fetch(
        f"client:{client_id}",
        lambda: tokens.get_client(db, client_id),
        lambda found: [("oauth2_clients", client_id)] if found else None,
    )


async def revoke_tokens(cache: PrincipalCache, db: Any, query: dict[str, Any]) -> int:
    """Revoke the tokens matching `query` (by `_id`, `family_id` or `code_id`) and forget just those
    here at once (other processes hear of it through the change stream)."""
    revoked = await tokens.revoke_tokens(db, query)
    forget_tokens(cache, query)
    return revoked


def forget_tokens(cache: PrincipalCache, query: dict[str, Any]) -> None:
    """Evict the cached tokens a write selected by `query` (see TOKEN_GROUPS) just changed."""
    for field, value in query.items():
        cache.evict(TOKEN_GROUPS[field], value)


async def revoke_grant(cache: PrincipalCache, db: Any, user_id: Any, client_id: str) -> int:
    """Revoke every token `client_id` holds for `user_id` in one write, and forget the user's cached
    tokens here at once: a cached token names its user and its client but not the pair, so the user's
    other tokens are read again once (other processes hear of the revoked ones through the change stream)."""
    revoked = await tokens.revoke_tokens(db, {"user_id": user_id, "client_id": client_id})
    cache.evict("users", user_id)
    return revoked
