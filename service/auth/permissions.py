"""Who may do what with OAuth2 clients: pure predicates."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from service.caller import is_admin


def owns_client(user: Mapping[str, Any], client: Mapping[str, Any]) -> bool:
    """The user registered the client."""
    return bool(client["user_id"] == user["_id"])


def may_see_client(user: Mapping[str, Any], client: Mapping[str, Any]) -> bool:
    """Owners and admins; anyone else gets 404 (they may not know the client exists)."""
    return owns_client(user, client) or is_admin(user)
