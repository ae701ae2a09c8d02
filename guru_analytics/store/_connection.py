"""Opening the cache file: connections, the file lock, transactions and readers.

DuckDB lets one process open a file read-write *or* many processes read-only, never both. So
the read-write connection is opened lazily, on the first write, and ``release()`` closes it
again (the sync releases before rate-limit waits and at short intervals in between); readers
open the file read-only only for the length of a ``reader()`` block. Both retry a held lock
with short backoff up to ``lock_timeout`` and then raise ``CacheLockedError`` naming the
holder's PID. Every connection runs with ``TimeZone='UTC'`` so values come back tz-aware UTC.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import pandas as pd

from ..errors import CacheError, CacheLockedError, CacheSchemaError, ConfigError
from ..interrupts import is_interrupt

if TYPE_CHECKING:
    from ._schema import Migration

ConnectFactory = Callable[[str, bool], duckdb.DuckDBPyConnection]
"""``(path, read_only) -> connection``; the default is ``duckdb.connect``."""

_LOCK_RE = re.compile(r"Could not set lock", re.IGNORECASE)
_PID_RE = re.compile(r"PID (\d+)")
_OTHER_CONFIG_RE = re.compile(r"different configuration", re.IGNORECASE)
_NOT_DUCKDB_RE = re.compile(r"not a valid DuckDB database file", re.IGNORECASE)
# DuckDB's I/O errors for a file cut short or with bad blocks (not a full disk or a lock).
_DAMAGED_RE = re.compile(
    r"could not read enough bytes|corrupt|checksum|truncated|invalid database|bad block",
    re.IGNORECASE,
)
_SQLITE_MAGIC = b"SQLite format 3\x00"
# Every connection of the package: a cache file must never make DuckDB download or load an
# extension (a SQLite file would fetch sqlite_scanner). A SET after connecting is too late:
# the file is read, and extensions autoloaded, while connecting.
NO_EXTENSIONS = {"autoinstall_known_extensions": False, "autoload_known_extensions": False}
_log = logging.getLogger("guru_analytics.store")
# How long a sync waits for a reader (a report, a notebook) to give the file back: long, since
# a reader finishes on its own and a sync has nothing better to do, but bounded.
READER_WAIT = 600.0
# The longest pause between two tries at a held lock. A writer that yields the file holds it
# free for longer than this (see ``Database.yield_file``), so a waiting reader gets in.
MAX_LOCK_BACKOFF = 0.05


def default_cache_path() -> Path:
    """Where the cache lives unless told otherwise.

    ``GURU_ANALYTICS_DB`` wins; else ``$XDG_CACHE_HOME/guru-analytics/cache.duckdb``; else
    ``~/.cache/guru-analytics/cache.duckdb``. Read at call time, never at import.
    """
    override = os.environ.get("GURU_ANALYTICS_DB")
    if override:
        return Path(override).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "guru-analytics" / "cache.duckdb"


def _duckdb_connect(path: str, read_only: bool) -> duckdb.DuckDBPyConnection:
    return duckdb.connect(path, read_only=read_only, config=dict(NO_EXTENSIONS))


def damaged_error(path: str, exc: BaseException) -> CacheError | None:
    """DuckDB's I/O error on the cache file as one line, or None if ``exc`` is not one."""
    if not isinstance(exc, duckdb.IOException) or _LOCK_RE.search(str(exc)):
        return None
    detail = one_line(exc)[:200]
    if _DAMAGED_RE.search(detail):
        return CacheError(
            f"cache {path} is truncated or damaged ({detail}): restore it or delete it and "
            "sync again"
        )
    return CacheError(
        f"cache {path} cannot be read or written ({detail}): if the disk is full, free space; "
        "if the file is damaged, restore it or delete it and sync again"
    )


def one_line(exc: BaseException) -> str:
    """An exception's text on one line (for one-line error messages)."""
    return " ".join(str(exc).split())


def first_row(result: duckdb.DuckDBPyConnection) -> tuple[Any, ...] | None:
    """The first row, reading the result to its end: DuckDB 2 refuses other work on a
    connection (e.g. ``register``) while a result is only partly fetched."""
    rows = result.fetchall()
    return rows[0] if rows else None


def count(result: duckdb.DuckDBPyConnection) -> int:
    """The single integer a DML statement or ``count(*)`` returns."""
    row = first_row(result)
    return 0 if row is None or row[0] is None else int(row[0])


class Database:
    """One cache file (or ``:memory:``): the lazily opened read-write connection, readers,
    transactions, and the schema check on first open (``upgrade(conn)``)."""

    def __init__(
        self,
        path: str | os.PathLike[str] | None,
        *,
        connect: ConnectFactory | None,
        lock_timeout: float,
        migrations: Sequence[Migration],
        monotonic: Callable[[], float],
        sleep: Callable[[float], None],
    ) -> None:
        from ._schema import check_not_newer, read_version, upgrade

        if not isinstance(lock_timeout, int | float) or lock_timeout < 0:
            raise ConfigError(f"lock_timeout {lock_timeout!r} is not valid: pass seconds >= 0")
        self._connect: ConnectFactory = connect or _duckdb_connect
        self._lock_timeout = float(lock_timeout)
        self._monotonic = monotonic
        self._sleep = sleep
        self._migrations = migrations
        self.target = migrations[-1][0]
        self._read_version = read_version
        self._check_not_newer = check_not_newer
        self._upgrade_steps = upgrade
        self.lock = threading.RLock()
        self._conn: duckdb.DuckDBPyConnection | None = None
        self._readers: dict[int, int] = {}  # thread id -> open read-only reader() blocks
        self._settings: dict[str, str] = {}  # applied to every read-write connection (capped())
        self._reader_wait = 0.0  # how long a write waits for a reader (waiting_for_readers())
        self.closed = False
        raw = default_cache_path() if path is None else path
        if not isinstance(raw, str | os.PathLike):
            raise ConfigError(f"cache path {raw!r} is not valid: pass a file path or ':memory:'")
        text = os.fspath(raw)
        if text == ":memory:":
            self.memory = True
            self.path = ":memory:"
            self.identity = f":memory:{id(self)}"
            conn = self._open(read_only=False)
            try:
                self._upgrade(conn)
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        else:
            self.memory = False
            self.path = str(self._prepare_path(text))
            self.identity = self.path
            self._init_file()

    @property
    def is_open(self) -> bool:
        """Whether the read-write connection is open (holding the file's lock)."""
        return self._conn is not None

    def _upgrade(self, conn: duckdb.DuckDBPyConnection) -> None:
        self._upgrade_steps(
            conn, self.path, self._migrations, lambda c, e: self.rollback(c, e, discard=False)
        )

    @staticmethod
    def _prepare_path(text: str) -> Path:
        if not text.strip():
            raise ConfigError("cache path is empty: pass a file path or ':memory:'")
        path = Path(text).expanduser()
        if path.is_dir():
            raise CacheError(
                f"cache path {path} is a directory: pass a file path such as {path / 'cache.duckdb'}"
            )
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CacheError(
                f"cannot create the cache directory {path.parent} ({exc.strerror or exc}): "
                "pass a writable path with --db or GURU_ANALYTICS_DB"
            ) from exc
        return path.resolve()

    def _init_file(self) -> None:
        """Check (read-only, so a running sync elsewhere is not disturbed) and upgrade if needed."""
        path = Path(self.path)
        if path.exists() and path.stat().st_size > 0:
            self._refuse_sqlite(path)
            conn = self._open(read_only=True)
            try:
                version = self._read_version(conn, self.path)
            except duckdb.Error as exc:
                ours = damaged_error(self.path, exc)
                if ours is None:
                    raise
                raise ours from exc
            finally:
                conn.close()
            if version == self.target:
                return
            self._check_not_newer(version, self.target, self.path)
        with self.lock:
            self.write_conn()  # creates or upgrades the file
            self.release()

    def _refuse_sqlite(self, path: Path) -> None:
        """Name a SQLite file for what it is (DuckDB calls it a newer storage version)."""
        try:
            with path.open("rb") as fh:
                head = fh.read(len(_SQLITE_MAGIC))
        except OSError:
            return  # DuckDB's own open says what is wrong with the file
        if head == _SQLITE_MAGIC:
            raise CacheSchemaError(
                f"{self.path} is a SQLite database, not a guru-analytics cache: pass another --db"
            )

    def _open(self, *, read_only: bool) -> duckdb.DuckDBPyConnection:
        """Open a connection, retrying a held lock with backoff until ``lock_timeout`` (for a
        write inside ``waiting_for_readers``, held by a reader: until that wait)."""
        started = self._monotonic()
        deadline = started + self._lock_timeout
        extended = False
        delay = 0.02
        while True:
            try:
                conn = self._connect(self.path, read_only)
                break
            except duckdb.Error as exc:
                message = str(exc)
                if read_only and _OTHER_CONFIG_RE.search(message):
                    # This process already has the file open read-write (another Store):
                    # DuckDB shares that instance, so reading through it costs no new lock.
                    try:
                        conn = self._connect(self.path, False)
                        break
                    except duckdb.Error as retry_exc:
                        message = str(retry_exc)
                if not (_LOCK_RE.search(message) or _OTHER_CONFIG_RE.search(message)):
                    raise open_error(self.path, exc) from exc
                remaining = deadline - self._monotonic()
                if remaining <= 0 and not (read_only or extended) and self._reader_wait:
                    extended = True
                    holder, kind = lock_holder(self.path, self._connect, message)
                    if kind == "reader":
                        _log.warning(
                            "cache %s is held by %s: waiting up to %g s for it to finish",
                            self.path, holder, self._reader_wait,
                        )  # fmt: skip
                        deadline = started + max(self._lock_timeout, self._reader_wait)
                        remaining = deadline - self._monotonic()
                if remaining <= 0:
                    raise locked_error(
                        self.path, self._connect, message, deadline - started
                    ) from exc
                self._sleep(min(delay, remaining))
                delay = min(delay * 2, MAX_LOCK_BACKOFF)
        try:
            conn.execute("SET TimeZone = 'UTC'")
        except duckdb.Error as exc:
            conn.close()
            raise CacheError(
                f"cannot set TimeZone=UTC on cache {self.path} ({one_line(exc)}): "
                "reinstall duckdb (it needs the icu extension)"
            ) from exc
        if not read_only:
            self._apply(conn, self._settings)
        return conn

    def _apply(self, conn: duckdb.DuckDBPyConnection, settings: dict[str, str]) -> None:
        for name, value in settings.items():
            try:
                conn.execute(f"SET {name} = '{value}'" if value else f"RESET {name}")
            except duckdb.Error as exc:
                raise CacheError(
                    f"cannot set {name} on cache {self.path} ({one_line(exc)}): "
                    "pass a value DuckDB accepts"
                ) from exc

    @contextmanager
    def capped(self, settings: dict[str, str]) -> Iterator[None]:
        """Run the block with these DuckDB settings (e.g. ``memory_limit``, ``threads``) on
        every read-write connection it opens; the defaults come back afterwards. A sync uses
        it so its memory stays flat whatever the cache's size."""
        with self.lock:
            before = self._settings
            self._settings = {**before, **settings}
            if self._conn is not None and not self.memory:
                self._apply(self._conn, settings)
        try:
            yield
        finally:
            with self.lock:
                self._settings = before
                if self._conn is not None and not self.memory:
                    self._apply(self._conn, {k: before.get(k, "") for k in settings})

    def yield_file(self, pause: float) -> None:
        """Release the file and keep it free for ``pause`` seconds (longer than a waiting
        reader's ``MAX_LOCK_BACKOFF``), so a reader blocked on the lock gets in; the next
        write reopens it, waiting for such a reader to finish."""
        with self.lock:
            if self.memory or self._conn is None:
                return
            self.release()
        self._sleep(pause)

    @contextmanager
    def waiting_for_readers(self, seconds: float) -> Iterator[None]:
        """In the block, a write that finds the file held by a reader (not a sync) waits up
        to ``seconds`` for it, with a log line, instead of ``lock_timeout``: a sync outlives
        any report, and dying at a reader would waste the requests it has spent."""
        with self.lock:
            before, self._reader_wait = self._reader_wait, float(seconds)
        try:
            yield
        finally:
            with self.lock:
                self._reader_wait = before

    def check_open(self) -> None:
        if self.closed:
            raise CacheError(f"Store({self.path!r}) is closed: create a new Store")

    def write_conn(self) -> duckdb.DuckDBPyConnection:
        """The read-write connection, opened (and the schema checked) on first use."""
        with self.lock:
            self.check_open()
            if self._conn is None:
                if self._readers.get(threading.get_ident()):
                    raise CacheError(
                        "cannot write while a reader() block of this Store is open in the same "
                        "thread: finish the with-block first"
                    )
                conn = self._open(read_only=False)
                try:
                    self._upgrade(conn)
                except BaseException as exc:
                    conn.close()
                    ours = damaged_error(self.path, exc)
                    if ours is None:
                        raise
                    raise ours from exc
                self._conn = conn
            return self._conn

    def rollback(
        self, conn: duckdb.DuckDBPyConnection, exc: BaseException, *, discard: bool = True
    ) -> None:
        try:
            conn.execute("ROLLBACK")
        except BaseException as rollback_exc:
            if not isinstance(rollback_exc, duckdb.Error) or is_interrupt(rollback_exc):
                # a second Ctrl-C inside the ROLLBACK: the transaction may still be open, and
                # the next BEGIN would fail; closing the connection rolls it back
                self._drop(conn)
                raise
            exc.add_note(
                f"rollback also failed ({one_line(rollback_exc)}); the connection was closed "
                "and the cache file keeps its last committed state"
            )
            if discard:
                self._drop(conn)

    def _drop(self, conn: duckdb.DuckDBPyConnection) -> None:
        """Close the read-write connection after a failed rollback or an interrupted COMMIT:
        closing discards what it has not committed. ``:memory:`` cannot be closed (its data
        would go): a last ROLLBACK is tried there instead."""
        if conn is not self._conn:
            return  # not ours yet (a migration while opening): the opener closes it
        if self.memory:
            with suppress(duckdb.Error):  # an error here: no transaction was left open
                conn.execute("ROLLBACK")
            return
        self._conn = None
        conn.close()

    @contextmanager
    def transaction(
        self, what: str, frames: dict[str, pd.DataFrame | None] | None = None
    ) -> Iterator[duckdb.DuckDBPyConnection]:
        """One write transaction; any failure rolls all of it back and names ``what``.

        ``frames`` are registered as views for the SQL (before BEGIN, dropped after the
        transaction ends: DuckDB refuses to drop a view inside an aborted transaction).
        """
        with self.lock:
            conn = self.write_conn()
            names: list[str] = []
            try:
                try:
                    for name, frame in (frames or {}).items():
                        if frame is not None:
                            conn.register(name, frame)
                            names.append(name)
                    conn.execute("BEGIN TRANSACTION")
                except duckdb.Error as exc:
                    if is_interrupt(exc):
                        raise
                    raise damaged_error(self.path, exc) or CacheError(
                        f"{what} could not start ({one_line(exc)}): finish any transaction "
                        "you opened on store.connection() and retry"
                    ) from exc
                try:
                    yield conn
                except BaseException as exc:
                    self.rollback(conn, exc)
                    if isinstance(exc, duckdb.Error) and not is_interrupt(exc):
                        raise damaged_error(self.path, exc) or CacheError(
                            f"{what} failed and was rolled back, nothing of it was stored "
                            f"({one_line(exc)}): fix the input or report this bug"
                        ) from exc
                    raise
                try:
                    conn.execute("COMMIT")
                except BaseException as exc:
                    if not isinstance(exc, duckdb.Error) or is_interrupt(exc):
                        self._drop(conn)  # committed or not, nothing is left half-open
                        raise
                    self.rollback(conn, exc)
                    raise damaged_error(self.path, exc) or CacheError(
                        f"{what} could not be committed and was rolled back "
                        f"({one_line(exc)}): check free disk space and retry"
                    ) from exc
            finally:
                if self._conn is conn:
                    for name in names:
                        conn.unregister(name)

    def release(self) -> None:
        """Close the read-write connection so other processes can open the file.

        The next write reopens it. No-op for ``:memory:`` (closing would lose the data).
        """
        with self.lock:
            if self.memory or self._conn is None:
                return
            conn, self._conn = self._conn, None
            conn.close()

    def close(self) -> None:
        """Release the file (or drop the in-memory database); it cannot be used again."""
        with self.lock:
            if self.closed:
                return
            if self.memory and self._conn is not None:
                self._conn.close()
                self._conn = None
            self.release()
            self.closed = True

    def connection(self) -> duckdb.DuckDBPyConnection:
        """The Store's own read-write connection, for ad-hoc SQL.

        It stays open (holding the file's lock) until ``release()``; prefer ``reader()`` for
        reads that other processes should not block on.
        """
        return self.write_conn()

    @contextmanager
    def writer(self, *, keep_open: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        """Hold the read-write connection for a batch of writes.

        On exit the file is released again unless ``keep_open`` or it was already open.
        """
        with self.lock:
            was_open = self._conn is not None
            conn = self.write_conn()
            try:
                yield conn
            finally:
                if not keep_open and not was_open:
                    self.release()

    @contextmanager
    def reader(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection for reading (``SET TimeZone='UTC'``), closed when the block ends.

        If this Store has the file open read-write (or is ``:memory:``) it is a cursor on
        that connection; otherwise a read-only connection, so other processes may read too.
        """
        tid = threading.get_ident()
        with self.lock:
            self.check_open()
            own = self._conn is None
            if own:
                conn = self._open(read_only=True)
                self._readers[tid] = self._readers.get(tid, 0) + 1
            else:
                assert self._conn is not None
                conn = self._conn.cursor()
                try:
                    conn.execute("SET TimeZone = 'UTC'")
                except BaseException:
                    conn.close()
                    raise
        try:
            yield conn
        except duckdb.IOException as exc:
            ours = damaged_error(self.path, exc)
            if ours is None:
                raise
            raise ours from exc
        finally:
            conn.close()
            if own:
                with self.lock:
                    left = self._readers[tid] - 1
                    if left:
                        self._readers[tid] = left
                    else:
                        del self._readers[tid]


# --- who holds the file, what a failed open means ------------------------------------


def lock_holder(path: str, connect: ConnectFactory, message: str) -> tuple[str, str]:
    """Who holds the lock, from DuckDB's message and the running runs in ``sync_runs``:
    (words for messages, kind: ``sync``, ``reader``, ``self`` or ``unknown``)."""
    found = _PID_RE.search(message)
    if found is None:
        if _OTHER_CONFIG_RE.search(message):
            return f"another connection of this process (PID {os.getpid()})", "self"
        return "another process", "unknown"
    pid = int(found.group(1))
    syncs = _running_sync_pids(path, connect)
    if syncs is None:  # a writer holds the file: its sync_runs cannot be read now
        return f"PID {pid} (a sync or another program writing it)", "unknown"
    if pid in syncs:
        return f"a sync (PID {pid})", "sync"
    return f"PID {pid} (a reader or another program)", "reader"


def _running_sync_pids(path: str, connect: ConnectFactory) -> set[int] | None:
    """PIDs of this host's running syncs, read read-only; None if the file cannot be
    read (a writer holds it)."""
    try:
        conn = connect(path, True)
    except duckdb.Error:
        return None
    try:
        rows = conn.execute(
            "SELECT pid FROM sync_runs WHERE outcome = 'running' AND host = ?",
            [socket.gethostname()],
        ).fetchall()
    except duckdb.Error:
        return set()  # no run ledger yet: no sync ever ran here
    finally:
        conn.close()
    return {int(r[0]) for r in rows if r[0] is not None}


def locked_error(
    path: str, connect: ConnectFactory, message: str, waited: float
) -> CacheLockedError:
    holder, kind = lock_holder(path, connect, message)
    what = "that sync" if kind == "sync" else "it"
    return CacheLockedError(
        f"cache {path} is held by {holder} (waited {waited:g} s); "
        f"wait for {what} to finish or pass a different --db"
    )


def open_error(path: str, exc: duckdb.Error) -> CacheError:
    message = one_line(exc)
    if _NOT_DUCKDB_RE.search(message):
        return CacheSchemaError(
            f"{path} is not a guru_analytics cache (not a DuckDB file): "
            "pass a different --db path or move that file away"
        )
    if re.search(r"version", message, re.IGNORECASE):
        return CacheSchemaError(
            f"cache {path} was written by an incompatible DuckDB ({message}): "
            "install a matching duckdb or pass a different --db"
        )
    damaged = damaged_error(path, exc)
    if damaged is not None and _DAMAGED_RE.search(message):
        return damaged
    return CacheError(
        f"cannot open cache {path} ({message}): "
        "check that the path is a writable file or pass a different --db"
    )
