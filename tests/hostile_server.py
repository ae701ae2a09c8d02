"""A hostile HTTP server for tests: every answer is scripted by the test.

Written from the API contract (``/work/shared/gurubase-api.md``) and nothing else: it does
not import ``guru_analytics.server`` (nor anything of the package), so a bug cannot hide on
both sides of the wire. It listens on 127.0.0.1, runs each request through the test's
``script(request) -> Reply`` and writes exactly what the reply says: any status, headers and
bytes, optionally trickled byte by byte, gzip-compressed, or raw JSON text the test wrote
by hand (lone surrogates, 100,000 nested brackets, out-of-range timestamps, ...).
"""

from __future__ import annotations

import gzip
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

GURU = "hostile"
KEY = "hostile-secret-key-0123456789"
T0 = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


@dataclass(frozen=True)
class Request:
    """One request as the server saw it (``n`` counts from 1 over the server's life)."""

    n: int
    method: str
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class Reply:
    """What to write back. ``body`` bytes are sent as they are; a dict/list is JSON-encoded.

    ``trickle``: seconds between single bytes of the body (a slow-loris answer);
    ``gzip``: compress the body and say so; ``delay``: seconds before anything is written.
    """

    status: int = 200
    body: bytes | dict[str, Any] | list[Any] | str = b""
    headers: dict[str, str] = field(default_factory=dict)
    trickle: float = 0.0
    gzip: bool = False
    delay: float = 0.0


Script = Callable[[Request], Reply]


def session(i: int, last_used: datetime, **over: Any) -> dict[str, Any]:
    """A List Sessions item as the contract describes it (``last_used`` DRF style)."""
    item = {
        "id": f"00000000-0000-4000-8000-{i:012d}",
        "last_used": last_used.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "guru_type_slug": GURU,
        "guru_type_name": "Hostile",
        "root_question_name": f"question {i}",
        "root_question_slug": f"question-{i}",
        "root_question_link": f"https://gurubase.io/g/{GURU}/question-{i}",
    }
    item.update(over)
    return item


def page(items: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    """A List Sessions answer with every item in ``older`` (grouping is the client's worry)."""
    return {"today": [], "last_week": [], "older": items, "has_more": has_more}


def listing(
    n: int, page_size: int = 30, *, step: timedelta = timedelta(minutes=7)
) -> list[dict[str, Any]]:
    """n sessions, newest first, one ``step`` apart."""
    return [session(i, T0 - i * step) for i in range(n)]


def paged(items: list[dict[str, Any]], page_num: int, page_size: int = 30) -> dict[str, Any]:
    """Page ``page_num`` of ``items`` the way the contract's offset paging cuts it."""
    lo = (page_num - 1) * page_size
    return page(items[lo : lo + page_size], len(items) > page_num * page_size)


class HostileServer:
    """``with HostileServer(script) as srv:`` serves ``script`` at ``srv.base_url``."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass  # quiet: the tests read srv.requests

            def do_POST(self) -> None:
                outer._answer(self)

            do_GET = do_POST

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/api/v1"

    def __enter__(self) -> HostileServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def list_pages(self) -> list[int]:
        """The ``page_num`` of every List Sessions request so far, in order."""
        with self._lock:
            return [
                r.body.get("page_num")
                for r in self.requests
                if isinstance(r.body, dict) and r.path.endswith("/sessions/")
            ]

    def _answer(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length else b""
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = raw
        with self._lock:
            req = Request(len(self.requests) + 1, h.command, h.path, dict(h.headers), body)
            self.requests.append(req)
        reply = self.script(req)
        data = reply.body
        headers = dict(reply.headers)
        if isinstance(data, dict | list):
            data = json.dumps(data).encode()
            headers.setdefault("Content-Type", "application/json")
        elif isinstance(data, str):
            data = data.encode("utf-8", "surrogatepass")
            headers.setdefault("Content-Type", "application/json")
        if reply.gzip:
            data = gzip.compress(data, compresslevel=9)
            headers["Content-Encoding"] = "gzip"
        headers.setdefault("Content-Length", str(len(data)))
        headers.setdefault("Connection", "close")
        if reply.delay:
            time.sleep(reply.delay)
        try:
            h.send_response(reply.status)
            for name, value in headers.items():
                h.send_header(name, value)
            h.end_headers()
            if reply.trickle:
                for chunk in _bytes(data):
                    h.wfile.write(chunk)
                    h.wfile.flush()
                    time.sleep(reply.trickle)
            else:
                h.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up on us: that is what some tests want
        h.close_connection = headers.get("Connection", "").lower() == "close"


def _bytes(data: bytes) -> Iterator[bytes]:
    for i in range(len(data)):
        yield data[i : i + 1]
