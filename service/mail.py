"""Mail that is never lost: a request writes the message to the `outbox` collection (never waiting on
SMTP), and a background sender per process delivers it (see `sender_ctx`).

Every message has a plain-text and an HTML part rendered from `templates/mail/<name>.txt` (its first
line is `Subject: ...`) and `<name>.html` (autoescaped). Addresses and subjects with CR or LF are
refused (no header injection)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

import jinja2
from bson import ObjectId
from pymongo import ASCENDING, IndexModel

from service.context import Context
from service.db import Database, utcnow

INDEXES: dict[str, list[IndexModel]] = {
    "outbox": [
        IndexModel([("state", ASCENDING), ("next_attempt_at", ASCENDING)]),
        IndexModel("expires_at", expireAfterSeconds=0),  # set once a message is sent or has failed
    ]
}
KEEP_DONE = timedelta(days=7)  # how long a sent or failed message stays in the outbox for inspection

_TEXT = jinja2.Environment(loader=jinja2.PackageLoader("service", "templates/mail"), autoescape=False)  # noqa: S701  # nosec B701 - plain text, never HTML
_HTML = jinja2.Environment(loader=jinja2.PackageLoader("service", "templates/mail"), autoescape=True)


class MailError(ValueError):
    """A message that must not be sent as asked (a header with a line break)."""


def render(template: str, context: Mapping[str, Any]) -> tuple[str, str, str]:
    """(subject, text, html) of `template` with `context`."""
    first, _, text = _TEXT.get_template(f"{template}.txt").render(context).partition("\n")
    if not first.startswith("Subject: "):
        raise ValueError(f"mail template {template}.txt must start with 'Subject: '")
    html = _HTML.get_template(f"{template}.html").render(context)
    return first.removeprefix("Subject: ").strip(), text.lstrip("\n"), html


def _header_safe(value: str) -> str:
    if "\r" in value or "\n" in value:
        raise MailError("A mail header must not contain a line break.")
    return value


async def send(ctx: Context, to: str, template: str, context: Mapping[str, Any]) -> ObjectId:
    """Queue a message for `to`: rendered now, delivered by the background sender. Links in `context`
    should be built from `ctx.issuer`."""
    subject, text, html = render(template, context)
    return await enqueue(ctx.db, _header_safe(to), _header_safe(subject), text, html)


async def enqueue(db: Database, to: str, subject: str, text: str, html: str) -> ObjectId:
    now, message_id = utcnow(), ObjectId()
    document = {
        "_id": message_id,
        "to": to,
        "subject": subject,
        "text": text,
        "html": html,
        "state": "queued",
        "attempts": 0,
        "next_attempt_at": now,
        "created": now,
    }
    await db.outbox.insert_one(document)
    return message_id
