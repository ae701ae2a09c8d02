"""LocalGurubase over real HTTP (requests on loopback): every rule of the API contract.

Clocks and the rate limiter's monotonic time are injected; nothing waits for real except
the slow-answer fault test (a fraction of a second, to trip a client timeout).
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import pandas as pd
import pytest
import requests

from guru_analytics import synthetic
from guru_analytics.errors import ConfigError, NotFoundError
from guru_analytics.server import DriftConfig, FaultConfig, LocalGurubase, Request
from guru_analytics.timestamps import parse_api_timestamp

END = datetime(2025, 11, 1, tzinfo=UTC)
KEY = "gk-test-key-0123456789abcdef"


class FakeClock:
    """Wall clock for the server: settable, tz-aware UTC."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kwargs: float) -> None:
        self.now += timedelta(**kwargs)


class FakeMonotonic:
    def __init__(self) -> None:
        self.t = 5000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def http() -> Iterator[requests.Session]:
    with requests.Session() as s:
        yield s


@pytest.fixture
def servers() -> Iterator[list[LocalGurubase]]:
    started: list[LocalGurubase] = []
    yield started
    for srv in started:
        srv.stop()


def demo(servers: list[LocalGurubase], n: int = 300, **kwargs: Any) -> LocalGurubase:
    kwargs.setdefault("rate_limit", None)
    kwargs.setdefault("end", END)
    kwargs.setdefault("clock", FakeClock(END + timedelta(hours=1)))
    srv = LocalGurubase.demo(
        n, kwargs.pop("n_users", 12), kwargs.pop("days", 30), api_key=KEY, **kwargs
    )
    servers.append(srv.start())
    return srv


@pytest.fixture(scope="module")
def static() -> Iterator[LocalGurubase]:
    """A read-only guru for tests that never change data."""
    clock = FakeClock(END - timedelta(hours=3))
    srv = LocalGurubase.demo(
        1500, 30, 60, seed=3, end=END, rate_limit=None, clock=clock, api_key=KEY
    )
    with srv:
        yield srv


def list_url(srv: LocalGurubase, slug: str | None = None) -> str:
    return f"{srv.base_url}/{slug or srv.guru_slug}/sessions/"


def conv_url(srv: LocalGurubase, sid: str) -> str:
    return f"{srv.base_url}/sessions/{sid}/conversation/"


def post(
    http: requests.Session, url: str, body: Any = None, key: str | None = KEY, **kw: Any
) -> requests.Response:
    headers = {} if key is None else {"x-api-key": key}
    if body is None:
        return http.post(url, headers=headers, **kw)
    return http.post(url, json=body, headers=headers, **kw)


def sessions_of(payload: dict[str, Any]) -> list[dict[str, Any]]:
    return payload["today"] + payload["last_week"] + payload["older"]


def read_all(
    http: requests.Session, srv: LocalGurubase, slug: str | None = None, **body: Any
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every page until has_more is false: (sessions, raw payloads)."""
    out: list[dict[str, Any]] = []
    pages: list[dict[str, Any]] = []
    page = 1
    while True:
        r = post(http, list_url(srv, slug), {"page_num": page, **body})
        assert r.status_code == 200, r.text
        payload = r.json()
        pages.append(payload)
        out.extend(sessions_of(payload))
        if not payload["has_more"]:
            return out, pages
        page += 1


# --- List Sessions: shape, order, paging ----------------------------------------------------


def test_page_one_shape_order_and_fields(static: LocalGurubase, http: requests.Session) -> None:
    r = post(http, list_url(static), {"page_num": 1})
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/json"
    payload = r.json()
    assert list(payload) == ["today", "last_week", "older", "has_more"]
    assert payload["has_more"] is True
    truth = static.truth(static.guru_slug)
    got = sessions_of(payload)
    assert [s["id"] for s in got] == truth["id"].iloc[:30].tolist()
    first = got[0]
    assert set(first) == {
        "id",
        "last_used",
        "guru_type_slug",
        "guru_type_name",
        "root_question_name",
        "root_question_slug",
        "root_question_link",
    }
    assert first["guru_type_slug"] == "demo-guru" and first["guru_type_name"] == "Demo Guru"
    row = truth.iloc[0]
    assert first["root_question_name"] == row["root_question_name"]
    assert first["root_question_slug"] == row["root_question_slug"]
    assert first["root_question_link"] == (
        f"https://gurubase.io/g/demo-guru/{row['root_question_slug']}/binge/{row['id']}"
    )
    assert first["last_used"] == row["last_used"].strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    assert all(len(s["last_used"]) == 27 and s["last_used"].endswith("Z") for s in got)
    # Server clock 2025-10-31T21:00Z: the newest sessions fall on that UTC day.
    for s in payload["today"]:
        assert s["last_used"].startswith("2025-10-31")
    for s in payload["last_week"]:
        assert "2025-10-24" <= s["last_used"][:10] <= "2025-10-30"


def test_full_read_equals_truth_and_has_more_ends(
    static: LocalGurubase, http: requests.Session
) -> None:
    got, pages = read_all(http, static)
    truth = static.truth(static.guru_slug)
    assert [s["id"] for s in got] == truth["id"].tolist()
    assert len(pages) == -(-1500 // 30) == 50
    assert all(p["has_more"] for p in pages[:-1]) and pages[-1]["has_more"] is False
    # One more page past the end: empty, has_more false.
    r = post(http, list_url(static), {"page_num": 51})
    assert r.json() == {"today": [], "last_week": [], "older": [], "has_more": False}


def test_page_size_is_configurable(servers: list[LocalGurubase], http: requests.Session) -> None:
    srv = demo(servers, 50, page_size=7)
    got, pages = read_all(http, srv)
    assert len(pages) == 8 and [len(sessions_of(p)) for p in pages] == [7] * 7 + [1]
    assert [s["id"] for s in got] == srv.truth(srv.guru_slug)["id"].tolist()
    with pytest.raises(ConfigError):
        LocalGurubase(page_size=0)


@pytest.mark.parametrize(
    ("page_num", "expected_first_index"), [("2", 30), (" 3 ", 60), (2, 30), (2.0, 30), ("+1", 0)]
)
def test_page_num_forms_the_backend_accepts(
    static: LocalGurubase, http: requests.Session, page_num: Any, expected_first_index: int
) -> None:
    r = post(http, list_url(static), {"page_num": page_num})
    assert r.status_code == 200
    truth_ids = static.truth(static.guru_slug)["id"].tolist()
    assert sessions_of(r.json())[0]["id"] == truth_ids[expected_first_index]


def test_missing_page_num_or_body_means_page_one(
    static: LocalGurubase, http: requests.Session
) -> None:
    first = static.truth(static.guru_slug)["id"].iloc[0]
    for r in (
        post(http, list_url(static), {}),
        post(http, list_url(static), None),
        post(http, list_url(static), {"page_num": 1, "search_query": None}),
    ):
        assert r.status_code == 200 and sessions_of(r.json())[0]["id"] == first


@pytest.mark.parametrize("page_num", ["abc", "1.5", "", None, [1], {"n": 1}, "١x"])
def test_page_num_not_an_integer_is_400(
    static: LocalGurubase, http: requests.Session, page_num: Any
) -> None:
    r = post(http, list_url(static), {"page_num": page_num})
    assert r.status_code == 400
    assert r.json() == {"msg": "Page number must be an integer"}


@pytest.mark.parametrize("page_num", [0, -1, "-5", "0"])
def test_page_num_zero_or_below_is_an_html_500(
    static: LocalGurubase, http: requests.Session, page_num: Any
) -> None:
    r = post(http, list_url(static), {"page_num": page_num})
    assert r.status_code == 500
    assert r.headers["Content-Type"].startswith("text/html")
    assert "<h1>Server Error (500)</h1>" in r.text
    assert static.internal_errors == []


def test_huge_page_num_is_an_empty_last_page(static: LocalGurubase, http: requests.Session) -> None:
    for page in (10**6, str(10**30)):
        r = post(http, list_url(static), {"page_num": page})
        assert r.status_code == 200
        assert r.json() == {"today": [], "last_week": [], "older": [], "has_more": False}


def test_bad_bodies_are_json_400(static: LocalGurubase, http: requests.Session) -> None:
    url = list_url(static)
    for data in (b"{not json", b"\xff\xfe", b"[1, 2]", b'"page"'):
        r = http.post(
            url, data=data, headers={"x-api-key": KEY, "Content-Type": "application/json"}
        )
        assert r.status_code == 400, data
        assert set(r.json()) == {"msg"} and r.json()["msg"]
    r = post(http, url, {"search_query": 5})
    assert r.status_code == 400 and r.json() == {"msg": "search_query must be a string"}
    r = post(http, url, {"external_user_id": ["a"]})
    assert r.status_code == 400 and r.json() == {"msg": "external_user_id must be a string"}


# --- auth, routing and methods --------------------------------------------------------------


def test_auth_errors_exact(servers: list[LocalGurubase], http: requests.Session) -> None:
    srv = demo(servers, 40)
    srv.add_guru("other-guru", synthetic.generate(20, 2, 5, seed=99, guru_slug="other-guru"))
    srv.add_key("gk-limited-key-000000000000", "limited-owner", gurus=["other-guru"])
    url = list_url(srv)
    r = post(http, url, {"page_num": 1}, key=None)
    assert (r.status_code, r.json()) == (401, {"msg": "API key is required"})
    r = post(http, url, {"page_num": 1}, key="")
    assert (r.status_code, r.json()) == (401, {"msg": "API key is required"})
    r = post(http, url, {"page_num": 1}, key="gk-wrong")
    assert (r.status_code, r.json()) == (401, {"msg": "Invalid API key"})
    r = post(http, list_url(srv, "nope"), {"page_num": 1})
    assert (r.status_code, r.json()) == (404, {"msg": "Guru type nope not found"})
    r = post(http, url, {"page_num": 1}, key="gk-limited-key-000000000000")
    assert (r.status_code, r.json()) == (403, {"msg": "Forbidden"})
    # 401 comes before 404 and 400; 404 before 400.
    assert post(http, list_url(srv, "nope"), {"page_num": "x"}, key="bad").status_code == 401
    assert post(http, list_url(srv, "nope"), {"page_num": "x"}).status_code == 404
    # Header name matched case-insensitively.
    for name in ("X-API-KEY", "X-Api-Key", "x-Api-kEY"):
        r = http.post(url, json={"page_num": 1}, headers={name: KEY})
        assert r.status_code == 200
    # A key of the same owner reads everything that owner may read.
    r = post(http, list_url(srv, "other-guru"), {"page_num": 1}, key="gk-limited-key-000000000000")
    assert r.status_code == 200 and len(sessions_of(r.json())) == 20
    assert sessions_of(r.json())[0]["guru_type_name"] == "Other Guru"


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
def test_wrong_method_is_405_on_both_endpoints(
    static: LocalGurubase, http: requests.Session, method: str
) -> None:
    sid = static.truth(static.guru_slug)["id"].iloc[0]
    for url in (list_url(static), conv_url(static, sid)):
        r = http.request(method, url, headers={"x-api-key": KEY})
        assert r.status_code == 405
        assert r.json() == {"detail": f'Method "{method}" not allowed.'}
        assert r.text == '{"detail":"Method \\"' + method + '\\" not allowed."}'


def test_unknown_paths_are_html_404(static: LocalGurubase, http: requests.Session) -> None:
    base = static.base_url
    for path in (
        "/",
        "/api/v1/",
        f"/api/v1/{static.guru_slug}/sessions",
        "/api/v2/demo-guru/sessions/",
        "/api/v1/demo-guru/sessions/extra/",
        "/favicon.ico",
    ):
        url = base.replace("/api/v1", "") + path
        r = http.post(url, json={"page_num": 1}, headers={"x-api-key": KEY})
        assert r.status_code == 404, path
        assert r.headers["Content-Type"].startswith("text/html") and "Not Found" in r.text


# --- search and user filter -----------------------------------------------------------------


def _expected_search(truth: pd.DataFrame, query: str) -> list[str]:
    q = query.strip().lower()
    hit = (
        truth["root_question_name"].str.lower().str.contains(q, regex=False)
        | truth["user_question"].str.lower().str.contains(q, regex=False)
        | truth["root_question_slug"].str.lower().str.contains(q, regex=False)
    )
    return truth.loc[hit, "id"].tolist()


def test_search_title_hidden_wording_and_slug(
    static: LocalGurubase, http: requests.Session
) -> None:
    truth = static.truth(static.guru_slug)
    # Title words, mixed case, surrounded by spaces.
    got, _ = read_all(http, static, search_query="  KuBeRnEtEs ")
    expected = _expected_search(truth, "kubernetes")
    assert 10 < len(expected) < len(truth)
    assert [s["id"] for s in got] == expected
    # Only in the hidden wording (never in a title or slug).
    hidden_only = "quick question"
    assert not truth["root_question_name"].str.lower().str.contains(hidden_only).any()
    got, _ = read_all(http, static, search_query="Quick Question:")
    expected = _expected_search(truth, "quick question:")
    assert len(expected) > 100 and [s["id"] for s in got] == expected
    # The unique slug suffix matches exactly one session.
    slug = truth["root_question_slug"].iloc[123]
    suffix = slug.rsplit("-", 1)[1]
    got, _ = read_all(http, static, search_query=suffix.upper())
    assert [s["id"] for s in got] == _expected_search(truth, suffix)
    assert truth["id"].iloc[123] in [s["id"] for s in got]
    # Nothing matches: one empty page.
    got, pages = read_all(http, static, search_query="zzz-no-such-thing")
    assert got == [] and len(pages) == 1
    # Whitespace only = no filter.
    got, _ = read_all(http, static, search_query="   ")
    assert len(got) == len(truth)


def test_external_user_filter_is_exact(static: LocalGurubase, http: requests.Session) -> None:
    truth = static.truth(static.guru_slug)
    counts = truth["external_user_id"].value_counts()
    top = counts.index[0]
    got, pages = read_all(http, static, external_user_id=top)
    assert [s["id"] for s in got] == static.truth(static.guru_slug, top)["id"].tolist()
    assert len(got) == counts.iloc[0] > 30 and len(pages) == -(-len(got) // 30)
    assert static.users(static.guru_slug) == sorted(counts.index)
    for other in (top.upper(), top[:-1], f" {top}"):
        got, _ = read_all(http, static, external_user_id=other)
        assert got == []
    got, _ = read_all(http, static, external_user_id="")
    assert len(got) == len(truth)
    # Combined with a search.
    got, _ = read_all(http, static, external_user_id=top, search_query="how")
    assert [s["id"] for s in got] == _expected_search(static.truth(static.guru_slug, top), "how")


# --- ties, rootless sessions, grouping ------------------------------------------------------


def _tie_frame(n_tied: int, n_other: int, tie_at: datetime) -> pd.DataFrame:
    lu = [tie_at + timedelta(minutes=10 + i) for i in range(n_other // 2)]
    lu += [tie_at] * n_tied
    lu += [tie_at - timedelta(minutes=10 + i) for i in range(n_other - n_other // 2)]
    return pd.DataFrame(
        {
            "id": [f"s{i:04d}" for i in range(len(lu))],
            "last_used": pd.to_datetime(lu, utc=True).as_unit("us"),
        }
    )


def test_ties_reshuffle_between_requests(
    servers: list[LocalGurubase], http: requests.Session
) -> None:
    at = END - timedelta(days=1)
    srv = LocalGurubase(rate_limit=None, clock=FakeClock(END), seed=5).start()
    servers.append(srv)
    srv.add_guru("ties", _tie_frame(100, 80, at))
    srv.add_key(KEY, "owner")
    truth = srv.truth("ties")
    tied = set(truth.loc[truth["last_used"] == at, "id"])
    assert len(tied) == 100
    orders, sets = set(), set()
    for _ in range(15):
        page = sessions_of(post(http, list_url(srv, "ties"), {"page_num": 2}).json())
        ids = [s["id"] for s in page]
        assert len(ids) == 30 == len(set(ids))
        # Page 2 = rows 30..59: 10 untied rows above (40 in all), then 20 of the tie group.
        assert ids[:10] == truth["id"].iloc[30:40].tolist()
        assert set(ids[10:]) <= tied
        assert Counter(s["last_used"] for s in page) == Counter(
            truth["last_used"].iloc[30:60].dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        )
        orders.add(tuple(ids))
        sets.add(frozenset(ids))
    assert len(orders) > 5 and len(sets) > 5
    # A full read of the static list always returns the same multiset of last_used values,
    # though ids straddling page boundaries of the tie group may repeat or go missing.
    expected = Counter(truth["last_used"].dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
    dup_seen = False
    for _ in range(6):
        got, _pages = read_all(http, srv, "ties")
        assert Counter(s["last_used"] for s in got) == expected
        ids = [s["id"] for s in got]
        assert set(ids) - tied == set(truth["id"]) - tied  # untied rows exactly once
        assert Counter(i for i in ids if i not in tied).most_common(1)[0][1] == 1
        dup_seen |= len(set(ids)) < len(ids)
    assert dup_seen  # the hazard the client must handle


def test_no_tie_shuffle_is_stable(servers: list[LocalGurubase], http: requests.Session) -> None:
    srv = LocalGurubase(rate_limit=None, clock=FakeClock(END), tie_shuffle=False).start()
    servers.append(srv)
    srv.add_guru("ties", _tie_frame(100, 40, END - timedelta(days=1)))
    srv.add_key(KEY, "owner")
    first, _ = read_all(http, srv, "ties")
    second, _ = read_all(http, srv, "ties")
    assert first == second
    assert sorted(s["id"] for s in first) == sorted(srv.truth("ties")["id"])


def test_rootless_sessions_make_short_and_empty_pages(
    servers: list[LocalGurubase], http: requests.Session
) -> None:
    # Rows 30..59 of the order have no first question: page 2 is empty but has_more is true.
    lu = pd.to_datetime([END - timedelta(minutes=i) for i in range(100)], utc=True).as_unit("us")
    frame = pd.DataFrame({"id": [f"r{i:03d}" for i in range(100)], "last_used": lu})
    frame["has_root"] = [not (30 <= i < 60 or i % 7 == 3) for i in range(100)]
    srv = LocalGurubase(rate_limit=None, clock=FakeClock(END)).start()
    servers.append(srv)
    srv.add_guru("holes", frame)
    srv.add_key(KEY, "owner")
    got, pages = read_all(http, srv, "holes")
    sizes = [len(sessions_of(p)) for p in pages]
    assert sizes == [26, 0, 26, 9]
    assert [p["has_more"] for p in pages] == [True, True, True, False]
    assert [s["id"] for s in got] == srv.truth("holes")["id"].tolist()
    assert len(srv.truth("holes")) == 61
    # Rootless sessions never match a search (no first question to match).
    got, pages = read_all(http, srv, "holes", search_query="?")
    expected = _expected_search(srv.truth("holes"), "?")
    assert [s["id"] for s in got] == expected and len(pages) == -(-len(expected) // 30)

    gen = demo(servers, 600, rootless_share=0.3, seed=4)
    got, pages = read_all(http, gen)
    assert len(pages) == 20 and all(len(sessions_of(p)) < 30 for p in pages[:-1])
    assert [s["id"] for s in got] == gen.truth(gen.guru_slug)["id"].tolist()
    assert len(got) == gen.synthetic.sessions["has_root"].sum()


def test_grouping_by_utc_day_on_the_server_clock(
    servers: list[LocalGurubase], http: requests.Session
) -> None:
    clock = FakeClock(datetime(2025, 6, 10, 0, 0, 0, tzinfo=UTC))
    cases = {
        "future": datetime(2025, 6, 11, 0, 0, tzinfo=UTC),
        "today-end": datetime(2025, 6, 10, 23, 59, 59, 999999, tzinfo=UTC),
        "today-start": datetime(2025, 6, 10, 0, 0, tzinfo=UTC),
        "yesterday-end": datetime(2025, 6, 9, 23, 59, 59, 999999, tzinfo=UTC),
        "week-start": datetime(2025, 6, 3, 0, 0, tzinfo=UTC),
        "week-before": datetime(2025, 6, 2, 23, 59, 59, 999999, tzinfo=UTC),
        "old": datetime(2024, 1, 1, tzinfo=UTC),
    }
    frame = pd.DataFrame(
        {
            "id": list(cases),
            "last_used": pd.to_datetime(list(cases.values()), utc=True).as_unit("us"),
        }
    )
    srv = LocalGurubase(rate_limit=None, clock=clock).start()
    servers.append(srv)
    srv.add_guru("days", frame)
    srv.add_key(KEY, "owner")

    def groups() -> dict[str, list[str]]:
        payload = post(http, list_url(srv, "days"), {"page_num": 1}).json()
        return {k: [s["id"] for s in payload[k]] for k in ("today", "last_week", "older")}

    assert groups() == {
        "today": ["today-end", "today-start"],
        "last_week": ["yesterday-end", "week-start"],
        "older": ["future", "week-before", "old"],
    }
    clock.now = datetime(2025, 6, 10, 23, 59, 59, 999999, tzinfo=UTC)
    assert groups()["today"] == ["today-end", "today-start"]
    clock.advance(microseconds=1)  # 2025-06-11T00:00Z
    assert groups() == {
        "today": ["future"],
        "last_week": ["today-end", "today-start", "yesterday-end"],
        "older": ["week-start", "week-before", "old"],
    }


# --- rate limit -----------------------------------------------------------------------------


def test_sliding_window_rate_limit(servers: list[LocalGurubase], http: requests.Session) -> None:
    mono = FakeMonotonic()
    srv = demo(servers, 40, rate_limit=10, rate_window=60.0, monotonic=mono)
    url = list_url(srv)
    for i in range(10):  # one request per second
        mono.t = 5000.0 + i
        assert post(http, url, {"page_num": 1}).status_code == 200
    mono.t = 5030.0
    r = post(http, url, {"page_num": 1})
    assert r.status_code == 429
    assert r.json() == {"msg": "Request was throttled. Expected available in 30 seconds."}
    assert r.headers["Retry-After"] == "30"
    mono.t = 5059.5  # the first hit (t=5000) is still in the window
    r = post(http, url, {"page_num": 1})
    assert r.status_code == 429 and r.headers["Retry-After"] == "1"
    mono.t = 5060.0  # the first hit slid out: exactly one slot
    assert post(http, url, {"page_num": 1}).status_code == 200
    r = post(http, url, {"page_num": 1})
    assert r.status_code == 429 and r.headers["Retry-After"] == "1"  # next slot at t=5061
    # Get Session shares the owner's window.
    sid = srv.truth(srv.guru_slug)["id"].iloc[0]
    assert post(http, conv_url(srv, sid)).status_code == 429
    mono.t = 5061.0
    assert post(http, conv_url(srv, sid)).status_code == 200
    assert srv.request_count(status=429) == 4


def test_rate_limit_before_key_with_anonymous_bucket(
    servers: list[LocalGurubase], http: requests.Session
) -> None:
    mono = FakeMonotonic()
    srv = demo(servers, 40, rate_limit=3, rate_window=60.0, monotonic=mono)
    srv.add_key("gk-second-key-of-same-owner-00", "demo-owner")
    url = list_url(srv)
    assert [post(http, url, {"page_num": 1}, key="bad").status_code for _ in range(3)] == [401] * 3
    r = post(http, url, {"page_num": 1}, key="bad")
    assert r.status_code == 429 and r.headers["Retry-After"] == "60"
    assert post(http, url, {"page_num": 1}, key=None).status_code == 429  # same address bucket
    assert post(http, url, {"page_num": 1}, key="gk-second-key-of-same-owner-00").status_code == 200
    assert post(http, url, {"page_num": 1}).status_code == 200
    assert post(http, list_url(srv, "nope"), {"page_num": 1}).status_code == 404  # counts too
    assert post(http, url, {"page_num": 1}).status_code == 429  # both keys share one owner
    assert http.get(url, headers={"x-api-key": KEY}).status_code == 429  # before the 405
    mono.t += 60
    assert post(http, url, {"page_num": 1}).status_code == 200
    # The log names the owner, never the key.
    owners = [r.owner for r in srv.log]
    assert owners[:5] == [None] * 5 and owners[5] == "demo-owner"
    assert all(KEY not in repr(r) for r in srv.log) and KEY not in repr(srv)
    # Unknown paths are not throttled.
    assert http.post(srv.base_url + "/nothing/", headers={"x-api-key": KEY}).status_code == 404


def test_rate_limit_none_and_no_retry_after_header(
    servers: list[LocalGurubase], http: requests.Session
) -> None:
    srv = demo(servers, 40, rate_limit=None)
    assert all(post(http, list_url(srv), {}).status_code == 200 for _ in range(40))
    mono = FakeMonotonic()
    srv = demo(
        servers, 40, rate_limit=1, monotonic=mono, faults=FaultConfig(retry_after_header=False)
    )
    assert post(http, list_url(srv), {}).status_code == 200
    r = post(http, list_url(srv), {})
    assert r.status_code == 429 and "Retry-After" not in r.headers
    assert r.json()["msg"] == "Request was throttled. Expected available in 60 seconds."


# --- faults ---------------------------------------------------------------------------------


def test_fault_errors_with_html_or_json_bodies(
    servers: list[LocalGurubase], http: requests.Session
) -> None:
    srv = demo(
        servers,
        40,
        faults=FaultConfig(error_rate=1.0, error_statuses=(502,), error_bodies=("html",)),
    )
    r = post(http, list_url(srv), {"page_num": 1})
    assert r.status_code == 502 and r.headers["Content-Type"].startswith("text/html")
    assert "502 Bad Gateway" in r.text
    srv = demo(
        servers,
        40,
        faults=FaultConfig(error_rate=1.0, error_statuses=(500, 503), error_bodies=("json",)),
    )
    statuses = Counter()
    for _ in range(30):
        r = post(http, list_url(srv), {"page_num": 1})
        statuses[r.status_code] += 1
        assert set(r.json()) == {"msg"}
    assert set(statuses) == {500, 503}
    # Faults apply to Get Session and to requests that would have failed anyway.
    sid = srv.truth(srv.guru_slug)["id"].iloc[0]
    assert post(http, conv_url(srv, sid)).status_code in (500, 503)
    assert post(http, list_url(srv), {"page_num": 1}, key="bad").status_code in (500, 503)
    assert srv.request_count(status=200) == 0 and len(srv.log) == 32
    with pytest.raises(ConfigError):
        FaultConfig(error_rate=2.0)
    with pytest.raises(ConfigError):
        FaultConfig(error_statuses=(200,))


def test_fault_drop_closes_without_answer(
    servers: list[LocalGurubase], http: requests.Session
) -> None:
    srv = demo(servers, 40, faults=FaultConfig(drop_rate=1.0))
    with pytest.raises(requests.ConnectionError):
        post(http, list_url(srv), {"page_num": 1})
    assert [r.status for r in srv.log] == [None]
    assert srv.request_count(status=None) == 1


def test_fault_slow_answers_trip_client_timeouts(servers: list[LocalGurubase]) -> None:
    sleeps: list[float] = []
    srv = demo(
        servers, 40, faults=FaultConfig(slow_rate=1.0, slow_seconds=7.5), sleep=sleeps.append
    )
    with requests.Session() as s:
        assert post(s, list_url(srv), {"page_num": 1}).status_code == 200
    assert sleeps == [7.5]
    # A real delay against a real client timeout (the only real wait in this file).
    srv = demo(servers, 40, faults=FaultConfig(slow_rate=1.0, slow_seconds=0.5))
    with requests.Session() as s, pytest.raises(requests.Timeout):
        post(s, list_url(srv), {"page_num": 1}, timeout=0.1)


def test_fault_throttle_bursts(servers: list[LocalGurubase], http: requests.Session) -> None:
    srv = demo(
        servers,
        40,
        faults=FaultConfig(throttle_rate=0.2, throttle_burst=3, throttle_seconds=4, seed=1),
    )
    statuses = [post(http, list_url(srv), {"page_num": 1}).status_code for _ in range(60)]
    runs = "".join("T" if s == 429 else "." for s in statuses).split(".")
    assert "TTT" in runs and all(len(run) % 3 == 0 for run in runs[:-1])
    r = post(http, list_url(srv), {"page_num": 1})
    while r.status_code != 429:
        r = post(http, list_url(srv), {"page_num": 1})
    assert r.headers["Retry-After"] == "4"
    assert r.json() == {"msg": "Request was throttled. Expected available in 4 seconds."}
    srv = demo(
        servers,
        40,
        faults=FaultConfig(throttle_rate=1.0, retry_after_header=False, throttle_seconds=9),
    )
    r = post(http, list_url(srv), {"page_num": 1})
    assert r.status_code == 429 and "Retry-After" not in r.headers
    assert "9 seconds" in r.json()["msg"]


def test_fault_malformed_json_and_html_200(
    servers: list[LocalGurubase], http: requests.Session
) -> None:
    srv = demo(servers, 40, faults=FaultConfig(malformed_json_rate=1.0))
    r = post(http, list_url(srv), {"page_num": 1})
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/json"
    assert r.text.startswith('{"today":')
    with pytest.raises(ValueError):
        json.loads(r.text)
    # Only 200 answers are spoiled: errors stay errors.
    assert post(http, list_url(srv), {"page_num": "x"}).json() == {
        "msg": "Page number must be an integer"
    }
    srv = demo(servers, 40, faults=FaultConfig(html_200_rate=1.0))
    r = post(http, list_url(srv), {"page_num": 1})
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/html")
    assert r.text.lstrip().lower().startswith("<!doctype html>")


def test_faults_are_reproducible_and_do_not_change_the_truth(
    servers: list[LocalGurubase], http: requests.Session
) -> None:
    faults = FaultConfig(error_rate=0.3, malformed_json_rate=0.2, throttle_rate=0.1, seed=42)
    drift = DriftConfig(touch_per_request=0.5, new_per_request=0.3, delete_per_request=0.2)
    a = demo(servers, 200, faults=faults, drift=drift, seed=8)
    b = demo(servers, 200, faults=faults, drift=drift, seed=8)
    c = demo(servers, 200, drift=drift, seed=8)
    for srv in (a, b, c):
        for page in range(1, 16):
            post(http, list_url(srv), {"page_num": page})
    assert [r.status for r in a.log] == [r.status for r in b.log]
    statuses = Counter(r.status for r in a.log)
    assert statuses[200] < 15 and len(statuses) >= 3
    # Faulted requests applied their drift like any other: all three truths are equal.
    pd.testing.assert_frame_equal(a.truth(a.guru_slug), c.truth(c.guru_slug))
    pd.testing.assert_frame_equal(a.truth(a.guru_slug), b.truth(b.guru_slug))


# --- drift ----------------------------------------------------------------------------------


def test_drift_per_request(servers: list[LocalGurubase], http: requests.Session) -> None:
    srv = demo(servers, 300, drift=DriftConfig(touch_per_request=2.0), seed=2)
    before = srv.truth(srv.guru_slug)
    top_before = before["last_used"].iloc[0]
    payload = post(http, list_url(srv), {"page_num": 1}).json()
    after = srv.truth(srv.guru_slug)
    moved = after[after["last_used"] > top_before]
    assert len(moved) >= 1 and set(moved["id"]) <= set(before["id"]) and len(after) == 300
    # The answer already shows the touched sessions on top.
    assert [s["id"] for s in sessions_of(payload)[: len(moved)]] == moved["id"].tolist()
    assert (
        moved["n_messages"] == before.set_index("id").loc[moved["id"], "n_messages"].to_numpy() + 1
    ).all()

    srv = demo(servers, 300, drift=DriftConfig(new_per_request=1.5, delete_per_request=1.0), seed=2)
    before = srv.truth(srv.guru_slug)
    for page in range(1, 11):
        post(http, list_url(srv), {"page_num": page})
    after = srv.truth(srv.guru_slug)
    new = set(after["id"]) - set(before["id"])
    gone = set(before["id"]) - set(after["id"])
    assert len(new) > 5 and len(gone) > 3
    assert len(after) == 300 + len(new) - len(gone)
    assert after.set_index("id").loc[list(new), "n_messages"].eq(1).all()
    assert post(http, conv_url(srv, sorted(gone)[0])).json() == {"msg": "Binge not found"}
    # Get Session and rejected requests do not drift.
    n = len(srv.truth(srv.guru_slug))
    post(http, conv_url(srv, after["id"].iloc[0]))
    post(http, list_url(srv), {"page_num": "x"})
    post(http, list_url(srv), {"page_num": 1}, key="bad")
    assert len(srv.truth(srv.guru_slug)) == n


def test_drift_per_second_follows_the_clock(
    servers: list[LocalGurubase], http: requests.Session
) -> None:
    clock = FakeClock(END + timedelta(hours=1))
    srv = demo(
        servers, 300, clock=clock, drift=DriftConfig(new_per_second=0.1, touch_per_second=0.05)
    )
    before = srv.truth(srv.guru_slug)
    for _ in range(3):  # no time passes: nothing changes
        post(http, list_url(srv), {"page_num": 1})
    pd.testing.assert_frame_equal(before, srv.truth(srv.guru_slug))
    start = clock.now
    clock.advance(seconds=200)
    payload = post(http, list_url(srv), {"page_num": 1}).json()
    after = srv.truth(srv.guru_slug)
    changed = after[after["last_used"] > before["last_used"].max()]
    assert 15 < len(changed) < 45
    assert (changed["last_used"] > start).all() and (changed["last_used"] <= clock.now).all()
    assert changed["last_used"].is_unique
    assert [s["id"] for s in sessions_of(payload)[:10]] == after["id"].iloc[:10].tolist()
    assert {s["id"] for s in payload["today"]} >= set(changed["id"].iloc[:30])


def test_on_request_scripting(servers: list[LocalGurubase], http: requests.Session) -> None:
    srv = demo(servers, 100)
    truth = srv.truth(srv.guru_slug)
    target = truth["id"].iloc[50]
    calls: list[int] = []
    srv.on_request(3, lambda s: s.touch(s.guru_slug, target))
    srv.on_request(3, lambda s: calls.append(s.requests_received))
    srv.on_request(4, lambda s: s.delete(s.guru_slug, target))
    firsts = [
        sessions_of(post(http, list_url(srv), {"page_num": 1}).json())[0]["id"] for _ in range(4)
    ]
    assert firsts == [truth["id"].iloc[0], truth["id"].iloc[0], target, truth["id"].iloc[0]]
    assert calls == [3]
    with pytest.raises(ConfigError):
        srv.on_request(0, lambda s: None)


def test_touch_create_delete_and_truth(
    servers: list[LocalGurubase], http: requests.Session
) -> None:
    clock = FakeClock(END + timedelta(days=1))
    srv = demo(servers, 100, clock=clock)
    slug = srv.guru_slug
    truth = srv.truth(slug)
    a, b, c = truth["id"].iloc[[10, 20, 30]]
    times = srv.touch(slug, [a, b])
    assert times[0] > truth["last_used"].iloc[0] and times[1] - times[0] == timedelta(
        microseconds=1
    )
    assert srv.truth(slug)["id"].iloc[:2].tolist() == [b, a]
    tie = clock.now + timedelta(hours=5)
    srv.touch(slug, [a, b, c], at=tie)
    assert set(srv.truth(slug)["id"].iloc[:3]) == {a, b, c}
    assert (srv.truth(slug)["last_used"].iloc[:3] == tie).all()
    with pytest.raises(ConfigError):
        srv.touch(slug, a, at=tie - timedelta(seconds=1))
    new_ids = srv.create(slug, 3, external_user_id="user-9999")
    t = srv.truth(slug)
    assert t["id"].iloc[:3].tolist() == new_ids[::-1] and len(t) == 103
    assert srv.truth(slug, "user-9999")["id"].tolist() == new_ids[::-1]
    rows = pd.DataFrame({"id": ["custom-1", "custom-2"], "root_question_name": ["Alpha?", "Beta?"]})
    assert srv.create(slug, rows) == ["custom-1", "custom-2"]
    assert srv.truth(slug)["root_question_name"].iloc[:2].tolist() == ["Beta?", "Alpha?"]
    got, _ = read_all(http, srv, search_query="beta?")
    assert [s["id"] for s in got] == ["custom-2"]
    srv.delete(slug, [a, "custom-1"])
    assert a not in set(srv.truth(slug)["id"]) and len(srv.truth(slug)) == 103
    with pytest.raises(NotFoundError):
        srv.touch(slug, a)
    with pytest.raises(ConfigError):
        srv.create(slug, pd.DataFrame({"id": [b]}))  # already served
    got, _ = read_all(http, srv)
    assert [s["id"] for s in got] == srv.truth(slug)["id"].tolist()


# --- Get Session ----------------------------------------------------------------------------


def test_conversation_matches_the_listing(static: LocalGurubase, http: requests.Session) -> None:
    listed = sessions_of(post(http, list_url(static), {"page_num": 2}).json())
    for s in listed[:10]:
        r = post(http, conv_url(static, s["id"]))
        assert r.status_code == 200
        conv = r.json()
        assert list(conv) == [
            "binge_id",
            "root_question_slug",
            "date_created",
            "last_used",
            "conversation",
        ]
        assert conv["binge_id"] == s["id"] and conv["root_question_slug"] == s["root_question_slug"]
        assert conv["last_used"].endswith("+00:00") and conv["date_created"].endswith("+00:00")
        assert parse_api_timestamp(conv["last_used"]) == parse_api_timestamp(s["last_used"])
        msgs = conv["conversation"]
        assert msgs[0]["parent_slug"] is None and msgs[0]["question"] == s["root_question_name"]
        assert msgs[0]["date_created"] == conv["date_created"]
        assert msgs[-1]["date_created"] == conv["last_used"]
        assert msgs == static.synthetic.messages(s["id"]) == static.conversation(s["id"])


def test_conversation_after_touch_gains_a_message(
    servers: list[LocalGurubase], http: requests.Session
) -> None:
    srv = demo(servers, 60)
    sid = srv.truth(srv.guru_slug)["id"].iloc[7]
    before = post(http, conv_url(srv, sid)).json()["conversation"]
    (when,) = srv.touch(srv.guru_slug, sid)
    listed = sessions_of(post(http, list_url(srv), {"page_num": 1}).json())[0]
    conv = post(http, conv_url(srv, sid)).json()
    assert listed["id"] == sid and parse_api_timestamp(listed["last_used"]) == when
    assert parse_api_timestamp(conv["last_used"]) == when
    assert conv["conversation"][:-1] == before
    last = conv["conversation"][-1]
    assert parse_api_timestamp(last["date_created"]) == when
    assert last["parent_slug"] == before[-1]["slug"] and last["id"] not in {m["id"] for m in before}


def test_conversation_errors(servers: list[LocalGurubase], http: requests.Session) -> None:
    srv = demo(servers, 30)
    srv.add_guru("private", synthetic.generate(10, 2, 5, seed=77, guru_slug="private"))
    srv.add_key("gk-outsider-000000000000", "outsider", gurus=["private"])
    sid = srv.truth(srv.guru_slug)["id"].iloc[0]
    url = conv_url(srv, sid)
    assert post(http, url, key=None).json() == {"msg": "API key is required"}
    r = post(http, url, key="nope")
    assert (r.status_code, r.json()) == (401, {"msg": "Invalid API key"})
    r = post(http, url, key="gk-outsider-000000000000")
    assert (r.status_code, r.json()) == (403, {"msg": "You don't have access to this binge"})
    r = post(http, conv_url(srv, "no-such-binge"))
    assert (r.status_code, r.json()) == (404, {"msg": "Binge not found"})
    srv.delete(srv.guru_slug, sid)
    r = post(http, url)
    assert (r.status_code, r.json()) == (404, {"msg": "Binge not found"})
    r = post(http, f"{srv.base_url}/sessions//conversation/")
    assert (r.status_code, r.json()) == (400, {"msg": "Binge ID is required"})
    private = srv.truth("private")["id"].iloc[0]
    assert post(http, conv_url(srv, private), key="gk-outsider-000000000000").status_code == 200


# --- determinism, robustness, log, CLI ------------------------------------------------------


def test_same_seed_same_answers(servers: list[LocalGurubase], http: requests.Session) -> None:
    a, b = demo(servers, 200, seed=21), demo(servers, 200, seed=21)
    c = demo(servers, 200, seed=22)
    pages = [post(http, list_url(s), {"page_num": 3}).json() for s in (a, b, c)]
    assert pages[0] == pages[1] != pages[2]
    sid = sessions_of(pages[0])[0]["id"]
    assert post(http, conv_url(a, sid)).json() == post(http, conv_url(b, sid)).json()


def test_server_survives_garbage(static: LocalGurubase, http: requests.Session) -> None:
    url = urlsplit(static.base_url)
    host, port = url.hostname, url.port
    junk = [
        b"HELLO\r\n\r\n",
        b"\x00\xff\x16\x03\x01garbage",
        b"POST /api/v1/demo-guru/sessions/ HTTP/1.1\r\nContent-Length: abc\r\n\r\n",
        b"POST /api/v1/demo-guru/sessions/ HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\n",
        b'POST /api/v1/demo-guru/sessions/ HTTP/1.1\r\nContent-Length: 10\r\n\r\n{"pa',  # short
        b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n",
    ]
    for data in junk:
        with socket.create_connection((host, port), timeout=5) as sock:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
            sock.settimeout(5)
            try:
                while sock.recv(65536):
                    pass
            except OSError:
                pass  # a reset is an acceptable answer to junk
    # A chunked body (requests sends a generator that way) is read too.
    r = http.post(
        list_url(static), data=iter([b'{"page_num"', b": 2}"]), headers={"x-api-key": KEY}
    )
    assert r.request.headers["Transfer-Encoding"] == "chunked"
    assert r.status_code == 200
    assert sessions_of(r.json())[0]["id"] == static.truth(static.guru_slug)["id"].iloc[30]
    r = post(http, list_url(static), {"page_num": 1})
    assert r.status_code == 200 and len(sessions_of(r.json())) == 30
    assert static.internal_errors == []


def test_log_and_request_count(servers: list[LocalGurubase], http: requests.Session) -> None:
    clock = FakeClock(END)
    srv = demo(servers, 40, clock=clock)
    post(http, list_url(srv), {"page_num": 2, "search_query": "how"})
    sid = srv.truth(srv.guru_slug)["id"].iloc[0]
    post(http, conv_url(srv, sid))
    post(http, list_url(srv), {"page_num": "x"}, key="bad-key-value-123")
    log = srv.log
    assert [(r.method, r.status, r.owner) for r in log] == [
        ("POST", 200, "demo-owner"),
        ("POST", 200, "demo-owner"),
        ("POST", 401, None),
    ]
    assert log[0].path == "/api/v1/demo-guru/sessions/" and log[0].body == {
        "page_num": 2,
        "search_query": "how",
    }
    assert log[1].path == f"/api/v1/sessions/{sid}/conversation/" and log[1].body is None
    assert log[0].time == END
    assert srv.request_count() == 3 and srv.request_count("/sessions/") == 3
    assert srv.request_count("conversation") == 1 and srv.request_count(status=401) == 1
    assert "bad-key-value-123" not in repr(log) and KEY not in repr(log)
    srv.clear_log()
    assert srv.log == [] and srv.requests_received == 3


def test_cli_serve_starts_and_answers(tmp_path: Any) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "guru_analytics",
            "serve",
            "--port",
            "0",
            "--sessions",
            "300",
            "--users",
            "5",
            "--api-key",
            KEY,
            "--rate-limit",
            "none",
            "--page-size",
            "20",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.startswith("Serving 300 sessions of guru 'demo-guru' at http://127.0.0.1:")
        base = first.rsplit(" at ", 1)[1].strip()
        lines = [proc.stdout.readline() for _ in range(3)]
        assert lines[0].split() == ["guru", "slug:", "demo-guru"] and KEY in lines[1]
        r = requests.post(
            f"{base}/demo-guru/sessions/",
            json={"page_num": 1},
            headers={"x-api-key": KEY},
            timeout=10,
        )
        assert r.status_code == 200 and len(sessions_of(r.json())) == 20 and r.json()["has_more"]
        assert len(r.json()["today"]) + len(r.json()["last_week"]) > 0  # --end defaults to now
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "stopped" in out


def test_cli_serve_help_documents_every_switch() -> None:
    from guru_analytics.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    serve = sub.choices["serve"]
    options = [a for a in serve._actions if a.option_strings and a.dest != "help"]
    assert len(options) > 30
    assert all(a.help for a in options)
    args = parser.parse_args(["serve", "--rate-limit", "none", "--fault-drop-rate", "0.5"])
    assert args.rate_limit is None and args.fault_drop_rate == 0.5
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", "--fault-drop-rate", "2"])


def test_default_touch_goes_on_top_even_when_the_clock_is_behind(
    servers: list[LocalGurubase],
) -> None:
    clock = FakeClock(END - timedelta(days=2))  # server clock earlier than the newest data
    srv = demo(servers, 50, clock=clock)
    truth = srv.truth(srv.guru_slug)
    sid = truth["id"].iloc[25]
    (when,) = srv.touch(srv.guru_slug, sid)
    assert when == truth["last_used"].iloc[0] + timedelta(microseconds=1)
    (new,) = srv.create(srv.guru_slug, 1)
    top = srv.truth(srv.guru_slug)
    assert top["id"].iloc[:2].tolist() == [new, sid]
    assert top["last_used"].iloc[0] == when + timedelta(microseconds=1)


def test_stop_cuts_keep_alive_connections(
    servers: list[LocalGurubase], http: requests.Session
) -> None:
    srv = demo(servers, 30)
    url = list_url(srv)
    assert post(http, url, {}).status_code == 200  # the pooled connection is now open
    srv.stop()
    with pytest.raises(requests.ConnectionError):
        post(http, url, {})
    srv.stop()  # idempotent
    with pytest.raises(ConfigError):
        _ = srv.base_url


def test_hook_errors_give_500_and_the_server_keeps_serving(
    servers: list[LocalGurubase], http: requests.Session
) -> None:
    srv = demo(servers, 30)

    def broken(_srv: LocalGurubase) -> None:
        raise RuntimeError("scripted failure")

    srv.on_request(1, broken)
    r = post(http, list_url(srv), {})
    assert r.status_code == 500 and r.headers["Content-Type"].startswith("text/html")
    assert len(srv.internal_errors) == 1 and "scripted failure" in srv.internal_errors[0]
    assert srv.log[-1].status == 500
    assert post(http, list_url(srv), {}).status_code == 200


def test_rootless_conversation_and_add_guru_validation(
    servers: list[LocalGurubase], http: requests.Session
) -> None:
    srv = demo(servers, 200, rootless_share=0.5, seed=6)
    rootless = srv.synthetic.sessions.loc[~srv.synthetic.sessions["has_root"], "id"].iloc[0]
    r = post(http, conv_url(srv, rootless))
    assert r.status_code == 200
    assert r.json()["conversation"] == [] and r.json()["root_question_slug"] is None
    with pytest.raises(ConfigError):  # same seed: the same session ids
        srv.add_guru("copy", synthetic.generate(200, 5, 5, seed=6, guru_slug="copy"))
    with pytest.raises(ConfigError):
        srv.add_guru(srv.synthetic)  # slug already served
    naive = pd.DataFrame({"id": ["n1"], "last_used": [datetime(2025, 1, 1)]})
    with pytest.raises(ConfigError):
        srv.add_guru("naive", naive)
    with pytest.raises(ConfigError):
        srv.add_guru("no-times", pd.DataFrame({"id": ["n1"]}))
    backwards = pd.DataFrame(
        {
            "id": ["b1"],
            "last_used": pd.to_datetime(["2025-01-01"], utc=True),
            "date_created": pd.to_datetime(["2025-02-01"], utc=True),
        }
    )
    with pytest.raises(ConfigError):
        srv.add_guru("backwards", backwards)
    assert srv.add_guru("empty") == "empty"
    srv.add_key("gk-empty-reader-0000000000", "reader", gurus=["empty"])
    r = post(http, list_url(srv, "empty"), {}, key="gk-empty-reader-0000000000")
    assert r.json() == {"today": [], "last_week": [], "older": [], "has_more": False}
    assert srv.gurus() == ["demo-guru", "empty"]


def test_cli_serve_port_in_use_is_a_config_error(capsys: pytest.CaptureFixture[str]) -> None:
    from guru_analytics.cli import main

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code = main(["serve", "--port", str(port), "--sessions", "10", "--users", "2"])
    assert code == 2
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port}" in err and "Traceback" not in err


# --- the pure handler: handle(request) -> response, no socket ----------------------------------


def test_handle_answers_without_a_socket() -> None:
    clock = FakeClock(END + timedelta(hours=1))
    srv = LocalGurubase.demo(100, 5, 10, end=END, clock=clock, rate_limit=None, api_key=KEY)
    lst = "/api/v1/demo-guru/sessions/"
    r = srv.handle(Request.post(lst, {"page_num": 1}, key=KEY))
    assert r.status == 200 and len(sessions_of(r.json())) == 30 and r.json()["has_more"]
    sid = sessions_of(r.json())[0]["id"]
    r = srv.handle(Request.post(f"/api/v1/sessions/{sid}/conversation/", key=KEY))
    assert r.status == 200 and r.json()["conversation"] == srv.conversation(sid)
    r = srv.handle(Request("GET", "/favicon.ico"))
    assert r.status == 404 and r.content_type.startswith("text/html")
    assert srv.handle(Request.post(lst, {"page_num": 1})).json() == {"msg": "API key is required"}
    r = srv.handle(Request("GET", lst, {"x-api-key": KEY}))
    assert r.status == 405 and r.header("allow") == "POST, OPTIONS"
    r = srv.handle(Request.post(lst, {"page_num": "x"}, key=KEY))
    assert (r.status, r.json()) == (400, {"msg": "Page number must be an integer"})
    export = "/api/v1/demo-guru/analytics/export/"
    r = srv.handle(Request.post(export, {"export_type": "json", "interval": "7d"}, key=KEY))
    assert r.status == 200 and r.header("content-disposition").startswith("attachment;")
    r = srv.handle(Request.post(export, {"export_type": "docx"}, key=KEY))
    assert (r.status, r.json()) == (500, {"msg": "Internal server error"})
    assert [e.status for e in srv.log] == [200, 200, 404, 401, 405, 400, 200, 500]
    assert KEY not in repr(srv.log) and srv.internal_errors == []


def test_handle_applies_faults_limits_and_survives_hook_errors() -> None:
    mono = FakeMonotonic()
    srv = LocalGurubase.demo(
        20, 2, 5, end=END, clock=FakeClock(END), rate_limit=1, monotonic=mono, api_key=KEY
    )
    lst = "/api/v1/demo-guru/sessions/"
    assert srv.handle(Request.post(lst, {}, key=KEY)).status == 200
    r = srv.handle(Request.post(lst, {}, key=KEY))
    assert r.status == 429 and r.header("Retry-After") == "60"
    mono.t += 60
    srv.faults = FaultConfig(drop_rate=1.0)
    assert srv.handle(Request.post(lst, {}, key=KEY)).drop
    srv.faults = FaultConfig()

    def boom(_srv: LocalGurubase) -> None:
        raise RuntimeError("scripted failure")

    srv.on_request(srv.requests_received + 1, boom)
    r = srv.handle(Request.post(lst, {}, key=KEY))
    assert r.status == 500 and len(srv.internal_errors) == 1
    assert [e.status for e in srv.log] == [200, 429, None, 500]


def test_the_server_never_imports_the_clients_paging_code() -> None:
    """A paging bug must not hide on both sides: the server is written independently."""
    code = (
        "import sys, guru_analytics.server\n"
        "bad = [m for m in ('client', 'paging', 'sync', 'wire', 'store')"
        " if 'guru_analytics.' + m in sys.modules]\n"
        "print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
