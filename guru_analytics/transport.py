"""One HTTP request of the client, from sending it to a checked answer or a typed error.

One responsibility: a single attempt. ``send`` POSTs and streams the body under the
whole-request deadline, decompressing here so the size cap counts expanded bytes (a gzip
bomb stops early); ``decode_json`` parses it with the nesting guard; ``raise_for_status``
turns a status the client does not retry into its typed error with a one-line hint. Every
text that may reach a message goes through the caller's ``clean`` (one line, key masked).
Pacing and retries are the client's loop (``client``, ``retry``); ``Call`` describes what
one logical call is about and never holds the key.
"""

from __future__ import annotations

import contextlib
import json
import re
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NoReturn

import requests
import urllib3

from .errors import (
    ApiError,
    AuthenticationError,
    BadRequestError,
    ForbiddenError,
    NotFoundError,
    ResponseTooLargeError,
    TransportError,
    UnexpectedResponseError,
)
from .wire import INCOMPATIBLE, replace_surrogates

Clean = Callable[[str, int], str]
"""``clean(text, limit)``: one line, no control characters, the key masked, at most ``limit``."""

READ_CHUNK = 64 * 1024
# Encodings decoded here (so the size cap sees expanded bytes); asked for explicitly so a
# server has no reason to pick another one.
ACCEPT_ENCODING = "gzip, deflate"
TRANSPORT_ERRORS = (
    requests.exceptions.Timeout,
    requests.exceptions.ConnectionError,
    requests.exceptions.ChunkedEncodingError,
)
NOT_JSON = object()
_ERRNO = re.compile(r"\[Errno -?\d+\][^'\")\]]*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


@dataclass
class Call:
    """What one logical call is about, for messages: never holds the key."""

    label: str
    endpoint: str
    kind: str  # "list" | "session" | "export"
    subject: str  # guru slug or session id
    max_bytes: int | None = None  # this call's body cap, if not the client's (an export)
    date: datetime | None = None  # the answer's Date header, once answered (tz-aware)


@dataclass(frozen=True)
class Answer:
    """One HTTP answer with its whole (decompressed) body."""

    status: int
    headers: Mapping[str, str]
    content: bytes


class DeadlinePassed(Exception):
    """Internal: the body was still arriving when the whole-request deadline passed."""


class NoExportData(NotFoundError):
    """Export Analytics' 404 ``No data found to export``: an empty interval, not an error."""


def clean(text: str, limit: int, key: str, masked: str) -> str:
    """One line, no control characters, ``key`` shown as ``masked``, at most ``limit``
    characters."""
    text = str(text).replace(key, masked)
    # lone surrogates cannot be encoded: the message would not reach the run ledger
    text = " ".join(_CONTROL.sub(" ", replace_surrogates(text)).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def send(
    session: requests.Session,
    url: str,
    body: Mapping[str, Any],
    call: Call,
    *,
    headers: dict[str, str],
    timeout: float,
    deadline: float,
    cap: int,
    monotonic: Callable[[], float],
    clean: Clean,
) -> Answer:
    """POST ``body`` as JSON (redirects not followed) and read the whole answer; raises the
    requests exceptions of a failed transfer, or ``DeadlinePassed``."""
    started = monotonic()
    resp = session.post(
        url,
        json=dict(body),
        headers=headers,
        timeout=timeout,
        allow_redirects=False,
        stream=True,
    )
    try:
        content = read_body(
            call,
            resp,
            started=started,
            deadline=deadline,
            cap=cap,
            monotonic=monotonic,
            clean=clean,
        )
    finally:
        resp.close()
    return Answer(resp.status_code, resp.headers, content)


def read_body(
    call: Call,
    resp: requests.Response,
    *,
    started: float,
    deadline: float,
    cap: int,
    monotonic: Callable[[], float],
    clean: Clean,
) -> bytes:
    """The whole body, read in pieces so the request deadline holds against a trickle, and
    decompressed here so the size cap counts what gzip expands to (a bomb stops early)."""
    encoding = resp.headers.get("Content-Encoding", "").strip().lower()
    if encoding in ("", "identity"):
        decoder = None
    elif encoding in ("gzip", "x-gzip", "deflate"):
        decoder = zlib.decompressobj(zlib.MAX_WBITS | 32)  # zlib or gzip header
    else:
        raise UnexpectedResponseError(
            f"{call.label}: the answer uses Content-Encoding {clean(encoding, 40)!r}, "
            f"not gzip or deflate as asked; {INCOMPATIBLE}",
            status=resp.status_code,
            endpoint=call.endpoint,
        )
    length = resp.headers.get("Content-Length", "").strip()
    if decoder is None and length.isdigit() and int(length) > cap:
        raise too_large(call, resp.status_code, f"{int(length)} bytes announced", cap)
    raw = resp.raw
    read = getattr(raw, "read1", None) or raw.read  # read1: return what has arrived
    out = bytearray()
    while True:
        if monotonic() - started > deadline:
            raise DeadlinePassed
        try:
            chunk = read(READ_CHUNK, decode_content=False)
        except urllib3.exceptions.HTTPError as exc:
            # urllib3's own errors (requests wraps them only in iter_content): the same
            # names as a non-streamed read gives
            raise requests_error(exc) from exc
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
            raise too_large(call, resp.status_code, f"over {cap} bytes", cap)
    if decoder is not None:
        with contextlib.suppress(zlib.error):  # truncated: the JSON check reports it
            out += decoder.flush()
        if len(out) > cap:
            raise too_large(call, resp.status_code, f"over {cap} bytes", cap)
    return bytes(out)


def too_large(call: Call, status: int, size: str, cap: int) -> ResponseTooLargeError:
    return ResponseTooLargeError(
        f"{call.label}: the answer is too large ({size}, the cap is {cap} "
        "bytes after decompression); no real page is: check the base URL, or raise "
        "max_body_bytes if this server is trusted",
        status=status,
        endpoint=call.endpoint,
    )


def requests_error(exc: urllib3.exceptions.HTTPError) -> requests.exceptions.RequestException:
    """The requests exception a non-streamed read raises for this urllib3 error."""
    if isinstance(exc, urllib3.exceptions.ReadTimeoutError):
        return requests.exceptions.ReadTimeout(exc)
    if isinstance(exc, urllib3.exceptions.SSLError):
        return requests.exceptions.SSLError(exc)
    if isinstance(exc, urllib3.exceptions.ProtocolError):
        return requests.exceptions.ChunkedEncodingError(exc)
    return requests.exceptions.ConnectionError(exc)


def decode_json(call: Call, status: int, content: bytes) -> Any:
    """The decoded body, or ``NOT_JSON``; JSON nested deeper than Python can read is a typed
    error (no retry: the same server sends the same answer)."""
    try:
        return json.loads(content)
    except (ValueError, UnicodeDecodeError):
        return NOT_JSON
    except RecursionError:
        raise UnexpectedResponseError(
            f"{call.label}: the answer nests JSON deeper than can be read "
            f"({len(content)} bytes); {INCOMPATIBLE}",
            status=status,
            endpoint=call.endpoint,
        ) from None


def raise_for_status(
    call: Call,
    status: int,
    content: bytes,
    location: str | None,
    *,
    masked_key: str,
    clean: Clean,
) -> NoReturn:
    """Turn a non-retryable status into its typed error with a one-line hint."""
    msg = server_message(content, clean)
    said = f": {msg}" if msg else ""
    ep = call.endpoint
    if 300 <= status < 400:
        where = clean(location or "?", 120)
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
            f"{call.label}: API key rejected (key {masked_key}): check GURUBASE_API_KEY",
            status=status,
            endpoint=ep,
        )
    if status == 403:
        if call.kind != "session":
            text = f"the key's owner does not maintain guru '{clean(call.subject, 80)}'"
        else:
            text = f"the key's owner may not read session {clean(call.subject, 80)}"
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
            raise NoExportData(f"{call.label}: {msg}", status=status, endpoint=ep)
        if call.kind != "session":
            text = f"guru '{clean(call.subject, 80)}' not found: check the slug"
        else:
            text = f"session {clean(call.subject, 80)} not found (deleted?)"
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


def raise_transport(call: Call, message: str, exc: BaseException) -> NoReturn:
    """Raise TransportError carrying ``endpoint``/``status`` like ApiError does."""
    err = TransportError(message)
    err.endpoint = call.endpoint  # type: ignore[attr-defined]
    err.status = None  # type: ignore[attr-defined]
    # Chain for debugging, but requests' texts hold only URLs (no headers, so no key).
    raise err from exc


def server_message(content: bytes, clean: Clean) -> str | None:
    """The ``msg``/``detail`` of a JSON error body, cleaned; None if not JSON."""
    try:
        data = json.loads(content)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    if isinstance(data, dict):
        for name in ("msg", "detail", "message", "error"):
            if isinstance(data.get(name), str):
                return clean(data[name], 160)
        return ""
    return ""


def describe_body(ctype: str, content: bytes, clean: Clean) -> str:
    """'text/html (1234 bytes) starting '<html>…'' — enough to recognise a proxy page."""
    head = clean(content[:60].decode("utf-8", "replace"), 60)
    kind = clean(ctype, 60) or "no content-type"
    return f"{kind} ({len(content)} bytes) starting {head!r}"


def describe_exception(exc: BaseException, clean: Clean) -> str:
    """A short, key-free description of a requests exception."""
    text = str(exc)
    found = _ERRNO.search(text)
    if found:
        text = found.group(0)
    return f"{type(exc).__name__}: {clean(text, 160)}"
