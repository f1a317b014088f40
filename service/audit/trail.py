"""The security audit trail: who signed in as whom, when, from where; tokens, roles, clients.

Events go to the `audit_events` collection (expiring after AUDIT_TTL) and to the log, and never hold a
secret. Writing one never fails, nor slows, the request that caused it: the write runs in the
background, and an event that cannot be stored (database outage) is counted and logged, not raised.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import orjson
from aiohttp import web
from bson import ObjectId
from pymongo import ASCENDING, DESCENDING, IndexModel

from service import metrics
from service.config import SETTINGS
from service.context import Context
from service.db import MONGO, Database, utcnow
from service.log import request_id_var
from service.pagination import Page, PageRequest, fetch_page

log = logging.getLogger("service.audit")

_BARE = re.compile(r'[^\s="]+')
EVENTS = (
    "signin.success",
    "signin.failure",
    "signin.throttled",
    "token.issued",
    "token.revoked",
    "token.refresh_reuse_detected",
    "token.refresh_grace_reuse",
    "token.code_reuse_detected",
    "user.password_changed",
    "user.email_changed",
    "user.role_changed",
    "user.activated",
    "user.deactivated",
    "client.created",
    "client.updated",
    "client.secret_rotated",
    "client.deleted",
    "client.registered",
    "client.registration_updated",
    "client.registration_token_rotated",
    "client.registration_deleted",
    "registration_token.created",
    "consent.revoked",
    "device.authorization_started",
    "device.wrong_user_code",
    "device.approved",
    "device.denied",
    "mfa.totp_enrolled",
    "mfa.totp_confirmed",
    "mfa.totp_removed",
    "mfa.code_rejected",
    "mfa.recovery_code_used",
    "mfa.recovery_codes_regenerated",
    "email.verification_sent",
    "email.verification_throttled",
    "email.verified",
    "email.verification_refused",
    "email.change_notice_sent",
    "password.reset_requested",
    "password.reset_throttled",
    "password.reset_completed",
    "password.reset_refused",
)

INDEXES: dict[str, list[IndexModel]] = {
    "audit_events": [
        IndexModel([("created", DESCENDING), ("_id", DESCENDING)]),
        IndexModel([("user_ids", ASCENDING), ("created", DESCENDING), ("_id", DESCENDING)]),
        IndexModel([("event", ASCENDING), ("created", DESCENDING), ("_id", DESCENDING)]),
        IndexModel("expires_at", expireAfterSeconds=0),
    ]
}


@dataclass
class Auditor:
    """Where events go, and the writes still under way (finished at shutdown).

    Events recorded close together (a sign-in and the token it issues; many requests under load) are
    stored with one `insert_many`: the trail costs the database one write per batch, not per event."""

    db: Database
    ttl: int
    pending: set[asyncio.Task[None]] = field(default_factory=set)
    dropped: int = 0
    _batch: list[dict[str, Any]] = field(default_factory=list)

    def record(self, event: str, fields: dict[str, Any]) -> None:
        document = {
            "_id": ObjectId(),
            "event": event,
            "created": utcnow(),
            **fields,
            "user_ids": sorted({str(v) for v in (fields.get("actor_id"), fields.get("subject_id")) if v}),
        }
        document["expires_at"] = document["created"] + timedelta(seconds=self.ttl)
        _log(event, document)
        self._batch.append(document)
        if len(self._batch) == 1:  # the first of a batch schedules the write that takes them all
            task = asyncio.get_running_loop().create_task(self._store())
            self.pending.add(task)
            task.add_done_callback(self.pending.discard)

    async def flush(self) -> None:
        """Wait until every event recorded so far is stored (or counted as dropped)."""
        while self.pending:
            await asyncio.gather(*self.pending)

    async def _store(self) -> None:
        await asyncio.sleep(0.005)  # let the rest of this request's events (and others') join the batch
        batch, self._batch = self._batch, []
        try:
            await self.db.audit_events.insert_many(batch, ordered=False)
        except Exception as exc:  # noqa: BLE001 - an audit write must never fail the request behind it
            self.dropped += len(batch)
            metrics.AUDIT_DROPPED.inc(len(batch))
            log.warning("%d audit events not stored: %s", len(batch), type(exc).__name__)


@dataclass(frozen=True, slots=True)
class _Scope:
    auditor: Auditor
    client_address: str


_scope: contextvars.ContextVar[_Scope | None] = contextvars.ContextVar("audit_scope", default=None)


def bind(auditor: Auditor, client_address: str) -> contextvars.Token[_Scope | None]:
    """Called per request by the edge middleware: events recorded while handling it go to `auditor`."""
    return _scope.set(_Scope(auditor, client_address))


def unbind(token: contextvars.Token[_Scope | None]) -> None:
    _scope.reset(token)


def record(
    event: str, *, actor_id: Any = None, subject_id: Any = None, client_id: str | None = None, **details: Any
) -> None:
    """Record a security event for the current request (outside a request, e.g. the CLI: the log only)."""
    if event not in EVENTS:
        raise ValueError(f"unknown audit event {event!r}")
    scope = _scope.get()
    fields = {
        "actor_id": str(actor_id) if actor_id else None,
        "subject_id": str(subject_id) if subject_id else None,
        "client_id": client_id,
        "request_id": request_id_var.get(),
        "client_address": scope.client_address if scope else None,
        **details,
    }
    metrics.observe_audit_event(event, fields)
    if scope is None:
        _log(event, fields)
        return
    scope.auditor.record(event, fields)


def _log(event: str, document: dict[str, Any]) -> None:
    fields = {
        key: value.isoformat() if hasattr(value, "isoformat") else str(value) if isinstance(value, ObjectId) else value
        for key, value in document.items()
        if key not in ("expires_at", "user_ids", "event") and value is not None
    }
    summary = " ".join(f"{key}={_quoted(value)}" for key, value in fields.items() if key not in ("_id", "created"))
    log.info("audit %s %s", event, summary, extra={"fields": {"audit": {"event": event, **fields}}})


def _quoted(value: Any) -> str:
    """A value of a text `key=value` line: JSON-quoted when it has a space, `=` or a quote, so a username
    like `x client_id=evil` cannot forge a field."""
    text = str(value)
    return text if _BARE.fullmatch(text) else orjson.dumps(text).decode()


async def auditor_ctx(app: web.Application) -> AsyncIterator[None]:
    app[AUDITOR] = Auditor(app[MONGO].db, app[SETTINGS].audit_ttl)
    yield
    pending = app[AUDITOR].pending
    if pending:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*pending, return_exceptions=True), timeout=5)


async def list_events(ctx: Context, filters: Mapping[str, Any], request: PageRequest) -> Page:
    """Newest first; `filters` may name a user (as actor or subject, `user_id`) and an `event`."""
    query: dict[str, Any] = {}
    if filters.get("user_id"):
        query["user_ids"] = filters["user_id"]
    if filters.get("event"):
        query["event"] = filters["event"]
    return await fetch_page(ctx.db, "audit_events", query, request, ctx.cursors, "audit", descending=True)


AUDITOR: web.AppKey[Auditor] = web.AppKey("service.auditor", Auditor)
