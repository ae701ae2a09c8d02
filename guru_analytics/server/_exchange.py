"""One HTTP exchange of the local server as plain values: ``Request`` in, ``Response`` out.

The pure handler (``_app``) and the socket shell (``_http``) meet here, so the handler can be
called directly in tests, without a socket.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

HTML_500 = (
    '<!doctype html>\n<html lang="en">\n<head>\n  <title>Server Error (500)</title>\n</head>\n'
    "<body>\n  <h1>Server Error (500)</h1><p></p>\n</body>\n</html>\n"
)
HTML_404 = (
    '<!doctype html>\n<html lang="en">\n<head>\n  <title>Not Found</title>\n</head>\n'
    "<body>\n  <h1>Not Found</h1><p>The requested resource was not found on this server.</p>\n"
    "</body>\n</html>\n"
)


@dataclass(frozen=True)
class Request:
    """One request as the shell read it. ``headers`` are keyed by lower-case name; ``body`` is
    the raw bytes (None when there was none); ``client`` is the peer address (the anonymous
    rate-limit bucket of bad-key calls)."""

    method: str
    path: str
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes | None = None
    client: str = "127.0.0.1"

    def header(self, name: str) -> str | None:
        """A header's value, stripped (None when absent); the name is case-insensitive."""
        value = self.headers.get(name.lower())
        return value if value is None else value.strip()

    @classmethod
    def post(
        cls, path: str, payload: Any = None, *, key: str | None = None, client: str = "127.0.0.1"
    ) -> Request:
        """A JSON POST (for tests and tools calling the handler without a socket)."""
        headers = {} if key is None else {"x-api-key": key}
        body = None if payload is None else json.dumps(payload).encode("utf-8")
        return cls("POST", path, headers, body, client)


@dataclass
class Response:
    """What to send: ``drop`` closes the connection without an answer; ``delay`` seconds are
    slept before answering (a slow-answer fault)."""

    status: int
    body: bytes
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)
    drop: bool = False
    delay: float = 0.0

    def json(self) -> Any:
        """The body decoded as JSON (tests)."""
        return json.loads(self.body)

    def header(self, name: str) -> str | None:
        """The first header of that name (case-insensitive), else None."""
        low = name.lower()
        return next((v for k, v in self.headers if k.lower() == low), None)


def json_response(status: int, payload: Any, headers: Iterable[tuple[str, str]] = ()) -> Response:
    data = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return Response(status, data, "application/json", list(headers))


def html_response(status: int, text: str) -> Response:
    return Response(status, text.encode("utf-8"), "text/html; charset=utf-8")


def msg_response(status: int, text: str) -> Response:
    """The API's error shape: ``{"msg": "..."}``."""
    return json_response(status, {"msg": text})


def proxy_error_page(status: int) -> str:
    """An nginx-style error page (what a proxy in front of the API answers)."""
    phrase = HTTPStatus(status).phrase
    return (
        f"<html>\r\n<head><title>{status} {phrase}</title></head>\r\n<body>\r\n"
        f"<center><h1>{status} {phrase}</h1></center>\r\n<hr><center>nginx</center>\r\n"
        "</body>\r\n</html>\r\n"
    )
