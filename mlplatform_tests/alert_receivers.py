"""Receivers a test starts on 127.0.0.1: an HTTP server that keeps every JSON body posted to it (a webhook, a Slack
incoming webhook) and a minimal SMTP server that keeps every message (enough of RFC 5321 for ``smtplib``)."""

from __future__ import annotations

import base64
import email
import email.policy
import json
import socket
import socketserver
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Received:
    """What a receiver got, in order."""

    bodies: list[tuple[str, dict]] = field(default_factory=list)  # (path, JSON body)
    messages: list[Message] = field(default_factory=list)
    logins: list[str] = field(default_factory=list)  # "user:password" of each AUTH PLAIN
    lock: threading.Lock = field(default_factory=threading.Lock)

    def posted_to(self, path: str) -> list[dict]:
        with self.lock:
            return [body for where, body in self.bodies if where == path]


def free_port() -> int:
    """A port nothing listens on (yet): connecting to it is refused."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def http_receiver(port: int = 0) -> Iterator[tuple[str, Received]]:
    """(base URL, what it received): answers 200 to every POST with a JSON body, 400 to anything else."""
    received = Received()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's name)
            length = int(self.headers.get("Content-Length", 0))
            try:
                body = json.loads(self.rfile.read(length))
            except ValueError:
                self.send_response(400)
                self.end_headers()
                return
            with received.lock:
                received.bodies.append((self.path, body))
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", received
    finally:
        server.shutdown()
        server.server_close()


class _SmtpHandler(socketserver.StreamRequestHandler):
    """One SMTP session: EHLO/HELO, MAIL, RCPT, DATA (dot-unstuffed), RSET, NOOP, QUIT."""

    def reply(self, line: str) -> None:
        self.wfile.write(line.encode() + b"\r\n")

    def handle(self) -> None:
        self.reply("220 localhost test SMTP")
        while True:
            line = self.rfile.readline()
            if not line:
                return
            command = line.decode(errors="replace").strip()
            verb = command.split(" ", 1)[0].upper()
            if verb == "EHLO":
                self.reply("250-localhost")
                self.reply("250-AUTH PLAIN")
                self.reply("250 8BITMIME")
            elif verb == "AUTH" and command.upper().startswith("AUTH PLAIN "):
                _, user, password = base64.b64decode(command.split()[2]).decode().split("\0")
                with self.server.received.lock:  # type: ignore[attr-defined]
                    self.server.received.logins.append(f"{user}:{password}")  # type: ignore[attr-defined]
                self.reply("235 2.7.0 authenticated")
            elif verb in ("HELO", "MAIL", "RCPT", "RSET", "NOOP"):
                self.reply("250 OK")
            elif verb == "DATA":
                self.reply("354 end with <CRLF>.<CRLF>")
                lines = []
                while True:
                    data = self.rfile.readline()
                    if not data or data in (b".\r\n", b".\n"):
                        break
                    lines.append(data[1:] if data.startswith(b"..") else data)
                with self.server.received.lock:  # type: ignore[attr-defined]
                    self.server.received.messages.append(email.message_from_bytes(b"".join(lines), policy=email.policy.default))  # type: ignore[attr-defined]
                self.reply("250 OK queued")
            elif verb == "QUIT":
                self.reply("221 bye")
                return
            else:
                self.reply("502 command not implemented")


@contextmanager
def smtp_receiver() -> Iterator[tuple[int, Received]]:
    """(port, what it received): a local SMTP server that accepts every message."""
    received = Received()
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _SmtpHandler)
    server.daemon_threads = True
    server.received = received  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], received
    finally:
        server.shutdown()
        server.server_close()
