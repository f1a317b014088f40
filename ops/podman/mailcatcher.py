"""A mail catcher for the local stack where Mailpit cannot be pulled: an SMTP server that keeps every
message it is given (in memory, the newest MAX_MESSAGES) and delivers none, and a web inbox.

SMTP on MAIL_SMTP_PORT (1025) and HTTP on MAIL_WEB_PORT (8025), like Mailpit, with the part of
Mailpit's API the stack's checks read:

    GET /                                   the inbox, newest first (HTML)
    GET /view/<id>                          one message: headers, text and HTML parts (shown as text)
    GET /api/v1/messages                    {"total", "count", "messages": [{"ID", "MessageID", "From", "To", "Subject", "Created", "Size"}]}
    GET /api/v1/message/<id>                one message with its "Text" and "HTML" parts
    GET /api/v1/message/<id>/raw            the message as received (RFC 5322)
    DELETE /api/v1/messages                 empty the inbox
    GET /livez, /readyz                     200 while it runs

Only the standard library and Debian's python3-aiosmtpd."""

from __future__ import annotations

import collections
import email.policy
import html
import json
import os
import signal
import threading
import uuid
from datetime import UTC, datetime
from email.message import EmailMessage
from email.parser import BytesParser
from email.utils import getaddresses
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from aiosmtpd.controller import Controller

MAX_MESSAGES = int(os.environ.get("MAIL_MAX_MESSAGES", "1000"))


class Inbox:
    """What the SMTP server received; the HTTP threads read it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.messages: collections.OrderedDict[str, dict[str, Any]] = collections.OrderedDict()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # aiosmtpd's hook name
        raw: bytes = envelope.original_content
        parsed = BytesParser(policy=email.policy.default).parsebytes(raw)
        item = {
            "ID": uuid.uuid4().hex,
            "raw": raw,
            "parsed": parsed,
            "envelope_from": envelope.mail_from,
            "envelope_to": list(envelope.rcpt_tos),
            "Created": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        }
        with self.lock:
            self.messages[item["ID"]] = item
            while len(self.messages) > MAX_MESSAGES:
                self.messages.popitem(last=False)
        print(f"received {item['ID']} for {', '.join(item['envelope_to'])}: {parsed['Subject']!s}", flush=True)
        return "250 2.0.0 Message accepted"

    def newest_first(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(reversed(self.messages.values()))

    def get(self, message_id: str) -> dict[str, Any] | None:
        with self.lock:
            return self.messages.get(message_id)

    def clear(self) -> None:
        with self.lock:
            self.messages.clear()


def addresses(value: object) -> list[dict[str, str]]:
    return [{"Name": name, "Address": address} for name, address in getaddresses([str(value)]) if address]


def summary(item: dict[str, Any]) -> dict[str, Any]:
    parsed: EmailMessage = item["parsed"]
    return {
        "ID": item["ID"],
        "MessageID": str(parsed.get("Message-ID", "")).strip("<>"),
        "From": (addresses(parsed.get("From", "")) or [{"Name": "", "Address": item["envelope_from"]}])[0],
        "To": addresses(parsed.get("To", "")),
        "Subject": str(parsed.get("Subject", "")),
        "Created": item["Created"],
        "Size": len(item["raw"]),
    }


def part(parsed: EmailMessage, subtype: str) -> str:
    body = parsed.get_body(preferencelist=(subtype,))
    return str(body.get_content()) if body is not None else ""


def handler_for(inbox: Inbox) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "mailcatcher"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'")
            self.end_headers()
            self.wfile.write(body)

        def json(self, value: object, status: int = 200) -> None:
            self.send(status, json.dumps(value).encode(), "application/json")

        def page(self, title: str, content: str) -> None:
            document = (
                f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
                "<style>body{font-family:sans-serif;margin:2em}td,th{padding:.3em .8em;text-align:left}"
                "pre{white-space:pre-wrap;background:#f4f4f4;padding:1em}</style></head>"
                f"<body><h1>{html.escape(title)}</h1>{content}</body></html>"
            )
            self.send(200, document.encode(), "text/html; charset=utf-8")

        def do_GET(self) -> None:  # http.server's hook name
            path = self.path.split("?", 1)[0]
            parts = [segment for segment in path.split("/") if segment]
            if path in ("/livez", "/readyz"):
                self.send(200, b"ok", "text/plain")
            elif path == "/":
                rows = "".join(
                    f"<tr><td>{html.escape(m['Created'])}</td>"
                    f"<td>{html.escape(', '.join(a['Address'] for a in m['To']))}</td>"
                    f"<td><a href='/view/{m['ID']}'>{html.escape(m['Subject'] or '(no subject)')}</a></td>"
                    f"<td><a href='/api/v1/message/{m['ID']}/raw'>raw</a></td></tr>"
                    for m in map(summary, inbox.newest_first())
                )
                table = "<table><tr><th>received</th><th>to</th><th>subject</th><th></th></tr>" + rows + "</table>"
                self.page("Inbox", table if rows else "<p>No mail yet.</p>")
            elif path == "/api/v1/messages":
                messages = [summary(item) for item in inbox.newest_first()]
                self.json({"total": len(messages), "count": len(messages), "start": 0, "messages": messages})
            elif len(parts) in (2, 4, 5) and parts[:3] in (["view", parts[1]], ["api", "v1", "message"]):
                item = inbox.get(parts[1] if parts[0] == "view" else parts[3] if len(parts) > 3 else "")
                if item is None:
                    self.send(404, b"no such message", "text/plain")
                elif parts[0] == "view":
                    parsed = item["parsed"]
                    headers = "\n".join(f"{name}: {value}" for name, value in parsed.items())
                    self.page(
                        str(parsed.get("Subject", "(no subject)")),
                        f"<pre>{html.escape(headers)}</pre><h2>Text</h2><pre>{html.escape(part(parsed, 'plain'))}</pre>"
                        f"<h2>HTML (source)</h2><pre>{html.escape(part(parsed, 'html'))}</pre>"
                        f"<p><a href='/api/v1/message/{item['ID']}/raw'>raw</a> · <a href='/'>inbox</a></p>",
                    )
                elif len(parts) == 5 and parts[4] == "raw":
                    self.send(200, item["raw"], "text/plain; charset=utf-8")
                elif len(parts) == 4:
                    parsed = item["parsed"]
                    detail = summary(item) | {"Text": part(parsed, "plain"), "HTML": part(parsed, "html")}
                    self.json(detail | {"Date": str(parsed.get("Date", ""))})
                else:
                    self.send(404, b"not found", "text/plain")
            else:
                self.send(404, b"not found", "text/plain")

        def do_DELETE(self) -> None:  # http.server's hook name
            if self.path == "/api/v1/messages":
                inbox.clear()
                self.send(200, b"ok", "text/plain")
            else:
                self.send(404, b"not found", "text/plain")

    return Handler


def main() -> None:
    host = os.environ.get("MAIL_HOST", "0.0.0.0")  # noqa: S104  # nosec B104 - a container's own interface
    smtp_port = int(os.environ.get("MAIL_SMTP_PORT", "1025"))
    web_port = int(os.environ.get("MAIL_WEB_PORT", "8025"))
    inbox = Inbox()
    smtp = Controller(inbox, hostname=host, port=smtp_port)
    smtp.start()
    web = ThreadingHTTPServer((host, web_port), handler_for(inbox))
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=web.shutdown).start())
    print(f"mail catcher: SMTP on {host}:{smtp_port}, inbox on http://{host}:{web_port}/", flush=True)
    try:
        web.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        smtp.stop()
        web.server_close()


if __name__ == "__main__":
    main()
