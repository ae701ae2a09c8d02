"""Timestamps as the API writes them, and the time zones users ask for.

Inside the package every instant is a tz-aware UTC ``datetime`` / ``pandas.Timestamp``.
The API writes two styles (``...535170Z`` in List Sessions, ``...+00:00`` in Get Session)
and sometimes no fraction; both are read here so the client and the server agree.
"""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .errors import ConfigError


def parse_api_timestamp(value: str) -> datetime:
    """Parse an API timestamp (``Z`` or ``+HH:MM``, fraction optional) into UTC.

    Raises ``ValueError`` for anything else (naive times included): the caller turns it into
    an ``UnexpectedResponseError`` naming the field.
    """
    if not isinstance(value, str):
        raise ValueError(f"expected an ISO 8601 string, got {type(value).__name__}")
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        raise ValueError(f"timestamp {value!r} has no UTC offset")
    try:
        return parsed.astimezone(UTC)
    except OverflowError:
        # e.g. 0001-01-01T00:00:00+05:30: a valid text whose UTC instant is before year 1
        raise ValueError(f"timestamp {value!r} is outside the years 1-9999 in UTC") from None


def format_drf(ts: datetime) -> str:
    """Format like List Sessions does: ``2025-07-29T10:23:27.535170Z``."""
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def format_offset(ts: datetime) -> str:
    """Format like Get Session does: ``2025-07-29T10:23:27.535170+00:00``."""
    return ts.astimezone(UTC).isoformat(timespec="microseconds")


def utc_now() -> datetime:
    """The default clock: now, tz-aware UTC."""
    return datetime.now(UTC)


def check_tz(tz: str) -> str:
    """Return ``tz`` if it is a known IANA zone name, else raise ``ConfigError``."""
    if not isinstance(tz, str) or not tz:
        raise ConfigError(f"time zone {tz!r} is not valid: use an IANA name such as 'Europe/Berlin' or 'UTC'")
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ConfigError(
            f"unknown time zone {tz!r}: use an IANA name such as 'Europe/Berlin' or 'UTC'"
        ) from exc
    return tz
