"""A real SMTP server for the email tests (aiosmtpd on a free port of 127.0.0.1), with
Django's SMTP backend pointed at it, and helpers to read what arrived."""

from __future__ import annotations

import contextlib
import email
import email.policy
import io
import socket
import threading
from collections.abc import Iterator
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller
from pypdf import PdfReader


class Mailbox:
    """The server's handler: stores every message it accepts; `answer` makes it refuse."""

    def __init__(self) -> None:
        self.received: list[EmailMessage] = []
        self.envelopes: list[tuple[str, list[str]]] = []
        self.answer: str | None = None  # e.g. "421 try later", "550 no such user"
        self._lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.answer:
            return self.answer
        message = email.message_from_bytes(envelope.original_content, policy=email.policy.default)
        with self._lock:
            self.received.append(message)  # type: ignore[arg-type]
            self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
        return "250 Message accepted for delivery"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class SmtpServer:
    """Start, stop (the server down) and start again on the same port."""

    def __init__(self) -> None:
        self.mailbox = Mailbox()
        self.port = free_port()
        self._controller: Controller | None = None

    def start(self) -> None:
        self._controller = Controller(self.mailbox, hostname="127.0.0.1", port=self.port)
        self._controller.start()

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    @property
    def received(self) -> list[EmailMessage]:
        return self.mailbox.received


@contextlib.contextmanager
def smtp_server(settings: Any) -> Iterator[SmtpServer]:
    server = SmtpServer()
    server.start()
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", server.port
    settings.EMAIL_HOST_USER = settings.EMAIL_HOST_PASSWORD = ""
    settings.EMAIL_USE_TLS = settings.EMAIL_USE_SSL = False
    settings.EMAIL_TIMEOUT = 5
    settings.DEFAULT_FROM_EMAIL = "Clinic Cloud billing <billing@vendor.test>"
    try:
        yield server
    finally:
        server.stop()


def text_of(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("plain",))
    assert part is not None
    return str(part.get_content())


def html_of(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("html",))
    assert part is not None
    return str(part.get_content())


def pdfs_of(message: EmailMessage) -> dict[str, str]:
    """Each PDF attachment's file name → its text (pypdf)."""
    found = {}
    for part in message.iter_attachments():
        if part.get_content_type() == "application/pdf":
            reader = PdfReader(io.BytesIO(part.get_content()))
            found[str(part.get_filename())] = "\n".join(page.extract_text() or "" for page in reader.pages)
    return found


def everything_of(message: EmailMessage) -> str:
    """Headers, both bodies and the attachments' text: what could leak."""
    headers = "\n".join(f"{k}: {v}" for k, v in message.items())
    return "\n".join([headers, text_of(message), html_of(message), *pdfs_of(message).values()])
