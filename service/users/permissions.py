"""Who may do what with users: pure predicates."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from service.caller import is_admin

ADMIN_ONLY_PATHS = frozenset({"/is_active", "/is_regular_user", "/is_admin"})
PASSWORD_GUARDED_PATHS = frozenset({"/email", "/password"})


def is_self(user: Mapping[str, Any], target: Mapping[str, Any]) -> bool:
    """The caller is the user in question."""
    return bool(user["_id"] == target["_id"])


def may_see_user(user: Mapping[str, Any], target: Mapping[str, Any]) -> bool:
    """Users see themselves; admins see everyone. Others get 404, not 403: they may not know the id exists."""
    return is_self(user, target) or is_admin(user)
