"""Who may do what with teams: pure predicates."""

from __future__ import annotations

from typing import Any

from service.users.permissions import is_admin


def membership(user: dict[str, Any], team: dict[str, Any]) -> dict[str, Any] | None:
    """The user's membership in the team, if any."""
    return next((m for m in team["members"] if m["user_id"] == user["_id"]), None)


def is_member(user: dict[str, Any], team: dict[str, Any]) -> bool:
    """The user belongs to the team (as member or leader)."""
    return membership(user, team) is not None


def is_leader(user: dict[str, Any], team: dict[str, Any]) -> bool:
    """The user leads the team."""
    found = membership(user, team)
    return bool(found and found["is_leader"])


def may_see_team(user: dict[str, Any], team: dict[str, Any]) -> bool:
    """Members and admins; everyone else gets 404."""
    return is_member(user, team) or is_admin(user)


def may_manage_team(user: dict[str, Any], team: dict[str, Any]) -> bool:
    """Leaders and admins."""
    return is_leader(user, team) or is_admin(user)


def leader_count(members: list[dict[str, Any]]) -> int:
    return sum(1 for m in members if m["is_leader"])
