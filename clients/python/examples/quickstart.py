"""Sign in, create a team, page through its members, and rename it without overwriting anyone.

    API_URL=http://127.0.0.1:8080 API_USERNAME=user API_PASSWORD=w python examples/quickstart.py

`API_CLIENT_ID` names the OAuth2 client allowed the password grant (default: the development
fixtures' `documentation` client).
"""

from __future__ import annotations

import asyncio
import os

from restful_api_client import Client, Password, PreconditionFailed
from restful_api_client.models import Team


async def rename(api: Client, team: Team, title: str) -> Team:
    """A safe update: If-Match carries the version we hold; if someone changed the team meanwhile, look at
    the fresh version (a real program would merge or ask) and try again."""
    for _ in range(3):
        try:
            return await api.teams.patch(team, [{"op": "replace", "path": "/title", "value": title}])
        except PreconditionFailed as changed:
            if changed.current is None:
                raise
            team = changed.current
    raise RuntimeError("the team keeps changing")


async def main() -> None:
    auth = Password(
        os.environ.get("API_USERNAME", "user"),
        os.environ.get("API_PASSWORD", "w"),
        client_id=os.environ.get("API_CLIENT_ID", "documentation"),
    )
    async with Client(os.environ.get("API_URL", "http://127.0.0.1:8080"), auth=auth) as api:
        me = await api.users.me()
        print(f"signed in as {me['username']}")

        team = await api.teams.create("Quickstart")  # retried safely: the POST carries an Idempotency-Key
        print(f"created team {team['id']}")

        members = [member async for member in api.teams.members(team["id"], page_size=50)]
        print(f"members: {len(members)}")

        renamed = await rename(api, team, "Quickstart (renamed)")
        print(f"renamed to {renamed['title']!r}")

        count = 0
        async for _ in api.teams.list():  # follows Link: rel="next" page after page
            count += 1
        print(f"teams visible: {count}")


if __name__ == "__main__":
    asyncio.run(main())
