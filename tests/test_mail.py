"""The outbox and its background sender, against a real SMTP server (aiosmtpd) on both backends:
every message arrives exactly once, or ends `failed` and counted; never retried forever."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import subprocess
import sys
from datetime import timedelta
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any

import jinja2
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, unused_port
from bson import ObjectId
from prometheus_client import REGISTRY

from service import mail, outbox
from service.app import create_app
from service.config import Settings, SettingsError, smtp_server
from service.context import Context
from service.db import create_client, utcnow

ROOT = Path(__file__).resolve().parents[1]
LINK = "https://id.example.com/auth/password/reset?token=s3cret-t0ken"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Small timings: a retry within a tenth of a second, polls twenty times a second."""
    return dataclasses.replace(settings, mail_poll_seconds=0.05, mail_retry_seconds=0.05, mail_max_attempts=4)


@pytest.fixture(autouse=True)
def probe_template(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A mail template of the tests' own, beside the service's."""
    folder = tmp_path / "templates"
    folder.mkdir()
    (folder / "probe.txt").write_text("Subject: Hello {{ name }}\n\nHi {{ name }},\n\nfollow {{ link }}\n")
    (folder / "probe.html").write_text('<p>Hi {{ name }},</p>\n<p><a href="{{ link }}">reset</a></p>\n')
    for environment in (mail._TEXT, mail._HTML):
        assert environment.loader is not None
        loaders = [jinja2.FileSystemLoader(folder), environment.loader]
        monkeypatch.setattr(environment, "loader", jinja2.ChoiceLoader(loaders))
    mail._subject_template.cache_clear()
    return "probe"


def context_of(client: TestClient) -> Context:
    return Context.of_app(client.app, "http://testserver")


def counted(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


async def wait_counted(name: str, value: float, timeout: float = 5.0) -> float:
    """The worker counts an outcome just after storing it, so a test that saw the state may run ahead of the count."""
    for _ in range(int(timeout / 0.02)):
        if counted(name) >= value:
            break
        await asyncio.sleep(0.02)
    return counted(name)


async def wait_state(db: Any, message_id: ObjectId, state: str, timeout: float = 10.0) -> dict[str, Any]:
    for _ in range(int(timeout / 0.02)):
        document = await db.outbox.find_one({"_id": message_id})
        if document is not None and document["state"] == state:
            return dict(document)
        await asyncio.sleep(0.02)
    raise AssertionError(f"{message_id} is {document and document['state']}, not {state}")


@pytest.mark.smtp
async def test_a_queued_message_arrives_once_with_both_parts_and_its_headers(client, db, smtp_server, settings) -> None:
    sent_before = counted("mail_sent_total")
    message_id = await mail.send(
        context_of(client), "eve@example.com", "probe", {"name": "<b>Eve</b> & co", "link": LINK}
    )
    [message] = await smtp_server.wait_for(1)
    received = smtp_server.received[0]
    assert received.sender == "no-reply@localhost"
    assert received.recipients == ["eve@example.com"]
    assert message["From"] == settings.mail_from
    assert message["To"] == "eve@example.com"
    assert message["Subject"] == "Hello <b>Eve</b> & co"
    assert message["Message-ID"] == f"<{message_id}@localhost>"
    assert message["Date"]
    assert message.get_content_type() == "multipart/alternative"
    text, html = message.iter_parts()
    assert text.get_content_type() == "text/plain"
    assert "Hi <b>Eve</b> & co," in text.get_content()
    assert LINK in text.get_content()
    # HTML from a value is text in the HTML part, never markup.
    assert html.get_content_type() == "text/html"
    assert "Hi &lt;b&gt;Eve&lt;/b&gt; &amp; co," in html.get_content()
    assert "<b>" not in html.get_content()
    document = await wait_state(db, message_id, "sent")
    assert document["attempts"] == 1
    assert "claimed_until" not in document
    assert document["expires_at"] - document["sent_at"] == mail.KEEP_DONE
    assert await wait_counted("mail_sent_total", sent_before + 1) == sent_before + 1
    await asyncio.sleep(0.3)  # several polls later: still once
    assert len(smtp_server.messages) == 1


async def test_line_breaks_in_a_recipient_or_subject_are_refused(client, db) -> None:
    ctx = context_of(client)
    with pytest.raises(mail.MailError):
        await mail.send(ctx, "eve@example.com\r\nBcc: all@example.com", "probe", {"name": "Eve", "link": LINK})
    with pytest.raises(mail.MailError):
        await mail.send(ctx, "eve@example.com\nBcc: all@example.com", "probe", {"name": "Eve", "link": LINK})
    with pytest.raises(mail.MailError):  # a value that would end the subject line early
        await mail.send(ctx, "eve@example.com", "probe", {"name": "Eve\r\nBcc: all@example.com", "link": LINK})
    with pytest.raises(mail.MailError):
        await mail.enqueue(db, "eve@example.com", "Hi\nBcc: all@example.com", "text", "<p>html</p>")
    assert await db.outbox.count_documents({}) == 0


def test_values_are_escaped_in_the_html_part_only() -> None:
    subject, text, html = mail.render("probe", {"name": '<script>alert("x")</script>', "link": LINK + "&x=1"})
    assert subject == 'Hello <script>alert("x")</script>'
    assert text.startswith('Hi <script>alert("x")</script>,')
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in html
    assert "<script>" not in html
    assert 'href="https://id.example.com/auth/password/reset?token=s3cret-t0ken&amp;x=1"' in html


@pytest.mark.smtp
async def test_an_smtp_outage_delays_a_message_that_then_arrives_exactly_once(client, db, smtp_server) -> None:
    smtp_server.stop()
    message_id = await mail.send(context_of(client), "eve@example.com", "probe", {"name": "Eve", "link": LINK})
    for _ in range(500):  # two attempts failed: the server is away
        document = await db.outbox.find_one({"_id": message_id})
        if document["attempts"] >= 2 and document["state"] == "queued":
            break
        await asyncio.sleep(0.01)
    assert document["state"] == "queued"
    assert "SMTP" in document["last_error"]
    assert document["next_attempt_at"] > document["created"]
    smtp_server.start()
    [message] = await smtp_server.wait_for(1)
    assert message["Message-ID"] == f"<{message_id}@localhost>"
    sent = await wait_state(db, message_id, "sent")
    assert 2 < sent["attempts"] <= 4
    assert "SMTP" in sent["last_error"]  # why it was late stays for inspection
    await asyncio.sleep(0.3)
    assert len(smtp_server.messages) == 1


@pytest.mark.smtp
async def test_a_message_that_keeps_failing_ends_failed_and_counted(client, db, smtp_server, caplog) -> None:
    smtp_server.answer = "451 4.3.0 Try again later"
    failed_before, deferred_before = counted("mail_failed_total"), counted("mail_deferred_total")
    with caplog.at_level(logging.INFO, logger="service.mail"):
        message_id = await mail.send(context_of(client), "eve@example.com", "probe", {"name": "Eve", "link": LINK})
        document = await wait_state(db, message_id, "failed")
        assert document["attempts"] == 4  # MAIL_MAX_ATTEMPTS, then no more
        assert "451" in document["last_error"]
        assert document["expires_at"] - document["failed_at"] == mail.KEEP_DONE
        assert await wait_counted("mail_failed_total", failed_before + 1) == failed_before + 1
        assert await wait_counted("mail_deferred_total", deferred_before + 3) == deferred_before + 3
        await asyncio.sleep(0.5)  # never retried again
    assert (await db.outbox.find_one({"_id": message_id}))["attempts"] == 4
    warnings = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert str(message_id) in warnings[0].getMessage()
    logged = caplog.text
    assert "s3cret-t0ken" not in logged  # neither the body nor its links
    assert "follow" not in logged


@pytest.mark.smtp
async def test_a_permanent_refusal_fails_at_once(client, db, smtp_server) -> None:
    smtp_server.answer = "550 5.1.1 No such mailbox"
    message_id = await mail.send(context_of(client), "nobody@example.com", "probe", {"name": "X", "link": LINK})
    document = await wait_state(db, message_id, "failed")
    assert document["attempts"] == 1
    assert "550" in document["last_error"]


@pytest.mark.smtp
async def test_a_claim_whose_process_crashed_is_delivered_by_another_after_its_lease(
    client, db, smtp_server, settings
) -> None:
    now = utcnow()
    crashed, still_held = ObjectId(), ObjectId()
    for message_id, claimed_until in ((crashed, now - timedelta(seconds=1)), (still_held, now + timedelta(hours=1))):
        await db.outbox.insert_one(
            {
                "_id": message_id,
                "to": "eve@example.com",
                "subject": "Left behind",
                "text": "text",
                "html": "<p>html</p>",
                "state": "sending",
                "attempts": 1,
                "claimed_until": claimed_until,
                "next_attempt_at": now,
                "created": now,
            }
        )
    [message] = await smtp_server.wait_for(1)  # found by the poll: nobody woke the sender
    assert message["Message-ID"] == f"<{crashed}@localhost>"
    assert (await wait_state(db, crashed, "sent"))["attempts"] == 2
    await asyncio.sleep(0.3)
    held = await db.outbox.find_one({"_id": still_held})
    assert held["state"] == "sending"  # a live claim is left alone
    assert held["attempts"] == 1
    assert len(smtp_server.messages) == 1


@pytest.mark.smtp
async def test_two_processes_racing_over_twenty_messages_send_each_once(
    backend: str, client, db, smtp_server, settings, mongo_client
) -> None:
    # A second app on the same database: on the real server with its own connection, as another
    # process would have; mongomock lives in this process, so it shares the client.
    other_client = mongo_client if backend == "mongomock" else create_client(str(settings.mongodb_url), 3000)
    other = web.AppRunner(create_app(settings, mongo_client=other_client))
    await other.setup()
    try:
        now = utcnow()
        ids = [ObjectId() for _ in range(20)]
        await db.outbox.insert_many(
            [
                {
                    "_id": message_id,
                    "to": f"user{number}@example.com",
                    "subject": f"Message {number}",
                    "text": "text",
                    "html": "<p>html</p>",
                    "state": "queued",
                    "attempts": 0,
                    "next_attempt_at": now,
                    "created": now,
                }
                for number, message_id in enumerate(ids)
            ]
        )
        outbox.wake(db, mail.Sender)  # both senders at once
        messages = await smtp_server.wait_for(20)
        await asyncio.sleep(0.3)
        assert len(smtp_server.messages) == 20
        assert sorted(message["Message-ID"] for message in messages) == sorted(f"<{i}@localhost>" for i in ids)
        documents = await db.outbox.find({}).to_list(None)
        assert {document["state"] for document in documents} == {"sent"}
        assert {document["attempts"] for document in documents} == {1}
    finally:
        await other.cleanup()
        if other_client is not mongo_client:
            other_client.close()


async def test_development_delivery_writes_eml_files_and_logs_links(client, db, settings, caplog) -> None:
    assert settings.smtp_url is None
    with caplog.at_level(logging.INFO, logger="service.mail"):
        message_id = await mail.send(context_of(client), "eve@example.com", "probe", {"name": "Eve", "link": LINK})
        await wait_state(db, message_id, "sent")
    [path] = list(settings.mail_directory.glob("*.eml"))
    assert path.name.endswith(f"-{message_id}.eml")
    message = message_from_bytes(path.read_bytes(), policy=policy.default)
    assert message["To"] == "eve@example.com"
    assert message["Subject"] == "Hello Eve"
    assert [part.get_content_type() for part in message.iter_parts()] == ["text/plain", "text/html"]
    assert f"link: {LINK}" in caplog.text
    assert str(path) in caplog.text


async def test_an_idle_sender_asks_the_database_once_a_poll(backend: str, client, db, settings) -> None:
    if backend != "secantus":
        pytest.skip("opcounters are the real server's (--backend=secantus)")

    async def operations() -> int:
        status = await db.client.admin.command("serverStatus")
        return sum(int(status["opcounters"][name]) for name in ("insert", "query", "update", "delete", "command"))

    before = await operations()
    await asyncio.sleep(1.0)  # twenty polls of 0.05 s
    spent = await operations() - before - 1
    assert 10 <= spent <= 25, spent  # one conditional write a poll, nothing else


def test_a_real_database_without_smtp_refuses_to_start_unless_told() -> None:
    production = Settings(mongodb_url="mongodb://db.example.com:27017/")
    with pytest.raises(SettingsError, match="SMTP_URL is not set") as refused:
        mail.check_delivery(production)
    assert "\n" not in str(refused.value)
    mail.check_delivery(dataclasses.replace(production, mail_dev=True))
    mail.check_delivery(dataclasses.replace(production, smtp_url="smtp+starttls://u:p@smtp.example.com"))
    mail.check_delivery(Settings())  # the embedded database is development
    mail.check_delivery(Settings(mongodb_url="mongomock://"))


async def test_the_app_refuses_to_start_on_a_real_database_without_smtp(backend: str, settings) -> None:
    if backend != "secantus":
        pytest.skip("a real database (--backend=secantus)")
    runner = web.AppRunner(create_app(dataclasses.replace(settings, mail_dev=False)))
    with pytest.raises(SettingsError, match="SMTP_URL is not set"):
        await runner.setup()
    await runner.cleanup()


def test_serve_refuses_to_start_on_a_real_database_without_smtp(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "MONGODB_URL": f"mongodb://127.0.0.1:{unused_port()}/", "PORT": "0"}
    done = subprocess.run(
        [sys.executable, "-m", "service", "serve"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "error: SMTP_URL is not set: mail would only be written to files; set SMTP_URL "
        "(smtp://, smtps:// or smtp+starttls://) or MAIL_DEV=true for development delivery"
    ]


def test_smtp_url_shapes_and_the_password_never_shown() -> None:
    secret = "hunter2-pw"
    for url, expected in (
        ("smtp://mail:1025", ("mail", 1025, None, False, False)),
        ("smtps://u%40x.org:" + secret + "@smtp.example.com", ("smtp.example.com", 465, "u@x.org", True, False)),
        ("smtp+starttls://u:" + secret + "@smtp.example.com", ("smtp.example.com", 587, "u", False, True)),
    ):
        server = Settings.from_env({"SMTP_URL": url, "SMTP_TIMEOUT": "5"})
        parsed = smtp_server(str(server.smtp_url))
        assert (parsed.host, parsed.port, parsed.username, parsed.implicit_tls, parsed.starttls) == expected
        assert secret not in repr(server)
        assert secret not in repr(parsed)
    for bad in (
        "http://mail:25",
        "smtp://",
        f"smtp://u:{secret}@mail:99999",
        f"smtp://u:{secret}@mail/path",
        f"smtp://u:{secret}@mail?x=1",
        "smtp://mail:25 extra",
    ):
        with pytest.raises(SettingsError) as refused:
            Settings.from_env({"SMTP_URL": bad})
        assert secret not in str(refused.value)
        assert "SMTP_URL" in str(refused.value)
    with pytest.raises(SettingsError, match="MAIL_FROM"):
        Settings.from_env({"MAIL_FROM": "no-reply@example.com\r\nBcc: all@example.com"})
    with pytest.raises(SettingsError, match="MAIL_FROM"):
        Settings.from_env({"MAIL_FROM": "not an address"})
    assert (
        Settings.from_env({"MAIL_FROM": "Example <no-reply@example.com>"}).mail_from == "Example <no-reply@example.com>"
    )
