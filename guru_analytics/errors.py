"""Every error guru_analytics raises, in one tree.

Catch ``GuruAnalyticsError`` to handle anything this package raises on purpose; catch a
leaf to handle one situation. Every message is one line that says what failed and what to
do next, and never contains an API key (at most its last four characters)::

    GuruAnalyticsError
    ├── ConfigError                 bad argument, option, time zone, path or missing key
    ├── ApiError                    the Gurubase API answered, but not with what we need
    │   ├── BadRequestError         400: the request was malformed (e.g. page_num)
    │   ├── AuthenticationError     401: API key missing or unknown
    │   ├── ForbiddenError          403: the key's owner may not read this guru / session
    │   ├── NotFoundError           404: unknown guru slug or session id
    │   ├── RateLimitedError        429 kept coming after the retry budget was spent
    │   ├── ServerError             5xx kept coming after the retry budget was spent
    │   └── UnexpectedResponseError 200 with HTML, malformed JSON, missing or mistyped fields
    │       ├── EndlessListingError pages kept saying has_more but brought nothing new
    │       └── ResponseTooLargeError a body over the size cap (after decompression)
    ├── TransportError              connection refused/dropped or timed out after retries
    │   └── DeadlineError           an answer did not finish within the whole-request deadline
    ├── CacheError                  the DuckDB cache cannot be used
    │   ├── CacheLockedError        another process holds the write lock
    │   └── CacheSchemaError        the file is not a cache, or is newer than this package
    ├── NoDataError                 the cache holds nothing for what was asked
    └── OutputError                 a report, chart or stdout cannot be written (OSError)
"""

from __future__ import annotations


class GuruAnalyticsError(Exception):
    """Base class: everything guru_analytics raises on purpose."""


class ConfigError(GuruAnalyticsError, ValueError):
    """A user-supplied setting is invalid or missing."""


class ApiError(GuruAnalyticsError):
    """The API answered with an error status or an unusable body.

    ``status`` is the HTTP status (None when there was none), ``endpoint`` the path that was
    called (never the key).
    """

    def __init__(self, message: str, *, status: int | None = None, endpoint: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.endpoint = endpoint


class BadRequestError(ApiError):
    """400: the server rejected the request body."""


class AuthenticationError(ApiError):
    """401: the API key is missing or unknown."""


class ForbiddenError(ApiError):
    """403: the key's owner does not maintain this guru (or may not read this session)."""


class NotFoundError(ApiError):
    """404: the guru slug or session id does not exist."""


class RateLimitedError(ApiError):
    """429 answers outlasted the retry budget."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = 429,
        endpoint: str = "",
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, status=status, endpoint=endpoint)
        self.retry_after = retry_after


class ServerError(ApiError):
    """5xx answers outlasted the retry budget."""


class UnexpectedResponseError(ApiError):
    """A 2xx answer whose body is not the documented JSON (HTML, malformed, wrong fields)."""


class EndlessListingError(UnexpectedResponseError):
    """A listing kept answering ``has_more`` with pages that brought no session not seen."""


class ResponseTooLargeError(UnexpectedResponseError):
    """An answer's body (decompressed) exceeded the client's size cap."""


class TransportError(GuruAnalyticsError):
    """No usable HTTP answer: connection refused or dropped, or timeouts, after retries."""


class DeadlineError(TransportError):
    """An answer kept trickling past the whole-request deadline (after retries)."""


class CacheError(GuruAnalyticsError):
    """The DuckDB cache file cannot be opened or used."""


class CacheLockedError(CacheError):
    """Another process holds the cache's write lock for longer than we were willing to wait."""


class CacheSchemaError(CacheError):
    """The file is not a guru_analytics cache, or was written by a newer version."""


class NoDataError(GuruAnalyticsError, LookupError):
    """The cache holds nothing for the guru, users or time range asked for."""


class OutputError(GuruAnalyticsError, OSError):
    """An output file (report, chart) or stdout cannot be written: no directory, no
    permission, read-only file system, full disk."""

    @classmethod
    def writing(cls, target: object, exc: BaseException) -> OutputError:
        """The one message for a failed write of ``target`` (a path, or ``-`` for stdout)."""
        what = "standard output" if str(target) == "-" else str(target)
        if isinstance(exc, OSError) and exc.strerror:
            reason = exc.strerror
        else:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
        err = cls(
            f"cannot write {what}: {reason}: choose another -o path, or free space / fix "
            "permissions and run again"
        )
        err.target = str(target)
        return err

    target: str = ""


def mask_key(key: str | None) -> str:
    """Return a key reduced to what may be shown: ``'…abcd'`` (last four characters) or ``'<none>'``."""
    if not key:
        return "<none>"
    return "…" + key[-4:] if len(key) > 8 else "…"
