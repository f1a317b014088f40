"""Who may do what with OAuth2 clients: pure predicates."""

from __future__ import annotations

from typing import Any


def owns_client(user: dict[str, Any], client: dict[str, Any]) -> bool:
    """The user registered the client."""
    return bool(client["user_id"] == user["_id"])


def may_see_client(user: dict[str, Any], client: dict[str, Any]) -> bool:
    """Owners and admins; anyone else gets 404 (they may not know the client exists)."""
    return owns_client(user, client) or bool(user.get("is_admin"))
