"""Command line: `python -m service [serve|db|openapi|fixtures|users|clients] ...`."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web
from marshmallow import ValidationError

from service import fixtures, keys, log, mail
from service.app import SERVE_OPTIONS, create_app, upgrade
from service.auth import clients as auth_clients
from service.auth import registration as auth_registration
from service.auth import signing
from service.auth.schemas import CreateOAuth2ClientSchema
from service.cache import PRINCIPAL_CACHE, PrincipalCache
from service.config import SETTINGS, Settings, SettingsError
from service.context import Context
from service.db import MONGO, Mongo, shared_secret
from service.embedded import EmbeddedServerError, free_port
from service.errors import ApiError
from service.pagination import CURSORS, Cursors
from service.passwords import HASHER, PasswordHasher
from service.scopes import SCOPES
from service.users import repository as users_repository
from service.users.schemas import SignupSchema
from service.workers import Master

Command = Callable[[argparse.Namespace, Settings], int]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m service", description="RESTful API server (aiohttp + MongoDB).")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the HTTP server (the default command)")
    serve.add_argument("--host", help="address to listen on (default: HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default: PORT or 8080)")
    serve.add_argument("--workers", type=int, help="worker processes sharing the port (default: WORKERS or 1)")
    serve.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)  # set by the master
    serve.set_defaults(handler=cmd_serve)

    db = commands.add_parser("db", help="database maintenance")
    db_commands = db.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    db_upgrade = db_commands.add_parser("upgrade", help="create indexes and apply pending migrations")
    db_upgrade.set_defaults(handler=cmd_db_upgrade)

    fixtures_parser = commands.add_parser("fixtures", help="development data")
    fixtures_commands = fixtures_parser.add_subparsers(dest="fixtures_command", metavar="ACTION", required=True)
    fixtures_load = fixtures_commands.add_parser("load", help="load fixture files (default: everything in fixtures/)")
    fixtures_load.add_argument("files", nargs="*", type=Path, metavar="FILE")
    fixtures_load.set_defaults(handler=cmd_fixtures_load)

    users = commands.add_parser("users", help="manage users")
    users_commands = users.add_subparsers(dest="users_command", metavar="ACTION", required=True)
    users_create = users_commands.add_parser("create", help="create a user (the password is prompted for)")
    users_create.add_argument("--username", required=True)
    users_create.add_argument("--email", required=True)
    users_create.add_argument("--admin", action="store_true", help="make the user an administrator")
    users_create.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    users_create.set_defaults(handler=cmd_users_create)

    clients = commands.add_parser("clients", help="manage OAuth2 clients")
    clients_commands = clients.add_subparsers(dest="clients_command", metavar="ACTION", required=True)
    clients_create = clients_commands.add_parser("create", help="register an OAuth2 client for a user")
    clients_create.add_argument("--owner", required=True, help="username of the owner")
    clients_create.add_argument(
        "--type", choices=("public", "confidential"), default="confidential", dest="client_type"
    )
    clients_create.add_argument("--redirect-uri", action="append", default=[], dest="redirect_uris")
    clients_create.add_argument("--scope", action="append", dest="scopes", help="allowed (and default) scope; repeat")
    clients_create.set_defaults(handler=cmd_clients_create)
    registration_token = clients_commands.add_parser(
        "registration-token",
        help="create an initial access token for dynamic client registration (printed alone on stdout)",
    )
    registration_token.add_argument("--expires-in", type=int, metavar="S", help="seconds until it expires")
    registration_token.add_argument("--max-uses", type=int, metavar="N", help="how many registrations it allows")
    registration_token.add_argument("--owner", help="username that will own the clients (default: no owner)")
    registration_token.set_defaults(handler=cmd_clients_registration_token)

    keys_parser = commands.add_parser("keys", help="ID-token signing keys")
    keys_commands = keys_parser.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    keys_rotate = keys_commands.add_parser(
        "rotate", help="add a signing key (it signs a minute later) and drop keys whose tokens have all expired"
    )
    keys_rotate.set_defaults(handler=cmd_keys_rotate)

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
    except (EmbeddedServerError, SettingsError) as exc:  # a start-up that cannot work: say why, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 1


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    host = args.host or settings.host
    port = settings.port if args.port is None else args.port
    workers = settings.workers if args.workers is None else args.workers
    if workers < 1:
        print("error: --workers must be at least 1", file=sys.stderr)
        return 2
    mail.check_delivery(settings)  # before a master starts workers that would each refuse
    if workers > 1:
        return Master(settings, host, port or free_port(host), workers).run()
    _use_uvloop()
    app = create_app(settings)

    def announce(_: Any) -> None:
        shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host  # noqa: S104  # nosec B104
        print(f"Serving on http://{shown}:{port} - API docs at http://{shown}:{port}/api/v1/", flush=True)

    web.run_app(
        app,
        host=host,
        port=port,
        **SERVE_OPTIONS,
        shutdown_timeout=30.0,  # in-flight requests get this long to finish on SIGTERM/Ctrl-C
        print=None if args.reuse_port else announce,
        reuse_port=args.reuse_port or None,
    )
    return 0


def _use_uvloop() -> None:
    """uvloop where it is installed (Linux, macOS): a faster event loop, same semantics."""
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


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
    applied = await upgrade(mongo.settings, mongo.db)
    print(f"indexes ensured; migrations applied: {', '.join(applied) or 'none pending'}")
    return 0


cmd_db_upgrade = with_database(_db_upgrade)


def cmd_keys_rotate(args: argparse.Namespace, settings: Settings) -> int:
    async def work(mongo: Mongo) -> int:
        await upgrade(mongo.settings, mongo.db)
        kid = await signing.add_key(mongo.db)
        keep_for = timedelta(seconds=settings.access_token_ttl) + signing.PUBLISH_BEFORE_USE
        dropped = await signing.drop_expired_keys(mongo.db, keep_for)
        print(f"added signing key {kid} (published now, signing from {signing.PUBLISH_BEFORE_USE} from now)")
        print(f"dropped expired keys: {', '.join(dropped) or 'none'}")
        return 0

    return with_database(work)(args, settings)


def _with_hasher(work: Callable[[Mongo, PasswordHasher], Awaitable[int]]) -> Callable[[Mongo], Awaitable[int]]:
    async def run(mongo: Mongo) -> int:
        settings = mongo.settings
        hasher = PasswordHasher(settings.argon2_time_cost, settings.argon2_memory_kib)
        try:
            await upgrade(mongo.settings, mongo.db)
            return await work(mongo, hasher)
        finally:
            hasher.close()

    return run


async def _context(mongo: Mongo, hasher: PasswordHasher) -> Context:
    """What domain functions take, outside a request (a principal cache that is never current answers
    nothing, so every read goes to the database)."""
    cursors = Cursors(await shared_secret(mongo.db, "list-cursors"))
    state = {
        SETTINGS: mongo.settings,
        MONGO: mongo,
        HASHER: hasher,
        PRINCIPAL_CACHE: PrincipalCache(),
        CURSORS: cursors,
    }
    return Context.of_app(state, mongo.settings.public_url or "")


def cmd_fixtures_load(args: argparse.Namespace, settings: Settings) -> int:
    files = args.files or fixtures.default_files()

    async def work(mongo: Mongo, hasher: PasswordHasher) -> int:
        created = await fixtures.load(mongo.db, hasher, files)
        print("created: " + ", ".join(f"{count} {kind}" for kind, count in created.items()))
        return 0

    try:
        return with_database(_with_hasher(work))(args, settings)
    except fixtures.FixtureError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def cmd_users_create(args: argparse.Namespace, settings: Settings) -> int:
    password = sys.stdin.readline().rstrip("\n") if args.password_stdin else getpass.getpass("Password: ")
    try:
        data = SignupSchema().load({"username": args.username, "email": args.email, "password": password})
    except ValidationError as exc:
        print(f"error: {exc.messages}", file=sys.stderr)
        return 1

    async def work(mongo: Mongo, hasher: PasswordHasher) -> int:
        document = users_repository.new_user_document(
            username=data["username"],
            email=data["email"],
            password_hash=await hasher.hash(data["password"]),
            names=data,
            roles={"is_admin": args.admin},
        )
        try:
            user = await users_repository.insert_user(mongo.db, document)
        except ApiError as exc:
            print(f"error: {exc.detail}", file=sys.stderr)
            return 1
        print(f"created user {user['username']} with id {user['_id']}")
        return 0

    return with_database(_with_hasher(work))(args, settings)


def cmd_clients_create(args: argparse.Namespace, settings: Settings) -> int:
    create_app(settings)  # the domains register their scopes as the app is built
    scopes = args.scopes or list(SCOPES)
    try:
        data = CreateOAuth2ClientSchema().load(
            {
                "client_type": args.client_type,
                "redirect_uris": args.redirect_uris,
                "allowed_scopes": scopes,
                "default_scopes": scopes,
            }
        )
    except ValidationError as exc:
        print(f"error: {exc.messages}", file=sys.stderr)
        return 1

    async def work(mongo: Mongo, hasher: PasswordHasher) -> int:
        owner = await users_repository.get_user_by_username(mongo.db, args.owner)
        if owner is None:
            print(f"error: no user {args.owner!r}", file=sys.stderr)
            return 1
        client, secret = await auth_clients.create_client(await _context(mongo, hasher), owner["_id"], data)
        print(f"client_id: {client['_id']}")
        if secret:
            print(f"client_secret: {secret}  (shown once; it is stored hashed)")
        return 0

    return with_database(_with_hasher(work))(args, settings)


def cmd_clients_registration_token(args: argparse.Namespace, settings: Settings) -> int:
    for name, value in (("--expires-in", args.expires_in), ("--max-uses", args.max_uses)):
        if value is not None and value < 1:
            print(f"error: {name} must be at least 1", file=sys.stderr)
            return 1

    async def work(mongo: Mongo, hasher: PasswordHasher) -> int:
        owner_id = None
        if args.owner:
            owner = await users_repository.get_user_by_username(mongo.db, args.owner)
            if owner is None:
                print(f"error: no user {args.owner!r}", file=sys.stderr)
                return 1
            owner_id = owner["_id"]
        context = await _context(mongo, hasher)
        token, _ = await auth_registration.create_initial_token(context, owner_id, args.expires_in, args.max_uses)
        print(token)
        return 0

    return with_database(_with_hasher(work))(args, settings)


def cmd_openapi(args: argparse.Namespace, settings: Settings) -> int:
    document = orjson.loads(create_app(settings)[keys.openapi])
    sys.stdout.write(orjson.dumps(document, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode() + "\n")
    return 0
