"""The composition root for data: what each domain brings (indexes, migrations), assembled here.

Platform modules, `db` above all, know no domain. A new domain declares `INDEXES` next to its repository
and any migration beside it, then adds them below (and its routes in `app.py`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pymongo import IndexModel

from service import audit
from service.auth import repository as auth_repository
from service.auth import signing
from service.db import Database, Migration, ensure_indexes, run_migrations
from service.teams import repository as teams_repository
from service.users import repository as users_repository


def _merge(*declared: Mapping[str, Sequence[IndexModel]]) -> dict[str, list[IndexModel]]:
    merged: dict[str, list[IndexModel]] = {}
    for indexes in declared:
        for collection, models in indexes.items():
            merged.setdefault(collection, []).extend(models)
    return merged


INDEXES = _merge(
    auth_repository.INDEXES, users_repository.INDEXES, teams_repository.INDEXES, audit.INDEXES, signing.INDEXES
)


async def _backfill_versions(db: Database) -> None:
    """Documents written before versioning get version 1, so If-Match works on them."""
    for collection in ("users", "teams", "oauth2_clients"):
        await db[collection].update_many({"version": {"$exists": False}}, {"$set": {"version": 1}})


# Applied once each, in this order, by every start-up and `db upgrade`; never reorder or rename.
MIGRATIONS: tuple[Migration, ...] = (
    ("0001_backfill_versions", _backfill_versions),
    ("0002_documentation_client_oidc_scopes", auth_repository.documentation_client_may_sign_in),
    ("0003_memberships_out_of_team_documents", teams_repository.memberships_out_of_team_documents),
    ("0004_member_counts_in_team_documents", teams_repository.count_members_in_team_documents),
    ("0005_membership_keys", teams_repository.key_memberships),
    ("0006_leaders_in_team_documents", teams_repository.leaders_into_team_documents),
    ("0007_membership_places", teams_repository.place_memberships),
)


async def upgrade(db: Database) -> list[str]:
    """Indexes, then migrations: what start-up and `db upgrade` do."""
    await ensure_indexes(db, INDEXES)
    return await run_migrations(db, MIGRATIONS)
