"""Real local receivers for the notification tests: an HTTP webhook and an SMTP server.

The webhook is stdlib ``http.server`` in a thread, counting every request it is
sent (it can be stopped and started again on the same port, to play an outage);
the mail server is aiosmtpd, keeping every message it accepted.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from sitetwin.services import free_port
from twin.models import Flag, Site
from twin.store import Store, open_store

T0 = datetime(2026, 11, 20, 4, 0, tzinfo=UTC)  # 12:00 in Asia/Shanghai


class Webhook:
    """An HTTP endpoint that records each POSTed JSON body; ``down()``/``up()`` for outages."""

    def __init__(self) -> None:
        self.port = free_port()
        self.received: list[tuple[str, dict[str, Any]]] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    def url(self, path: str = "hook") -> str:
        return f"json://127.0.0.1:{self.port}/{path}"

    def up(self) -> None:
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with hook._lock:
                    hook.received.append((self.path, json.loads(body)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def down(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def titles(self, path: str = "hook") -> list[str]:
        with self._lock:
            return [m["title"] for p, m in self.received if p == f"/{path}"]

    def bodies(self, path: str = "hook") -> list[str]:
        with self._lock:
            return [m["message"] for p, m in self.received if p == f"/{path}"]


class Mailbox:
    """An aiosmtpd server on a free port that keeps every message it accepted."""

    def __init__(self) -> None:
        from aiosmtpd.controller import Controller

        self.messages: list[Any] = []
        box = self

        class Handler:
            async def handle_DATA(self, server, session, envelope):
                box.messages.append(envelope)
                return "250 OK"

        self.port = free_port()
        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port)
        self.controller.start()

    @property
    def url(self) -> str:
        return (f"mailto://127.0.0.1:{self.port}?from=noc@example.com&to=duty@example.com"
                "&mode=insecure")

    def subjects(self) -> list[str]:
        from email import message_from_bytes
        from email.header import decode_header, make_header

        return [str(make_header(decode_header(message_from_bytes(m.content)["Subject"])))
                for m in self.messages]

    def stop(self) -> None:
        self.controller.stop()


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    hook = Webhook()
    hook.up()
    yield hook
    hook.down()


@pytest.fixture
def mailbox() -> Iterator[Mailbox]:
    box = Mailbox()
    yield box
    box.stop()


@pytest.fixture
def store(twin_url: str) -> Iterator[Store]:
    s = open_store(twin_url)
    with s.session() as ses:
        for site_id, county in (("S1", "Xinjin"), ("S2", "Pixian")):
            ses.add(Site(site_id=site_id, name=f"Site {site_id}", lat=30.6, lon=104.0, county=county,
                         kind="macro", supply="direct", region="Sichuan",
                         customer_class="industrial", state="on_air"))
    yield s
    s.close()


def add_flag(store: Store, *, site: str = "S1", kind: str = "site_offline", severity: str = "warning",
             status: str = "open", at: datetime = T0) -> int:
    with store.session() as s:
        f = Flag(kind=kind, rule=kind, site_id=site, severity=severity, status=status,
                 opened_at=at, updated_at=at, window_start=at, window_end=at,
                 summary=f"{site} {kind}", evidence={}, dedup_key=f"{kind}:{site}",
                 resolved_at=at if status == "resolved" else None)
        s.add(f)
        s.flush()
        return f.id


def set_flag(store: Store, flag_id: int, **values: Any) -> None:
    with store.session() as s:
        f = s.get(Flag, flag_id)
        for k, v in values.items():
            setattr(f, k, v)
