"""The application factory: the root app (OAuth2 endpoints, health) and the /api/v1 sub-app."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp_jinja2
import jinja2
from aiohttp import web, web_response
from aiohttp.typedefs import Handler

from service import docs, fixtures, keys, metrics, tracing
from service.audit import auditor_ctx
from service.audit import routes as audit_routes
from service.auth import openapi as auth_openapi
from service.auth import routes as auth_routes
from service.auth.principals import PrincipalCache, principal_cache_ctx
from service.auth.signin import HeldAttempts
from service.auth.signing import KeyRing
from service.config import Settings
from service.cors import cors_middleware
from service.db import Client, Mongo, shared_secret
from service.domains import upgrade
from service.errors import problem_middleware, problem_response
from service.log import AccessLogger, harden_aiohttp_logging
from service.metrics import metrics_middleware
from service.middlewares import edge_middleware, harden_error_pages, validation_middleware
from service.pagination import Cursors
from service.passwords import hasher_ctx
from service.ratelimit import TokenBuckets, oauth_rate_limit_middleware
from service.security import auth_middleware
from service.teams import routes as teams_routes
from service.users import routes as users_routes

log = logging.getLogger(__name__)


SERVER_HEADER = "service"
# How the app is served, by `serve` and by the tests alike. Request bodies are decoded from their
# Content-Encoding by service.bodies, where a body that is not what it claims is a clean 400; aiohttp's
# own decoding fails inside its parser, outside every middleware.
SERVE_OPTIONS: dict[str, Any] = {"access_log_class": AccessLogger, "auto_decompress": False}


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
    app[keys.settings] = settings
    # HTML (the sign-in page, the Swagger UI index) from service/templates, autoescaped; sub-apps find it too.
    aiohttp_jinja2.setup(
        app, loader=jinja2.PackageLoader("service", "templates"), autoescape=True, default_helpers=False
    )
    app[keys.rate_limiter] = TokenBuckets(settings.oauth_rate_limit, settings.oauth_rate_burst)
    app[keys.mongo] = Mongo(settings, client=mongo_client, owns_client=mongo_client is None)
    app.cleanup_ctx.append(_mongo_ctx)
    app.cleanup_ctx.append(auditor_ctx)
    app.cleanup_ctx.append(_metrics_listener_ctx)
    app.cleanup_ctx.append(hasher_ctx)
    app[keys.principal_cache] = PrincipalCache()
    app[keys.held_attempts] = HeldAttempts()
    app.cleanup_ctx.append(principal_cache_ctx)
    if settings.mongodb_url is None:
        app.cleanup_ctx.append(_first_run_fixtures_ctx)
    app.add_routes(auth_routes.oauth_routes)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get(docs.API_PREFIX, docs.swagger_ui)
    api = _create_api()
    app[keys.openapi] = api[keys.openapi]
    app.add_subapp(docs.API_PREFIX, api)
    return app


def _create_api() -> web.Application:
    # Authentication runs before validation, so an anonymous caller never gets a body parsed.
    api = web.Application(middlewares=[auth_middleware, validation_middleware])
    for routes in (auth_routes.routes, users_routes.routes, teams_routes.routes, audit_routes.routes):
        api.router.add_routes(routes)
    docs.add_docs_routes(api)
    _add_slashless_aliases(api)
    docs.finish_docs(
        api,
        {
            "paths": auth_openapi.PATHS,
            "schemas": auth_openapi.SCHEMAS,
            "securitySchemes": auth_openapi.SECURITY_SCHEMES,
        },
    )
    return api


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
    mongo = app[keys.mongo]
    await mongo.connect()
    try:
        await upgrade(mongo.db)
        app[keys.cursors] = Cursors(await shared_secret(mongo.db, "list-cursors"))
        app[keys.keyring] = KeyRing(mongo.db)
        yield
    finally:
        await mongo.close()


async def _first_run_fixtures_ctx(app: web.Application) -> AsyncIterator[None]:
    """On the embedded database's first run, load the development data so `make run` can sign in at once."""
    created = await fixtures.load_on_first_run(app[keys.mongo].db, app[keys.hasher])
    if created:
        log.info("first run: loaded fixtures %s", created)
    yield


async def _metrics_listener_ctx(app: web.Application) -> AsyncIterator[None]:
    """Serve `/metrics` on METRICS_PORT (unset: no listener) for this process; a worker under
    `serve --workers` only records, and its master serves the sum of all workers there."""
    settings = app[keys.settings]
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
    mongo = request.app[keys.mongo]
    try:
        await asyncio.wait_for(mongo.ping(), timeout=1.0)
    except Exception as exc:  # noqa: BLE001 - any failure means "not ready"; the reason goes to the log
        log.warning("readiness check failed: %s", type(exc).__name__)
        return problem_response(503, "The database is not reachable.", headers={"Retry-After": "5"})
    return web.json_response({"status": "ok", "database": "ok"})
