"""Export Analytics end to end over real loopback HTTP: LocalGurubase answers, the client reads.

The server side is checked against the contract (intervals, filters, key schemes, the
attachment header, URLs, empty intervals, errors, the shared rate limit); the client side
against both schemes and against a canned server written independently of ours for rows
the local server never sends. The central check: for every session, the export's
follow-ups are exactly its Get Session messages, to the minute.
"""

from __future__ import annotations

import json
import re
import threading
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pandas as pd
import pytest
import requests

from guru_analytics.client import ExportedQuestion, GurubaseClient, QuestionExport
from guru_analytics.errors import (
    ConfigError,
    ForbiddenError,
    NotFoundError,
    RateLimitedError,
    UnexpectedResponseError,
)
from guru_analytics.server import LocalGurubase
from guru_analytics.server._export import SOURCE_LABELS, interval_range
from guru_analytics.timestamps import parse_api_timestamp
from guru_analytics.wire import link_of

END = datetime(2025, 11, 1, tzinfo=UTC)
NOW = END + timedelta(hours=1)
KEY = "gk-export-SECRET-0123456789abcdef"
SITE = "https://gurubase.io"


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


class Monotonic:
    """Frozen monotonic time: the rate window never slides unless a test moves it."""

    t = 100.0

    def __call__(self) -> float:
        return self.t


def serve(n: int = 200, days: int = 30, **kwargs: Any) -> LocalGurubase:
    kwargs.setdefault("rate_limit", None)
    kwargs.setdefault("clock", Clock(NOW))
    return LocalGurubase.demo(n, 8, days, seed=5, end=END, api_key=KEY, **kwargs)


@pytest.fixture(scope="module")
def srv() -> Iterator[LocalGurubase]:
    with serve() as s:
        yield s


@pytest.fixture
def http() -> Iterator[requests.Session]:
    with requests.Session() as s:
        yield s


def client(s: LocalGurubase, **kwargs: Any) -> GurubaseClient:
    kwargs.setdefault("rate_limit", None)
    return GurubaseClient(KEY, s.base_url, **kwargs)


def export_url(s: LocalGurubase, slug: str = "demo-guru") -> str:
    return f"{s.base_url}/{slug}/analytics/export/"


def minute(ts: datetime) -> datetime:
    return ts.astimezone(UTC).replace(second=0, microsecond=0)


# --- the server, raw -------------------------------------------------------------------------


def test_answer_is_a_json_attachment_in_the_code_scheme(
    srv: LocalGurubase, http: requests.Session
) -> None:
    r = http.post(
        export_url(srv), json={"export_type": "json", "interval": "12m"}, headers={"x-api-key": KEY}
    )
    assert r.status_code == 200
    assert r.headers["Content-Disposition"] == (
        f'attachment; filename="analytics_demo-guru_12m_{int(NOW.timestamp())}.json"'
    )
    data = r.json()
    assert list(data) == ["questions", "unable_to_answer", "references"]
    assert data["questions"] and data["unable_to_answer"] and data["references"]
    row = data["questions"][0]
    assert set(row) == {"datetime", "source", "question", "trust_score", "follow_up", "url"}
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d", row["datetime"])
    assert {q["source"] for q in data["questions"]} <= set(SOURCE_LABELS.values())
    assert all(
        q["trust_score"] == round(q["trust_score"], 2) and 0 <= q["trust_score"] <= 1
        for q in data["questions"]
    )
    assert set(data["unable_to_answer"][0]) == {"datetime", "source", "question"}


def test_both_key_schemes_carry_the_same_rows(http: requests.Session) -> None:
    with serve(80, export_scheme="code") as code, serve(80, export_scheme="docs") as docs:
        raw = {
            s.export_scheme: http.post(
                export_url(s),
                json={"export_type": "json", "interval": "12m"},
                headers={"x-api-key": KEY},
            ).json()
            for s in (code, docs)
        }
        assert list(raw["code"]) == ["questions", "unable_to_answer", "references"]
        assert list(raw["docs"]) == ["questions", "out_of_context", "referenced_sources"]
        a, b = (
            client(code).export_questions("demo-guru"),
            client(docs).export_questions("demo-guru"),
        )
    assert (a.scheme, b.scheme) == ("code", "docs")
    assert a.questions == b.questions and a.unanswered == b.unanswered
    assert a.references == b.references and a.questions and a.unanswered


def test_intervals_follow_the_contract_in_utc() -> None:
    now = datetime(2025, 3, 10, 14, 25, 7, tzinfo=UTC)
    last = datetime(2025, 3, 10, 23, 59, 59, 999999, tzinfo=UTC)
    assert interval_range("today", now) == (
        datetime(2025, 3, 10, tzinfo=UTC),
        datetime(2025, 3, 10, 14, 59, 59, 999999, tzinfo=UTC),
    )
    assert interval_range("yesterday", now) == (
        datetime(2025, 3, 9, tzinfo=UTC),
        datetime(2025, 3, 9, 23, 59, 59, 999999, tzinfo=UTC),
    )
    assert interval_range("7d", now) == (datetime(2025, 3, 3, tzinfo=UTC), last)
    assert interval_range("30d", now) == (datetime(2025, 2, 8, tzinfo=UTC), last)
    assert interval_range("3m", now)[0] == datetime(2024, 12, 10, tzinfo=UTC)
    assert interval_range("6m", now)[0] == datetime(2024, 9, 11, tzinfo=UTC)
    assert interval_range("12m", now) == (datetime(2024, 3, 10, tzinfo=UTC), last)


def test_the_12_month_edge_is_inclusive_to_the_microsecond() -> None:
    start, _end = interval_range("12m", NOW)
    with serve(20, days=10) as s:
        s.create("demo-guru", pd.DataFrame({"last_used": [start]}))
        s.create("demo-guru", pd.DataFrame({"last_used": [start - timedelta(minutes=1)]}))
        got = client(s).export_questions("demo-guru", "12m")
        times = {q.asked_at for q in got.questions} | {u.asked_at for u in got.unanswered}
        assert start in times
        assert start - timedelta(minutes=1) not in times
        assert min(times) == start
        three = client(s).export_questions("demo-guru", "3m")
    assert start not in {q.asked_at for q in three.questions}


def test_an_empty_interval_is_a_404_and_an_empty_export(http: requests.Session) -> None:
    with serve(30) as s:
        s.clock = Clock(NOW + timedelta(days=100))
        r = http.post(
            export_url(s),
            json={"export_type": "json", "interval": "7d"},
            headers={"x-api-key": KEY},
        )
        assert (r.status_code, r.json()) == (404, {"msg": "No data found to export"})
        got = client(s).export_questions("demo-guru", "7d")
        assert got == QuestionExport.empty("demo-guru", "7d") and got.scheme == "empty"
        assert client(s).export_questions("demo-guru", "12m").questions  # still within a year
        # An unknown guru is a real 404, never an empty export.
        with pytest.raises(NotFoundError, match="guru 'ghost' not found"):
            client(s).export_questions("ghost")


def test_filters_select_by_source(srv: LocalGurubase) -> None:
    c = client(srv)
    everything = c.export_questions("demo-guru", "12m")
    slack = c.export_questions("demo-guru", "12m", filters={"questions": "slack"})
    assert slack.questions == [q for q in everything.questions if q.source == "Slack"]
    assert slack.questions and slack.unanswered == everything.unanswered
    api = c.export_questions("demo-guru", "12m", filters={"out_of_context": "api"})
    assert api.unanswered == [u for u in everything.unanswered if u.source == "Api"]
    assert api.questions == everything.questions
    assert (
        c.export_questions("demo-guru", "12m", filters={"referenced_sources": "youtube"}).references
        == []
    )
    web = c.export_questions("demo-guru", "12m", filters={"referenced_sources": "website"})
    assert web.references == everything.references
    with pytest.raises(ConfigError):
        c.export_questions("demo-guru", "12m", filters={"questions": "fax"})
    with pytest.raises(ConfigError):
        c.export_questions("demo-guru", "2y")


def test_unknown_export_type_is_a_500_and_csv_is_a_zip(
    srv: LocalGurubase, http: requests.Session
) -> None:
    r = http.post(export_url(srv), json={"export_type": "pdf"}, headers={"x-api-key": KEY})
    assert (r.status_code, r.json()) == (500, {"msg": "Internal server error"})
    r = http.post(
        export_url(srv), json={"export_type": "csv", "interval": "12m"}, headers={"x-api-key": KEY}
    )
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/zip"
    assert r.content[:2] == b"PK" and r.headers["Content-Disposition"].endswith('.zip"')
    r = http.post(export_url(srv), json={}, headers={"x-api-key": KEY})  # xlsx by default
    assert r.status_code == 400 and "json" in r.json()["msg"]


def test_403_and_404_as_list_sessions(http: requests.Session) -> None:
    with serve(20) as s:
        s.add_guru("other-guru", seed=99)
        s.add_key("gk-other-0123456789abcdef", "someone-else", gurus=["other-guru"])
        other = GurubaseClient("gk-other-0123456789abcdef", s.base_url, rate_limit=None)
        with pytest.raises(ForbiddenError, match="does not maintain guru 'demo-guru'"):
            other.export_questions("demo-guru")
        r = http.post(
            export_url(s, "nope"), json={"export_type": "json"}, headers={"x-api-key": KEY}
        )
        assert (r.status_code, r.json()) == (404, {"msg": "Guru type nope not found"})
        r = http.post(export_url(s), json={"export_type": "json"})
        assert (r.status_code, r.json()) == (401, {"msg": "API key is required"})


def test_rate_limit_is_shared_with_listings(http: requests.Session) -> None:
    with serve(20, rate_limit=2, monotonic=Monotonic()) as s:
        list_url = f"{s.base_url}/demo-guru/sessions/"
        assert (
            http.post(list_url, json={"page_num": 1}, headers={"x-api-key": KEY}).status_code == 200
        )
        body = {"export_type": "json", "interval": "12m"}
        assert http.post(export_url(s), json=body, headers={"x-api-key": KEY}).status_code == 200
        assert (
            http.post(list_url, json={"page_num": 1}, headers={"x-api-key": KEY}).status_code == 429
        )
        r = http.post(export_url(s), json=body, headers={"x-api-key": KEY})
        assert r.status_code == 429 and r.headers["Retry-After"] == "60"
        with pytest.raises(RateLimitedError):
            client(s, max_retries=0).export_questions("demo-guru")
        assert s.request_count("/analytics/export/", status=200) == 1


# --- the two sources agree -------------------------------------------------------------------


def test_follow_ups_are_exactly_the_get_session_messages(
    http: requests.Session,
) -> None:
    with serve(150) as s:
        truth = s.truth("demo-guru")
        s.touch("demo-guru", truth["id"].iloc[-3:].tolist())  # follow-ups asked just now
        exported = client(s).export_questions("demo-guru", "12m")
        by_session: dict[str, list[ExportedQuestion]] = defaultdict(list)
        for q in exported.questions:
            if q.session_id is not None:
                by_session[q.session_id].append(q)
        assert set(by_session) <= set(truth["id"])
        linked_roots = 0
        for sid in truth["id"]:
            conv = http.post(
                f"{s.base_url}/sessions/{sid}/conversation/", headers={"x-api-key": KEY}
            ).json()
            messages = conv["conversation"]
            want = sorted(
                (
                    minute(parse_api_timestamp(m["date_created"])),
                    m["slug"],
                    SOURCE_LABELS[m["source"]],
                    m["trust_score"] / 100,
                    m["user_question"],
                )
                for m in messages[1:]
            )
            rows = by_session.get(sid, [])
            got = sorted(
                (q.asked_at, q.question_slug, q.source, q.trust_score, q.question)
                for q in rows
                if q.follow_up
            )
            assert got == want, sid
            root = messages[0]
            roots = [q for q in rows if not q.follow_up]
            if root["source"] in ("SLACK", "DISCORD", "GITHUB"):
                linked_roots += 1
                assert [(q.asked_at, q.question_slug) for q in roots] == [
                    (minute(parse_api_timestamp(root["date_created"])), root["slug"])
                ]
            else:
                # The copy is left out; the original names no session, its slug a prefix.
                assert roots == []
                prefix = conv["root_question_slug"].rsplit("-", 1)[0]
                assert any(
                    q.session_id is None
                    and q.question_slug == prefix
                    and q.asked_at == minute(parse_api_timestamp(root["date_created"]))
                    for q in exported.questions
                )
        assert linked_roots > 0
        assert any(len(v) > 1 for v in by_session.values())


def test_urls_are_built_as_the_contract_says(srv: LocalGurubase) -> None:
    exported = client(srv).export_questions("demo-guru", "12m")
    truth = srv.truth("demo-guru").set_index("id")
    alone = 0
    for q in exported.questions:
        if q.session_id is not None:
            root = truth.loc[q.session_id, "root_question_slug"]
            assert q.url == (
                f"{SITE}/g/demo-guru/{root}/binge/{q.session_id}?question_slug={q.question_slug}"
            )
        else:
            assert q.url == f"{SITE}/g/demo-guru/{q.question_slug}" and not q.follow_up
            alone += 1
    assert alone > 0
    assert link_of(f"{SITE}/g/x/a-b/binge/s-1?question_slug=q-2") == ("s-1", "q-2")
    assert link_of(f"{SITE}/g/x/a-b") == (None, "a-b")
    assert link_of("not a url") == (None, None)


# --- the client against a server written independently of ours ----------------------------


class Canned:
    """A real HTTP server on 127.0.0.1 answering every POST with one fixed JSON body."""

    def __init__(self, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, args=(0.01,), daemon=True).start()
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/api/v1"

    def __enter__(self) -> Canned:
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


GOOD = {
    "datetime": "2025-05-01 10:07",
    "source": "Slack",
    "question": "why?",
    "trust_score": 0.5,
    "follow_up": True,
    "url": f"{SITE}/g/acme/root-q/binge/abc?question_slug=why-1",
    "new_field": 7,
}


def test_docs_scheme_and_unknown_fields_are_accepted() -> None:
    payload = {
        "questions": [
            GOOD,
            {**GOOD, "trust_score": None, "follow_up": False, "url": f"{SITE}/g/acme/q"},
        ],
        "out_of_context": [{"datetime": "2025-05-01 10:08", "source": "Api", "question": "hm"}],
        "referenced_sources": [{"link": "https://x.test", "count": 2}],
    }
    with Canned(200, payload) as canned:
        got = GurubaseClient(KEY, canned.base_url, rate_limit=None).export_questions("acme", "7d")
    assert got.scheme == "docs" and len(got.questions) == 2 and len(got.unanswered) == 1
    first = got.questions[0]
    assert first.asked_at == datetime(2025, 5, 1, 10, 7, tzinfo=UTC)
    assert (first.session_id, first.question_slug, first.extra) == (
        "abc",
        "why-1",
        {"new_field": 7},
    )
    assert got.questions[1].trust_score is None and got.questions[1].session_id is None
    assert got.references == [{"link": "https://x.test", "count": 2}]


@pytest.mark.parametrize(
    ("row", "where"),
    [
        ({**GOOD, "datetime": "yesterday"}, "questions[1].datetime"),
        ({**GOOD, "trust_score": 87}, "questions[1].trust_score"),
        ({**GOOD, "trust_score": "high"}, "questions[1].trust_score"),
        ({k: v for k, v in GOOD.items() if k != "follow_up"}, "questions[1].follow_up"),
        ({**GOOD, "url": 5}, "questions[1].url"),
        ("a row", "questions[1]"),
    ],
)
def test_malformed_rows_name_the_row(
    row: Any, where: str, caplog: pytest.LogCaptureFixture
) -> None:
    with Canned(
        200, {"questions": [GOOD, row], "unable_to_answer": [], "references": []}
    ) as canned:
        c = GurubaseClient(KEY, canned.base_url, rate_limit=None)
        with pytest.raises(UnexpectedResponseError) as info:
            c.export_questions("acme")
    text = str(info.value)
    assert text.startswith(f"Export Analytics 12m: field '{where}' ") and "\n" not in text
    assert KEY not in text + repr(info.value) + caplog.text and "SECRET" not in text


def test_a_missing_questions_list_is_an_error() -> None:
    with Canned(200, {"unable_to_answer": []}) as canned:
        c = GurubaseClient(KEY, canned.base_url, rate_limit=None)
        with pytest.raises(UnexpectedResponseError, match="field 'questions' missing"):
            c.export_questions("acme")
