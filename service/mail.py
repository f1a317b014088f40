"""Mail that is never lost: a request writes the message to the `outbox` collection (never waiting on
SMTP), and a background sender per process delivers it (see `sender_ctx`).

Every message has a plain-text and an HTML part rendered from `templates/mail/<name>.txt` (its first
line is `Subject: ...`) and `<name>.html` (autoescaped). Addresses and subjects with CR or LF are
refused (no header injection).

The sender claims one message at a time (service/outbox.py: one conditional write, with a lease), so
processes sharing the database never send a message twice, and a process that dies holding a claim
leaves the message to the next one after the lease. Outcomes: `sent` (kept KEEP_DONE for
inspection), back to `queued` with jittered exponential backoff, or `failed` after MAIL_MAX_ATTEMPTS
(or a permanent refusal), logged and counted. Without SMTP_URL (development) each message becomes an
`.eml` file and its links are logged."""

from __future__ import annotations

import asyncio
import functools
import logging
import re
from collections.abc import AsyncIterator, Mapping
from datetime import datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime, parseaddr
from pathlib import Path
from typing import Any

import aiosmtplib
import jinja2
from aiohttp import web
from bson import ObjectId

from service import outbox
from service.config import SETTINGS, Settings, SettingsError, SmtpServer, smtp_server
from service.context import Context
from service.db import MONGO, Database, aware, utcnow
from service.metrics import MAIL_DEFERRED, MAIL_FAILED, MAIL_SENT

log = logging.getLogger(__name__)

INDEXES = outbox.indexes("outbox")
KEEP_DONE = outbox.KEEP_DONE  # how long a sent or failed message stays in the outbox for inspection
MAX_RETRY_DELAY = 3600.0  # seconds: the backoff stops doubling here

TEMPLATES = Path(__file__).parent / "templates" / "mail"
_TEXT = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=False)  # noqa: S701  # nosec B701 - plain text, never HTML
_HTML = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True)


class MailError(ValueError):
    """A message that must not be sent as asked (a header with a line break)."""


def render(template: str, context: Mapping[str, Any]) -> tuple[str, str, str]:
    """(subject, text, html) of `template` with `context`. A line break a value puts in the subject is
    refused (MailError), not split into the body."""
    rendered = _TEXT.get_template(f"{template}.txt").render(context)
    subject = _subject_template(template).render(context)
    if not subject.startswith("Subject: "):
        raise ValueError(f"mail template {template}.txt must start with 'Subject: '")
    _header_safe(subject)
    text = rendered.removeprefix(subject)
    html = _HTML.get_template(f"{template}.html").render(context)
    return subject.removeprefix("Subject: ").strip(), text.lstrip("\n"), html


@functools.lru_cache(maxsize=64)
def _subject_template(template: str) -> jinja2.Template:
    """The first line of `<template>.txt` alone, so what a value renders into it is seen whole."""
    source, _, _ = _TEXT.loader.get_source(_TEXT, f"{template}.txt")  # type: ignore[union-attr]  # set above
    return _TEXT.from_string(source.partition("\n")[0])


def _header_safe(value: str) -> str:
    if "\r" in value or "\n" in value:
        raise MailError("A mail header must not contain a line break.")
    return value


async def send(ctx: Context, to: str, template: str, context: Mapping[str, Any]) -> ObjectId:
    """Queue a message for `to`: rendered now, delivered by the background sender. Links in `context`
    should be built from `ctx.issuer`."""
    subject, text, html = render(template, context)
    return await enqueue(ctx.db, to, subject, text, html)


DECOY_KEEP = timedelta(minutes=1)  # a void message stays this long before the TTL index takes it


async def send_decoy(ctx: Context, template: str, context: Mapping[str, Any]) -> None:
    """The work of `send` for a message that must not go out (a reset for an address without an account):
    rendered, and stored as a `void` document of the same size that no sender claims, without a
    recipient, gone with the TTL index. A real write, so the request costs what a real one costs."""
    subject, text, html = render(template, context)
    await _store(ctx.db, "", subject, text, html, state="void")


async def enqueue(db: Database, to: str, subject: str, text: str, html: str) -> ObjectId:
    """Queue a rendered message; this process's sender wakes at once, others find it when they poll."""
    message_id = await _store(db, to, subject, text, html, state="queued")
    outbox.wake(db, Sender)
    return message_id


async def _store(db: Database, to: str, subject: str, text: str, html: str, state: str) -> ObjectId:
    _header_safe(to)
    _header_safe(subject)
    now, message_id = utcnow(), ObjectId()
    document = {
        "_id": message_id,
        "to": to,
        "subject": subject,
        "text": text,
        "html": html,
        "state": state,
        "attempts": 0,
        "next_attempt_at": now,
        "created": now,
    }
    if state == "void":
        document["expires_at"] = now + DECOY_KEEP
    await db.outbox.insert_one(document)
    return message_id


def check_delivery(settings: Settings) -> None:
    """A real deployment without SMTP_URL would keep its mail in files nobody reads: refuse to start."""
    real_database = settings.mongodb_url is not None and not settings.mongomock
    if real_database and settings.smtp_url is None and not settings.mail_dev:
        raise SettingsError(
            "SMTP_URL is not set: mail would only be written to files; set SMTP_URL "
            "(smtp://, smtps:// or smtp+starttls://) or MAIL_DEV=true for development delivery"
        )


# --- the background sender -----------------------------------------------------------------------


class Sender(outbox.Worker):
    """Delivers the outbox of one database, one message at a time, until `stop`."""

    name = "mail sender"

    def __init__(self, db: Database, settings: Settings) -> None:
        super().__init__(db, settings.mail_poll_seconds)
        self.settings = settings
        self.server: SmtpServer | None = smtp_server(settings.smtp_url) if settings.smtp_url else None
        # A delivery never outlives its claim: the SMTP dialogue gets `deadline`, the lease more.
        self.deadline = 4 * settings.smtp_timeout
        self.outbox = outbox.Outbox(db, "outbox", lease=timedelta(seconds=self.deadline + 30))

    async def drain(self) -> int:
        """Deliver every message that is due; how many were claimed."""
        connection = _Connection(self.server, self.settings) if self.server is not None else None
        claimed = 0
        try:
            while not self.stopping and (message := await self.outbox.claim()) is not None:
                claimed += 1
                await self._deliver(message, connection)
        finally:
            if connection is not None:
                await connection.close()
        return claimed

    async def _deliver(self, message: dict[str, Any], connection: _Connection | None) -> None:
        attempt = int(message["attempts"])
        if attempt > self.settings.mail_max_attempts:  # only claims that expired (crashes) get here
            await self._give_up(message, "no attempt left (earlier claims expired)")
            return
        try:
            mime = self.mime(message)
        except ValueError as exc:  # a document that cannot be a message: retrying cannot help
            await self._give_up(message, f"not a valid message: {exc}")
            return
        try:
            async with asyncio.timeout(self.deadline):
                if connection is not None:
                    await connection.send(mime)
                else:
                    await self._write_file(message, mime)
        except asyncio.CancelledError:
            await asyncio.shield(self.outbox.release(message))
            raise
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            reason = outbox.describe(exc)
            if _permanent(exc) or attempt >= self.settings.mail_max_attempts:
                await self._give_up(message, reason)
            else:
                await self._defer(message, reason)
            return
        done = await self.outbox.finish(message, "sent", keep_error=True)  # why it was late, for inspection
        MAIL_SENT.inc()
        if not done:
            log.warning("mail %s was sent after its claim expired (another process may send it too)", message["_id"])

    def mime(self, message: dict[str, Any]) -> EmailMessage:
        """The message as MIME: multipart/alternative, text then HTML; a Message-ID that stays the same
        over retries (a receiver can tell a repeat)."""
        mime = EmailMessage()
        mime["From"] = self.settings.mail_from
        mime["To"] = message["to"]
        mime["Subject"] = message["subject"]
        mime["Date"] = format_datetime(aware(message["created"]))
        mime["Message-ID"] = f"<{message['_id']}@{_domain(self.settings.mail_from)}>"
        mime.set_content(message["text"])
        mime.add_alternative(message["html"], subtype="html")
        return mime

    async def _write_file(self, message: dict[str, Any], mime: EmailMessage) -> None:
        """Development delivery: an .eml file, and the links on the log (never in production)."""
        directory = self.settings.mail_directory
        created: datetime = aware(message["created"])
        path = directory / f"{created:%Y%m%dT%H%M%S}-{message['_id']}.eml"

        def write() -> None:
            directory.mkdir(parents=True, exist_ok=True)
            path.write_bytes(bytes(mime))

        await asyncio.to_thread(write)
        links = _LINK.findall(message["text"])
        log.info(
            "development mail to %s, %r: %s%s",
            message["to"],
            message["subject"],
            path,
            "".join(f"\n  link: {link}" for link in links),
        )

    async def _defer(self, message: dict[str, Any], reason: str) -> None:
        attempt = int(message["attempts"])
        delay = outbox.backoff(self.settings.mail_retry_seconds, attempt, MAX_RETRY_DELAY)
        await self.outbox.defer(message, delay, reason)
        MAIL_DEFERRED.inc()
        log.info("mail %s: attempt %d failed (%s); next in %.0f s", message["_id"], attempt, reason, delay)

    async def _give_up(self, message: dict[str, Any], reason: str) -> None:
        await self.outbox.give_up(message, reason)
        MAIL_FAILED.inc()
        log.warning("mail %s failed after %d attempts: %s", message["_id"], message["attempts"], reason)


class _Connection:
    """One SMTP session for a batch of messages, opened on the first and reopened after a failure."""

    def __init__(self, server: SmtpServer, settings: Settings) -> None:
        self.server, self.settings = server, settings
        self.smtp: aiosmtplib.SMTP | None = None

    async def send(self, mime: EmailMessage) -> None:
        if self.smtp is None or not self.smtp.is_connected:
            self.smtp = aiosmtplib.SMTP(
                hostname=self.server.host,
                port=self.server.port,
                username=self.server.username,
                password=self.server.password,
                use_tls=self.server.implicit_tls,
                start_tls=self.server.starttls,  # smtp://: plain, as the URL says
                timeout=self.settings.smtp_timeout,
            )
            try:
                await self.smtp.connect()
            except BaseException:
                self.smtp = None
                raise
        try:
            await self.smtp.send_message(mime)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        smtp, self.smtp = self.smtp, None
        if smtp is None or not smtp.is_connected:
            return
        try:
            await asyncio.wait_for(smtp.quit(), self.settings.smtp_timeout)
        except (aiosmtplib.SMTPException, OSError, TimeoutError):
            smtp.close()


_LINK = re.compile(r"https?://[^\s<>\"']+")


def _domain(address: str) -> str:
    return parseaddr(address)[1].rpartition("@")[2] or "localhost"


def _permanent(exc: BaseException) -> bool:
    """The server refused the recipient or the message for good (5xx): another try gets the same answer."""
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        return all(refusal.code >= 500 for refusal in exc.recipients)
    return isinstance(exc, aiosmtplib.SMTPRecipientRefused | aiosmtplib.SMTPDataError) and exc.code >= 500


MAIL_SENDER: web.AppKey[Sender] = web.AppKey("service.mail.sender", Sender)


async def sender_ctx(app: web.Application) -> AsyncIterator[None]:
    """The composition root's cleanup context: the process's sender runs while the app does."""
    settings = app[SETTINGS]
    check_delivery(settings)
    sender = Sender(app[MONGO].db, settings)
    app[MAIL_SENDER] = sender
    sender.start()
    yield
    await sender.stop()
