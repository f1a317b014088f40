"""Development data: validate fixture files and load them idempotently (CLI, and the embedded first run).

A fixture file is a JSON object with any of the keys `users`, `oauth2_clients` and `teams`; kinds load
in that order so later ones can refer to earlier ones by username. Existing objects (same username or
client_id, same team title) are left alone, so loading twice changes nothing. Fixture passwords
skip the sign-up length rule: they are development data (`root`/`q`), never production accounts.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson
from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate

from service.auth import repository as auth_repository
from service.auth.clients import new_client_document
from service.auth.schemas import CreateOAuth2ClientSchema
from service.db import Database
from service.passwords import PasswordHasher
from service.teams import repository as teams_repository
from service.teams.schemas import TITLE
from service.users import repository as users_repository
from service.users.schemas import NAME, USERNAME

DEFAULT_DIR = Path(__file__).resolve().parent.parent / "fixtures"


class FixtureError(ValueError):
    """A fixture file is malformed; the message names the file and the problem."""


class UserFixtureSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    username = fields.String(required=True, validate=USERNAME)
    email = fields.Email(required=True)
    password = fields.String(required=True, validate=validate.Length(min=1))
    first_name = fields.String(load_default="", validate=NAME)
    middle_name = fields.String(load_default="", validate=NAME)
    last_name = fields.String(load_default="", validate=NAME)
    is_active = fields.Boolean(load_default=True)
    is_regular_user = fields.Boolean(load_default=True)
    is_admin = fields.Boolean(load_default=False)


class ClientFixtureSchema(CreateOAuth2ClientSchema):
    client_id = fields.String(required=True, validate=validate.Length(min=1, max=100))
    client_secret = fields.String(validate=validate.Length(min=16))
    owner = fields.String(required=True)


def _has_leader(members: list[dict[str, Any]]) -> None:
    if not any(member["is_leader"] for member in members):
        raise ValidationError("A team needs at least one leader.")


class MemberFixtureSchema(Schema):
    username = fields.String(required=True)
    is_leader = fields.Boolean(load_default=False)


class TeamFixtureSchema(Schema):
    title = fields.String(required=True, validate=TITLE)
    members = fields.List(
        fields.Nested(MemberFixtureSchema),
        required=True,
        validate=_has_leader,
    )


class FixtureFileSchema(Schema):
    users = fields.List(fields.Nested(UserFixtureSchema), load_default=list)
    oauth2_clients = fields.List(fields.Nested(ClientFixtureSchema), load_default=list)
    teams = fields.List(fields.Nested(TeamFixtureSchema), load_default=list)


def read(paths: Iterable[Path]) -> dict[str, list[dict[str, Any]]]:
    """Parse and validate every file before anything is written."""
    merged: dict[str, list[dict[str, Any]]] = {"users": [], "oauth2_clients": [], "teams": []}
    for path in paths:
        try:
            data = FixtureFileSchema().load(orjson.loads(path.read_bytes()))
        except (OSError, orjson.JSONDecodeError) as exc:
            raise FixtureError(f"{path}: {exc}") from None
        except ValidationError as exc:
            raise FixtureError(f"{path}: {exc.messages}") from None
        for kind, items in data.items():
            merged[kind].extend(items)
    return merged


async def load_on_first_run(db: Database, hasher: PasswordHasher) -> dict[str, int] | None:
    """Load the default fixtures into an empty database (the embedded one's first run); None if not empty."""
    if await users_repository.count_users(db) > 0:
        return None
    return await load(db, hasher, default_files())


def default_files() -> list[Path]:
    return sorted(DEFAULT_DIR.glob("*.json"))


async def load(db: Database, hasher: PasswordHasher, paths: Iterable[Path]) -> dict[str, int]:
    """Load fixtures; returns how many objects of each kind were created."""
    data = read(paths)
    created = {"users": 0, "oauth2_clients": 0, "teams": 0}
    for user in data["users"]:
        if await users_repository.get_user_by_username(db, user["username"]) is None:
            password_hash = await hasher.hash(user.pop("password"))
            await users_repository.insert_user(
                db,
                users_repository.new_user_document(
                    username=user["username"], email=user["email"], password_hash=password_hash, names=user, roles=user
                ),
            )
            created["users"] += 1
    for client in data["oauth2_clients"]:
        if await auth_repository.get_client(db, client["client_id"]) is not None:
            continue
        owner = await users_repository.get_user_by_username(db, client["owner"])
        if owner is None:
            raise FixtureError(f"OAuth2 client {client['client_id']}: unknown owner {client['owner']!r}")
        if client["client_type"] == "confidential" and not client.get("client_secret"):
            raise FixtureError(f"OAuth2 client {client['client_id']}: a confidential client needs client_secret")
        document = new_client_document(client["client_id"], client, client.get("client_secret"), owner["_id"])
        await auth_repository.insert_client(db, document)
        created["oauth2_clients"] += 1
    for team in data["teams"]:
        if await teams_repository.get_team_by_title(db, team["title"]) is not None:
            continue
        team_document = teams_repository.new_team_document(team["title"], [])
        members = []
        for member in team["members"]:
            found = await users_repository.get_user_by_username(db, member["username"])
            if found is None:
                raise FixtureError(f"Team {team['title']!r}: unknown member {member['username']!r}")
            members.append(teams_repository.new_membership(team_document, found["_id"]))
            if member["is_leader"]:
                team_document["leader_ids"].append(found["_id"])
        await teams_repository.insert_team(db, team_document, members)
        created["teams"] += 1
    return created
