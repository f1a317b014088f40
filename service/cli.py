"""Command line: `python -m service [serve|db|openapi|fixtures|users|clients] ...`."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import orjson
from aiohttp import web

from service import keys, log
from service.app import create_app
from service.config import Settings, SettingsError
from service.db import EmbeddedServerError, Mongo, upgrade

Command = Callable[[argparse.Namespace, Settings], int]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m service", description="RESTful API server (aiohttp + MongoDB).")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the HTTP server (the default command)")
    serve.add_argument("--host", help="address to listen on (default: HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default: PORT or 8080)")
    serve.set_defaults(handler=cmd_serve)

    db = commands.add_parser("db", help="database maintenance")
    db_commands = db.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    db_upgrade = db_commands.add_parser("upgrade", help="create indexes and apply pending migrations")
    db_upgrade.set_defaults(handler=cmd_db_upgrade)

    openapi = commands.add_parser("openapi", help="print the OpenAPI document as JSON")
    openapi.set_defaults(handler=cmd_openapi)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        args = parser.parse_args(["serve", *(argv if argv is not None else sys.argv[1:])])
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    log.configure(settings.log_level, settings.log_format)
    try:
        return int(args.handler(args, settings))
    except EmbeddedServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    host = args.host or settings.host
    port = settings.port if args.port is None else args.port
    app = create_app(settings)

    def announce(_: Any) -> None:
        shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host  # noqa: S104 (display only)
        print(f"Serving on http://{shown}:{port} - API docs at http://{shown}:{port}/api/v1/", flush=True)

    web.run_app(
        app,
        host=host,
        port=port,
        access_log_class=log.AccessLogger,
        shutdown_timeout=30.0,  # in-flight requests get this long to finish on SIGTERM/Ctrl-C
        print=announce,
    )
    return 0


def with_database(work: Callable[[Mongo], Awaitable[int]]) -> Callable[[argparse.Namespace, Settings], int]:
    """Run `work` against the configured database (starting the embedded one if needed)."""

    def run(args: argparse.Namespace, settings: Settings) -> int:
        async def body() -> int:
            mongo = Mongo(settings)
            await mongo.connect()
            try:
                return await work(mongo)
            finally:
                await mongo.close()

        return asyncio.run(body())

    return run


async def _db_upgrade(mongo: Mongo) -> int:
    applied = await upgrade(mongo.db)
    print(f"indexes ensured; migrations applied: {', '.join(applied) or 'none pending'}")
    return 0


cmd_db_upgrade = with_database(_db_upgrade)


def cmd_openapi(args: argparse.Namespace, settings: Settings) -> int:
    document = orjson.loads(create_app(settings)[keys.openapi])
    sys.stdout.write(orjson.dumps(document, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode() + "\n")
    return 0
