"""The Gurubase HTTP client: List Sessions, Get Session and Export Analytics, paced, retried,
validated.

One responsibility: the request loop of each endpoint. Requests are the scarce resource (10
a minute by default), so every call goes through one ``SlidingWindowLimiter`` per client;
429s, 5xx, dropped connections and timeouts are retried a bounded number of times with
logged waits (how long: ``retry``); one attempt, its streamed body under the whole-request
deadline and decompressed size cap, and the status-to-error table are ``transport``; each
answer is checked field by field (``wire``) so a changed or non-Gurubase server fails
loudly instead of feeding bad rows to the cache. The API key travels only in the
``x-api-key`` header: messages, logs and reprs show at most ``errors.mask_key(key)``.
Redirects are not followed, so the key is never replayed to another host.
"""

from __future__ import annotations

import logging
import os
import random
import re
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import Any
from urllib.parse import quote, urlsplit

import requests

from . import __version__
from . import retry as _retry
from . import transport as _transport
from .errors import (
    ConfigError,
    DeadlineError,
    RateLimitedError,
    ServerError,
    UnexpectedResponseError,
    mask_key,
)
from .ratelimit import SlidingWindowLimiter
from .retry import BAD_BODY_RETRIES, MIN_RETRY_WAIT
from .timestamps import parse_http_date, utc_now
from .transport import ACCEPT_ENCODING, NOT_JSON, TRANSPORT_ERRORS, Call, DeadlinePassed
from .wire import (
    EXPORT_FILTERS,
    EXPORT_INTERVALS,
    INCOMPATIBLE,
    Conversation,
    ExportedQuestion,
    FieldReader,
    Message,
    QuestionExport,
    UnansweredQuestion,
    parse_conversation,
    parse_export,
    repair_text,
)
from .wire import json_type as _json_type

DEFAULT_BASE_URL = "https://api.gurubase.io/api/v1"
USER_AGENT = f"guru-analytics/{__version__}"
# How many waits ClientStats remembers (the counters keep counting past it).
WAIT_LOG_SIZE = 256
# Seconds one request may take from sending to the last body byte, whatever the per-read
# timeout: a server trickling a byte at a time would otherwise hold a sync for ever.
DEFAULT_DEADLINE = 300.0
# Largest body accepted, counted after decompression: a real page is a few tens of KiB, a
# long conversation a few MiB; a gzip bomb stops here instead of filling memory.
DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024
# An export holds up to 12 months of questions in one answer (about 21 MB for a guru of
# 30,000 sessions on the local server): its cap is far above a page's, still finite.
EXPORT_MAX_BODY_BYTES = 512 * 1024 * 1024
_SESSION_FIELDS = (
    "id",
    "last_used",
    "guru_type_slug",
    "guru_type_name",
    "root_question_name",
    "root_question_slug",
    "root_question_link",
)
_GROUPS = ("today", "last_week", "older")
_KEY_OK = re.compile(r"^[\x21-\x7e]+$")


@dataclass(frozen=True)
class ListedSession:
    """One session as List Sessions shows it; ``group`` is the list it came in."""

    id: str
    last_used: datetime
    guru_type_slug: str | None
    guru_type_name: str | None
    root_question_name: str | None
    root_question_slug: str | None
    root_question_link: str | None
    group: str
    extra: dict[str, Any] = field(default_factory=dict)
    # Fields whose text held lone UTF-16 surrogates (undecodable), stored with U+FFFD.
    repaired: tuple[str, ...] = ()


@dataclass(frozen=True)
class Page:
    """One List Sessions answer: today → last_week → older, each in server order."""

    page_num: int
    has_more: bool
    sessions: list[ListedSession]
    # The server's clock when it answered (its ``Date`` header; None if absent or unreadable):
    # the sync judges a ``last_used`` beyond it as suspect (see ``paging.is_suspect``).
    date: datetime | None = None


@dataclass(frozen=True)
class Wait:
    """One pause the client took, and why (for progress displays and post-mortems)."""

    reason: str
    seconds: float
    endpoint: str


@dataclass
class ClientStats:
    """What the client spent: every HTTP attempt, 429s, retries and seconds waited."""

    requests: int = 0
    throttled: int = 0
    retries: int = 0
    waited_seconds: float = 0.0
    waits: deque[Wait] = field(default_factory=lambda: deque(maxlen=WAIT_LOG_SIZE), repr=False)

    def record_wait(self, reason: str, seconds: float, endpoint: str) -> None:
        """Count a pause and remember it (the log keeps the last ``WAIT_LOG_SIZE``)."""
        self.waited_seconds += seconds
        self.waits.append(Wait(reason, seconds, endpoint))


class GurubaseClient:
    """Talks to one Gurubase API with one key, within one rate limit."""

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        *,
        session: requests.Session | None = None,
        rate_limit: int | None = 10,
        rate_window: float = 60.0,
        timeout: float = 30.0,
        max_retries: int = 5,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        logger: logging.Logger | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], datetime] = utc_now,
        max_retry_after: float = 300.0,
        backoff_base: float = 1.0,
        backoff_cap: float = 60.0,
        limiter: SlidingWindowLimiter | None = None,
        deadline: float = DEFAULT_DEADLINE,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    ) -> None:
        key = api_key if api_key is not None else os.environ.get("GURUBASE_API_KEY", "")
        key = key.strip() if isinstance(key, str) else key
        if not key:
            raise ConfigError("no API key: pass api_key= or set GURUBASE_API_KEY")
        if not isinstance(key, str) or not _KEY_OK.match(key):
            # Never echo it: requests would put the raw value in its InvalidHeader message.
            raise ConfigError(
                f"API key {mask_key(key) if isinstance(key, str) else '<not a string>'} contains "
                "spaces or control characters: copy it again from the Gurubase settings"
            )
        self._key = key
        self.base_url = _check_base_url(
            base_url
            if base_url is not None
            else os.environ.get("GURUBASE_BASE_URL") or DEFAULT_BASE_URL
        )
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ConfigError(f"max_retries {max_retries!r} is not valid: use 0 or more")
        if not timeout or timeout <= 0:
            raise ConfigError(f"timeout {timeout!r} is not valid: use a positive number of seconds")
        if not isinstance(deadline, int | float) or not deadline > 0:
            raise ConfigError(
                f"deadline {deadline!r} is not valid: use a positive number of seconds"
            )
        if (
            isinstance(max_body_bytes, bool)
            or not isinstance(max_body_bytes, int)
            or max_body_bytes < 1
        ):
            raise ConfigError(
                f"max_body_bytes {max_body_bytes!r} is not valid: use a positive size"
            )
        if session is not None and session.verify is False:
            raise ConfigError(
                "the given requests.Session has TLS verification turned off: leave verify on "
                "(point REQUESTS_CA_BUNDLE at your CA file for a private certificate)"
            )
        self._owns_session = session is None
        self._session = session if session is not None else requests.Session()
        self.timeout = timeout
        self.deadline = float(deadline)
        self.max_body_bytes = max_body_bytes
        self.max_retries = max_retries
        self.max_retry_after = float(max_retry_after)
        self.backoff_base = float(backoff_base)
        self.backoff_cap = float(backoff_cap)
        self._monotonic = monotonic
        self._clock = clock
        self._rng = rng if rng is not None else random.Random()
        self._log = logger if logger is not None else logging.getLogger("guru_analytics.client")
        self.limiter = (
            limiter
            if limiter is not None
            else SlidingWindowLimiter(rate_limit, rate_window, monotonic=monotonic, sleep=sleep)
        )
        self.stats = ClientStats()
        self._pending_reason: str | None = None
        self._headers = {
            "x-api-key": key,
            "Accept": "application/json",
            "Accept-Encoding": ACCEPT_ENCODING,
            "User-Agent": USER_AGENT,
        }

    # --- lifecycle ---------------------------------------------------------------------

    def __repr__(self) -> str:
        return (
            f"GurubaseClient(base_url={self.base_url!r}, api_key={mask_key(self._key)!r}, "
            f"limiter={self.limiter!r})"
        )

    __str__ = __repr__

    def close(self) -> None:
        """Close the HTTP session if this client created it (an injected one is the caller's)."""
        if self._owns_session:
            self._session.close()

    def __enter__(self) -> GurubaseClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- endpoints ---------------------------------------------------------------------

    def list_sessions(
        self,
        guru: str,
        page_num: int,
        search_query: str = "",
        external_user_id: str | None = None,
    ) -> Page:
        """One page of a guru's sessions (all three groups), validated field by field."""
        if not isinstance(guru, str) or not guru.strip():
            raise ConfigError(f"guru slug {guru!r} is not valid: pass the slug from the guru's URL")
        if isinstance(page_num, bool) or not isinstance(page_num, int) or page_num < 1:
            raise ConfigError(f"page_num {page_num!r} is not valid: pages are numbered from 1")
        if not isinstance(search_query, str):
            raise ConfigError(f"search_query {search_query!r} is not valid: pass a string")
        if external_user_id is not None and not isinstance(external_user_id, str):
            raise ConfigError(f"external_user_id {external_user_id!r} is not valid: pass a string")
        guru = guru.strip()
        path = f"/{quote(guru, safe='')}/sessions/"
        body: dict[str, Any] = {"page_num": page_num, "search_query": search_query}
        if external_user_id is not None:
            body["external_user_id"] = external_user_id
        call = Call(f"List Sessions page {page_num}", path, "list", guru)
        data = self._post(call, body)
        return self._parse_page(call, data, page_num)

    def get_session(self, session_id: str) -> Conversation:
        """The messages of one session (Get Session), validated field by field."""
        if not isinstance(session_id, str) or not session_id.strip():
            raise ConfigError(f"session id {session_id!r} is not valid: pass the id from a listing")
        session_id = session_id.strip()
        path = f"/sessions/{quote(session_id, safe='')}/conversation/"
        call = Call(f"Get Session {self._clean(session_id, 80)}", path, "session", session_id)
        data = self._post(call, {})
        return parse_conversation(data, session_id, self._reader(call), self._log)

    def export_questions(
        self,
        guru: str,
        interval: str = "12m",
        *,
        filters: Mapping[str, str] | None = None,
    ) -> QuestionExport:
        """Every question of ``interval`` (Export Analytics, JSON) in one request.

        ``interval`` is one of ``wire.EXPORT_INTERVALS`` (``12m`` = 365 days, computed in UTC
        on the server's clock); ``filters`` maps ``questions`` / ``out_of_context`` /
        ``referenced_sources`` to a value of ``wire.EXPORT_FILTERS``. An interval without
        data gives an empty export (``scheme == "empty"``), not an error. Same pacing,
        retries, errors and key masking as the other calls.
        """
        if not isinstance(guru, str) or not guru.strip():
            raise ConfigError(f"guru slug {guru!r} is not valid: pass the slug from the guru's URL")
        if interval not in EXPORT_INTERVALS:
            raise ConfigError(
                f"interval {interval!r} is not valid: use one of {', '.join(EXPORT_INTERVALS)}"
            )
        body: dict[str, Any] = {"export_type": "json", "interval": interval}
        if filters is not None:
            if not isinstance(filters, Mapping):
                raise ConfigError(f"filters {filters!r} is not valid: pass a dict")
            for name, value in filters.items():
                allowed = EXPORT_FILTERS.get(name)
                if allowed is None or value not in allowed:
                    raise ConfigError(
                        f"filter {name!r}={value!r} is not valid: use "
                        + "; ".join(f"{k}: {', '.join(v)}" for k, v in EXPORT_FILTERS.items())
                    )
            body["filters"] = dict(filters)
        guru = guru.strip()
        path = f"/{quote(guru, safe='')}/analytics/export/"
        call = Call(
            f"Export Analytics {interval}", path, "export", guru, max_bytes=EXPORT_MAX_BODY_BYTES
        )
        try:
            data = self._post(call, body)
        except _transport.NoExportData:
            return QuestionExport.empty(guru, interval)
        return parse_export(
            data,
            guru=guru,
            interval=interval,
            label=call.label,
            endpoint=call.endpoint,
            clean=self._clean,
        )

    # --- HTTP with pacing and retries --------------------------------------------------

    def _post(self, call: Call, body: Mapping[str, Any]) -> dict[str, Any]:
        """POST with pacing; retry 429/5xx/transport/bad bodies; return the JSON object."""
        url = self.base_url + call.endpoint
        retries = 0
        bad_bodies = 0
        while True:
            self._wait_for_slot(call)
            self.stats.requests += 1
            try:
                resp = _transport.send(
                    self._session,
                    url,
                    body,
                    call,
                    headers=self._headers,
                    timeout=self.timeout,
                    deadline=self.deadline,
                    cap=call.max_bytes or self.max_body_bytes,
                    monotonic=self._monotonic,
                    clean=self._clean,
                )
            except (*TRANSPORT_ERRORS, DeadlinePassed) as exc:
                self.limiter.finish()
                if isinstance(exc, DeadlinePassed):
                    what = f"did not finish within the {self.deadline:g} s deadline"
                    detail = "the server sends its answer too slowly"
                else:
                    what = (
                        "timed out"
                        if isinstance(exc, requests.exceptions.Timeout)
                        else "connection failed or dropped"
                    )
                    detail = _transport.describe_exception(exc, self._clean)
                if retries >= self.max_retries:
                    message = (
                        f"{call.label}: {what} after {retries} retries ({detail}); check the "
                        "network and the base URL, then try again"
                    )
                    if isinstance(exc, DeadlinePassed):
                        err = DeadlineError(message)
                        err.endpoint, err.status = call.endpoint, None  # type: ignore[attr-defined]
                        raise err from None
                    _transport.raise_transport(call, message, exc)
                retries += 1
                self._schedule_retry(call, f"{what} ({detail})", self._backoff(retries), retries)
                continue
            except requests.exceptions.RequestException as exc:
                # Not retryable (invalid URL, too many redirects, ...): report it cleanly.
                self.limiter.finish()
                described = _transport.describe_exception(exc, self._clean)
                _transport.raise_transport(
                    call, f"{call.label}: request failed ({described}); check the base URL", exc
                )
            self.limiter.finish()
            status, content = resp.status, resp.content

            if 200 <= status < 300:
                data = _transport.decode_json(call, status, content)
                if data is NOT_JSON:
                    ctype = resp.headers.get("Content-Type", "")
                    what = _transport.describe_body(ctype, content, self._clean)
                    if bad_bodies >= BAD_BODY_RETRIES or retries >= self.max_retries:
                        raise UnexpectedResponseError(
                            f"{call.label}: expected JSON but got {what} after {retries} "
                            "retries; the base URL may point at a proxy or web page, not the API",
                            status=status,
                            endpoint=call.endpoint,
                        )
                    bad_bodies += 1
                    retries += 1
                    self._schedule_retry(
                        call,
                        f"HTTP {status} without JSON ({what})",
                        self._backoff(retries),
                        retries,
                    )
                    continue
                if not isinstance(data, dict):
                    raise UnexpectedResponseError(
                        f"{call.label}: the answer is a JSON {type(data).__name__}, not an "
                        f"object; {INCOMPATIBLE}",
                        status=status,
                        endpoint=call.endpoint,
                    )
                call.date = parse_http_date(resp.headers.get("Date"))
                return data

            if status == 429:
                self.stats.throttled += 1
                hint = _retry.retry_hint(resp.headers.get("Retry-After"), content, self._clock)
                if retries >= self.max_retries:
                    asked = f" (the server asks for {hint:g} s)" if hint is not None else ""
                    raise RateLimitedError(
                        f"{call.label}: still rate limited (429) after {retries} retries{asked}; "
                        "try again later or lower --rate-limit",
                        endpoint=call.endpoint,
                        retry_after=hint,
                    )
                retries += 1
                wait, why = self._server_wait(call, hint, retries)
                self._schedule_retry(call, f"rate limited (429, {why})", wait, retries)
                continue

            if status >= 500:
                if retries >= self.max_retries:
                    raise ServerError(
                        f"{call.label}: server error {status} after {retries} retries; the API "
                        "may be down or overloaded: try again later",
                        status=status,
                        endpoint=call.endpoint,
                    )
                retries += 1
                hint = _retry.retry_hint(resp.headers.get("Retry-After"), b"", self._clock)
                if hint is not None:
                    wait, why = self._server_wait(call, hint, retries)
                else:
                    wait, why = self._backoff(retries), "backoff"
                self._schedule_retry(call, f"server error {status} ({why})", wait, retries)
                continue

            _transport.raise_for_status(
                call,
                status,
                content,
                resp.headers.get("Location"),
                masked_key=mask_key(self._key),
                clean=self._clean,
            )

    def _wait_for_slot(self, call: Call) -> None:
        """Wait for the limiter (window or a pending retry wait), logging why and how long."""
        delay = self.limiter.next_delay()
        if delay > 0:
            window = self.limiter.window_delay()
            if self._pending_reason is not None and delay > window:
                reason = self._pending_reason
            else:
                reason = f"client rate limit ({self.limiter.max_requests} requests per {self.limiter.window:g} s)"
            self._log.info("%s: waiting %.2f s: %s", call.label, delay, reason)
        else:
            reason = ""
        waited = self.limiter.acquire()
        self._pending_reason = None
        if waited > 0:
            self.stats.record_wait(reason or "client rate limit", waited, call.endpoint)

    def _schedule_retry(self, call: Call, reason: str, wait: float, retry: int) -> None:
        """Log a failure and push the next start ``wait`` seconds out (the limiter sleeps)."""
        self.stats.retries += 1
        self._log.warning(
            "%s: %s; retry %d of %d in %.2f s", call.label, reason, retry, self.max_retries, wait
        )
        self._pending_reason = f"retry {retry} after {reason}"
        self.limiter.defer_until(self._monotonic() + wait)

    def _backoff(self, retry: int) -> float:
        return _retry.backoff(self._rng, retry, self.backoff_base, self.backoff_cap)

    def _server_wait(self, call: Call, hint: float | None, retry: int) -> tuple[float, str]:
        return _retry.server_wait(
            hint,
            lambda: self._backoff(retry),
            self.max_retry_after,
            label=call.label,
            log=self._log,
        )

    def _clean(self, text: str, limit: int) -> str:
        """One line, no control characters, the key masked, at most ``limit`` characters."""
        return _transport.clean(text, limit, self._key, mask_key(self._key))

    # --- parsing -----------------------------------------------------------------------

    def _reader(self, call: Call) -> FieldReader:
        return FieldReader(call.label, call.endpoint, self._clean)

    def _parse_page(self, call: Call, data: dict[str, Any], page_num: int) -> Page:
        fields = self._reader(call)
        has_more = fields.get(data, "has_more", "has_more", (bool,), required=True)
        sessions: list[ListedSession] = []
        for group in _GROUPS:
            items = fields.get(data, group, group, (list,), required=True)
            for i, item in enumerate(items):
                where = f"{group}[{i}]"
                if not isinstance(item, dict):
                    raise fields.error(where, f"is {_json_type(item)}, expected object")
                item, repaired = repair_text(item)
                if repaired:
                    self._log.warning(
                        "%s: %s had undecodable text in %s; stored with U+FFFD",
                        call.label, where, ", ".join(repaired),
                    )  # fmt: skip
                sid = fields.get(item, "id", f"{where}.id", (str,), required=True)
                if not sid:
                    raise fields.error(f"{where}.id", "is empty")
                last_used = fields.timestamp(item, "last_used", f"{where}.last_used", required=True)
                text = {
                    name: fields.get(item, name, f"{where}.{name}", (str,), required=False)
                    for name in _SESSION_FIELDS[2:]
                }
                sessions.append(
                    ListedSession(
                        id=sid,
                        last_used=last_used,  # type: ignore[arg-type]  # required=True
                        group=group,
                        extra={k: v for k, v in item.items() if k not in _SESSION_FIELDS},
                        repaired=repaired,
                        **text,
                    )
                )
        return Page(page_num=page_num, has_more=has_more, sessions=sessions, date=call.date)


__all__ = [
    "BAD_BODY_RETRIES",
    "DEFAULT_BASE_URL",
    "MIN_RETRY_WAIT",
    "ClientStats",
    "Conversation",
    "ExportedQuestion",
    "GurubaseClient",
    "ListedSession",
    "Message",
    "Page",
    "QuestionExport",
    "UnansweredQuestion",
    "Wait",
]


def _check_base_url(url: str) -> str:
    """Validate an http(s) base URL and drop trailing slashes (paths start with '/')."""
    if not isinstance(url, str):
        raise ConfigError(f"base URL {url!r} is not valid: use e.g. {DEFAULT_BASE_URL}")
    url = url.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"base URL {url!r} is not valid: use e.g. {DEFAULT_BASE_URL}")
    if parts.query or parts.fragment:
        raise ConfigError(
            f"base URL {url!r} must not have a query or fragment: use e.g. {DEFAULT_BASE_URL}"
        )
    if parts.username or parts.password:
        raise ConfigError("base URL must not contain credentials: pass the key as api_key=")
    return url
