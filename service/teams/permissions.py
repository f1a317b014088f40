"""Who may do what with teams: pure predicates over the caller and their standing in the team."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from service.caller import is_admin


def may_see_team(user: Mapping[str, Any], membership: Mapping[str, Any] | None) -> bool:
    """Members and admins; everyone else gets 404."""
    return membership is not None or is_admin(user)


def may_manage_team(user: Mapping[str, Any], leads: bool) -> bool:
    """Leaders and admins."""
    return leads or is_admin(user)
