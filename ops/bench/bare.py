"""The framework's ceiling on this machine: a bare aiohttp app, measured in the same run as the service.

`/json` returns a fixed small document; `/find_one` adds exactly one Motor `find_one` on the same
database, which is the floor for an authenticated request (its token must be looked up).
"""

from __future__ import annotations

import sys

from aiohttp import web
from motor.motor_asyncio import AsyncIOMotorClient, AsyncIOMotorDatabase

DB = web.AppKey("bench.db", AsyncIOMotorDatabase)

BODY = b'{"id":"65f0c0ffee0000000000beef","username":"root","first_name":"Root","is_active":true}'


def main() -> None:
    port, mongodb_url, database = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    app = web.Application()

    async def connect(app: web.Application):  # type: ignore[no-untyped-def]
        app[DB] = AsyncIOMotorClient(mongodb_url)[database]
        yield
        app[DB].client.close()

    async def fixed(request: web.Request) -> web.Response:
        return web.Response(body=BODY, content_type="application/json")

    async def find_one(request: web.Request) -> web.Response:
        await request.app[DB].users.find_one({"username_key": "root"})  # a whole principal, as a real lookup
        return web.Response(body=BODY, content_type="application/json")

    app.cleanup_ctx.append(connect)
    app.router.add_get("/json", fixed)
    app.router.add_get("/find_one", find_one)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


if __name__ == "__main__":
    main()
