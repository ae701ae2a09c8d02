"""``LocalGurubase``: a Gurubase-compatible HTTP server on loopback, for tests and demos.

It implements the contract in ``gurubase-api.md`` (List Sessions and Get Session) with the
awkward parts on purpose, so the client and the crawl are tested against them:

- order ``last_used`` desc with **no tie-breaker**: with ``tie_shuffle`` (default) rows of
  equal ``last_used`` come back in a fresh random order on every request;
- offset paging; ``has_more`` counts rows without a root question, which are dropped *after*
  the page cut (short or empty pages with ``has_more`` true);
- grouping into today / last_week / older by UTC calendar day of the injectable clock;
- a sliding-window rate limit per key *owner*, checked before the key (bad-key calls count
  against an anonymous bucket per client address);
- drift (touch / create / delete while a client pages), scripted or random;
- fault injection (5xx, dropped connections, slow answers, 429 bursts, malformed JSON,
  HTML with 200).

Request pipeline (in this order): count the request and run ``on_request`` hooks → apply
per-second drift → route (unknown path: 404 HTML, not throttled) → rate limit → method (405)
→ key (401) → guru (404) → access (403) → body (400) → per-request drift → answer. A request
picked for a fault is processed exactly like any other (it counts against the rate limit and
applies its drift); only the answer sent is replaced. Every request is logged with the status
actually sent (``None`` for a dropped connection). The API key is never logged or stored in
the log.

Get Session ignores the request body; for a session without a root question it answers 200
with an empty ``conversation``. An ``on_request`` hook or any other bug that raises while
answering gives an HTML 500, is logged, and is recorded in ``srv.internal_errors`` (tests
can assert it stays empty); the server keeps serving.

It never imports ``client``, ``paging`` or ``sync``: a paging bug must not hide on both
sides. Each guru's order is kept sorted between changes (bisect), so a listing request costs
O(page + boundary tie groups), not a sort; a search scans once per (query, state) and is
cached until the data changes.
"""

from __future__ import annotations

import bisect
import http.server
import json
import logging
import math
import random
import re
import secrets
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import formatdate
from http import HTTPStatus
from typing import Any

import numpy as np
import pandas as pd

from . import synthetic
from .errors import ConfigError, NotFoundError
from .timestamps import format_drf, format_offset, utc_now

logger = logging.getLogger(__name__)

_US_PER_S = 1_000_000
_US_PER_DAY = 86_400 * _US_PER_S
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MAX_BODY = 1_000_000

_LIST_RE = re.compile(r"^/api/v1/(?P<slug>[^/]+)/sessions/$")
_CONV_RE = re.compile(r"^/api/v1/sessions/(?P<sid>[^/]*)/conversation/$")

_HTML_500 = (
    '<!doctype html>\n<html lang="en">\n<head>\n  <title>Server Error (500)</title>\n</head>\n'
    "<body>\n  <h1>Server Error (500)</h1><p></p>\n</body>\n</html>\n"
)
_HTML_404 = (
    '<!doctype html>\n<html lang="en">\n<head>\n  <title>Not Found</title>\n</head>\n'
    "<body>\n  <h1>Not Found</h1><p>The requested resource was not found on this server.</p>\n"
    "</body>\n</html>\n"
)


def _html_error(status: int) -> str:
    phrase = HTTPStatus(status).phrase
    return (
        f"<html>\r\n<head><title>{status} {phrase}</title></head>\r\n<body>\r\n"
        f"<center><h1>{status} {phrase}</h1></center>\r\n<hr><center>nginx</center>\r\n"
        "</body>\r\n</html>\r\n"
    )


class _Default:
    """Sentinel type: 'use the default' where None is a meaningful value."""

    def __repr__(self) -> str:
        return "DEFAULT"


DEFAULT = _Default()


# --- configuration --------------------------------------------------------------------------


@dataclass(frozen=True)
class FaultConfig:
    """Injected faults; each ``*_rate`` is a probability per endpoint request (default 0).

    Draws come from their own seeded stream (``seed``, default the server's seed + 1) and
    take the same number of draws on every request, so the sequence of faults depends only
    on the order of requests. Faults never apply to unknown paths.

    - ``error_rate``: answer a status from ``error_statuses`` with a body kind from
      ``error_bodies`` (``"html"`` like a proxy page, ``"json"`` = ``{"msg": ...}``).
    - ``drop_rate``: close the connection without answering (logged with status None).
    - ``slow_rate`` / ``slow_seconds``: sleep before answering (to trip client timeouts).
    - ``throttle_rate``: start a burst of ``throttle_burst`` 429 answers saying
      ``throttle_seconds``.
    - ``retry_after_header``: send ``Retry-After`` on every 429 (injected and real); when
      False only the body carries the seconds, like a proxy that strips the header.
    - ``malformed_json_rate``: a 200 whose JSON body is cut in half.
    - ``html_200_rate``: a 200 with an HTML page instead of JSON.

    Precedence when several fire: drop > throttle > error > malformed > html; slow combines
    with any of them. ``malformed``/``html`` only replace answers that were 200.
    """

    error_rate: float = 0.0
    error_statuses: tuple[int, ...] = (500, 502, 503)
    error_bodies: tuple[str, ...] = ("html",)
    drop_rate: float = 0.0
    slow_rate: float = 0.0
    slow_seconds: float = 2.0
    throttle_rate: float = 0.0
    throttle_burst: int = 1
    throttle_seconds: int = 1
    retry_after_header: bool = True
    malformed_json_rate: float = 0.0
    html_200_rate: float = 0.0
    seed: int | None = None

    def __post_init__(self) -> None:
        for name in (
            "error_rate",
            "drop_rate",
            "slow_rate",
            "throttle_rate",
            "malformed_json_rate",
            "html_200_rate",
        ):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"FaultConfig.{name} must be between 0 and 1, got {value}")
        if not self.error_statuses or any(not 400 <= s <= 599 for s in self.error_statuses):
            raise ConfigError(
                "FaultConfig.error_statuses must be HTTP error codes such as (500, 502, 503)"
            )
        if not self.error_bodies or any(b not in ("html", "json") for b in self.error_bodies):
            raise ConfigError("FaultConfig.error_bodies must contain only 'html' and/or 'json'")
        if self.throttle_burst < 1 or self.throttle_seconds < 0 or self.slow_seconds < 0:
            raise ConfigError(
                "FaultConfig: throttle_burst >= 1, throttle_seconds and slow_seconds >= 0"
            )


@dataclass(frozen=True)
class DriftConfig:
    """Random changes to the data while a client pages (default: none).

    ``*_per_request`` are expected counts (Poisson) applied to the listed guru just before
    answering each List Sessions request that passed auth and body checks (Get Session and
    rejected requests never drift). ``*_per_second`` are rates applied
    lazily to every guru at the start of each request, for the server-clock time elapsed since
    the previous request. Touches move sessions to the top (a follow-up question); new
    sessions appear on top, ``new_user_share`` of them attributed to an existing external
    user; deletes are soft. Draws come from their own stream (``seed``, default server seed + 2).
    """

    touch_per_request: float = 0.0
    new_per_request: float = 0.0
    delete_per_request: float = 0.0
    touch_per_second: float = 0.0
    new_per_second: float = 0.0
    delete_per_second: float = 0.0
    new_user_share: float = 0.5
    seed: int | None = None

    def __post_init__(self) -> None:
        for name in (
            "touch_per_request",
            "new_per_request",
            "delete_per_request",
            "touch_per_second",
            "new_per_second",
            "delete_per_second",
        ):
            if getattr(self, name) < 0:
                raise ConfigError(f"DriftConfig.{name} must be >= 0")
        if not 0.0 <= self.new_user_share <= 1.0:
            raise ConfigError("DriftConfig.new_user_share must be between 0 and 1")

    @property
    def per_second(self) -> bool:
        return bool(self.touch_per_second or self.new_per_second or self.delete_per_second)


@dataclass(frozen=True)
class LoggedRequest:
    """One request as the server saw it. ``status`` None = connection dropped by a fault.

    ``owner`` is the key's owner when the key was valid, else None. The key itself is never
    kept. ``body`` is the parsed JSON object (None when absent or unparseable).
    """

    method: str
    path: str
    body: dict[str, Any] | None
    status: int | None
    time: datetime
    owner: str | None


@dataclass
class _Answer:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)
    drop: bool = False
    delay: float = 0.0


def _json(status: int, payload: Any, headers: Iterable[tuple[str, str]] = ()) -> _Answer:
    data = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return _Answer(status, data, "application/json", list(headers))


def _html(status: int, text: str) -> _Answer:
    return _Answer(status, text.encode("utf-8"), "text/html; charset=utf-8")


def _msg(status: int, text: str) -> _Answer:
    return _json(status, {"msg": text})


def _to_us(ts: datetime | pd.Timestamp) -> int:
    if isinstance(ts, pd.Timestamp):
        ts = ts.to_pydatetime()
    if ts.tzinfo is None:
        raise ConfigError("timestamps must be tz-aware UTC: pass datetime(..., tzinfo=UTC)")
    delta = ts - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * _US_PER_S + delta.microseconds


def _from_us(us: int) -> datetime:
    return datetime.fromtimestamp(us // _US_PER_S, UTC).replace(microsecond=us % _US_PER_S)


def _page_number(raw: Any) -> int | None:
    """``int(page_num)`` the way the Python backend does it; None when that would fail."""
    if raw is None or isinstance(raw, list | dict):
        return None
    try:
        return int(raw)
    except (ValueError, TypeError, OverflowError):
        return None


# --- per-guru state -------------------------------------------------------------------------


class _GuruState:
    """One guru's sessions in columnar lists plus sorted orders keyed (-last_used_us, row)."""

    def __init__(self, slug: str, name: str | None, seed: int, frame: pd.DataFrame) -> None:
        self.slug = slug
        self.name = name
        self.seed = seed
        self.ids: list[str] = []
        self.title: list[str | None] = []
        self.qslug: list[str | None] = []
        self.wording: list[str | None] = []
        self.user: list[str | None] = []
        self.source: list[str] = []
        self.has_root: list[bool] = []
        self.created: list[int] = []
        self.base_last: list[int] = []
        self.last: list[int] = []
        self.n_base: list[int] = []
        self.deleted: list[bool] = []
        self.touches: dict[int, list[int]] = {}
        self.order: list[tuple[int, int]] = []
        self.by_user: dict[str, list[tuple[int, int]]] = {}
        self.version = 0
        self.new_counter = 0
        self._search_cache: dict[tuple[str, str | None], tuple[int, list[tuple[int, int]]]] = {}
        self._json_cache: dict[int, tuple[int, bytes]] = {}
        self.append(frame)

    def append(self, frame: pd.DataFrame) -> list[int]:
        """Add rows (already normalised); returns their row numbers."""
        start = len(self.ids)
        n = len(frame)
        if n == 0:
            return []
        self.ids.extend(frame["id"].astype(str).tolist())
        self.title.extend(_none_list(frame["root_question_name"]))
        self.qslug.extend(_none_list(frame["root_question_slug"]))
        self.wording.extend(_none_list(frame["user_question"]))
        self.user.extend(_none_list(frame["external_user_id"]))
        self.source.extend(frame["source"].astype(str).tolist())
        self.has_root.extend(frame["has_root"].astype(bool).tolist())
        created = synthetic._series_to_us(frame["date_created"]).tolist()
        last = synthetic._series_to_us(frame["last_used"]).tolist()
        self.created.extend(created)
        self.base_last.extend(last)
        self.last.extend(last)
        self.n_base.extend(frame["n_messages"].astype("int64").tolist())
        self.deleted.extend([False] * n)
        rows = list(range(start, start + n))
        new_keys = sorted((-self.last[r], r) for r in rows)
        if len(new_keys) > 64 and len(new_keys) * 4 > len(self.order):
            self.order = sorted(self.order + new_keys)
        else:
            for key in new_keys:
                bisect.insort(self.order, key)
        for key in new_keys:
            user = self.user[key[1]]
            if user is not None:
                bisect.insort(self.by_user.setdefault(user, []), key)
        self.version += 1
        return rows

    def top_us(self) -> int | None:
        return -self.order[0][0] if self.order else None

    def _remove_key(self, row: int) -> tuple[int, int]:
        key = (-self.last[row], row)
        i = bisect.bisect_left(self.order, key)
        if i >= len(self.order) or self.order[i] != key:
            raise ConfigError(f"session {self.ids[row]!r} is not listed (deleted?)")
        del self.order[i]
        user = self.user[row]
        if user is not None:
            lst = self.by_user[user]
            del lst[bisect.bisect_left(lst, key)]
        return key

    def set_last(self, row: int, at_us: int) -> None:
        self._remove_key(row)
        self.last[row] = at_us
        key = (-at_us, row)
        bisect.insort(self.order, key)
        user = self.user[row]
        if user is not None:
            bisect.insort(self.by_user[user], key)
        self.touches.setdefault(row, []).append(at_us)
        self.version += 1

    def delete(self, row: int) -> None:
        self._remove_key(row)
        self.deleted[row] = True
        self.version += 1

    def listing(self, query: str, user: str | None) -> list[tuple[int, int]]:
        """The sorted keys a listing pages through (rootless included, deleted excluded)."""
        base = self.order if user is None else self.by_user.get(user, [])
        if not query:
            return base
        cache_key = (query, user)
        hit = self._search_cache.get(cache_key)
        if hit is not None and hit[0] == self.version:
            return hit[1]
        q = query.lower()
        out = []
        for key in base:
            r = key[1]
            if not self.has_root[r]:
                continue  # no first question: nothing to match
            if (
                q in (self.title[r] or "").lower()
                or q in (self.wording[r] or "").lower()
                or q in (self.qslug[r] or "").lower()
            ):
                out.append(key)
        if len(self._search_cache) > 256:
            self._search_cache.clear()
        self._search_cache[cache_key] = (self.version, out)
        return out

    def session_json(self, row: int) -> bytes:
        """The List Sessions object of a row as JSON bytes, cached until its last_used changes."""
        last = self.last[row]
        hit = self._json_cache.get(row)
        if hit is not None and hit[0] == last:
            return hit[1]
        sid, qslug = self.ids[row], self.qslug[row]
        obj = {
            "id": sid,
            "last_used": format_drf(_from_us(last)),
            "guru_type_slug": self.slug,
            "guru_type_name": self.name,
            "root_question_name": self.title[row],
            "root_question_slug": qslug,
            "root_question_link": f"https://gurubase.io/g/{self.slug}/{qslug}/binge/{sid}",
        }
        data = json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        self._json_cache[row] = (last, data)
        return data

    def row_dict(self, row: int) -> dict[str, Any]:
        return {
            "id": self.ids[row],
            "has_root": self.has_root[row],
            "n_messages": self.n_base[row],
            "date_created": _from_us(self.created[row]),
            "base_last_used": _from_us(self.base_last[row]),
            "last_used": _from_us(self.last[row]),
            "root_question_name": self.title[row],
            "root_question_slug": self.qslug[row],
            "user_question": self.wording[row],
            "source": self.source[row],
        }


def _none_list(s: pd.Series) -> list[Any]:
    return [
        None if (v is None or (isinstance(v, float) and math.isnan(v))) else str(v)
        for v in s.tolist()
    ]


# --- the rate limiter -----------------------------------------------------------------------


class _SlidingWindow:
    """At most ``limit`` accepted requests per bucket in any ``window`` seconds (like DRF:
    throttled requests are not recorded, so they do not extend the wait)."""

    def __init__(self, limit: int, window: float) -> None:
        self.limit = limit
        self.window = window
        self.hits: dict[str, deque[float]] = {}

    def check(self, bucket: str, now: float) -> int | None:
        """Record and allow (None), or refuse with the whole seconds until a slot frees."""
        q = self.hits.setdefault(bucket, deque())
        while q and q[0] <= now - self.window:
            q.popleft()
        if len(q) < self.limit:
            q.append(now)
            return None
        return max(1, math.ceil(q[0] + self.window - now))


# --- the server -----------------------------------------------------------------------------


class LocalGurubase:
    """A Gurubase-compatible server for tests and demos (see the module docstring).

    Use as ``with LocalGurubase.demo(...) as srv:`` or ``srv.start()`` / ``srv.stop()``.
    """

    def __init__(
        self,
        page_size: int = 30,
        rate_limit: int | None = 10,
        rate_window: float = 60.0,
        tie_shuffle: bool = True,
        clock: Callable[[], datetime] | None = None,
        seed: int = 0,
        faults: FaultConfig | None = None,
        drift: DriftConfig | None = None,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        if page_size < 1:
            raise ConfigError(f"page_size must be >= 1, got {page_size}")
        if rate_limit is not None and rate_limit < 1:
            raise ConfigError("rate_limit must be >= 1, or None to disable the rate limit")
        if rate_window <= 0:
            raise ConfigError("rate_window must be > 0 seconds")
        self.page_size = page_size
        self.rate_limit = rate_limit
        self.rate_window = rate_window
        self.tie_shuffle = tie_shuffle
        self.clock: Callable[[], datetime] = clock or utc_now
        self.seed = seed
        self.faults = faults or FaultConfig()
        self.drift = drift or DriftConfig()
        self.monotonic = monotonic
        self.sleep = sleep
        self.host = host
        self.port = port
        self.guru_slug: str | None = None
        self.api_key: str | None = None
        self.synthetic: synthetic.SyntheticGuru | None = None
        self.internal_errors: list[str] = []
        self._lock = threading.RLock()
        self._gurus: dict[str, _GuruState] = {}
        self._session_index: dict[str, tuple[str, int]] = {}
        self._keys: dict[str, tuple[str, frozenset[str] | None]] = {}
        self._limiter = _SlidingWindow(rate_limit or 1, rate_window)
        self._tie_rng = random.Random(seed)
        self._fault_rng = random.Random(
            self.faults.seed if self.faults.seed is not None else seed + 1
        )
        drift_seed = self.drift.seed if self.drift.seed is not None else seed + 2
        self._drift_rng = np.random.default_rng(drift_seed)
        self._throttle_left = 0
        self._hooks: dict[int, list[Callable[[LocalGurubase], Any]]] = {}
        self._n_requests = 0
        self._log: list[LoggedRequest] = []
        self._last_default_us = 0
        self._drift_last_us: int | None = None
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        state = self.base_url if self._httpd else "not started"
        return f"LocalGurubase({state}, gurus={sorted(self._gurus)}, keys={len(self._keys)})"

    # --- construction ------------------------------------------------------------------------

    @classmethod
    def demo(
        cls,
        n_sessions: int = 5000,
        n_users: int = 50,
        days: int = 120,
        *,
        seed: int = 0,
        guru_slug: str = "demo-guru",
        end: datetime | None = None,
        unattributed_share: float = 0.3,
        rootless_share: float = 0.0,
        api_key: str | None = None,
        owner: str = "demo-owner",
        **kwargs: Any,
    ) -> LocalGurubase:
        """One synthetic guru and one key (``srv.guru_slug``, ``srv.api_key``, ``srv.synthetic``).

        ``end`` defaults to the server clock's now, so recent sessions land in ``today`` and
        ``last_week``; pass a fixed ``end`` for data that is identical run to run. Other
        keyword arguments go to the constructor (``rate_limit``, ``clock``, ``faults``...).
        Not started: use ``with`` or ``start()``.
        """
        srv = cls(seed=seed, **kwargs)
        guru = synthetic.generate(
            n_sessions,
            n_users,
            days,
            seed=seed,
            guru_slug=guru_slug,
            end=end if end is not None else srv.clock(),
            unattributed_share=unattributed_share,
            rootless_share=rootless_share,
        )
        srv.add_guru(guru)
        key = api_key or "gb-" + secrets.token_hex(16)
        srv.add_key(key, owner, gurus=[guru_slug])
        srv.guru_slug, srv.api_key, srv.synthetic = guru_slug, key, guru
        return srv

    def add_guru(
        self,
        guru: synthetic.SyntheticGuru | str,
        sessions_df: pd.DataFrame | synthetic.SyntheticGuru | None = None,
        name: str | None | _Default = DEFAULT,
        *,
        seed: int | None = None,
    ) -> str:
        """Serve a guru: a ``SyntheticGuru`` or a slug with an optional sessions frame.

        A frame needs ``id`` and ``last_used`` (tz-aware); missing columns are filled
        (``date_created`` = ``last_used``, one message, generated titles, no user, has_root).
        ``name=None`` serves ``guru_type_name: null``. Returns the slug.
        """
        if isinstance(sessions_df, synthetic.SyntheticGuru):  # a slug plus a generated guru
            seed = sessions_df.seed if seed is None else seed
            sessions_df = sessions_df.sessions
        if isinstance(guru, synthetic.SyntheticGuru):
            slug, frame = guru.slug, guru.sessions if sessions_df is None else sessions_df
            default_name, guru_seed = guru.name, guru.seed if seed is None else seed
        else:
            slug, frame = str(guru), sessions_df
            default_name, guru_seed = (
                synthetic.guru_name(str(guru)),
                self.seed if seed is None else seed,
            )
        if not slug or "/" in slug:
            raise ConfigError(f"guru slug {slug!r} is not valid: use letters, digits and dashes")
        frame = self._normalise(frame, guru_seed, None)
        with self._lock:
            if slug in self._gurus:
                raise ConfigError(f"guru {slug!r} is already served: pick another slug")
            self._check_new_ids(frame["id"])
            state = _GuruState(
                slug, default_name if isinstance(name, _Default) else name, guru_seed, frame
            )
            self._gurus[slug] = state
            for row, sid in enumerate(state.ids):
                self._session_index[sid] = (slug, row)
        return slug

    def add_key(self, key: str, owner: str, gurus: Sequence[str] | None = None) -> None:
        """Accept ``key`` for ``owner``; ``gurus`` = the slugs it may read (None = all).

        The rate limit is per owner: two keys of one owner share one window.
        """
        if not key or not owner:
            raise ConfigError("add_key needs a non-empty key and owner")
        with self._lock:
            self._keys[key] = (owner, None if gurus is None else frozenset(gurus))

    # --- lifecycle ---------------------------------------------------------------------------

    def bind(self) -> LocalGurubase:
        """Open the listening socket (port 0 = any free port) without serving yet."""
        if self._httpd is None:
            httpd = _HTTPServer((self.host, self.port), _Handler)
            httpd.app = self
            self._httpd = httpd
            with self._lock:
                self._drift_last_us = _to_us(self.clock())
        return self

    def start(self) -> LocalGurubase:
        """Serve in a background daemon thread. Returns self."""
        if self._thread is not None:
            return self
        httpd = self.bind()._httpd
        assert httpd is not None
        self._thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="LocalGurubase",
            daemon=True,
        )
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve in the calling thread until ``KeyboardInterrupt`` (used by the CLI)."""
        httpd = self.bind()._httpd
        assert httpd is not None
        try:
            httpd.serve_forever(poll_interval=0.2)
        finally:
            httpd.server_close()
            httpd.close_connections()
            self._httpd = None

    def stop(self) -> None:
        """Stop serving, close the listening socket and cut open keep-alive connections
        (idempotent)."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        if self._thread is not None:
            httpd.shutdown()
        httpd.server_close()
        httpd.close_connections()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> LocalGurubase:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/api/v1`` once started."""
        if self._httpd is None:
            raise ConfigError("the server is not started: call start() or use it in a with block")
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/api/v1"

    @property
    def address(self) -> tuple[str, int]:
        if self._httpd is None:
            raise ConfigError("the server is not started: call start() or use it in a with block")
        host, port = self._httpd.server_address[:2]
        return str(host), int(port)

    # --- truth and scripted changes ----------------------------------------------------------

    def gurus(self) -> list[str]:
        with self._lock:
            return sorted(self._gurus)

    def truth(self, slug: str, external_user_id: str | None = None) -> pd.DataFrame:
        """The listable sessions now (has a root question, not deleted), last_used desc, id asc.

        Columns: id, last_used, date_created, root_question_name, root_question_slug,
        user_question, external_user_id, n_messages (incl. touches), source.
        """
        with self._lock:
            g = self._guru(slug)
            keys = g.order if external_user_id is None else g.by_user.get(external_user_id, [])
            rows = [r for _k, r in keys if g.has_root[r]]
            frame = pd.DataFrame(
                {
                    "id": pd.Series([g.ids[r] for r in rows], dtype="str"),
                    "last_used": synthetic._us_to_series(
                        np.array([g.last[r] for r in rows], dtype=np.int64)
                    ),
                    "date_created": synthetic._us_to_series(
                        np.array([g.created[r] for r in rows], dtype=np.int64)
                    ),
                    "root_question_name": pd.Series([g.title[r] for r in rows], dtype="str"),
                    "root_question_slug": pd.Series([g.qslug[r] for r in rows], dtype="str"),
                    "user_question": pd.Series([g.wording[r] for r in rows], dtype="str"),
                    "external_user_id": pd.Series([g.user[r] for r in rows], dtype="str"),
                    "n_messages": pd.Series(
                        [g.n_base[r] + len(g.touches.get(r, ())) for r in rows], dtype="int64"
                    ),
                    "source": pd.Series([g.source[r] for r in rows], dtype="str"),
                }
            )
        return frame.sort_values(["last_used", "id"], ascending=[False, True], ignore_index=True)

    def users(self, slug: str) -> list[str]:
        """External user ids with at least one non-deleted session (sorted)."""
        with self._lock:
            return sorted(u for u, keys in self._guru(slug).by_user.items() if keys)

    def conversation(self, session_id: str) -> list[dict[str, Any]]:
        """What Get Session would return in ``conversation`` for this session now."""
        with self._lock:
            slug, row = self._find(session_id)
            return self._conversation(self._gurus[slug], row)

    def touch(
        self, slug: str, ids: str | Iterable[str], at: datetime | None = None
    ) -> list[datetime]:
        """Ask a follow-up in each session: ``last_used`` becomes ``at`` (all the same, so ties
        are easy to make) or, by default, strictly increasing times on top of the list (server
        clock, at least 1 µs after the current newest). Returns the new times."""
        id_list = [ids] if isinstance(ids, str) else list(ids)
        with self._lock:
            g = self._guru(slug)
            rows = [self._row_of(g, sid) for sid in id_list]
            times: list[int] = []
            for row in rows:
                t = _to_us(at) if at is not None else self._next_default_us(g)
                if t < g.last[row]:
                    raise ConfigError(
                        f"touch time {_from_us(t).isoformat()} is before session {g.ids[row]!r}'s "
                        "last_used: touch moves time forward only"
                    )
                g.set_last(row, t)
                times.append(t)
            return [_from_us(t) for t in times]

    def create(
        self,
        slug: str,
        n: int | pd.DataFrame = 1,
        external_user_id: str | None = None,
        *,
        at: datetime | None = None,
    ) -> list[str]:
        """Add new sessions on top (one message each) and return their ids.

        ``n`` is a count (generated titles, created at strictly increasing default times or all
        at ``at``) or a frame of rows (``id``/``last_used``/... optional; missing ones are
        generated). ``external_user_id`` applies to rows that do not name one.
        """
        with self._lock:
            g = self._guru(slug)
            if isinstance(n, pd.DataFrame):
                frame = n.copy()
                if "last_used" not in frame.columns:
                    frame["last_used"] = synthetic._us_to_series(
                        np.array(
                            [self._next_default_us(g) for _ in range(len(frame))], dtype=np.int64
                        )
                    )
                frame = self._normalise(frame, g.seed, g, external_user_id)
            else:
                if n < 0:
                    raise ConfigError("create needs n >= 0")
                times = [
                    _from_us(_to_us(at) if at is not None else self._next_default_us(g))
                    for _ in range(n)
                ]
                frame = synthetic.new_sessions(
                    n,
                    seed=g.seed,
                    at=times,
                    external_user_id=external_user_id,
                    slug_counter_start=g.new_counter,
                )
                g.new_counter += n
            self._check_new_ids(frame["id"])
            rows = g.append(frame)
            for row in rows:
                self._session_index[g.ids[row]] = (slug, row)
            return [g.ids[r] for r in rows]

    def delete(self, slug: str, ids: str | Iterable[str]) -> None:
        """Soft delete: gone from listings and truth; Get Session answers 404."""
        id_list = [ids] if isinstance(ids, str) else list(ids)
        with self._lock:
            g = self._guru(slug)
            for sid in id_list:
                g.delete(self._row_of(g, sid))

    def on_request(self, n: int, fn: Callable[[LocalGurubase], Any]) -> None:
        """Run ``fn(srv)`` just before handling the ``n``-th request (1-based, every request
        counted in arrival order, including errors and unknown paths)."""
        if n < 1:
            raise ConfigError("on_request needs n >= 1 (requests are counted from 1)")
        with self._lock:
            self._hooks.setdefault(n, []).append(fn)

    # --- the request log ---------------------------------------------------------------------

    @property
    def log(self) -> list[LoggedRequest]:
        """A copy of the request log, oldest first."""
        with self._lock:
            return list(self._log)

    @property
    def requests_received(self) -> int:
        with self._lock:
            return self._n_requests

    def request_count(self, path_contains: str | None = None, status: int | None = None) -> int:
        """How many logged requests match (both filters optional)."""
        with self._lock:
            return sum(
                1
                for r in self._log
                if (path_contains is None or path_contains in r.path)
                and (status is None or r.status == status)
            )

    def clear_log(self) -> None:
        with self._lock:
            self._log.clear()

    # --- internals ---------------------------------------------------------------------------

    def _guru(self, slug: str) -> _GuruState:
        g = self._gurus.get(slug)
        if g is None:
            raise NotFoundError(f"guru {slug!r} is not served: add it with add_guru() first")
        return g

    def _find(self, session_id: str) -> tuple[str, int]:
        hit = self._session_index.get(session_id)
        if hit is None:
            raise NotFoundError(f"session {session_id!r} is not on this server")
        return hit

    def _row_of(self, g: _GuruState, session_id: str) -> int:
        hit = self._session_index.get(session_id)
        if hit is None or hit[0] != g.slug:
            raise NotFoundError(f"session {session_id!r} is not in guru {g.slug!r}")
        if g.deleted[hit[1]]:
            raise NotFoundError(f"session {session_id!r} was deleted")
        return hit[1]

    def _check_new_ids(self, ids: pd.Series) -> None:
        if not ids.is_unique:
            raise ConfigError("session ids must be unique within a frame")
        clash = [sid for sid in ids.tolist() if sid in self._session_index]
        if clash:
            raise ConfigError(
                f"session id {clash[0]!r} is already served: generate further gurus with another seed"
            )

    def _next_default_us(self, g: _GuruState) -> int:
        t = max(_to_us(self.clock()), (g.top_us() or 0) + 1, self._last_default_us + 1)
        self._last_default_us = t
        return t

    def _normalise(
        self,
        frame: pd.DataFrame | None,
        seed: int,
        g: _GuruState | None,
        external_user_id: str | None = None,
    ) -> pd.DataFrame:
        """Fill the columns a served session needs; generated values where missing."""
        if frame is None:
            frame = pd.DataFrame(
                {
                    "id": pd.Series([], dtype="str"),
                    "last_used": synthetic._us_to_series(np.zeros(0, np.int64)),
                }
            )
        if "last_used" not in frame.columns:
            raise ConfigError("a sessions frame needs a tz-aware 'last_used' column")
        frame = frame.reset_index(drop=True)
        n = len(frame)
        last = frame["last_used"]
        if not isinstance(last.dtype, pd.DatetimeTZDtype):
            raise ConfigError(
                "'last_used' must be tz-aware (UTC): use pd.to_datetime(..., utc=True)"
            )
        missing = [c for c in synthetic.SESSION_COLUMNS if c not in frame.columns]
        filler: pd.DataFrame | None = None
        if set(missing) - {"date_created", "external_user_id"}:
            counter = 0
            if g is not None:
                counter, g.new_counter = g.new_counter, g.new_counter + n
            filler = synthetic.new_sessions(
                n,
                seed=seed,
                at=last,
                external_user_id=external_user_id,
                slug_counter_start=counter + 10**6 * (g is None),
            )
        out = pd.DataFrame(index=frame.index)
        for col in synthetic.SESSION_COLUMNS:
            if col in frame.columns:
                out[col] = frame[col]
            elif col == "date_created":
                out[col] = last
            elif col == "external_user_id":
                out[col] = pd.Series([external_user_id] * n, dtype="str")
            else:
                assert filler is not None
                out[col] = filler[col]
        if external_user_id is not None and "external_user_id" in frame.columns:
            out["external_user_id"] = out["external_user_id"].fillna(external_user_id)
        out["last_used"] = out["last_used"].dt.tz_convert("UTC")
        out["date_created"] = pd.to_datetime(out["date_created"], utc=True)
        if n and (out["date_created"] > out["last_used"]).any():
            raise ConfigError("date_created must not be after last_used")
        out["id"] = out["id"].astype(str)
        return out

    def _conversation(self, g: _GuruState, row: int) -> list[dict[str, Any]]:
        extra = [_from_us(t) for t in g.touches.get(row, ())]
        return synthetic.conversation(g.row_dict(row), seed=g.seed, extra_times=extra)

    # --- drift -------------------------------------------------------------------------------

    def _apply_time_drift(self) -> None:
        d = self.drift
        now_us = _to_us(self.clock())
        last = self._drift_last_us
        self._drift_last_us = max(now_us, last or now_us)
        if not d.per_second or last is None or now_us <= last:
            return
        seconds = (now_us - last) / _US_PER_S
        for g in self._gurus.values():
            self._drift(
                g,
                d.touch_per_second * seconds,
                d.new_per_second * seconds,
                d.delete_per_second * seconds,
                window=(last, now_us),
            )

    def _drift(
        self,
        g: _GuruState,
        touch: float,
        new: float,
        delete: float,
        window: tuple[int, int] | None = None,
    ) -> None:
        rng = self._drift_rng
        n_touch, n_new, n_delete = (
            int(rng.poisson(x)) if x > 0 else 0 for x in (touch, new, delete)
        )
        times = self._drift_times(g, n_touch + n_new, window)
        for t in times[:n_touch]:
            if not g.order:
                break
            _k, row = g.order[int(rng.integers(0, len(g.order)))]
            g.set_last(row, max(t, g.last[row]))
        users = [u for u, keys in g.by_user.items() if keys]
        for t in times[n_touch:]:
            user = None
            if users and rng.random() < self.drift.new_user_share:
                user = users[int(rng.integers(0, len(users)))]
            frame = synthetic.new_sessions(
                1,
                seed=g.seed,
                at=[_from_us(t)],
                external_user_id=user,
                slug_counter_start=g.new_counter,
            )
            g.new_counter += 1
            self._check_new_ids(frame["id"])
            for r in g.append(frame):
                self._session_index[g.ids[r]] = (g.slug, r)
        for _ in range(n_delete):
            if not g.order:
                break
            _k, row = g.order[int(rng.integers(0, len(g.order)))]
            g.delete(row)

    def _drift_times(self, g: _GuruState, n: int, window: tuple[int, int] | None) -> list[int]:
        """``n`` strictly increasing times on top of the guru: spread over ``window`` when
        given (per-second drift), else default 'now' times."""
        if n == 0:
            return []
        if window is None:
            return [self._next_default_us(g) for _ in range(n)]
        lo, hi = window
        spread = sorted(int(x) for x in self._drift_rng.integers(lo + 1, hi + 1, size=n))
        out = []
        floor = max((g.top_us() or 0) + 1, self._last_default_us + 1)
        for t in spread:
            t = max(t, floor)
            out.append(t)
            floor = t + 1
        self._last_default_us = out[-1]
        return out

    # --- request handling --------------------------------------------------------------------

    def _handle(
        self, method: str, path: str, headers: Mapping[str, str], raw: bytes | None, client: str
    ) -> _Answer:
        """Compute the answer for one request (the state lock is held by the caller)."""
        self._n_requests += 1
        for fn in self._hooks.pop(self._n_requests, []):
            fn(self)
        self._apply_time_drift()
        route = path.split("?", 1)[0]
        m_list = _LIST_RE.match(route)
        m_conv = None if m_list else _CONV_RE.match(route)
        body, body_error = _parse_body(raw)
        ctx = _RequestContext(method, route, body, None)
        if not m_list and not m_conv:
            return self._finish(ctx, _html(404, _HTML_404), False)
        key = _header(headers, "x-api-key")
        known = self._keys.get(key) if key else None
        if known is not None:
            ctx.owner = known[0]
        faulted = self._draw_faults()
        if self.rate_limit is not None:
            bucket = f"owner:{known[0]}" if known else f"anon:{client}"
            wait = self._limiter.check(bucket, self.monotonic())
            if wait is not None:
                return self._finish(ctx, self._throttled(wait), faulted)
        if method != "POST":
            return self._finish(
                ctx,
                _json(
                    405, {"detail": f'Method "{method}" not allowed.'}, [("Allow", "POST, OPTIONS")]
                ),
                faulted,
            )
        if not key:
            return self._finish(ctx, _msg(401, "API key is required"), faulted)
        if known is None:
            return self._finish(ctx, _msg(401, "Invalid API key"), faulted)
        allowed = known[1]
        if m_list:
            slug = m_list.group("slug")
            g = self._gurus.get(slug)
            if g is None:
                return self._finish(ctx, _msg(404, f"Guru type {slug} not found"), faulted)
            if allowed is not None and slug not in allowed:
                return self._finish(ctx, _msg(403, "Forbidden"), faulted)
            if body_error:
                return self._finish(ctx, _msg(400, body_error), faulted)
            return self._finish(ctx, self._list(g, body or {}), faulted)
        assert m_conv is not None
        sid = m_conv.group("sid")
        if not sid:
            return self._finish(ctx, _msg(400, "Binge ID is required"), faulted)
        hit = self._session_index.get(sid)
        if hit is None or self._gurus[hit[0]].deleted[hit[1]]:
            return self._finish(ctx, _msg(404, "Binge not found"), faulted)
        if allowed is not None and hit[0] not in allowed:
            return self._finish(ctx, _msg(403, "You don't have access to this binge"), faulted)
        g, row = self._gurus[hit[0]], hit[1]
        return self._finish(
            ctx,
            _json(
                200,
                {
                    "binge_id": sid,
                    "root_question_slug": g.qslug[row],
                    "date_created": format_offset(_from_us(g.created[row])),
                    "last_used": format_offset(_from_us(g.last[row])),
                    "conversation": self._conversation(g, row),
                },
            ),
            faulted,
        )

    def _list(self, g: _GuruState, body: Mapping[str, Any]) -> _Answer:
        page = _page_number(body.get("page_num", 1))
        if page is None:
            return _msg(400, "Page number must be an integer")
        query = body.get("search_query", "")
        if query is None:
            query = ""
        if not isinstance(query, str):
            return _msg(400, "search_query must be a string")
        user = body.get("external_user_id")
        if user is not None and not isinstance(user, str):
            return _msg(400, "external_user_id must be a string")
        if page <= 0:
            return _html(500, _HTML_500)
        d = self.drift
        if d.touch_per_request or d.new_per_request or d.delete_per_request:
            self._drift(g, d.touch_per_request, d.new_per_request, d.delete_per_request)
        keys = g.listing(query.strip(), user or None)
        size = self.page_size
        total = len(keys)
        off = (page - 1) * size
        page_keys = self._cut(keys, off, size) if off < total else []
        groups: tuple[list[bytes], list[bytes], list[bytes]] = ([], [], [])
        today = _to_us(self.clock()) // _US_PER_DAY
        for _k, row in page_keys:
            if not g.has_root[row]:
                continue  # dropped after the page cut, as the real backend does
            last = g.last[row]
            day = last // _US_PER_DAY
            group = 0 if day == today else (1 if today - 7 <= day < today else 2)
            groups[group].append(g.session_json(row))
        more = b"true" if total > page * size else b"false"
        body = b'{"today":[%b],"last_week":[%b],"older":[%b],"has_more":%b}' % (
            b",".join(groups[0]),
            b",".join(groups[1]),
            b",".join(groups[2]),
            more,
        )
        return _Answer(200, body)

    def _cut(self, keys: list[tuple[int, int]], off: int, size: int) -> list[tuple[int, int]]:
        """Rows ``off .. off+size-1`` of the order, ties in a fresh random order if enabled."""
        end = min(off + size, len(keys))
        if not self.tie_shuffle:
            return keys[off:end]
        lo = bisect.bisect_left(keys, (keys[off][0],))
        hi = bisect.bisect_left(keys, (keys[end - 1][0] + 1,))
        window = keys[lo:hi]
        i = 0
        while i < len(window):
            j = i + 1
            while j < len(window) and window[j][0] == window[i][0]:
                j += 1
            if j - i > 1:
                group = window[i:j]
                self._tie_rng.shuffle(group)
                window[i:j] = group
            i = j
        return window[off - lo : end - lo]

    def _throttled(self, seconds: int) -> _Answer:
        headers = [("Retry-After", str(seconds))] if self.faults.retry_after_header else []
        return _json(
            429,
            {"msg": f"Request was throttled. Expected available in {seconds} seconds."},
            headers,
        )

    def _draw_faults(self) -> dict[str, Any]:
        """Decide this request's faults: always the same number of draws per request."""
        f = self.faults
        r = self._fault_rng
        u = [r.random() for _ in range(7)]
        status = f.error_statuses[int(u[5] * len(f.error_statuses))]
        kind = f.error_bodies[int(u[6] * len(f.error_bodies))]
        throttle = False
        if self._throttle_left > 0:
            self._throttle_left -= 1
            throttle = True
        elif u[2] < f.throttle_rate:
            self._throttle_left = f.throttle_burst - 1
            throttle = True
        return {
            "drop": u[0] < f.drop_rate,
            "slow": u[1] < f.slow_rate,
            "throttle": throttle,
            "error": (status, kind) if u[3] < f.error_rate else None,
            "malformed": u[4] < f.malformed_json_rate,
            "html200": u[4] >= 1.0 - f.html_200_rate,
        }

    def _finish(
        self, ctx: _RequestContext, answer: _Answer, faulted: dict[str, Any] | bool
    ) -> _Answer:
        if isinstance(faulted, dict):
            answer = self._apply_faults(answer, faulted)
        self._log.append(
            LoggedRequest(
                ctx.method,
                ctx.path,
                ctx.body,
                None if answer.drop else answer.status,
                self.clock(),
                ctx.owner,
            )
        )
        return answer

    def _apply_faults(self, answer: _Answer, f: dict[str, Any]) -> _Answer:
        if f["drop"]:
            answer = _Answer(0, b"", drop=True)
        elif f["throttle"]:
            answer = self._throttled(self.faults.throttle_seconds)
        elif f["error"] is not None:
            status, kind = f["error"]
            if kind == "json":
                answer = _msg(
                    status, "Internal server error" if status == 500 else HTTPStatus(status).phrase
                )
            else:
                answer = _html(status, _HTML_500 if status == 500 else _html_error(status))
        elif answer.status == 200 and f["malformed"]:
            answer = _Answer(200, answer.body[: max(1, len(answer.body) // 2)], "application/json")
        elif answer.status == 200 and f["html200"]:
            answer = _html(
                200,
                "<!doctype html><html><head><title>Gurubase</title></head>"
                '<body><div id="root">Loading…</div></body></html>',
            )
        if f["slow"]:
            answer.delay = self.faults.slow_seconds
        return answer


@dataclass
class _RequestContext:
    method: str
    path: str
    body: dict[str, Any] | None
    owner: str | None


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    return value if value is None else value.strip()


def _parse_body(raw: bytes | None) -> tuple[dict[str, Any] | None, str | None]:
    """(parsed object, error message). An empty body is ``{}`` (all defaults)."""
    if raw is None or not raw.strip():
        return None, None
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        return None, f"JSON parse error - {type(exc).__name__}"
    if not isinstance(data, dict):
        return None, "Request body must be a JSON object"
    return data, None


# --- HTTP plumbing --------------------------------------------------------------------------


_DATE_CACHE: list[Any] = [0, ""]


def _http_date() -> str:
    """The ``Date`` header, formatted once per second (it is on every answer)."""
    now = int(time.time())
    if _DATE_CACHE[0] != now:
        _DATE_CACHE[:] = [now, formatdate(now, usegmt=True)]
    return str(_DATE_CACHE[1])


class _Headers(dict[str, str]):
    """Request headers keyed by lower-case name: ``get`` is case-insensitive."""

    def get(self, name: str, default: Any = None) -> Any:  # type: ignore[override]
        return super().get(name.lower(), default)


class _HTTPServer(http.server.ThreadingHTTPServer):
    """Tracks open connections so ``stop()`` can cut keep-alive clients off, as a real
    server going away would (otherwise a pooled connection keeps being answered)."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128
    app: LocalGurubase

    def __init__(self, address: tuple[str, int], handler: type[_Handler]) -> None:
        super().__init__(address, handler)
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
    """Reads one request, asks the app for an answer under its lock, writes it in one send."""

    protocol_version = "HTTP/1.1"
    server_version = "LocalGurubase/0.1"
    timeout = 120
    server: _HTTPServer

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
        """A lean replacement for the stdlib's (which runs the email parser on every request
        and costs more than answering one): request line, headers, keep-alive rules."""
        self.command = None
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
        self.headers = headers  # type: ignore[assignment]
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
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
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
        length = self.headers.get("Content-Length")
        if not length:
            return None
        n = int(length)
        if n < 0 or n > _MAX_BODY:
            raise ValueError(f"Content-Length {n} out of range")
        return self.rfile.read(n)

    def _serve(self, method: str) -> None:
        app = self.server.app
        try:
            raw = self._read_body()
        except ValueError:
            self.close_connection = True
            self._write(_msg(400, "Malformed request body"), method)
            return
        try:
            with app._lock:
                answer = app._handle(method, self.path, self.headers, raw, self.client_address[0])
        except Exception as exc:  # one bad request must never take the server down
            logger.exception(
                "LocalGurubase: error while answering %s %s", method, self.path.split("?")[0]
            )
            with app._lock:
                app.internal_errors.append(f"{method} {self.path}: {type(exc).__name__}: {exc}")
                app._log.append(LoggedRequest(method, self.path, None, 500, app.clock(), None))
            answer = _html(500, _HTML_500)
        if answer.delay:
            app.sleep(answer.delay)
        if answer.drop:
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                logger.debug("LocalGurubase: socket already closed while dropping")
            return
        self._write(answer, method)

    def _write(self, answer: _Answer, method: str) -> None:
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
