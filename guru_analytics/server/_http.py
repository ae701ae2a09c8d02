"""The local server's HTTP shell: sockets in, ``App.handle`` under its lock, one send out.

A lean request parser (the stdlib's runs the email parser on every request and costs more
than answering one), TCP_NODELAY and one ``send`` per response, so loopback benchmarks
measure the client, not this shell. It knows nothing about the API.
"""

from __future__ import annotations

import http.server
import logging
import socket
import threading
import time
from collections.abc import Callable
from email.utils import formatdate
from http import HTTPStatus
from typing import Any

from ._app import App
from ._exchange import Request, Response, msg_response

logger = logging.getLogger("guru_analytics.server")

_MAX_BODY = 1_000_000
_DATE_CACHE: list[Any] = [0, ""]


def _http_date() -> str:
    """The ``Date`` header, formatted once per second (it is on every answer)."""
    now = int(time.time())
    if _DATE_CACHE[0] != now:
        _DATE_CACHE[:] = [now, formatdate(now, usegmt=True)]
    return str(_DATE_CACHE[1])


class _Headers(dict[str, str]):
    """Request headers keyed by lower-case name: ``get`` is case-insensitive."""

    def get(self, name: str, default: Any = None) -> Any:
        return super().get(name.lower(), default)


class HTTPServer(http.server.ThreadingHTTPServer):
    """Tracks open connections so ``stop()`` can cut keep-alive clients off, as a real
    server going away would (otherwise a pooled connection keeps being answered)."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], app: App, sleep: Callable[[float], None]) -> None:
        super().__init__(address, _Handler)
        self.app = app
        self.sleep = sleep
        self.open_connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()

    def close_connections(self) -> None:
        with self.connections_lock:
            conns, self.open_connections = list(self.open_connections), set()
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                logger.debug("LocalGurubase: connection already closed at stop")


class _Handler(http.server.BaseHTTPRequestHandler):
    """Reads one request, asks the app for an answer, writes it in one send."""

    protocol_version = "HTTP/1.1"
    server_version = "LocalGurubase/0.1"
    timeout = 120
    server: HTTPServer
    raw_requestline: bytes  # set by the stdlib's handle_one_request before parse_request
    request_headers: _Headers  # set by parse_request (the stdlib's ``headers`` is left unset)

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.server.connections_lock:
            self.server.open_connections.add(self.connection)

    def finish(self) -> None:
        with self.server.connections_lock:
            self.server.open_connections.discard(self.connection)
        super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s " + format, self.address_string(), *args)

    def parse_request(self) -> bool:
        """Request line, headers, keep-alive rules (a lean replacement for the stdlib's)."""
        self.command = ""
        self.request_version = self.default_request_version
        self.close_connection = True
        line = str(self.raw_requestline, "iso-8859-1").rstrip("\r\n")
        self.requestline = line
        words = line.split()
        if not words:
            return False
        if len(words) != 3 or not words[2].startswith("HTTP/"):
            self.send_error(HTTPStatus.BAD_REQUEST, "Bad request syntax")
            return False
        command, path, version = words
        try:
            major, minor = (int(x) for x in version[5:].split(".", 1))
        except ValueError:
            self.send_error(HTTPStatus.BAD_REQUEST, "Bad request version")
            return False
        if major != 1:
            self.send_error(HTTPStatus.HTTP_VERSION_NOT_SUPPORTED, "Invalid HTTP version")
            return False
        self.command, self.path, self.request_version = command, path, version
        headers = _Headers()
        for _ in range(101):
            raw = self.rfile.readline(65537)
            if len(raw) > 65536:
                self.send_error(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "Line too long")
                return False
            if raw in (b"\r\n", b"\n", b""):
                break
            name, sep, value = raw.decode("iso-8859-1").partition(":")
            if not sep:
                self.send_error(HTTPStatus.BAD_REQUEST, "Bad header line")
                return False
            headers[name.strip().lower()] = value.strip()
        else:
            self.send_error(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "Too many headers")
            return False
        self.request_headers = headers
        connection = headers.get("connection", "").lower()
        self.close_connection = connection == "close" or (minor == 0 and connection != "keep-alive")
        return True

    def do_POST(self) -> None:
        self._serve("POST")

    def do_GET(self) -> None:
        self._serve("GET")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def do_PATCH(self) -> None:
        self._serve("PATCH")

    def do_HEAD(self) -> None:
        self._serve("HEAD")

    def do_OPTIONS(self) -> None:
        self._serve("OPTIONS")

    def _read_body(self) -> bytes | None:
        if self.request_headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = self.request_headers.get("Content-Length")
        if not length:
            return None
        n = int(length)
        if n < 0 or n > _MAX_BODY:
            raise ValueError(f"Content-Length {n} out of range")
        return self.rfile.read(n)

    def _serve(self, method: str) -> None:
        try:
            raw = self._read_body()
        except ValueError:
            self.close_connection = True
            self._write(msg_response(400, "Malformed request body"), method)
            return
        request = Request(method, self.path, self.request_headers, raw, self.client_address[0])
        answer = self.server.app.handle(request)
        if answer.delay:
            self.server.sleep(answer.delay)
        if answer.drop:
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                logger.debug("LocalGurubase: socket already closed while dropping")
            return
        self._write(answer, method)

    def _write(self, answer: Response, method: str) -> None:
        lines = [
            f"HTTP/1.1 {answer.status} {HTTPStatus(answer.status).phrase}",
            f"Server: {self.server_version}",
            f"Date: {_http_date()}",
            f"Content-Type: {answer.content_type}",
            f"Content-Length: {len(answer.body)}",
            *(f"{k}: {v}" for k, v in answer.headers),
        ]
        if self.close_connection:
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        try:
            self.wfile.write(head if method == "HEAD" else head + answer.body)
        except OSError:
            self.close_connection = True
            logger.debug("LocalGurubase: client went away before the answer was sent")
