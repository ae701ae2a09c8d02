"""The local server's request handler: ``App.handle(request) -> response``, no sockets.

Pipeline (in this order): count the request and run ``on_request`` hooks → apply per-second
drift → route (unknown path: 404 HTML, not throttled) → draw faults → rate limit → method
(405) → key (401) → guru or session (404) → access (403) → body (400) → per-request drift →
answer. A request picked for a fault is processed exactly like any other (it counts against
the rate limit and applies its drift); only the answer sent is replaced. Every request is
logged with the status actually sent (``None`` for a dropped connection); the key never is.
"""

from __future__ import annotations

import bisect
import json
import logging
import math
import random
import re
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..timestamps import format_offset, from_micros, to_micros
from ._drift import Drift
from ._exchange import (
    HTML_404,
    HTML_500,
    Request,
    Response,
    html_response,
    json_response,
    msg_response,
)
from ._export import Exporter
from ._faults import FaultDraw, Faults
from ._state import GuruState, Key, ServerState

logger = logging.getLogger("guru_analytics.server")

_US_PER_DAY = 86_400 * 1_000_000
_LIST_RE = re.compile(r"^/api/v1/(?P<slug>[^/]+)/sessions/$")
_CONV_RE = re.compile(r"^/api/v1/sessions/(?P<sid>[^/]*)/conversation/$")
_EXPORT_RE = re.compile(r"^/api/v1/(?P<slug>[^/]+)/analytics/export/$")


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


class SlidingWindow:
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


class App:
    """Answers requests against a ``ServerState`` (see the module docstring for the order)."""

    def __init__(
        self,
        state: ServerState,
        faults: Faults,
        drift: Drift,
        *,
        page_size: int,
        rate_limit: int | None,
        rate_window: float,
        tie_shuffle: bool,
        monotonic: Callable[[], float],
        seed: int,
        export_scheme: str,
    ) -> None:
        self.state = state
        self.faults = faults
        self.drift = drift
        self.page_size = page_size
        self.rate_limit = rate_limit
        self.tie_shuffle = tie_shuffle
        self.monotonic = monotonic
        self.export_scheme = export_scheme
        self.exporter = Exporter()
        self.limiter = SlidingWindow(rate_limit or 1, rate_window)
        self.internal_errors: list[str] = []
        self.log: list[LoggedRequest] = []
        self.n_requests = 0
        self.hooks: dict[int, list[Callable[[], Any]]] = {}
        self._tie_rng = random.Random(seed)

    def handle(self, request: Request) -> Response:
        """The answer to one request. Never raises: a bug while answering (an ``on_request``
        hook included) gives an HTML 500, is logged and kept in ``internal_errors``."""
        with self.state.lock:
            try:
                return self._handle(request)
            except Exception as exc:  # one bad request must never take the server down
                logger.exception(
                    "LocalGurubase: error while answering %s %s",
                    request.method,
                    request.path.split("?")[0],
                )
                self.internal_errors.append(
                    f"{request.method} {request.path}: {type(exc).__name__}: {exc}"
                )
                self.log.append(
                    LoggedRequest(request.method, request.path, None, 500, self.state.clock(), None)
                )
                return html_response(500, HTML_500)

    def _handle(self, request: Request) -> Response:
        self.n_requests += 1
        for fn in self.hooks.pop(self.n_requests, []):
            fn()
        self.drift.elapsed()
        method = request.method
        route = request.path.split("?", 1)[0]
        m_list = _LIST_RE.match(route)
        m_export = None if m_list else _EXPORT_RE.match(route)
        m_conv = None if m_list or m_export else _CONV_RE.match(route)
        body, body_error = _parse_body(request.body)
        log = _LogEntry(method, route, body, None)
        if not m_list and not m_conv and not m_export:
            return self._finish(log, html_response(404, HTML_404), None)
        key = request.header("x-api-key")
        known = self.state.keys.get(key) if key else None
        if known is not None:
            log.owner = known[0]
        draw = self.faults.draw()
        if self.rate_limit is not None:
            bucket = f"owner:{known[0]}" if known else f"anon:{request.client}"
            wait = self.limiter.check(bucket, self.monotonic())
            if wait is not None:
                return self._finish(log, self.faults.throttled(wait), draw)
        if method != "POST":
            allow = [("Allow", "POST, OPTIONS")]
            answer = json_response(405, {"detail": f'Method "{method}" not allowed.'}, allow)
            return self._finish(log, answer, draw)
        if not key:
            return self._finish(log, msg_response(401, "API key is required"), draw)
        if known is None:
            return self._finish(log, msg_response(401, "Invalid API key"), draw)
        allowed = known[1]
        m_guru = m_list or m_export
        if m_guru is not None:
            slug = m_guru.group("slug")
            g = self.state.gurus.get(slug)
            if g is None:
                return self._finish(log, msg_response(404, f"Guru type {slug} not found"), draw)
            if allowed is not None and slug not in allowed:
                return self._finish(log, msg_response(403, "Forbidden"), draw)
            if body_error:
                return self._finish(log, msg_response(400, body_error), draw)
            if m_export is not None:
                now = self.state.clock()
                answer = self.exporter.answer(g, body or {}, now, self.export_scheme)
                return self._finish(log, answer, draw)
            return self._finish(log, self._list(g, body or {}), draw)
        assert m_conv is not None
        return self._finish(log, self._conversation(m_conv.group("sid"), allowed), draw)

    def _conversation(self, sid: str, allowed: frozenset[str] | None) -> Response:
        if not sid:
            return msg_response(400, "Binge ID is required")
        hit = self.state.session_index.get(sid)
        if hit is None or self.state.gurus[hit[0]].deleted[hit[1]]:
            return msg_response(404, "Binge not found")
        if allowed is not None and hit[0] not in allowed:
            return msg_response(403, "You don't have access to this binge")
        g, row = self.state.gurus[hit[0]], hit[1]
        return json_response(
            200,
            {
                "binge_id": sid,
                "root_question_slug": g.qslug[row],
                "date_created": format_offset(from_micros(g.created[row])),
                "last_used": format_offset(from_micros(g.last[row])),
                "conversation": g.conversation(row),
            },
        )

    def _list(self, g: GuruState, body: Mapping[str, Any]) -> Response:
        page = _page_number(body.get("page_num", 1))
        if page is None:
            return msg_response(400, "Page number must be an integer")
        query = body.get("search_query", "")
        if query is None:
            query = ""
        if not isinstance(query, str):
            return msg_response(400, "search_query must be a string")
        user = body.get("external_user_id")
        if user is not None and not isinstance(user, str):
            return msg_response(400, "external_user_id must be a string")
        if page <= 0:
            return html_response(500, HTML_500)
        self.drift.request(g)
        keys = g.listing(query.strip(), user or None)
        size = self.page_size
        total = len(keys)
        off = (page - 1) * size
        page_keys = self._cut(keys, off, size) if off < total else []
        groups: tuple[list[bytes], list[bytes], list[bytes]] = ([], [], [])
        today = to_micros(self.state.clock()) // _US_PER_DAY
        for _k, row in page_keys:
            if not g.has_root[row]:
                continue  # dropped after the page cut, as the real backend does
            day = g.last[row] // _US_PER_DAY
            group = 0 if day == today else (1 if today - 7 <= day < today else 2)
            groups[group].append(g.session_json(row))
        more = b"true" if total > page * size else b"false"
        data = b'{"today":[%b],"last_week":[%b],"older":[%b],"has_more":%b}' % (
            b",".join(groups[0]),
            b",".join(groups[1]),
            b",".join(groups[2]),
            more,
        )
        return Response(200, data)

    def _cut(self, keys: list[Key], off: int, size: int) -> list[Key]:
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

    def _finish(self, log: _LogEntry, answer: Response, draw: FaultDraw | None) -> Response:
        if draw is not None:
            answer = self.faults.apply(answer, draw)
        status = None if answer.drop else answer.status
        self.log.append(
            LoggedRequest(log.method, log.path, log.body, status, self.state.clock(), log.owner)
        )
        return answer


@dataclass
class _LogEntry:
    method: str
    path: str
    body: dict[str, Any] | None
    owner: str | None


def _page_number(raw: Any) -> int | None:
    """``int(page_num)`` the way the Python backend does it; None when that would fail."""
    if raw is None or isinstance(raw, list | dict):
        return None
    try:
        return int(raw)
    except (ValueError, TypeError, OverflowError):
        return None


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
