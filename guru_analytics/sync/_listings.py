"""What a sync reads and how pages reach the cache: the listings (guru-wide, per user, per
search), the users file, and the page batch that writes pages with their pass's position."""

from __future__ import annotations

import logging
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, GuruAnalyticsError
from ..store import ListedPage
from ._summary import SyncSummary

if TYPE_CHECKING:
    from ..store import Store

_log = logging.getLogger("guru_analytics.sync")

# Listing pages are committed this many to a transaction, or once the oldest buffered page is
# this old, whichever comes first (and always before any wait). A transaction costs a few ms
# whatever its size, so one per page dominated an unthrottled sync (measured in
# benchmarks/throughput.py; 50 pages = 1,500 sessions, a fraction of a second of work).
BATCH_PAGES = 50
BATCH_SECONDS = 0.25
# An unthrottled sync yields the cache file this often, so a reader gets in within seconds.
YIELD_EVERY = 3.0


# --- listings -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Listing:
    """One filtered view of a guru's sessions, with its own watermark in ``sync_state``."""

    key: str
    external_user_id: str | None = None
    search_query: str = ""

    @property
    def guru_wide(self) -> bool:
        return self.external_user_id is None and not self.search_query


def listings_for(
    users: Iterable[str] | None, search: str | None, *, guru_wide: bool = False
) -> list[Listing]:
    """The listings a sync walks, narrowed by search: the guru-wide one first when
    ``guru_wide`` (or when ``users`` is None), then one per user."""
    query = _check_search(search)
    tail = f"search:{query}" if query else ""
    if users is None:
        return [Listing(tail, None, query)]
    if isinstance(users, str):
        raise ConfigError("users must be a list of external user ids, not one string")
    out: list[Listing] = [Listing(tail, None, query)] if guru_wide else []
    seen: set[str] = set()
    for user in users:
        if not isinstance(user, str) or not user.strip():
            raise ConfigError(f"external user id {user!r} is not valid: use a non-empty string")
        user = user.strip()
        if user in seen:
            continue
        seen.add(user)
        key = f"user:{user}" + (f"|{tail}" if tail else "")
        out.append(Listing(key, user, query))
    if not out:
        raise ConfigError("users is empty: pass at least one external user id, or users=None")
    return out


def _check_search(search: str | None) -> str:
    if search is None:
        return ""
    if not isinstance(search, str):
        raise ConfigError(f"search {search!r} is not valid: pass a string")
    return search.strip()  # the API strips it too


# A users file larger than this is refused: at 10 requests a minute even 1 MiB of ids is more
# listings than a day of syncing can read, and /dev/zero or a huge file must not fill memory.
MAX_USERS_FILE_BYTES = 4 * 1024 * 1024


def read_users_file(path: str | Path) -> list[str]:
    """External user ids from a file: one per line, blank lines and ``#`` comments ignored.

    Only a regular file of at most ``MAX_USERS_FILE_BYTES`` (checked before opening, so a
    FIFO or a device is never read)."""
    p = Path(path)
    try:
        if not stat.S_ISREG(p.stat().st_mode):
            raise ConfigError(
                f"users file {str(p)!r} is not a regular file: pass a text file with one "
                "user id per line"
            )
        with p.open("rb") as fh:
            data = fh.read(MAX_USERS_FILE_BYTES + 1)
        if len(data) > MAX_USERS_FILE_BYTES:
            raise ConfigError(
                f"users file {str(p)!r} is larger than {MAX_USERS_FILE_BYTES // 1024 // 1024} "
                "MiB: pass a file of user ids, one per line, or split it over several syncs"
            )
        text = data.decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"users file {str(p)!r} not found: check the path") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"users file {str(p)!r} cannot be read ({type(exc).__name__})") from None
    users = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            users.append(line)
    if not users:
        raise ConfigError(f"users file {str(p)!r} holds no user ids: one id per line")
    return users


# --- batching pages into transactions -------------------------------------------------------


class _PageBatch:
    """Pages read but not yet written, with the pass state they carry (see ``BATCH_PAGES``).

    ``flush()`` writes them and the state in one transaction. The sync flushes when the
    batch is due, before every wait (so a throttled sync commits each page before sleeping),
    at the end of each listing and on errors; every ``YIELD_EVERY`` seconds of holding the
    file it also yields it, so a reader started during a fast sync gets in.
    """

    def __init__(
        self,
        store: Store,
        guru: str,
        clock: Callable[[], datetime],
        monotonic: Callable[[], float],
        summary: SyncSummary,
    ) -> None:
        self.store = store
        self.guru = guru
        self.clock = clock
        self.monotonic = monotonic
        self.summary = summary
        self.pages: list[ListedPage] = []
        self.state: dict[str, dict[str, Any]] = {}
        self.first: float | None = None  # when the oldest buffered page arrived
        self.held_since: float | None = None  # when the file was last taken (None: released)

    def add(self, listing: str, page: ListedPage | None, **state: Any) -> None:
        if self.first is None:
            self.first = self.monotonic()
        if page is not None and page.rows:
            self.pages.append(page)
        if state:
            self.state.setdefault(listing, {}).update(state)

    def due(self) -> bool:
        return self.first is not None and (
            len(self.pages) >= BATCH_PAGES or self.monotonic() - self.first >= BATCH_SECONDS
        )

    def flush(self) -> None:
        """Write what is buffered (the buffer is emptied first: pages a failed write loses
        are read again by the resume), then yield the file if it was held long enough."""
        if self.first is None:
            return
        pages, state = self.pages, self.state
        self.pages, self.state, self.first = [], {}, None
        written = self.store.write_pages(self.guru, pages, self.clock(), state)
        self.summary.sessions_new += sum(w.new for w in written)
        self.summary.sessions_changed += sum(w.changed for w in written)
        now = self.monotonic()
        if self.held_since is None:
            self.held_since = now
        elif now - self.held_since >= YIELD_EVERY:
            self.store.yield_file()
            self.held_since = None

    def released(self) -> None:
        """The file was released (before a wait): the hold starts again at the next write."""
        self.held_since = None

    def flush_after_error(self) -> None:
        """Keep what was read when the sync fails; the first error is the one raised."""
        try:
            self.flush()
        except GuruAnalyticsError as exc:
            _log.warning("could not store the last pages read after an error: %s", exc)
