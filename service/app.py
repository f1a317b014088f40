"""The composition root: the root app (OAuth2 endpoints, health) and the /api/v1 sub-app, the platform's
state, and each domain's one `setup(root, api)`. The only module that knows every domain."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp_jinja2
import jinja2
from aiohttp import web, web_response
from aiohttp.typedefs import Handler

from service import audit, auth, fixtures, idempotency, keys, mail, metrics, openapi, teams, tracing, users
from service.auth.bearer import bearer_middleware
from service.cache import PRINCIPAL_CACHE, PrincipalCache
from service.config import SETTINGS, Settings
from service.cors import cors_middleware
from service.db import MONGO, STORAGE, Client, Database, Mongo, Storage, shared_secret
from service.errors import problem_middleware, problem_response
from service.log import AccessLogger, harden_aiohttp_logging
from service.metrics import metrics_middleware
from service.middlewares import edge_middleware, harden_error_pages, validation_middleware
from service.pagination import CURSORS, Cursors
from service.passwords import HASHER, hasher_ctx
from service.ratelimit import (
    API_RATE_LIMITER,
    RATE_LIMITER,
    TokenBuckets,
    advertise_rate_limits,
    oauth_rate_limit_middleware,
)

log = logging.getLogger(__name__)


SERVER_HEADER = "service"
# How the app is served, by `serve` and by the tests alike. Request bodies are decoded from their
# Content-Encoding by service.bodies, where a body that is not what it claims is a clean 400; aiohttp's
# own decoding fails inside its parser, outside every middleware.
# max_line_size: an OpenID Connect request line carries an ID token (id_token_hint) beside state and the
# rest, percent-encoded; aiohttp's 8190 bytes refuse some that browsers send (they allow far more).
SERVE_OPTIONS: dict[str, Any] = {"access_log_class": AccessLogger, "auto_decompress": False, "max_line_size": 32768}


def _prepare_process() -> None:
    """Process-wide settings the app needs: say nothing of versions, and log nothing a client sent when
    aiohttp cannot parse a request.

    aiohttp has no setting for its `Server` header (`Python/3.x aiohttp/3.x`), and its answers to
    malformed requests never reach the app's middlewares or signals, so the module default is the one
    place that covers every response."""
    web_response.SERVER_SOFTWARE = SERVER_HEADER  # type: ignore[attr-defined]  # a module default aiohttp does not export
    harden_aiohttp_logging()
    harden_error_pages()


def create_app(settings: Settings, *, mongo_client: Client | None = None) -> web.Application:
    """Build the service. Pass `mongo_client` to run on a database the caller owns (tests)."""
    _prepare_process()
    # Order matters: the edge (request id, security headers, body limit) wraps everything so even error
    # responses carry them and oversize bodies are refused first; the problem middleware turns every
    # failure below it into problem+json.
    # Tracing (when configured) opens the server span first, so everything below is inside it.
    # Metrics (when METRICS_PORT is set) see every answer, problem responses included, by route template.
    # The per-address limit on the OAuth2 endpoints comes next, before any work is done for them.
    app = web.Application(
        middlewares=[
            *tracing.middlewares(),
            edge_middleware,
            *([metrics_middleware] if settings.metrics_port is not None else []),
            cors_middleware,
            problem_middleware,
            oauth_rate_limit_middleware,
        ],
        client_max_size=settings.max_body_size,
    )
    app[SETTINGS] = settings
    # HTML (the sign-in page, the Swagger UI index) from service/templates, autoescaped; sub-apps find it too.
    aiohttp_jinja2.setup(
        app, loader=jinja2.PackageLoader("service", "templates"), autoescape=True, default_helpers=False
    )
    app[RATE_LIMITER] = TokenBuckets(settings.oauth_rate_limit, settings.oauth_rate_burst)
    app[API_RATE_LIMITER] = TokenBuckets(settings.api_rate_limit, settings.api_rate_burst, name="api")
    app.on_response_prepare.append(advertise_rate_limits)
    app[MONGO] = Mongo(settings, client=mongo_client, owns_client=mongo_client is None)
    app[STORAGE] = Storage()
    app[STORAGE].declare(migrations=[("0001_backfill_versions", _backfill_versions)])
    app[STORAGE].declare(mail.INDEXES)
    app[STORAGE].declare(idempotency.INDEXES)
    app[PRINCIPAL_CACHE] = PrincipalCache()
    app.cleanup_ctx.append(_mongo_ctx)
    app.cleanup_ctx.append(_metrics_listener_ctx)
    app.cleanup_ctx.append(hasher_ctx)
    app.cleanup_ctx.append(mail.sender_ctx)  # after the database: it stops before the database closes
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get(openapi.API_PREFIX, openapi.swagger_ui)
    # The API: authentication runs before validation, so an anonymous caller never gets a body parsed.
    # The bearer middleware also spends the caller's per-token budget, before anything costs a database
    # operation; Idempotency-Key needs the caller too, and replays before validation would parse the body again.
    api = web.Application(
        middlewares=[
            bearer_middleware,
            idempotency.idempotency_middleware,
            validation_middleware,
        ]
    )
    # Each domain adds its state, cleanup contexts, routes, indexes, migrations and scopes. Order: a
    # domain after those it builds on (auth lists every domain's scopes in its OAuth2 scheme).
    for domain in (audit, users, teams, auth):
        domain.setup(app, api)
    if settings.mongodb_url is None:
        app.cleanup_ctx.append(_first_run_fixtures_ctx)
    openapi.add_docs_routes(api)
    _add_slashless_aliases(api)
    openapi.finish_docs(api)
    app[keys.openapi] = api[keys.openapi]
    app.add_subapp(openapi.API_PREFIX, api)
    return app


async def upgrade(settings: Settings, db: Database) -> list[str]:
    """Indexes and pending migrations of every domain, for `db upgrade` and `serve --workers`' master."""
    return await create_app(settings)[STORAGE].upgrade(db)


async def _backfill_versions(db: Database) -> None:
    """Documents written before versioning get version 1, so If-Match works on them."""
    for collection in ("users", "teams", "oauth2_clients"):
        await db[collection].update_many({"version": {"$exists": False}}, {"$set": {"version": 1}})


def _add_slashless_aliases(api: web.Application) -> None:
    """`/users` answers like `/users/`: same handler, not a redirect, and not listed twice in the docs."""
    for resource in list(api.router.resources()):
        path = resource.canonical
        if not path.endswith("/") or path == "/":
            continue
        for route in list(resource):
            alias = _undocumented(route.handler)
            api.router.add_route(route.method, path.rstrip("/"), alias)


def _undocumented(handler: Handler) -> Handler:
    async def alias(request: web.Request) -> web.StreamResponse:
        return await handler(request)

    for attribute in ("__schemas__", "__requirement__", "__rate_limited__"):  # not __apispec__: one documented route
        if hasattr(handler, attribute):
            setattr(alias, attribute, getattr(handler, attribute))
    return alias


async def _mongo_ctx(app: web.Application) -> AsyncIterator[None]:
    mongo = app[MONGO]
    await mongo.connect()
    try:
        await app[STORAGE].upgrade(mongo.db)
        app[CURSORS] = Cursors(await shared_secret(mongo.db, "list-cursors"))
        yield
    finally:
        await mongo.close()


async def _first_run_fixtures_ctx(app: web.Application) -> AsyncIterator[None]:
    """On the embedded database's first run, load the development data so `make run` can sign in at once."""
    created = await fixtures.load_on_first_run(app[MONGO].db, app[HASHER])
    if created:
        log.info("first run: loaded fixtures %s", created)
    yield


async def _metrics_listener_ctx(app: web.Application) -> AsyncIterator[None]:
    """Serve `/metrics` on METRICS_PORT (unset: no listener) for this process; a worker under
    `serve --workers` only records, and its master serves the sum of all workers there."""
    settings = app[SETTINGS]
    if settings.metrics_port is None or metrics.MULTIPROCESS:
        yield
        return
    listener = web.Application()
    listener.router.add_get("/metrics", metrics.serve_metrics)
    runner = web.AppRunner(listener, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, settings.host, settings.metrics_port).start()
    yield
    await runner.cleanup()


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready when the database answers a ping within a second."""
    mongo = request.app[MONGO]
    try:
        await asyncio.wait_for(mongo.ping(), timeout=1.0)
    except Exception as exc:  # noqa: BLE001 - any failure means "not ready"; the reason goes to the log
        log.warning("readiness check failed: %s", type(exc).__name__)
        return problem_response(503, "The database is not reachable.", headers={"Retry-After": "5"})
    return web.json_response({"status": "ok", "database": "ok"})
