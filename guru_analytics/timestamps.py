"""Timestamps as the API writes them, and the time zones users ask for.

Inside the package every instant is a tz-aware UTC ``datetime`` / ``pandas.Timestamp``.
The API writes two styles (``...535170Z`` in List Sessions, ``...+00:00`` in Get Session)
and sometimes no fraction; both are read here so the client and the server agree.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, cast
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .errors import ConfigError

if TYPE_CHECKING:  # pandas/numpy load lazily: the CLI imports this module on every start
    import numpy as np
    import pandas as pd

_US_PER_S = 1_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# A last_used before this cannot be true (Gurubase did not exist), nor one later than the
# clock plus this skew: such instants are suspect. The sync keeps them but never takes one
# as a watermark (``paging.is_suspect``); reports never let one set their default range.
EARLIEST_PLAUSIBLE = datetime(2023, 1, 1, tzinfo=UTC)
CLOCK_SKEW = timedelta(days=1)


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


def parse_http_date(value: str | None) -> datetime | None:
    """An HTTP date (``Date``, ``Retry-After``) as a tz-aware instant; None if absent or not
    a date (a hostile header is no reason to fail a request)."""
    from email.utils import parsedate_to_datetime

    if not value or not value.strip():
        return None
    try:
        when = parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return when if when.tzinfo is not None else None


def utc_now() -> datetime:
    """The default clock: now, tz-aware UTC."""
    return datetime.now(UTC)


def running_from(start: datetime) -> Callable[[], datetime]:
    """A wall clock that reads ``start`` now and runs on in real time: a local server's
    clock for synthetic data that ends on a fixed date, so "today" and Export Analytics'
    intervals (up to 12 months back from the server's now) fall on the data."""
    offset = start - utc_now()
    return lambda: utc_now() + offset


def check_tz(tz: str) -> str:
    """Return ``tz`` if it is a known IANA zone name, else raise ``ConfigError``."""
    if not isinstance(tz, str) or not tz:
        raise ConfigError(
            f"time zone {tz!r} is not valid: use an IANA name such as 'Europe/Berlin' or 'UTC'"
        )
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ConfigError(
            f"unknown time zone {tz!r}: use an IANA name such as 'Europe/Berlin' or 'UTC'"
        ) from exc
    return tz


# --- microseconds since the epoch: the one conversion the server and synthetic data share ---


def to_micros(ts: datetime) -> int:
    """Microseconds since the epoch of a tz-aware instant (``datetime`` or ``pandas.Timestamp``,
    a ``datetime`` subclass), exact (no float rounding). Naive times raise ``ConfigError``."""
    if ts.tzinfo is None:
        raise ConfigError("timestamps must be tz-aware UTC: pass datetime(..., tzinfo=UTC)")
    if hasattr(ts, "as_unit"):  # a pandas.Timestamp (not imported here): may carry nanoseconds
        return int(cast("pd.Timestamp", ts).tz_convert("UTC").as_unit("us").value)
    delta = ts.astimezone(UTC) - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * _US_PER_S + delta.microseconds


def from_micros(us: int) -> datetime:
    """The tz-aware UTC ``datetime`` of a microsecond count (inverse of ``to_micros``)."""
    return _EPOCH + timedelta(microseconds=int(us))


def micros_to_series(us: np.ndarray | Any) -> pd.Series:
    """A tz-aware UTC ``datetime64[us]`` Series from an array of microsecond counts."""
    import numpy as np
    import pandas as pd

    return pd.Series(np.asarray(us, dtype=np.int64).view("datetime64[us]")).dt.tz_localize("UTC")


def series_to_micros(s: pd.Series) -> np.ndarray:
    """Microsecond counts (int64 array) of a tz-aware Series; naive ones raise ``ConfigError``."""
    import numpy as np

    if s.dt.tz is None:
        raise ConfigError("timestamp columns must be tz-aware UTC")
    naive = s.dt.tz_convert("UTC").dt.tz_localize(None).dt.as_unit("us")
    return naive.to_numpy(dtype="datetime64[us]").view(np.int64).astype(np.int64)


def instant(value: Any) -> pd.Timestamp:
    """``pd.Timestamp(value)`` for a value known to be a time: NaT (missing) raises here, so
    callers get a ``Timestamp`` (typed as such) and never compute with NaT by accident."""
    import pandas as pd

    ts = pd.Timestamp(value)
    if not isinstance(ts, pd.Timestamp):
        raise ConfigError(f"expected a time, got a missing value ({value!r})")
    return ts
