"""When the client tries a request again, and how long it waits first.

One responsibility: the waits between attempts. ``retry_hint`` reads the server's
``Retry-After`` (seconds or an HTTP date) or a 429 body's "available in N seconds";
``server_wait`` clamps that hint between ``MIN_RETRY_WAIT`` and the client's
``max_retry_after`` (no jitter: the server said when); ``backoff`` is exponential backoff
with full jitter for failures that carry no hint. Pure functions of their arguments (the
random source and the clock are passed in), so the client's loop stays the one place that
decides to retry.
"""

from __future__ import annotations

import logging
import math
import random
import re
from collections.abc import Callable
from datetime import datetime

from .timestamps import parse_http_date

# A 200 carrying HTML or broken JSON is usually a proxy's transient error page: worth a
# couple of retries, not the whole budget.
BAD_BODY_RETRIES = 2
# The shortest wait after a 429, whatever the server hinted (0 or negative hints happen).
MIN_RETRY_WAIT = 1.0
_BODY_SECONDS = re.compile(r"available in\s+(-?\d+(?:\.\d+)?)\s*second", re.IGNORECASE)


def backoff(rng: random.Random, retry: int, base: float, cap: float) -> float:
    """Exponential backoff with full jitter: uniform(0, min(cap, base * 2**(retry-1)))."""
    ceiling = min(cap, base * 2 ** (retry - 1))
    return rng.uniform(0.0, ceiling)


def server_wait(
    hint: float | None,
    backoff_wait: Callable[[], float],
    max_retry_after: float,
    *,
    label: str,
    log: logging.Logger,
) -> tuple[float, str]:
    """The wait after a 429/5xx and why: the server's hint clamped (no jitter), else backoff
    (``backoff_wait()``, never below ``MIN_RETRY_WAIT``). A clamped hint is logged."""
    if hint is None:
        return max(MIN_RETRY_WAIT, backoff_wait()), "no wait hint; backoff"
    if hint > max_retry_after:
        log.warning(
            "%s: the server asked to wait %g s; waiting at most %g s (max_retry_after)",
            label,
            hint,
            max_retry_after,
        )
        return max_retry_after, f"asked {hint:g} s, clamped to {max_retry_after:g} s"
    if hint < MIN_RETRY_WAIT:
        return MIN_RETRY_WAIT, f"asked {hint:g} s, waiting the minimum {MIN_RETRY_WAIT:g} s"
    return hint, f"server asked {hint:g} s"


def retry_hint(header: str | None, body: bytes, now: Callable[[], datetime]) -> float | None:
    """Seconds from ``Retry-After`` (seconds or HTTP-date, against ``now()``), else from the
    429 body text."""
    if header is not None and header.strip():
        text = header.strip()
        try:
            seconds = float(text)
        except ValueError:
            seconds = None
        if seconds is not None:
            # nan and inf are no hint at all (nan slipped past the floor); a negative one
            # is a hint of "now" and gets the floor like 0 does
            return seconds if math.isfinite(seconds) else body_hint(body)
        when = parse_http_date(text)
        if when is not None:
            return (when - now()).total_seconds()
    return body_hint(body)


def body_hint(body: bytes) -> float | None:
    """Seconds from a 429 body's "Expected available in N seconds", if it says so."""
    match = _BODY_SECONDS.search(body[:4096].decode("utf-8", "replace"))
    return float(match.group(1)) if match else None
