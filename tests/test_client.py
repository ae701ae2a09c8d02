"""GurubaseClient over real loopback HTTP.

Two real servers are used: the package's ``LocalGurubase`` for everything a Gurubase server
does, and ``CannedServer`` below (a stdlib ``http.server`` answering a scripted list of raw
responses) for what a compatible server never sends on purpose: HTML 200s, broken JSON,
dropped connections, stalls, odd timestamps and wrong field types. Waiting is injected (a
fake monotonic clock advanced by the recorded ``sleep``) except in the one rate-limit test
that has to meet the server's real window.
"""

from __future__ import annotations

import json
import logging
import random
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pandas as pd
import pytest
import requests

from guru_analytics.client import (
    BAD_BODY_RETRIES,
    DEFAULT_BASE_URL,
    MIN_RETRY_WAIT,
    Conversation,
    GurubaseClient,
    Page,
)
from guru_analytics.errors import (
    ApiError,
    AuthenticationError,
    BadRequestError,
    ConfigError,
    ForbiddenError,
    NotFoundError,
    RateLimitedError,
    ServerError,
    TransportError,
    UnexpectedResponseError,
    mask_key,
)
from guru_analytics.server import FaultConfig, LocalGurubase
from guru_analytics.timestamps import parse_api_timestamp

KEY = "gk-live-SECRET-6b1f0c9d2e7a4f3b8c5d9e0fa1b2"
MASKED = mask_key(KEY)  # '…a1b2'


# --- fixtures and helpers ---------------------------------------------------------------


class FakeClock:
    """Monotonic time that moves only when the client sleeps: waits are recorded, not spent."""

    def __init__(self) -> None:
        self.t = 1000.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.t += seconds


@dataclass
class Reply:
    """One scripted answer: a response, a dropped connection, a stall, or a short body."""

    status: int = 200
    body: bytes | str | dict[str, Any] | list[Any] = b""
    headers: dict[str, str] = field(default_factory=dict)
    action: str = "respond"  # respond | drop | stall | truncate
    stall: float = 0.0


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: Any


class CannedServer:
    """A real HTTP server on 127.0.0.1 that answers POSTs from a script, in order."""

    def __init__(self) -> None:
        self.script: list[Reply] = []
        self.received: list[Received] = []
        self._release = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                outer.received.append(
                    Received(
                        self.path,
                        {k.lower(): v for k, v in self.headers.items()},
                        json.loads(raw or b"null"),
                    )
                )
                reply = (
                    outer.script.pop(0) if outer.script else Reply(599, {"msg": "script exhausted"})
                )
                if reply.action == "drop":
                    self.close_connection = True
                    return
                if reply.action == "stall":
                    outer._release.wait(reply.stall)
                    self.close_connection = True
                    return
                body = reply.body
                if isinstance(body, dict | list):
                    body = json.dumps(body)
                data = body.encode() if isinstance(body, str) else body
                self.send_response(reply.status)
                headers = {"Content-Type": "application/json", **reply.headers}
                for name, value in headers.items():
                    self.send_header(name, value)
                if reply.action == "truncate":
                    self.send_header("Content-Length", str(len(data) + 500))
                    self.close_connection = True
                else:
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.01,), daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/api/v1"

    def start(self) -> CannedServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._release.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)


@pytest.fixture
def canned() -> Iterator[CannedServer]:
    srv = CannedServer().start()
    yield srv
    srv.stop()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Capture every logger (ours, requests, urllib3) at DEBUG to prove the key never shows."""
    caplog.set_level(logging.DEBUG)
    return caplog


def client_for(base_url: str, fake: FakeClock, **kw: Any) -> GurubaseClient:
    kw.setdefault("rate_limit", None)
    kw.setdefault("rng", random.Random(7))
    return GurubaseClient(KEY, base_url, monotonic=fake.monotonic, sleep=fake.sleep, **kw)


def assert_clean(
    exc: BaseException | None, caplog: pytest.LogCaptureFixture, client: GurubaseClient
) -> None:
    """No trace of the key in the error, its chain, the logs, or the client's reprs."""
    texts = [repr(client), str(client), repr(client.stats)]
    while exc is not None:
        texts += [str(exc), repr(exc)]
        assert "\n" not in str(exc), f"multi-line message: {exc}"
        exc = exc.__cause__ or exc.__context__
    texts += [r.getMessage() for r in caplog.records]
    for text in texts:
        assert KEY not in text
        assert "SECRET" not in text


def listed(sid: str, last_used: str, **extra: Any) -> dict[str, Any]:
    base = {
        "id": sid,
        "last_used": last_used,
        "guru_type_slug": "acme",
        "guru_type_name": "Acme",
        "root_question_name": f"Question {sid}",
        "root_question_slug": f"question-{sid}",
        "root_question_link": f"https://gurubase.io/g/acme/question-{sid}",
    }
    base.update(extra)
    return base


def page_body(today=(), last_week=(), older=(), has_more=False) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    return {
        "today": list(today),
        "last_week": list(last_week),
        "older": list(older),
        "has_more": has_more,
    }


# --- configuration, repr, request format ------------------------------------------------


def test_missing_key_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match=r"^no API key: pass api_key= or set GURUBASE_API_KEY$"):
        GurubaseClient()
    monkeypatch.setenv("GURUBASE_API_KEY", "   ")
    with pytest.raises(ConfigError, match="no API key"):
        GurubaseClient()


def test_key_and_base_url_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GURUBASE_API_KEY", KEY)
    with GurubaseClient() as c:
        assert c.base_url == DEFAULT_BASE_URL
    monkeypatch.setenv("GURUBASE_BASE_URL", "http://localhost:8029/api/v1///")
    with GurubaseClient() as c:
        assert c.base_url == "http://localhost:8029/api/v1"
    with GurubaseClient(base_url="https://example.test/api/v1/") as c:  # argument beats env
        assert c.base_url == "https://example.test/api/v1"
        assert repr(c) == (
            f"GurubaseClient(base_url='https://example.test/api/v1', api_key='{MASKED}', "
            "limiter=SlidingWindowLimiter(10 per 60 s))"
        )
        assert KEY not in repr(c) and KEY not in str(c) and KEY not in repr(c.stats)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"base_url": "ftp://x/api"}, "base URL"),
        ({"base_url": "api.gurubase.io"}, "base URL"),
        ({"base_url": "https://user:pw@x/api"}, "credentials"),
        ({"api_key": "abc def 1234567890"}, "spaces or control"),
        ({"api_key": KEY + "\r\nX-Evil: 1"}, "spaces or control"),
        ({"max_retries": -1}, "max_retries"),
        ({"rate_limit": 0}, "rate limit"),
    ],
)
def test_bad_settings_are_config_errors(kwargs: dict[str, Any], match: str) -> None:
    kwargs.setdefault("api_key", KEY)
    with pytest.raises(ConfigError, match=match) as info:
        GurubaseClient(**kwargs)
    assert KEY not in str(info.value)


def test_tls_verification_cannot_be_switched_off() -> None:
    s = requests.Session()
    s.verify = False
    with pytest.raises(ConfigError, match="TLS verification"):
        GurubaseClient(KEY, session=s)
    assert GurubaseClient(KEY)._session.verify is True


def test_request_format_headers_body_and_paths(canned: CannedServer, clock: FakeClock) -> None:
    canned.script += [
        Reply(body=page_body()),
        Reply(body=page_body()),
        Reply(
            body={
                "conversation": [],
                "date_created": "2025-01-01T00:00:00+00:00",
                "last_used": "2025-01-01T00:00:00+00:00",
            }
        ),
    ]
    with client_for(canned.base_url + "/", clock) as c:
        c.list_sessions("acme", 2)
        c.list_sessions("acme", 1, search_query="docker", external_user_id="u-7")
        conv = c.get_session("0b7e-42")
    first, second, third = canned.received
    assert first.path == "/api/v1/acme/sessions/"
    assert first.body == {"page_num": 2, "search_query": ""}
    assert first.headers["x-api-key"] == KEY
    assert first.headers["content-type"] == "application/json"
    assert second.body == {"page_num": 1, "search_query": "docker", "external_user_id": "u-7"}
    assert third.path == "/api/v1/sessions/0b7e-42/conversation/"
    assert conv.session_id == "0b7e-42"  # no binge_id in the body: the requested id
    assert c.stats.requests == 3 and c.stats.retries == 0 and c.stats.waited_seconds == 0


@pytest.mark.parametrize("page_num", [0, -1, 1.5, "2", True])
def test_bad_page_numbers_never_reach_the_server(
    canned: CannedServer, clock: FakeClock, page_num: Any
) -> None:
    with client_for(canned.base_url, clock) as c, pytest.raises(ConfigError, match="page_num"):
        c.list_sessions("acme", page_num)
    assert canned.received == []


# --- parsing (canned bodies: formats a compatible server may produce) --------------------


def test_timestamp_styles_null_names_key_order_and_unknown_fields(
    canned: CannedServer, clock: FakeClock
) -> None:
    odd_order = dict(reversed(list(listed("c", "2025-07-20T08:00:00+00:00").items())))
    body = page_body(
        today=[
            listed("a", "2025-07-29T10:23:27.535170Z", guru_type_name=None, pinned=True, tags=["x"])
        ],
        last_week=[odd_order, listed("d", "2025-07-21T09:00:00.5Z")],
        older=[listed("b", "2025-01-02T03:04:05Z")],
        has_more=True,
    )
    canned.script.append(Reply(body=body))
    with client_for(canned.base_url, clock) as c:
        page = c.list_sessions("acme", 3)
    assert isinstance(page, Page)
    assert (page.page_num, page.has_more) == (3, True)
    assert [(s.id, s.group) for s in page.sessions] == [
        ("a", "today"),
        ("c", "last_week"),
        ("d", "last_week"),
        ("b", "older"),
    ]
    a, c_, d, b = page.sessions
    assert a.last_used == datetime(2025, 7, 29, 10, 23, 27, 535170, tzinfo=UTC)
    assert c_.last_used == datetime(2025, 7, 20, 8, 0, tzinfo=UTC)
    assert d.last_used == datetime(2025, 7, 21, 9, 0, 0, 500000, tzinfo=UTC)
    assert b.last_used == datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert all(s.last_used.utcoffset() == timedelta(0) for s in page.sessions)
    assert a.guru_type_name is None and c_.guru_type_name == "Acme"
    assert a.extra == {"pinned": True, "tags": ["x"]}
    assert c_.extra == {} and c_.root_question_slug == "question-c"
    assert c_.root_question_link == "https://gurubase.io/g/acme/question-c"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            {"today": [], "last_week": [], "older": []},
            "List Sessions page 3: field 'has_more' missing; the server is not Gurubase-compatible or changed its API",
        ),
        (
            {"today": [], "last_week": [], "older": [], "has_more": "false"},
            "List Sessions page 3: field 'has_more' is a string, expected bool; the server is not Gurubase-compatible or changed its API",
        ),
        (
            {"today": [], "older": [], "has_more": False},
            "List Sessions page 3: field 'last_week' missing; the server is not Gurubase-compatible or changed its API",
        ),
        (
            {"today": {}, "last_week": [], "older": [], "has_more": False},
            "List Sessions page 3: field 'today' is an object, expected list; the server is not Gurubase-compatible or changed its API",
        ),
        (
            page_body(
                older=[
                    listed("a", "2025-01-01T00:00:00Z"),
                    {k: v for k, v in listed("b", "x").items() if k != "id"},
                ]
            ),
            "List Sessions page 3: field 'older[1].id' missing; the server is not Gurubase-compatible or changed its API",
        ),
        (
            page_body(today=[listed("a", "yesterday")]),
            "List Sessions page 3: field 'today[0].last_used' is not an ISO 8601 UTC timestamp ('yesterday'); the server is not Gurubase-compatible or changed its API",
        ),
        (
            page_body(today=[listed("a", "2025-07-29T10:23:27")]),
            "List Sessions page 3: field 'today[0].last_used' is not an ISO 8601 UTC timestamp ('2025-07-29T10:23:27'); the server is not Gurubase-compatible or changed its API",
        ),
        (
            page_body(last_week=[listed("a", None)]),
            "List Sessions page 3: field 'last_week[0].last_used' is null, expected str; the server is not Gurubase-compatible or changed its API",
        ),
        (
            page_body(today=[listed(17, "2025-01-01T00:00:00Z")]),
            "List Sessions page 3: field 'today[0].id' is a number, expected str; the server is not Gurubase-compatible or changed its API",
        ),
        (
            page_body(today=[listed("a", "2025-01-01T00:00:00Z", root_question_name=["x"])]),
            "List Sessions page 3: field 'today[0].root_question_name' is a list, expected str; the server is not Gurubase-compatible or changed its API",
        ),
        (
            page_body(today=["a"]),
            "List Sessions page 3: field 'today[0]' is a string, expected object; the server is not Gurubase-compatible or changed its API",
        ),
        (
            [1, 2],
            "List Sessions page 3: the answer is a JSON list, not an object; the server is not Gurubase-compatible or changed its API",
        ),
    ],
)
def test_wrong_shapes_name_the_field_and_page(
    canned: CannedServer, clock: FakeClock, logs: pytest.LogCaptureFixture, body: Any, message: str
) -> None:
    canned.script.append(Reply(body=body))
    with client_for(canned.base_url, clock) as c, pytest.raises(UnexpectedResponseError) as info:
        c.list_sessions("acme", 3)
    assert str(info.value) == message
    assert (info.value.status, info.value.endpoint) == (200, "/acme/sessions/")
    assert c.stats.requests == 1  # a schema problem is not retried
    assert_clean(info.value, logs, c)


def conversation_body() -> dict[str, Any]:
    return {
        "binge_id": "s-1",
        "root_question_slug": "how-to-x",
        "date_created": "2025-07-01T10:00:00.123456+00:00",
        "last_used": "2025-07-01T10:05:00+00:00",
        "share_token": "t-9",
        "conversation": [
            {
                "id": "2183",
                "slug": "how-to-x",
                "user_question": "how do i x",
                "question": "How to X?",
                "answer": "Do *X*.",
                "date_created": "2025-07-01T10:00:00.123456+00:00",
                "date_updated": "2025-07-01T10:00:09+00:00",
                "references": [
                    {"link": "l1", "icon": "i", "title": "t"},
                    {"link": "l2", "icon": "i", "title": "t"},
                ],
                "trust_score": 87,
                "parent_slug": None,
                "source": "WIDGET QUESTION",
                "user_vote": None,
                "language": "en",
            },
            {
                "id": 2190,
                "slug": "and-y",
                "user_question": "and y?",
                "question": "And Y?",
                "answer": "Y.",
                "date_created": "2025-07-01T10:05:00Z",
                "date_updated": None,
                "references": [],
                "trust_score": None,
                "parent_slug": "how-to-x",
                "source": "API",
                "user_vote": "upvote",
            },
        ],
    }


def test_get_session_parses_messages(canned: CannedServer, clock: FakeClock) -> None:
    canned.script.append(Reply(body=conversation_body()))
    with client_for(canned.base_url, clock) as c:
        conv = c.get_session("s-1")
    assert isinstance(conv, Conversation)
    assert conv.session_id == "s-1" and conv.root_question_slug == "how-to-x"
    assert conv.date_created == datetime(2025, 7, 1, 10, 0, 0, 123456, tzinfo=UTC)
    assert conv.last_used == datetime(2025, 7, 1, 10, 5, tzinfo=UTC)
    assert conv.extra == {"share_token": "t-9"}
    m1, m2 = conv.messages
    assert (m1.id, m1.trust_score, m1.n_references, m1.source, m1.user_vote, m1.parent_slug) == (
        "2183",
        87,
        2,
        "WIDGET QUESTION",
        None,
        None,
    )
    assert m1.date_updated == datetime(2025, 7, 1, 10, 0, 9, tzinfo=UTC)
    assert m1.extra == {"language": "en"} and m1.user_question == "how do i x"
    assert (m2.id, m2.trust_score, m2.n_references, m2.user_vote, m2.parent_slug) == (
        "2190",
        None,
        0,
        "upvote",
        "how-to-x",
    )
    assert m2.date_updated is None and m2.extra == {}


@pytest.mark.parametrize(
    ("mutate", "field_name"),
    [
        (lambda b: b["conversation"][1].update(trust_score="high"), "conversation[1].trust_score"),
        (lambda b: b["conversation"][0].update(trust_score=87.5), "conversation[0].trust_score"),
        (lambda b: b["conversation"][0].pop("date_created"), "conversation[0].date_created"),
        (
            lambda b: b["conversation"][1].update(date_updated="soon"),
            "conversation[1].date_updated",
        ),
        (lambda b: b.pop("conversation"), "conversation"),
        (lambda b: b.update(last_used=12), "last_used"),
    ],
)
def test_get_session_shape_errors(
    canned: CannedServer,
    clock: FakeClock,
    logs: pytest.LogCaptureFixture,
    mutate: Any,
    field_name: str,
) -> None:
    body = conversation_body()
    mutate(body)
    canned.script.append(Reply(body=body))
    with client_for(canned.base_url, clock) as c, pytest.raises(UnexpectedResponseError) as info:
        c.get_session("s-1")
    assert str(info.value).startswith(f"Get Session s-1: field '{field_name}' ")
    assert info.value.endpoint == "/sessions/s-1/conversation/"
    assert_clean(info.value, logs, c)


# --- bodies that are not JSON ------------------------------------------------------------


@pytest.mark.parametrize(
    ("ctype", "body", "seen"),
    [
        (
            "text/html; charset=utf-8",
            "<html><body><h1>502 Bad Gateway</h1></body></html>",
            "text/html; charset=utf-8 (50 bytes) starting '<html><body><h1>502 Bad Gateway</h1></body></html>'",
        ),
        ("application/json", '{"today": [', "application/json (11 bytes) starting '{\"today\": ['"),
    ],
)
def test_html_or_broken_json_200_is_retried_then_unexpected(
    canned: CannedServer,
    clock: FakeClock,
    logs: pytest.LogCaptureFixture,
    ctype: str,
    body: str,
    seen: str,
) -> None:
    canned.script += [Reply(body=body, headers={"Content-Type": ctype})] * 10
    with client_for(canned.base_url, clock) as c, pytest.raises(UnexpectedResponseError) as info:
        c.list_sessions("acme", 1)
    assert str(info.value) == (
        f"List Sessions page 1: expected JSON but got {seen} after {BAD_BODY_RETRIES} retries; "
        "the base URL may point at a proxy or web page, not the API"
    )
    assert len(canned.received) == BAD_BODY_RETRIES + 1 == c.stats.requests
    assert c.stats.retries == BAD_BODY_RETRIES
    assert len(clock.sleeps) == BAD_BODY_RETRIES  # full-jitter backoff, 0 <= wait <= 1, 2 s
    assert 0 <= clock.sleeps[0] <= 1.0 and 0 <= clock.sleeps[1] <= 2.0
    assert sum(clock.sleeps) == pytest.approx(c.stats.waited_seconds)
    assert_clean(info.value, logs, c)


def test_a_transient_proxy_page_then_json_succeeds(canned: CannedServer, clock: FakeClock) -> None:
    canned.script += [
        Reply(body="<html>oops</html>", headers={"Content-Type": "text/html"}),
        Reply(body=page_body(today=[listed("a", "2025-07-29T10:23:27.535170Z")])),
    ]
    with client_for(canned.base_url, clock) as c:
        page = c.list_sessions("acme", 1)
    assert [s.id for s in page.sessions] == ["a"]
    assert (c.stats.requests, c.stats.retries, c.stats.throttled) == (2, 1, 0)
    assert [w.reason for w in c.stats.waits] == [
        "retry 1 after HTTP 200 without JSON (text/html (17 bytes) starting '<html>oops</html>')"
    ]


def test_body_echoing_the_key_is_masked(
    canned: CannedServer, clock: FakeClock, logs: pytest.LogCaptureFixture
) -> None:
    canned.script += [Reply(body=f"<p>{KEY}</p>", headers={"Content-Type": "text/html"})] * 3
    canned.script += [Reply(400, {"msg": f"bad key {KEY}\nline two"})]
    with client_for(canned.base_url, clock) as c:
        with pytest.raises(UnexpectedResponseError) as info:
            c.list_sessions("acme", 1)
        assert MASKED in str(info.value)
        assert_clean(info.value, logs, c)
        with pytest.raises(BadRequestError) as info2:
            c.list_sessions("acme", 1)
        assert (
            str(info2.value)
            == f"List Sessions page 1: the server rejected the request (400: bad key {MASKED} line two); check page_num"
        )
        assert_clean(info2.value, logs, c)


# --- 429: server-given waits --------------------------------------------------------------


def throttled(seconds: int | None, header: str | None) -> Reply:
    body = (
        {"msg": f"Request was throttled. Expected available in {seconds} seconds."}
        if seconds is not None
        else {"msg": "slow down"}
    )
    return Reply(429, body, headers={"Retry-After": header} if header is not None else {})


@pytest.mark.parametrize(
    ("reply", "expected_wait", "reason"),
    [
        (throttled(17, "7"), 7.0, "rate limited (429, server asked 7 s)"),
        (throttled(13, None), 13.0, "rate limited (429, server asked 13 s)"),
        (throttled(13, "soon"), 13.0, "rate limited (429, server asked 13 s)"),
        (
            throttled(None, "0"),
            MIN_RETRY_WAIT,
            "rate limited (429, asked 0 s, waiting the minimum 1 s)",
        ),
        (
            throttled(None, "-30"),
            MIN_RETRY_WAIT,
            "rate limited (429, asked -30 s, waiting the minimum 1 s)",
        ),
        (throttled(86400, "86400"), 300.0, "rate limited (429, asked 86400 s, clamped to 300 s)"),
    ],
)
def test_429_waits_what_the_server_says(
    canned: CannedServer,
    clock: FakeClock,
    logs: pytest.LogCaptureFixture,
    reply: Reply,
    expected_wait: float,
    reason: str,
) -> None:
    canned.script += [reply, Reply(body=page_body(has_more=True))]
    with client_for(canned.base_url, clock) as c:
        page = c.list_sessions("acme", 4)
    assert page.has_more is True
    assert clock.sleeps == [pytest.approx(expected_wait)]  # no jitter on a server-given wait
    assert (c.stats.requests, c.stats.throttled, c.stats.retries) == (2, 1, 1)
    assert c.stats.waited_seconds == pytest.approx(expected_wait)
    assert [w.reason for w in c.stats.waits] == [f"retry 1 after {reason}"]
    warnings = [
        r.getMessage()
        for r in logs.records
        if r.name == "guru_analytics.client" and r.levelno == logging.WARNING
    ]
    assert f"List Sessions page 4: {reason}; retry 1 of 5 in {expected_wait:.2f} s" in warnings
    if expected_wait == 300.0:
        assert (
            "List Sessions page 4: the server asked to wait 86400 s; waiting at most 300 s (max_retry_after)"
            in warnings
        )
    assert_clean(None, logs, c)


def test_429_retry_after_as_http_date(canned: CannedServer, clock: FakeClock) -> None:
    now = datetime(2025, 7, 29, 12, 0, 0, tzinfo=UTC)
    canned.script += [
        Reply(
            429,
            {"msg": "throttled"},
            headers={"Retry-After": format_datetime(now + timedelta(seconds=42), usegmt=True)},
        ),
        Reply(body=page_body()),
    ]
    with client_for(canned.base_url, clock, clock=lambda: now) as c:
        c.list_sessions("acme", 1)
    assert clock.sleeps == [pytest.approx(42.0)]


def test_429_without_any_hint_backs_off_exponentially(
    canned: CannedServer, clock: FakeClock
) -> None:
    canned.script += [throttled(None, None)] * 3 + [Reply(body=page_body())]

    class Top(random.Random):
        """Deterministic 'jitter' at the top of its range, to read the exponential ceiling."""

        def uniform(self, a: float, b: float) -> float:
            return b

    with client_for(canned.base_url, clock, rng=Top(), backoff_base=2.0) as c:
        c.list_sessions("acme", 1)
    assert clock.sleeps == [2.0, 4.0, 8.0]


def test_429_forever_raises_rate_limited_after_the_budget(
    canned: CannedServer, clock: FakeClock, logs: pytest.LogCaptureFixture
) -> None:
    canned.script += [throttled(20, "20")] * 10
    with (
        client_for(canned.base_url, clock, max_retries=3) as c,
        pytest.raises(RateLimitedError) as info,
    ):
        c.list_sessions("acme", 2)
    err = info.value
    assert str(err) == (
        "List Sessions page 2: still rate limited (429) after 3 retries (the server asks for 20 s); "
        "try again later or lower --rate-limit"
    )
    assert (err.status, err.endpoint, err.retry_after) == (429, "/acme/sessions/", 20.0)
    assert clock.sleeps == [20.0, 20.0, 20.0]
    assert (c.stats.requests, c.stats.throttled, c.stats.retries) == (4, 4, 3)
    assert_clean(err, logs, c)


# --- 5xx, drops, timeouts ---------------------------------------------------------------


def test_5xx_retried_with_full_jitter_then_server_error(
    canned: CannedServer, clock: FakeClock, logs: pytest.LogCaptureFixture
) -> None:
    canned.script += [
        Reply(500, "<html>Server Error (500)</html>", {"Content-Type": "text/html"}),
        Reply(502, {"msg": "bad gateway"}),
    ] * 5
    with (
        client_for(canned.base_url, clock, rng=random.Random(3)) as c,
        pytest.raises(ServerError) as info,
    ):
        c.list_sessions("acme", 1)
    assert str(info.value) == (
        "List Sessions page 1: server error 502 after 5 retries; the API may be down or overloaded: try again later"
    )
    assert (info.value.status, info.value.endpoint) == (502, "/acme/sessions/")
    assert (c.stats.requests, c.stats.retries, c.stats.throttled) == (6, 5, 0)
    # Full jitter: retry k waits uniform(0, 2**(k-1)) -- the same draws as the seeded rng.
    expected_rng = random.Random(3)
    assert clock.sleeps == [
        pytest.approx(expected_rng.uniform(0, 2 ** (k - 1))) for k in range(1, 6)
    ]
    assert all(0 <= s <= 2**k for k, s in enumerate(clock.sleeps))
    assert_clean(info.value, logs, c)


def test_5xx_then_success_and_503_retry_after(canned: CannedServer, clock: FakeClock) -> None:
    canned.script += [
        Reply(503, {"msg": "maintenance"}, {"Retry-After": "9"}),
        Reply(504, b""),
        Reply(body=page_body()),
    ]
    with client_for(canned.base_url, clock, rng=random.Random(1)) as c:
        c.list_sessions("acme", 1)
    assert clock.sleeps[0] == 9.0 and 0 <= clock.sleeps[1] <= 2.0
    assert (c.stats.requests, c.stats.retries) == (3, 2)


@pytest.mark.parametrize(
    ("action", "exc_name"),
    [("drop", "ConnectionError"), ("truncate", "ChunkedEncodingError")],
)
def test_dropped_connections_retried_then_transport_error(
    canned: CannedServer,
    clock: FakeClock,
    logs: pytest.LogCaptureFixture,
    action: str,
    exc_name: str,
) -> None:
    canned.script += [Reply(body=page_body(), action=action)] * 3
    with (
        client_for(canned.base_url, clock, max_retries=2) as c,
        pytest.raises(TransportError) as info,
    ):
        c.list_sessions("acme", 1)
    msg = str(info.value)
    assert msg.startswith(
        f"List Sessions page 1: connection failed or dropped after 2 retries ({exc_name}: "
    )
    assert msg.endswith("); check the network and the base URL, then try again")
    assert info.value.endpoint == "/acme/sessions/" and info.value.status is None  # type: ignore[attr-defined]
    assert len(canned.received) == 3 == c.stats.requests and c.stats.retries == 2
    assert_clean(info.value, logs, c)


def test_drop_then_success(canned: CannedServer, clock: FakeClock) -> None:
    canned.script += [
        Reply(action="drop"),
        Reply(body=page_body(older=[listed("z", "2024-01-01T00:00:00Z")])),
    ]
    with client_for(canned.base_url, clock) as c:
        page = c.list_sessions("acme", 1)
    assert [s.id for s in page.sessions] == ["z"] and c.stats.retries == 1


def test_timeouts_retried_then_transport_error(
    canned: CannedServer, clock: FakeClock, logs: pytest.LogCaptureFixture
) -> None:
    # A real read timeout needs a real (short) stall: 0.05 s x 3 attempts.
    canned.script += [Reply(action="stall", stall=5.0)] * 3
    with (
        client_for(canned.base_url, clock, max_retries=2, timeout=0.05) as c,
        pytest.raises(TransportError) as info,
    ):
        c.list_sessions("acme", 1)
    assert str(info.value).startswith(
        "List Sessions page 1: timed out after 2 retries (ReadTimeout: "
    )
    assert c.stats.requests == 3 and len(clock.sleeps) == 2
    assert_clean(info.value, logs, c)


def test_connection_refused(clock: FakeClock, logs: pytest.LogCaptureFixture) -> None:
    srv = CannedServer()  # bound but never started: nobody accepts... so use a closed port
    port = srv._httpd.server_address[1]
    srv._httpd.server_close()
    with (
        client_for(f"http://127.0.0.1:{port}/api/v1", clock, max_retries=1) as c,
        pytest.raises(TransportError) as info,
    ):
        c.get_session("abc")
    assert str(info.value) == (
        "Get Session abc: connection failed or dropped after 1 retries (ConnectionError: [Errno 111] "
        "Connection refused); check the network and the base URL, then try again"
    )
    assert_clean(info.value, logs, c)


# --- other statuses from a canned server ---------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "cls", "message"),
    [
        (
            Reply(400, {"msg": "Page number must be an integer"}),
            BadRequestError,
            "List Sessions page 1: the server rejected the request (400: Page number must be an integer); check page_num",
        ),
        (
            Reply(405, {"detail": 'Method "POST" not allowed.'}),
            BadRequestError,
            'List Sessions page 1: the server does not accept POST at /acme/sessions/ (405: Method "POST" not allowed.): check that the base URL points at a Gurubase API',
        ),
        (
            Reply(404, "<h1>Not Found</h1>", {"Content-Type": "text/html"}),
            NotFoundError,
            "List Sessions page 1: the server has no /acme/sessions/ endpoint (404, not JSON): check the base URL (GURUBASE_BASE_URL)",
        ),
        (
            Reply(418, {"msg": "teapot"}),
            ApiError,
            "List Sessions page 1: unexpected HTTP 418: teapot; check the base URL and try again",
        ),
        (
            Reply(301, b"", {"Location": "https://elsewhere.test/api/v1/acme/sessions/"}),
            ApiError,
            "List Sessions page 1: the server redirected (301) to https://elsewhere.test/api/v1/acme/sessions/; not followed so the key is not sent elsewhere: set the base URL to the new address",
        ),
    ],
)
def test_other_statuses_map_to_typed_errors(
    canned: CannedServer,
    clock: FakeClock,
    logs: pytest.LogCaptureFixture,
    reply: Reply,
    cls: type[ApiError],
    message: str,
) -> None:
    canned.script.append(reply)
    with client_for(canned.base_url, clock) as c, pytest.raises(cls) as info:
        c.list_sessions("acme", 1)
    assert type(info.value) is cls
    assert str(info.value) == message
    assert (info.value.status, info.value.endpoint) == (reply.status, "/acme/sessions/")
    assert len(canned.received) == 1  # not retried, and the redirect was not followed
    assert_clean(info.value, logs, c)


# --- against LocalGurubase: the package's Gurubase-compatible server ------------------------


NOW = datetime(2025, 7, 29, 12, 0, 0, tzinfo=UTC)
OWNER_KEY = KEY  # the fixture's server accepts the test key for 'acme' only


@pytest.fixture
def serve(clock: FakeClock) -> Iterator[Any]:
    """Build, start and always stop LocalGurubase servers sharing the test's fake clock.

    The server's rate limiter reads the same fake monotonic clock the client sleeps on, so
    a 429's wait really frees the server's window without any real waiting.
    """
    started: list[LocalGurubase] = []

    def make(n_sessions: int = 200, **kw: Any) -> LocalGurubase:
        kw.setdefault("rate_limit", None)
        kw.setdefault("monotonic", clock.monotonic)
        srv = LocalGurubase.demo(
            n_sessions,
            12,
            30,
            guru_slug="acme",
            end=NOW,
            clock=lambda: NOW,
            api_key=OWNER_KEY,
            **kw,
        )
        started.append(srv.start())
        return srv

    yield make
    for srv in started:
        srv.stop()


def crawl(c: GurubaseClient, guru: str) -> list[Page]:
    pages = [c.list_sessions(guru, 1)]
    while pages[-1].has_more:
        pages.append(c.list_sessions(guru, len(pages) + 1))
    return pages


def expected_group(ts: datetime) -> str:
    days = (NOW.date() - ts.date()).days
    return "today" if days == 0 else ("last_week" if 1 <= days <= 7 else "older")


def test_full_listing_matches_the_server_truth(serve: Any, clock: FakeClock) -> None:
    srv = serve(200, rootless_share=0.1, tie_shuffle=False)
    truth = srv.truth("acme")
    with client_for(srv.base_url, clock) as c:
        pages = crawl(c, "acme")
    assert len(pages) == 7  # 200 rows (rootless included in the cut) / 30 per page
    got = [s for p in pages for s in p.sessions]
    assert len(got) == len(truth) < 200  # rootless sessions are dropped after the cut
    assert any(len(p.sessions) < 30 for p in pages[:-1])  # a short page that still had more
    assert [s.id for s in got] == truth["id"].tolist()
    assert [s.last_used for s in got] == [t.to_pydatetime() for t in truth["last_used"]]
    assert [s.root_question_slug for s in got] == truth["root_question_slug"].tolist()
    assert all(s.group == expected_group(s.last_used) for s in got)
    counts = {g: sum(s.group == g for s in got) for g in ("today", "last_week", "older")}
    assert counts["today"] > 0 and counts["last_week"] > 0 and counts["older"] > 0
    assert sum(counts.values()) == len(truth)
    assert all(
        s.guru_type_slug == "acme" and s.guru_type_name == "Acme" and s.extra == {} for s in got
    )
    assert (c.stats.requests, c.stats.retries, c.stats.waited_seconds) == (7, 0, 0.0)


def test_null_guru_name_and_groups_of_crafted_sessions(serve: Any, clock: FakeClock) -> None:
    srv = serve(0)
    rows = pd.DataFrame(
        {
            "id": ["future", "today", "week-edge", "older-edge", "old"],
            "last_used": pd.to_datetime(
                [
                    "2025-07-30T00:00:01Z",  # after the server's today: 'older', oddly
                    "2025-07-29T00:00:00Z",
                    "2025-07-22T23:59:59.999999Z",  # today-7: last_week
                    "2025-07-21T23:59:59Z",  # today-8: older
                    "2024-01-01T00:00:00Z",
                ],
                utc=True,
                format="ISO8601",
            ),
        }
    )
    srv.add_guru("plain", rows, name=None)
    srv.add_key("gk-other-owner-key-000000000000", "other", gurus=["plain"])
    with GurubaseClient("gk-other-owner-key-000000000000", srv.base_url, rate_limit=None) as c:
        page = c.list_sessions("plain", 1)
    assert page.has_more is False
    assert [(s.id, s.group) for s in page.sessions] == [
        ("today", "today"),
        ("week-edge", "last_week"),
        ("future", "older"),
        ("older-edge", "older"),
        ("old", "older"),
    ]
    assert all(s.guru_type_name is None for s in page.sessions)
    assert page.sessions[1].last_used == datetime(2025, 7, 22, 23, 59, 59, 999999, tzinfo=UTC)


def test_get_session_matches_the_server(serve: Any, clock: FakeClock) -> None:
    srv = serve(60)
    truth = srv.truth("acme")
    sid = truth.loc[truth["n_messages"].idxmax(), "id"]
    raw = srv.conversation(sid)
    with client_for(srv.base_url, clock) as c:
        conv = c.get_session(sid)
    assert conv.session_id == sid
    assert len(conv.messages) == len(raw) == truth["n_messages"].max() > 1
    assert (
        conv.date_created == truth.loc[truth["id"] == sid, "date_created"].iloc[0].to_pydatetime()
    )
    assert conv.last_used == conv.messages[-1].date_created
    assert [m.id for m in conv.messages] == [str(r["id"]) for r in raw]
    assert [m.trust_score for m in conv.messages] == [r["trust_score"] for r in raw]
    assert [m.n_references for m in conv.messages] == [len(r["references"]) for r in raw]
    assert [m.source for m in conv.messages] == [r["source"] for r in raw]
    assert [m.parent_slug for m in conv.messages] == [r["parent_slug"] for r in raw]
    assert conv.messages[0].parent_slug is None
    assert all(
        m.parent_slug == prev.slug
        for prev, m in zip(conv.messages, conv.messages[1:], strict=False)
    )
    assert [m.date_created for m in conv.messages] == [
        parse_api_timestamp(r["date_created"]) for r in raw
    ]
    assert [m.date_created for m in conv.messages] == sorted(m.date_created for m in conv.messages)


def test_server_error_statuses_map_to_typed_errors(
    serve: Any, clock: FakeClock, logs: pytest.LogCaptureFixture
) -> None:
    srv = serve(30)
    srv.add_guru("secret-guru", srv.synthetic.sessions.assign(id=[f"x{i}" for i in range(30)]))
    srv.add_key("gk-wrong-owner-SECRET-99990000", "stranger", gurus=["nothing"])
    deleted = srv.truth("acme")["id"].iloc[0]
    srv.delete("acme", deleted)
    wrong = GurubaseClient("gk-unknown-SECRET-key-5555", srv.base_url, rate_limit=None)
    cases: list[tuple[Any, type[ApiError], str, int, str]] = [
        (
            lambda c: wrong.list_sessions("acme", 1),
            AuthenticationError,
            "List Sessions page 1: API key rejected (key …5555): check GURUBASE_API_KEY",
            401,
            "/acme/sessions/",
        ),
        (
            lambda c: c.list_sessions("secret-guru", 2),
            ForbiddenError,
            "List Sessions page 2: the key's owner does not maintain guru 'secret-guru' (403): use a key of one of its maintainers",
            403,
            "/secret-guru/sessions/",
        ),
        (
            lambda c: c.get_session("x3"),
            ForbiddenError,
            "Get Session x3: the key's owner may not read session x3 (403): use a key of one of its maintainers",
            403,
            "/sessions/x3/conversation/",
        ),
        (
            lambda c: c.list_sessions("acme-typo", 1),
            NotFoundError,
            "List Sessions page 1: guru 'acme-typo' not found: check the slug",
            404,
            "/acme-typo/sessions/",
        ),
        (
            lambda c: c.get_session(deleted),
            NotFoundError,
            f"Get Session {deleted}: session {deleted} not found (deleted?)",
            404,
            f"/sessions/{deleted}/conversation/",
        ),
    ]
    with client_for(srv.base_url, clock) as c:
        for call, cls, message, status, endpoint in cases:
            with pytest.raises(cls) as info:
                call(c)
            assert str(info.value) == message
            assert (info.value.status, info.value.endpoint) == (status, endpoint)
            assert_clean(info.value, logs, c)
            assert "gk-unknown-SECRET-key-5555" not in str(info.value)
    # Wrong base URL path: the server's HTML 404 says 'no such endpoint', not 'no such guru'.
    with (
        client_for(srv.base_url.replace("/api/v1", "/api/v2"), clock) as c,
        pytest.raises(NotFoundError) as info,
    ):
        c.list_sessions("acme", 1)
    assert str(info.value) == (
        "List Sessions page 1: the server has no /acme/sessions/ endpoint (404, not JSON): check the base URL (GURUBASE_BASE_URL)"
    )
    assert [r.status for r in srv.log] == [401, 403, 403, 404, 404, 404]  # none retried
    assert_clean(info.value, logs, c)
    assert "gk-unknown-SECRET-key-5555" not in repr(wrong) and "…5555" in repr(wrong)


def test_429_retry_after_frees_the_server_window(
    serve: Any, clock: FakeClock, logs: pytest.LogCaptureFixture
) -> None:
    """Client pacing off: the server throttles, the client waits its Retry-After, no more."""
    srv = serve(90, rate_limit=2, rate_window=60.0)
    with client_for(srv.base_url, clock) as c:
        pages = crawl(c, "acme")  # 3 pages
    assert len(pages) == 3
    assert [r.status for r in srv.log] == [200, 200, 429, 200]
    assert clock.sleeps == [60.0]  # Retry-After: 60 from a window that started at t=1000
    assert (c.stats.requests, c.stats.throttled, c.stats.retries) == (4, 1, 1)
    assert c.stats.waited_seconds == 60.0
    assert_clean(None, logs, c)


def test_429_body_seconds_when_the_proxy_drops_the_header(serve: Any, clock: FakeClock) -> None:
    srv = serve(90, rate_limit=2, rate_window=45.0, faults=FaultConfig(retry_after_header=False))
    clock.t += 0.5  # the window frees 44.5 s after the 2nd start: the server says ceil = 45
    with client_for(srv.base_url, clock) as c:
        crawl(c, "acme")
    assert [r.status for r in srv.log] == [200, 200, 429, 200]
    assert clock.sleeps == [45.0]
    assert [w.reason for w in c.stats.waits] == [
        "retry 1 after rate limited (429, server asked 45 s)"
    ]


@pytest.mark.parametrize(
    ("seconds", "each_wait"),
    [(0, MIN_RETRY_WAIT), (100_000, 300.0)],
)
def test_429_hints_clamped_then_rate_limited(
    serve: Any, clock: FakeClock, logs: pytest.LogCaptureFixture, seconds: int, each_wait: float
) -> None:
    srv = serve(30, faults=FaultConfig(throttle_rate=1.0, throttle_seconds=seconds))
    with client_for(srv.base_url, clock) as c, pytest.raises(RateLimitedError) as info:
        c.list_sessions("acme", 1)
    assert info.value.retry_after == float(seconds)
    assert clock.sleeps == [each_wait] * 5
    assert srv.request_count(status=429) == 6 == c.stats.throttled
    assert str(info.value) == (
        f"List Sessions page 1: still rate limited (429) after 5 retries (the server asks for {seconds:g} s); "
        "try again later or lower --rate-limit"
    )
    assert_clean(info.value, logs, c)


def test_client_pacing_avoids_every_429_on_a_shared_fake_clock(
    serve: Any, clock: FakeClock
) -> None:
    srv = serve(300, rate_limit=3, rate_window=60.0)
    with client_for(srv.base_url, clock, rate_limit=3, rate_window=60.0) as c:
        pages = crawl(c, "acme")  # 10 pages
    assert len(pages) == 10
    assert srv.request_count(status=429) == 0 and c.stats.throttled == 0
    assert clock.sleeps == [60.0, 60.0, 60.0]  # starts at 1000 x3, 1060 x3, 1120 x3, 1180
    assert [w.reason for w in c.stats.waits] == ["client rate limit (3 requests per 60 s)"] * 3
    # The 10th start (t=1180) left [1120, 1120, 1180] in the window: the next may go now.
    assert c.limiter.next_delay() == 0.0


def test_without_client_pacing_the_same_crawl_is_throttled(serve: Any, clock: FakeClock) -> None:
    """Control for the test above: the limiter, not luck, kept the 429s away."""
    srv = serve(300, rate_limit=3, rate_window=60.0)
    with client_for(srv.base_url, clock) as c:
        crawl(c, "acme")
    assert srv.request_count(status=429) == 3 == c.stats.throttled


def test_5xx_from_the_server_retried_then_recovered_or_server_error(
    serve: Any, clock: FakeClock, logs: pytest.LogCaptureFixture
) -> None:
    srv = serve(30, faults=FaultConfig(error_rate=1.0, error_statuses=(502,)))
    srv.on_request(3, lambda s: setattr(s, "faults", FaultConfig()))  # healthy from request 3
    with client_for(srv.base_url, clock) as c:
        page = c.list_sessions("acme", 1)
        assert len(page.sessions) == 30
        assert [r.status for r in srv.log] == [502, 502, 200]
        assert (c.stats.requests, c.stats.retries) == (3, 2)
        srv.faults = FaultConfig(
            error_rate=1.0, error_statuses=(500, 503), error_bodies=("html", "json")
        )
        with pytest.raises(ServerError) as info:
            c.get_session(page.sessions[0].id)
    assert info.value.status in (500, 503) and info.value.endpoint.startswith("/sessions/")
    assert srv.request_count(path_contains="/conversation/") == 6
    assert_clean(info.value, logs, c)


def test_drops_and_slow_answers_from_the_server(
    serve: Any, clock: FakeClock, logs: pytest.LogCaptureFixture
) -> None:
    srv = serve(30, faults=FaultConfig(drop_rate=1.0))
    with client_for(srv.base_url, clock, max_retries=3, timeout=0.05) as c:
        with pytest.raises(TransportError) as info:
            c.list_sessions("acme", 1)
        assert str(info.value).startswith(
            "List Sessions page 1: connection failed or dropped after 3 retries ("
        )
        assert [r.status for r in srv.log] == [None] * 4
        assert_clean(info.value, logs, c)
        # Slow answers: a real 0.3 s server stall against a 0.05 s client timeout.
        srv.faults = FaultConfig(slow_rate=1.0, slow_seconds=0.3)
        srv.on_request(7, lambda s: setattr(s, "faults", FaultConfig()))
        page = c.list_sessions("acme", 1)
    assert len(page.sessions) == 30
    assert c.stats.requests == 7 and c.stats.retries == 5


@pytest.mark.parametrize("fault", ["malformed_json_rate", "html_200_rate"])
def test_broken_200_bodies_from_the_server(
    serve: Any, clock: FakeClock, logs: pytest.LogCaptureFixture, fault: str
) -> None:
    srv = serve(30, faults=FaultConfig(**{fault: 1.0}))
    with client_for(srv.base_url, clock) as c, pytest.raises(UnexpectedResponseError) as info:
        c.list_sessions("acme", 1)
    assert srv.request_count(status=200) == BAD_BODY_RETRIES + 1 == c.stats.requests
    kind = "application/json" if fault == "malformed_json_rate" else "text/html; charset=utf-8"
    assert str(info.value).startswith(f"List Sessions page 1: expected JSON but got {kind} (")
    assert_clean(info.value, logs, c)


def test_real_pacing_meets_the_real_server_window(logs: pytest.LogCaptureFixture) -> None:
    """The only test that really waits (~4 s): real clocks on both sides, R=5 per 2 s.

    Six listings and six Get Sessions share one limiter, like the server's per-owner window.
    """
    with LocalGurubase.demo(
        200, 12, 30, rate_limit=5, rate_window=2.0, end=NOW, clock=lambda: NOW
    ) as srv:
        key = srv.api_key
        assert key is not None
        with GurubaseClient(key, srv.base_url, rate_limit=5, rate_window=2.0) as c:
            ids = []
            for n in range(1, 7):
                page = c.list_sessions("demo-guru", n)
                ids.append(page.sessions[0].id)
                c.get_session(ids[-1])
        statuses = [r.status for r in srv.log]
    assert statuses == [200] * 12
    assert c.stats.requests == 12 and c.stats.throttled == 0 and c.stats.retries == 0
    assert len(c.stats.waits) >= 2  # requests 6 and 11 had to wait for the window
    assert all(w.reason == "client rate limit (5 requests per 2 s)" for w in c.stats.waits)
    assert all(key not in r.getMessage() for r in logs.records)
    print(
        f"real pacing: {len(c.stats.waits)} waits, {c.stats.waited_seconds:.3f} s waited in total"
    )
