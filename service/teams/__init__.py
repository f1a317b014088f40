"""Teams domain: teams, their members and leaders."""

from __future__ import annotations

from aiohttp import web

from service import scopes
from service.db import STORAGE
from service.teams import repository, routes

SCOPES = {"teams:read": "Read teams", "teams:write": "Change teams"}
# Applied once each, in the order of their names, with every other domain's; never rename one.
MIGRATIONS = (
    ("0003_memberships_out_of_team_documents", repository.memberships_out_of_team_documents),
    ("0004_member_counts_in_team_documents", repository.count_members_in_team_documents),
    ("0005_membership_keys", repository.key_memberships),
    ("0006_leaders_in_team_documents", repository.leaders_into_team_documents),
    ("0007_membership_places", repository.place_memberships),
)


def setup(root: web.Application, api: web.Application) -> None:
    root[STORAGE].declare(repository.INDEXES, MIGRATIONS)
    scopes.register(SCOPES)
    api.router.add_routes(routes.routes)
