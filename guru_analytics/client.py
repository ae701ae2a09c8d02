"""The Gurubase HTTP client: List Sessions, Get Session and Export Analytics, paced, retried,
validated.

Requests are the scarce resource (10 a minute by default), so every call goes through one
``SlidingWindowLimiter`` per client; 429s, 5xx, dropped connections and timeouts are
retried a bounded number of times with logged waits; and every answer is checked field by
field so a changed or non-Gurubase server fails loudly instead of feeding bad rows to the
cache. Each answer is streamed under a whole-request deadline and a decompressed size cap,
so a trickling server or a gzip bomb ends in a typed error. The API key travels only in the
``x-api-key`` header: messages, logs and reprs show at most ``errors.mask_key(key)``.
Redirects are not followed, so the key is never replayed to another host.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import re
import time
import zlib
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import parsedate_to_datetime
from types import TracebackType
from typing import Any, NoReturn
from urllib.parse import quote, urlsplit

import requests
import urllib3

from .errors import (
    ApiError,
    AuthenticationError,
    BadRequestError,
    ConfigError,
    DeadlineError,
    ForbiddenError,
    NotFoundError,
    RateLimitedError,
    ResponseTooLargeError,
    ServerError,
    TransportError,
    UnexpectedResponseError,
    mask_key,
)
from .ratelimit import SlidingWindowLimiter
from .timestamps import parse_api_timestamp, utc_now
from .wire import (
    EXPORT_FILTERS,
    EXPORT_INTERVALS,
    ExportedQuestion,
    QuestionExport,
    UnansweredQuestion,
    parse_export,
)
from .wire import json_type as _json_type

DEFAULT_BASE_URL = "https://api.gurubase.io/api/v1"
USER_AGENT = "guru-analytics/0.1.0"
# A 200 carrying HTML or broken JSON is usually a proxy's transient error page: worth a
# couple of retries, not the whole budget.
BAD_BODY_RETRIES = 2
# The shortest wait after a 429, whatever the server hinted (0 or negative hints happen).
MIN_RETRY_WAIT = 1.0
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
_READ_CHUNK = 64 * 1024
# Encodings decoded here (so the size cap sees expanded bytes); asked for explicitly so a
# server has no reason to pick another one.
_ACCEPT_ENCODING = "gzip, deflate"
_SURROGATE = re.compile("[\ud800-\udfff]")
_REPLACEMENT = "\ufffd"
_INCOMPATIBLE = "the server is not Gurubase-compatible or changed its API"
_SESSION_FIELDS = (
    "id",
    "last_used",
    "guru_type_slug",
    "guru_type_name",
    "root_question_name",
    "root_question_slug",
    "root_question_link",
)
_MESSAGE_FIELDS = (
    "id",
    "slug",
    "user_question",
    "question",
    "answer",
    "date_created",
    "date_updated",
    "references",
    "trust_score",
    "parent_slug",
    "source",
    "user_vote",
)
_CONVERSATION_FIELDS = (
    "binge_id",
    "root_question_slug",
    "date_created",
    "last_used",
    "conversation",
)
_GROUPS = ("today", "last_week", "older")
_BODY_SECONDS = re.compile(r"available in\s+(-?\d+(?:\.\d+)?)\s*second", re.IGNORECASE)
_ERRNO = re.compile(r"\[Errno -?\d+\][^'\")\]]*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
_KEY_OK = re.compile(r"^[\x21-\x7e]+$")
_TRANSPORT_ERRORS = (
    requests.exceptions.Timeout,
    requests.exceptions.ConnectionError,
    requests.exceptions.ChunkedEncodingError,
)


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
class Message:
    """One question/answer of a session (Get Session ``conversation`` item)."""

    id: str
    slug: str | None
    user_question: str | None
    question: str | None
    answer: str | None
    date_created: datetime
    date_updated: datetime | None
    source: str | None
    trust_score: int | None
    user_vote: str | None
    parent_slug: str | None
    n_references: int | None
    extra: dict[str, Any] = field(default_factory=dict)
    # Fields whose text held lone UTF-16 surrogates (undecodable), stored with U+FFFD.
    repaired: tuple[str, ...] = ()


@dataclass(frozen=True)
class Conversation:
    """A session's messages, oldest first, as Get Session returns them."""

    session_id: str
    root_question_slug: str | None
    date_created: datetime
    last_used: datetime
    messages: list[Message]
    extra: dict[str, Any] = field(default_factory=dict)


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


@dataclass
class _Call:
    """What one logical call is about, for messages: never holds the key."""

    label: str
    endpoint: str
    kind: str  # "list" | "session" | "export"
    subject: str  # guru slug or session id
    max_bytes: int | None = None  # this call's body cap, if not the client's (an export)
    date: datetime | None = None  # the answer's Date header, once answered (tz-aware)


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
            raise ConfigError(f"deadline {deadline!r} is not valid: use a positive number of seconds")
        if (
            isinstance(max_body_bytes, bool)
            or not isinstance(max_body_bytes, int)
            or max_body_bytes < 1
        ):
            raise ConfigError(f"max_body_bytes {max_body_bytes!r} is not valid: use a positive size")
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
            "Accept-Encoding": _ACCEPT_ENCODING,
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
        call = _Call(f"List Sessions page {page_num}", path, "list", guru)
        data = self._post(call, body)
        return self._parse_page(call, data, page_num)

    def get_session(self, session_id: str) -> Conversation:
        """The messages of one session (Get Session), validated field by field."""
        if not isinstance(session_id, str) or not session_id.strip():
            raise ConfigError(f"session id {session_id!r} is not valid: pass the id from a listing")
        session_id = session_id.strip()
        path = f"/sessions/{quote(session_id, safe='')}/conversation/"
        call = _Call(f"Get Session {self._clean(session_id, 80)}", path, "session", session_id)
        data = self._post(call, {})
        return self._parse_conversation(call, data)

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
        call = _Call(
            f"Export Analytics {interval}", path, "export", guru, max_bytes=EXPORT_MAX_BODY_BYTES
        )
        try:
            data = self._post(call, body)
        except _NoExportData:
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

    def _post(self, call: _Call, body: Mapping[str, Any]) -> dict[str, Any]:
        """POST with pacing; retry 429/5xx/transport/bad bodies; return the JSON object."""
        url = self.base_url + call.endpoint
        retries = 0
        bad_bodies = 0
        while True:
            self._wait_for_slot(call)
            self.stats.requests += 1
            started = self._monotonic()
            try:
                resp = self._session.post(
                    url,
                    json=dict(body),
                    headers=self._headers,
                    timeout=self.timeout,
                    allow_redirects=False,
                    stream=True,
                )
                try:
                    content = self._read_body(call, resp, started)
                finally:
                    resp.close()
            except (*_TRANSPORT_ERRORS, _DeadlinePassed) as exc:
                self.limiter.finish()
                if isinstance(exc, _DeadlinePassed):
                    what = f"did not finish within the {self.deadline:g} s deadline"
                    detail = "the server sends its answer too slowly"
                else:
                    what = (
                        "timed out"
                        if isinstance(exc, requests.exceptions.Timeout)
                        else "connection failed or dropped"
                    )
                    detail = self._describe_exception(exc)
                if retries >= self.max_retries:
                    message = (
                        f"{call.label}: {what} after {retries} retries ({detail}); check the "
                        "network and the base URL, then try again"
                    )
                    if isinstance(exc, _DeadlinePassed):
                        err = DeadlineError(message)
                        err.endpoint, err.status = call.endpoint, None  # type: ignore[attr-defined]
                        raise err from None
                    self._raise_transport(call, message, exc)
                retries += 1
                self._schedule_retry(call, f"{what} ({detail})", self._backoff(retries), retries)
                continue
            except requests.exceptions.RequestException as exc:
                # Not retryable (invalid URL, too many redirects, ...): report it cleanly.
                self.limiter.finish()
                self._raise_transport(
                    call,
                    f"{call.label}: request failed ({self._describe_exception(exc)}); check the base URL",
                    exc,
                )
            self.limiter.finish()
            status = resp.status_code
            ctype = resp.headers.get("Content-Type", "")

            if 200 <= status < 300:
                try:
                    data = json.loads(content)
                except (ValueError, UnicodeDecodeError):
                    data = _NOT_JSON
                except RecursionError:
                    raise UnexpectedResponseError(
                        f"{call.label}: the answer nests JSON deeper than can be read "
                        f"({len(content)} bytes); {_INCOMPATIBLE}",
                        status=status,
                        endpoint=call.endpoint,
                    ) from None
                if data is _NOT_JSON:
                    what = self._describe_body(ctype, content)
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
                        f"object; {_INCOMPATIBLE}",
                        status=status,
                        endpoint=call.endpoint,
                    )
                call.date = _http_date(resp.headers.get("Date"))
                return data

            if status == 429:
                self.stats.throttled += 1
                hint = self._retry_hint(resp.headers.get("Retry-After"), content)
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
                hint = self._retry_hint(resp.headers.get("Retry-After"), b"")
                if hint is not None:
                    wait, why = self._server_wait(call, hint, retries)
                else:
                    wait, why = self._backoff(retries), "backoff"
                self._schedule_retry(call, f"server error {status} ({why})", wait, retries)
                continue

            self._raise_for_status(call, status, content, resp.headers.get("Location"))

    def _read_body(self, call: _Call, resp: requests.Response, started: float) -> bytes:
        """The whole body, read in pieces so the request deadline holds against a trickle, and
        decompressed here so the size cap counts what gzip expands to (a bomb stops early)."""
        cap = call.max_bytes or self.max_body_bytes
        encoding = resp.headers.get("Content-Encoding", "").strip().lower()
        if encoding in ("", "identity"):
            decoder = None
        elif encoding in ("gzip", "x-gzip", "deflate"):
            decoder = zlib.decompressobj(zlib.MAX_WBITS | 32)  # zlib or gzip header
        else:
            raise UnexpectedResponseError(
                f"{call.label}: the answer uses Content-Encoding {self._clean(encoding, 40)!r}, "
                f"not gzip or deflate as asked; {_INCOMPATIBLE}",
                status=resp.status_code,
                endpoint=call.endpoint,
            )
        length = resp.headers.get("Content-Length", "").strip()
        if decoder is None and length.isdigit() and int(length) > cap:
            raise self._too_large(call, resp.status_code, f"{int(length)} bytes announced")
        raw = resp.raw
        read = getattr(raw, "read1", None) or raw.read  # read1: return what has arrived
        out = bytearray()
        while True:
            if self._monotonic() - started > self.deadline:
                raise _DeadlinePassed
            try:
                chunk = read(_READ_CHUNK, decode_content=False)
            except urllib3.exceptions.HTTPError as exc:
                # urllib3's own errors (requests wraps them only in iter_content): the same
                # names as a non-streamed read gives
                raise _requests_error(exc) from exc
            if not chunk:
                break
            if decoder is None:
                out += chunk
            else:
                try:
                    while chunk:
                        out += decoder.decompress(chunk, cap + 1 - len(out))
                        if len(out) > cap:
                            break
                        chunk = decoder.unconsumed_tail
                except zlib.error:
                    # a broken stream: hand the bytes on, the JSON check reports them
                    return bytes(out) + chunk
            if len(out) > cap:
                raise self._too_large(call, resp.status_code, f"over {cap} bytes")
        if decoder is not None:
            with contextlib.suppress(zlib.error):  # truncated: the JSON check reports it
                out += decoder.flush()
            if len(out) > cap:
                raise self._too_large(call, resp.status_code, f"over {cap} bytes")
        return bytes(out)

    def _too_large(self, call: _Call, status: int, size: str) -> ResponseTooLargeError:
        cap = call.max_bytes or self.max_body_bytes
        return ResponseTooLargeError(
            f"{call.label}: the answer is too large ({size}, the cap is {cap} "
            "bytes after decompression); no real page is: check the base URL, or raise "
            "max_body_bytes if this server is trusted",
            status=status,
            endpoint=call.endpoint,
        )

    def _wait_for_slot(self, call: _Call) -> None:
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

    def _schedule_retry(self, call: _Call, reason: str, wait: float, retry: int) -> None:
        """Log a failure and push the next start ``wait`` seconds out (the limiter sleeps)."""
        self.stats.retries += 1
        self._log.warning(
            "%s: %s; retry %d of %d in %.2f s", call.label, reason, retry, self.max_retries, wait
        )
        self._pending_reason = f"retry {retry} after {reason}"
        self.limiter.defer_until(self._monotonic() + wait)

    def _backoff(self, retry: int) -> float:
        """Exponential backoff with full jitter: uniform(0, min(cap, base * 2**(retry-1)))."""
        ceiling = min(self.backoff_cap, self.backoff_base * 2 ** (retry - 1))
        return self._rng.uniform(0.0, ceiling)

    def _server_wait(self, call: _Call, hint: float | None, retry: int) -> tuple[float, str]:
        """The wait after a 429/5xx: the server's hint clamped (no jitter), else backoff."""
        if hint is None:
            return max(MIN_RETRY_WAIT, self._backoff(retry)), "no wait hint; backoff"
        if hint > self.max_retry_after:
            self._log.warning(
                "%s: the server asked to wait %g s; waiting at most %g s (max_retry_after)",
                call.label,
                hint,
                self.max_retry_after,
            )
            return self.max_retry_after, f"asked {hint:g} s, clamped to {self.max_retry_after:g} s"
        if hint < MIN_RETRY_WAIT:
            return MIN_RETRY_WAIT, f"asked {hint:g} s, waiting the minimum {MIN_RETRY_WAIT:g} s"
        return hint, f"server asked {hint:g} s"

    def _retry_hint(self, header: str | None, body: bytes) -> float | None:
        """Seconds from ``Retry-After`` (seconds or HTTP-date), else from the 429 body text."""
        if header is not None and header.strip():
            text = header.strip()
            try:
                seconds = float(text)
            except ValueError:
                seconds = None
            if seconds is not None:
                # nan and inf are no hint at all (nan slipped past the floor); a negative one
                # is a hint of "now" and gets the floor like 0 does
                return seconds if math.isfinite(seconds) else self._body_hint(body)
            try:
                when = parsedate_to_datetime(text)
            except (TypeError, ValueError, IndexError):
                when = None
            if when is not None and when.tzinfo is not None:
                return (when - self._clock()).total_seconds()
        return self._body_hint(body)

    @staticmethod
    def _body_hint(body: bytes) -> float | None:
        """Seconds from a 429 body's "Expected available in N seconds", if it says so."""
        match = _BODY_SECONDS.search(body[:4096].decode("utf-8", "replace"))
        return float(match.group(1)) if match else None

    # --- errors ------------------------------------------------------------------------

    def _raise_for_status(
        self, call: _Call, status: int, content: bytes, location: str | None
    ) -> NoReturn:
        """Turn a non-retryable status into its typed error with a one-line hint."""
        msg = self._server_message(content)
        said = f": {msg}" if msg else ""
        ep = call.endpoint
        if 300 <= status < 400:
            where = self._clean(location or "?", 120)
            raise ApiError(
                f"{call.label}: the server redirected ({status}) to {where}; not followed so "
                "the key is not sent elsewhere: set the base URL to the new address",
                status=status,
                endpoint=ep,
            )
        if status == 400:
            fix = {"list": "check page_num", "export": "check the interval and filters"}.get(
                call.kind, "check the session id"
            )
            raise BadRequestError(
                f"{call.label}: the server rejected the request (400{said}); {fix}",
                status=status,
                endpoint=ep,
            )
        if status == 401:
            raise AuthenticationError(
                f"{call.label}: API key rejected (key {mask_key(self._key)}): check GURUBASE_API_KEY",
                status=status,
                endpoint=ep,
            )
        if status == 403:
            if call.kind != "session":
                text = f"the key's owner does not maintain guru '{self._clean(call.subject, 80)}'"
            else:
                text = f"the key's owner may not read session {self._clean(call.subject, 80)}"
            raise ForbiddenError(
                f"{call.label}: {text} (403): use a key of one of its maintainers",
                status=status,
                endpoint=ep,
            )
        if status == 404:
            if msg is None:
                # Not the API's JSON 404: the path itself is unknown to this server.
                raise NotFoundError(
                    f"{call.label}: the server has no {ep} endpoint (404, not JSON): check the "
                    "base URL (GURUBASE_BASE_URL)",
                    status=status,
                    endpoint=ep,
                )
            if call.kind == "export" and "no data" in msg.lower():
                raise _NoExportData(f"{call.label}: {msg}", status=status, endpoint=ep)
            if call.kind != "session":
                text = f"guru '{self._clean(call.subject, 80)}' not found: check the slug"
            else:
                text = f"session {self._clean(call.subject, 80)} not found (deleted?)"
            raise NotFoundError(f"{call.label}: {text}", status=status, endpoint=ep)
        if status == 405:
            raise BadRequestError(
                f"{call.label}: the server does not accept POST at {ep} (405{said}): check that "
                "the base URL points at a Gurubase API",
                status=status,
                endpoint=ep,
            )
        raise ApiError(
            f"{call.label}: unexpected HTTP {status}{said}; check the base URL and try again",
            status=status,
            endpoint=ep,
        )

    def _raise_transport(self, call: _Call, message: str, exc: BaseException) -> NoReturn:
        """Raise TransportError carrying ``endpoint``/``status`` like ApiError does."""
        err = TransportError(message)
        err.endpoint = call.endpoint  # type: ignore[attr-defined]
        err.status = None  # type: ignore[attr-defined]
        # Chain for debugging, but requests' texts hold only URLs (no headers, so no key).
        raise err from exc

    def _server_message(self, content: bytes) -> str | None:
        """The ``msg``/``detail`` of a JSON error body, cleaned; None if not JSON."""
        try:
            data = json.loads(content)
        except (ValueError, UnicodeDecodeError, RecursionError):
            return None
        if isinstance(data, dict):
            for name in ("msg", "detail", "message", "error"):
                if isinstance(data.get(name), str):
                    return self._clean(data[name], 160)
            return ""
        return ""

    def _describe_body(self, ctype: str, content: bytes) -> str:
        """'text/html (1234 bytes) starting '<html>…'' — enough to recognise a proxy page."""
        head = self._clean(content[:60].decode("utf-8", "replace"), 60)
        kind = self._clean(ctype, 60) or "no content-type"
        return f"{kind} ({len(content)} bytes) starting {head!r}"

    def _describe_exception(self, exc: BaseException) -> str:
        """A short, key-free description of a requests exception."""
        text = str(exc)
        found = _ERRNO.search(text)
        if found:
            text = found.group(0)
        return f"{type(exc).__name__}: {self._clean(text, 160)}"

    def _clean(self, text: str, limit: int) -> str:
        """One line, no control characters, the key masked, at most ``limit`` characters."""
        text = str(text).replace(self._key, mask_key(self._key))
        # lone surrogates cannot be encoded: the message would not reach the run ledger
        text = " ".join(_CONTROL.sub(" ", _SURROGATE.sub(_REPLACEMENT, text)).split())
        return text if len(text) <= limit else text[: limit - 1] + "…"

    # --- parsing -----------------------------------------------------------------------

    def _shape_error(self, call: _Call, where: str, problem: str) -> UnexpectedResponseError:
        return UnexpectedResponseError(
            f"{call.label}: field '{where}' {problem}; {_INCOMPATIBLE}",
            status=200,
            endpoint=call.endpoint,
        )

    def _get(
        self,
        call: _Call,
        obj: Mapping[str, Any],
        name: str,
        where: str,
        kinds: tuple[type, ...],
        *,
        required: bool,
    ) -> Any:
        """Read one field and check its type (None allowed only when not required)."""
        if name not in obj:
            if required:
                raise self._shape_error(call, where, "missing")
            return None
        value = obj[name]
        if value is None and not required:
            return None
        if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
            expected = " or ".join(k.__name__ for k in kinds)
            raise self._shape_error(call, where, f"is {_json_type(value)}, expected {expected}")
        return value

    def _timestamp(
        self, call: _Call, obj: Mapping[str, Any], name: str, where: str, *, required: bool
    ) -> datetime | None:
        raw = self._get(call, obj, name, where, (str,), required=required)
        if raw is None:
            return None
        try:
            return parse_api_timestamp(raw)
        except ValueError as exc:
            problem = "is outside the years 1-9999" if "outside the years" in str(exc) else (
                "is not an ISO 8601 UTC timestamp"
            )
            raise self._shape_error(
                call, where, f"{problem} ({self._clean(raw, 40)!r})"
            ) from None

    def _parse_page(self, call: _Call, data: dict[str, Any], page_num: int) -> Page:
        has_more = self._get(call, data, "has_more", "has_more", (bool,), required=True)
        sessions: list[ListedSession] = []
        for group in _GROUPS:
            items = self._get(call, data, group, group, (list,), required=True)
            for i, item in enumerate(items):
                where = f"{group}[{i}]"
                if not isinstance(item, dict):
                    raise self._shape_error(call, where, f"is {_json_type(item)}, expected object")
                item, repaired = _repair_text(item)
                if repaired:
                    self._log.warning(
                        "%s: %s had undecodable text in %s; stored with U+FFFD",
                        call.label, where, ", ".join(repaired),
                    )
                sid = self._get(call, item, "id", f"{where}.id", (str,), required=True)
                if not sid:
                    raise self._shape_error(call, f"{where}.id", "is empty")
                last_used = self._timestamp(
                    call, item, "last_used", f"{where}.last_used", required=True
                )
                text = {
                    name: self._get(call, item, name, f"{where}.{name}", (str,), required=False)
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

    def _parse_conversation(self, call: _Call, data: dict[str, Any]) -> Conversation:
        # repair the top-level fields here; each message is repaired (and noted) below
        has_messages, messages_field = "conversation" in data, data.get("conversation")
        data, _ = _repair_text({k: v for k, v in data.items() if k != "conversation"})
        if has_messages:
            data["conversation"] = messages_field
        binge_id = self._get(call, data, "binge_id", "binge_id", (str,), required=False)
        items = self._get(call, data, "conversation", "conversation", (list,), required=True)
        messages: list[Message] = []
        for i, item in enumerate(items):
            where = f"conversation[{i}]"
            if not isinstance(item, dict):
                raise self._shape_error(call, where, f"is {_json_type(item)}, expected object")
            item, repaired = _repair_text(item)
            mid = self._get(call, item, "id", f"{where}.id", (str, int), required=True)
            refs = self._get(
                call, item, "references", f"{where}.references", (list,), required=False
            )
            score = self._get(
                call, item, "trust_score", f"{where}.trust_score", (int, float), required=False
            )
            if isinstance(score, float):
                if not score.is_integer():
                    raise self._shape_error(
                        call, f"{where}.trust_score", f"is {score!r}, expected a whole number"
                    )
                score = int(score)
            if score is not None and not 0 <= score <= 100:
                # out of the documented 0-100 (10**30 would not even fit a column): keep the
                # message without it rather than block this session's messages for ever
                self._log.warning(
                    "%s: %s.trust_score %s is outside 0-100; stored as missing",
                    call.label, where, self._clean(str(score), 40),
                )
                score, repaired = None, (*repaired, "trust_score")
            strings = {
                name: self._get(call, item, name, f"{where}.{name}", (str,), required=False)
                for name in (
                    "slug",
                    "user_question",
                    "question",
                    "answer",
                    "source",
                    "user_vote",
                    "parent_slug",
                )
            }
            messages.append(
                Message(
                    id=str(mid),
                    date_created=self._timestamp(  # type: ignore[arg-type]  # required=True
                        call, item, "date_created", f"{where}.date_created", required=True
                    ),
                    date_updated=self._timestamp(
                        call, item, "date_updated", f"{where}.date_updated", required=False
                    ),
                    trust_score=score,
                    n_references=len(refs) if refs is not None else None,
                    extra={k: v for k, v in item.items() if k not in _MESSAGE_FIELDS},
                    repaired=repaired,
                    **strings,
                )
            )
        return Conversation(
            session_id=binge_id or call.subject,
            root_question_slug=self._get(
                call, data, "root_question_slug", "root_question_slug", (str,), required=False
            ),
            date_created=self._timestamp(call, data, "date_created", "date_created", required=True),  # type: ignore[arg-type]
            last_used=self._timestamp(call, data, "last_used", "last_used", required=True),  # type: ignore[arg-type]
            messages=messages,
            extra={k: v for k, v in data.items() if k not in _CONVERSATION_FIELDS},
        )


_NOT_JSON = object()

__all__ = [
    "DEFAULT_BASE_URL",
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


class _NoExportData(NotFoundError):
    """Export Analytics' 404 ``No data found to export``: an empty interval, not an error."""


def _http_date(value: str | None) -> datetime | None:
    """An HTTP ``Date`` header as a tz-aware instant; None if absent or not a date."""
    if not value:
        return None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return when if when.tzinfo is not None else None


def _requests_error(exc: urllib3.exceptions.HTTPError) -> requests.exceptions.RequestException:
    """The requests exception a non-streamed read raises for this urllib3 error."""
    if isinstance(exc, urllib3.exceptions.ReadTimeoutError):
        return requests.exceptions.ReadTimeout(exc)
    if isinstance(exc, urllib3.exceptions.SSLError):
        return requests.exceptions.SSLError(exc)
    if isinstance(exc, urllib3.exceptions.ProtocolError):
        return requests.exceptions.ChunkedEncodingError(exc)
    return requests.exceptions.ConnectionError(exc)


class _DeadlinePassed(Exception):
    """Internal: the body was still arriving when the whole-request deadline passed."""


def _repair_text(item: dict[str, Any]) -> tuple[dict[str, Any], tuple[str, ...]]:
    """``item`` with lone UTF-16 surrogates (JSON ``"\\ud800"``: no character, cannot be
    stored or encoded) replaced by U+FFFD, and the names of the fields that had them. The
    server's data cannot be fixed by the user; one bad title must not block every sync."""
    repaired = tuple(k for k, v in item.items() if _has_surrogate(v))
    if not repaired:
        return item, ()
    return {k: _replace_surrogates(v) if k in repaired else v for k, v in item.items()}, repaired


def _has_surrogate(value: Any) -> bool:
    """Whether any string in ``value`` (keys included) holds a lone surrogate. A loop, not
    recursion: a field nested as deep as JSON allows must not overflow the stack here."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            if not v.isascii() and _SURROGATE.search(v) is not None:
                return True
        elif isinstance(v, dict):
            stack.extend(v)
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    return False


def _replace_surrogates(value: Any) -> Any:
    if isinstance(value, str):
        return _SURROGATE.sub(_REPLACEMENT, value)
    # nested: through JSON text, whose C codec handles any depth the decoder accepted
    text = json.dumps(value, ensure_ascii=False)
    return json.loads(_SURROGATE.sub(_REPLACEMENT, text))




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
