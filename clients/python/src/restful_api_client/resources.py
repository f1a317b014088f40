"""`api.users` and `api.teams`: one method per operation, typed with the generated models.

Single objects come back as the generated `TypedDict`s; at run time they are `Document`s (plain dicts
that also remember the response's `ETag`), so `api.teams.patch(team, ops)` can send `If-Match` for the
version the caller holds. `etag_of(obj)` reads it; items of a list carry none (the server sends no tag
per item), so a patch of a listed object is unconditional unless the caller passes `if_match` or reads
the object first.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

from restful_api_client.errors import ApiError, PreconditionFailed
from restful_api_client.models import (
    CreatedOAuth2Client,
    CreateOAuth2Client,
    Membership,
    MembershipPatchOperation,
    OAuth2Client,
    Signup,
    Team,
    TeamPatchOperation,
    User,
    UserPatchOperation,
)

if TYPE_CHECKING:
    from restful_api_client.client import Client
    from restful_api_client.transport import Response


class Document(dict[str, Any]):
    """A JSON object with the `ETag` it was served with (None when the response had none)."""

    etag: str | None = None


def etag_of(obj: Mapping[str, Any]) -> str | None:
    """The ETag an object returned by this SDK was served with."""
    return getattr(obj, "etag", None)


def _document(response: Response) -> Any:
    document = Document(response.body if isinstance(response.body, dict) else {})
    document.etag = response.headers.get("ETag")
    return document


async def _guarded_patch(
    api: Client, operation: str, path: dict[str, str], held: Mapping[str, Any], ops: Sequence[Any], if_match: str | None
) -> Any:
    """PATCH with `If-Match` from the held object; on 412 the object as it is now rides on the error."""
    tag = if_match or etag_of(held)
    headers = {"Content-Type": "application/json-patch+json", **({"If-Match": tag} if tag is not None else {})}
    try:
        return _document(await api.call(operation, path, json=list(ops), headers=headers))
    except PreconditionFailed as error:
        getter = operation.replace("patch", "get", 1)
        try:
            error.current = _document(await api.call(getter, path))
        except ApiError:
            error.current = None
        raise


class Users:
    def __init__(self, api: Client) -> None:
        self._api = api

    def list(self, *, page_size: int = 100) -> AsyncIterator[User]:
        """Every user (admins; `users:read`)."""
        return self._api.paginate(self._api.url("listUsers"), page_size)

    async def patch(self, user: User, ops: Sequence[UserPatchOperation], *, if_match: str | None = None) -> User:
        """JSON Patch on the version of `user` the caller holds (`If-Match`); see `Teams.patch`. Changing
        `/email` or `/password` needs a `test` of `/current_password` first."""
        return cast(User, await _guarded_patch(self._api, "patchUser", {"user_id": user["id"]}, user, ops, if_match))

    async def me(self) -> User:
        """The signed-in user (`users:read`)."""
        return cast(User, _document(await self._api.call("getCurrentUser")))

    async def get(self, user_id: str) -> User:
        """One user: the caller themself, or anyone for an admin (`users:read`)."""
        return cast(User, _document(await self._api.call("getUser", {"user_id": user_id})))

    async def create(self, signup: Signup) -> User:
        """Sign-up (anonymous) or an admin creating a user."""
        return cast(User, _document(await self._api.call("createUser", json=signup)))


class Teams:
    def __init__(self, api: Client) -> None:
        self._api = api

    def list(self, *, page_size: int = 100) -> AsyncIterator[Team]:
        """`async for team in api.teams.list():` every team the caller may see (`teams:read`)."""
        return self._api.paginate(self._api.url("listTeams"), page_size)

    async def create(self, title: str, *, idempotency_key: str | None = None) -> Team:
        """A new team led by the caller (`teams:write`). Retries reuse one `Idempotency-Key`."""
        response = await self._api.call("createTeam", json={"title": title}, idempotency_key=idempotency_key)
        return cast(Team, _document(response))

    async def get(self, team_id: str) -> Team:
        return cast(Team, _document(await self._api.call("getTeam", {"team_id": team_id})))

    async def patch(self, team: Team, ops: Sequence[TeamPatchOperation], *, if_match: str | None = None) -> Team:
        """Apply a JSON Patch (RFC 6902) to the version of `team` the caller holds: `If-Match` carries
        its ETag (or `if_match`), so a change made meanwhile is never overwritten unseen. A stale version
        raises `PreconditionFailed` whose `current` is the team as it is now, ready for another try."""
        return cast(Team, await _guarded_patch(self._api, "patchTeam", {"team_id": team["id"]}, team, ops, if_match))

    async def delete(self, team: Team, *, if_match: str | None = None) -> None:
        """Delete the team if it is still the version the caller holds (else `PreconditionFailed`)."""
        tag = if_match or etag_of(team)
        headers = {"If-Match": tag} if tag is not None else {}
        await self._api.call("deleteTeam", {"team_id": team["id"]}, headers=headers)

    def members(self, team_id: str, *, page_size: int = 100) -> AsyncIterator[Membership]:
        """`async for member in api.teams.members(team_id):` every membership (`teams:read`)."""
        return self._api.paginate(self._api.url("listTeamMembers", team_id=team_id), page_size)

    async def add_member(self, team_id: str, user_id: str, *, is_leader: bool = False) -> Membership:
        """Add a user (leaders and admins; `teams:write`); the membership carries the team's ETag."""
        body = {"user_id": user_id, "is_leader": is_leader}
        response = await self._api.call("addTeamMember", {"team_id": team_id}, json=body)
        return cast(Membership, _document(response))

    async def patch_member(
        self, team_id: str, user_id: str, ops: Sequence[MembershipPatchOperation], *, if_match: str | None = None
    ) -> Membership:
        """JSON Patch on `/is_leader`; `if_match` is the team's ETag (memberships carry it)."""
        headers = {"Content-Type": "application/json-patch+json", **({"If-Match": if_match} if if_match else {})}
        path = {"team_id": team_id, "user_id": user_id}
        return cast(
            Membership, _document(await self._api.call("patchTeamMember", path, json=list(ops), headers=headers))
        )

    async def remove_member(self, team_id: str, user_id: str) -> None:
        await self._api.call("removeTeamMember", {"team_id": team_id, "user_id": user_id})


class OAuth2Clients:
    """`api.clients`: the caller's OAuth2 clients (`auth:read`, `auth:write`)."""

    def __init__(self, api: Client) -> None:
        self._api = api

    def list(self, *, page_size: int = 100) -> AsyncIterator[OAuth2Client]:
        return self._api.paginate(self._api.url("listOAuth2Clients"), page_size)

    async def create(self, body: CreateOAuth2Client) -> CreatedOAuth2Client:
        """A new client; a confidential one's `client_secret` is in this answer only."""
        return cast(CreatedOAuth2Client, _document(await self._api.call("createOAuth2Client", json=body)))

    async def get(self, client_id: str) -> OAuth2Client:
        return cast(OAuth2Client, _document(await self._api.call("getOAuth2Client", {"client_id": client_id})))

    async def delete(self, client: OAuth2Client, *, if_match: str | None = None) -> None:
        """Delete the client (its tokens stop working) if it is still the version held."""
        tag = if_match or etag_of(client)
        headers = {"If-Match": tag} if tag is not None else {}
        await self._api.call("deleteOAuth2Client", {"client_id": client["client_id"]}, headers=headers)
