"""Session writes: listing pages from the sync (typed, batched) and bulk loads from frames.

Rules shared by both paths: ids repeating in a page are deduplicated (greatest last_used wins,
among equals the later row); a row is *new* if the guru has no such session, *changed* if its
last_used moves forward or the session was marked deleted; the stored last_used never moves
back and the listing text is rewritten only from a read at least as new whose fingerprint
differs; every seen session gets last_seen = max(last_seen, seen) and loses its deleted flag;
every distinct (id, last_used) not equal to the stored value becomes an observation; with a
user, every id is attributed to it.

A page batch (``write_pages``) is small: each DuckDB statement costs about a millisecond however
few rows it touches, so the batch reads the stored state of its rows with one index lookup,
decides in Python what changes, and writes only that, in one transaction with the listings'
sync state. ``load_frame`` does the same job set-based for large, validated frames.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import duckdb
import numpy as np
import pandas as pd

from ..errors import ConfigError
from ._connection import Database, count, first_row
from ._runs import state_statement
from ._schema import LISTING_COLUMNS, LISTING_FINGERPRINT_SQL, LISTING_TEXT, listing_fingerprint
from ._unattributed import queue
from ._validate import (
    as_utc,
    check_guru,
    check_user,
    column_values,
    id_column,
    json_column,
    optional_utc_column,
    require,
    text_column,
    utc_column,
)

SESSION_COLUMNS = (
    "guru, id, last_used, guru_type_name, root_question_name, root_question_slug, "
    "root_question_link, extra, first_seen, last_seen, deleted, deleted_at, date_created"
)


@dataclass(frozen=True)
class PageWrite:
    """What one ``write_page`` changed, measured against the cache before the write.

    ``new``: ids not in the cache; ``changed``: ids whose stored ``last_used`` moved forward
    or that were marked deleted and are seen again; ``unchanged``: the rest (including a
    stale re-read with an older ``last_used``, which never moves the stored value back).
    The three add up to the number of distinct ids in the page.
    """

    new: int
    changed: int
    unchanged: int
    new_ids: tuple[str, ...] = ()
    changed_ids: tuple[str, ...] = ()

    @property
    def seen(self) -> int:
        """Distinct sessions in the page."""
        return self.new + self.changed + self.unchanged


@dataclass(frozen=True)
class LoadResult:
    """What one ``load_frame`` added: session counts as in ``PageWrite``, plus rows added."""

    sessions_new: int
    sessions_changed: int
    sessions_unchanged: int
    observations_added: int
    users_added: int


def _listing_frame(rows: pd.DataFrame, what: str) -> pd.DataFrame:
    """The listing frame in the exact shape the bulk SQL expects, with ``_ord`` = row position
    (a tie-breaker: among equal ``last_used`` the later row of a batch wins)."""
    n = len(rows)
    return pd.DataFrame(
        {
            "id": id_column(rows, "id", what),
            "last_used": utc_column(rows, "last_used", what, required=True),
            **{c: text_column(rows, c, what) for c in LISTING_TEXT},
            "extra": json_column(rows, "extra", what),
            "date_created": optional_utc_column(rows, "date_created", what),
            "_ord": np.arange(n, dtype=np.int64),
        }
    )


# --- listing pages: look up, decide in Python, write what changed ------------------------------
#
# Rules shared with the bulk path below: ids repeating in a page are deduplicated (greatest
# last_used wins, among equals the later row); a row is *new* if the guru has no such session,
# *changed* if its last_used moves forward or the session was marked deleted; the stored
# last_used never moves back and the listing text is rewritten only from a read at least as
# new whose fingerprint differs; every seen session gets last_seen = max(last_seen, seen) and
# loses its deleted flag; every distinct (id, last_used) not equal to the stored value becomes
# an observation; with a user, every id is attributed to it.

# The stored state of the page's ids, through the id index. Filtered on id alone: a second
# condition (guru = ?) would be pushed into the scan, and DuckDB 2.0.1 then scans the whole
# table; rows of other gurus are dropped in Python. The updates below address the rows by id
# too (index again) unless another guru has a session with one of these ids (ids are UUIDs:
# only hand-made data does), then by rowid, which reads the row groups holding them (rowids
# are stable within the transaction: this Store is the file's only writer).
_PAGE_READ_SQL = """
SELECT 's', id, guru, rowid, epoch_us(last_used), deleted, listing_md5, NULL
FROM sessions WHERE id IN (SELECT unnest($ids::VARCHAR[]))
"""
_PAGE_READ_USERS_SQL = """
UNION ALL
SELECT 'u', id, guru, NULL, NULL, NULL, NULL, external_user_id
FROM session_users WHERE id IN (SELECT unnest($ids::VARCHAR[]))
"""

_PAGE_INSERT_SQL = """
INSERT INTO sessions (guru, id, last_used, guru_type_name, root_question_name,
                      root_question_slug, root_question_link, extra, first_seen, last_seen,
                      deleted, deleted_at, date_created, listing_md5)
SELECT $guru, unnest($id::VARCHAR[]), unnest($last_used::TIMESTAMPTZ[]),
       unnest($guru_type_name::VARCHAR[]), unnest($root_question_name::VARCHAR[]),
       unnest($root_question_slug::VARCHAR[]), unnest($root_question_link::VARCHAR[]),
       unnest($extra::VARCHAR[])::JSON, $seen, $seen, false, NULL,
       unnest($date_created::TIMESTAMPTZ[]), unnest($listing_md5::UBIGINT[])
"""

# Every stored row of the page: seen now; moved forward (greatest: a stale read keeps the
# stored value); undeleted. The optional clauses are left out when no row needs them.
_PAGE_TOUCH_SQL = """
UPDATE sessions SET last_seen = greatest(sessions.last_seen, $seen){forward}{undelete}
FROM (SELECT unnest($key::{key_type}[]) AS key, unnest($last_used::TIMESTAMPTZ[]) AS last_used) AS p
WHERE sessions.{key} = p.key
"""
_PAGE_FORWARD = ", last_used = greatest(sessions.last_used, p.last_used)"
_UNDELETE = ", deleted = false, deleted_at = NULL"

# Rows whose listing text changed, read at least as new as stored (rare: a title edit).
_PAGE_REFRESH_SQL = """
UPDATE sessions SET
    guru_type_name = p.guru_type_name,
    root_question_name = p.root_question_name,
    root_question_slug = p.root_question_slug,
    root_question_link = p.root_question_link,
    extra = p.extra::JSON,
    listing_md5 = p.listing_md5
FROM (SELECT unnest($key::{key_type}[]) AS key,
             unnest($guru_type_name::VARCHAR[]) AS guru_type_name,
             unnest($root_question_name::VARCHAR[]) AS root_question_name,
             unnest($root_question_slug::VARCHAR[]) AS root_question_slug,
             unnest($root_question_link::VARCHAR[]) AS root_question_link,
             unnest($extra::VARCHAR[]) AS extra,
             unnest($listing_md5::UBIGINT[]) AS listing_md5) AS p
WHERE sessions.{key} = p.key
"""

# A plain INSERT checks the primary key through its index; ON CONFLICT would become a MERGE
# that scans every observation. New and forward values are almost never stored yet (only
# load_frame can add events past a session's last_used), so the page inserts them plainly
# and, if one does exist, writes the whole page again with the scanning variant.
_PAGE_OBSERVE_SQL = """
INSERT INTO observations (guru, id, last_used, observed_at)
SELECT $guru, unnest($id::VARCHAR[]), unnest($last_used::TIMESTAMPTZ[]), $seen
"""
_IF_NEW = " ON CONFLICT DO NOTHING"

_PAGE_ATTRIBUTE_SQL = """
INSERT INTO session_users (guru, id, external_user_id, first_seen)
SELECT $guru, unnest($id::VARCHAR[]), unnest($user::VARCHAR[]), $seen
"""


class _ObservationsExist(Exception):
    """The optimistic observations insert of a batch met a stored row: write it again, checked."""


class ListedRow(Protocol):
    """What the store needs of one listed session; the client's ``ListedSession`` is one.

    ``extra`` is a mapping (stored as JSON text with sorted keys; empty means none) or JSON
    text or None."""

    @property
    def id(self) -> str: ...
    @property
    def last_used(self) -> datetime: ...
    @property
    def guru_type_name(self) -> str | None: ...
    @property
    def root_question_name(self) -> str | None: ...
    @property
    def root_question_slug(self) -> str | None: ...
    @property
    def root_question_link(self) -> str | None: ...
    @property
    def extra(self) -> Mapping[str, Any] | str | None: ...


@dataclass(frozen=True)
class ListedPage:
    """One listing page for ``Store.write_pages``: its rows in server order, and the external
    user whose filtered listing it came from (None: guru-wide or search). ``queue_new``: the
    sessions this page stores for the first time join the attribution queue (``_unattributed``)
    in the same transaction."""

    rows: Sequence[ListedRow]
    external_user_id: str | None = None
    queue_new: bool = False


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US = timedelta(microseconds=1)

# One row as the page writer works on it: id, last_used (epoch microseconds and instant), the
# listing fields (LISTING_TEXT then extra as JSON text), date_created.
_Row = tuple[str, int, datetime, tuple[str | None, ...], datetime | None]


def _typed_row(row: ListedRow) -> _Row:
    extra = row.extra
    text = (
        (json.dumps(extra, sort_keys=True) if extra else None)
        if not isinstance(extra, str)
        else extra
    )
    last_used = row.last_used
    return (
        row.id,
        (last_used - _EPOCH) // _ONE_US,
        last_used,
        (
            row.guru_type_name,
            row.root_question_name,
            row.root_question_slug,
            row.root_question_link,
            text,
        ),
        None,
    )


def rows_from_frame(rows: pd.DataFrame, what: str) -> list[_Row]:
    """A user's listing frame, validated, as page rows (``write_page``)."""
    n = len(rows)
    times = utc_column(rows, "last_used", what, required=True)
    ids = id_column(rows, "id", what).tolist()
    fields = [
        *(column_values(text_column(rows, c, what), n) for c in LISTING_TEXT),
        column_values(json_column(rows, "extra", what), n),
    ]
    created = column_values(optional_utc_column(rows, "date_created", what).to_pydatetime(), n)
    return [
        (sid, us, at, tuple(f[k] for f in fields), made)
        for k, (sid, us, at, made) in enumerate(
            zip(ids, times.asi8.tolist(), times.to_pydatetime(), created, strict=True)
        )
    ]


class _Known:
    """A session's state as the batch goes: what is stored (or inserted by an earlier page of
    this batch), updated page by page exactly as page-by-page writes would update it."""

    __slots__ = ("row", "us", "at", "deleted", "fingerprint", "fields", "created", "new")

    def __init__(
        self,
        row: int | None,
        us: int,
        at: datetime | None,
        deleted: bool,
        fingerprint: int | None,
        *,
        new: bool = False,
        fields: tuple[str | None, ...] = (),
        created: datetime | None = None,
    ) -> None:
        self.row, self.us, self.at, self.deleted, self.fingerprint = (
            row,
            us,
            at,
            deleted,
            fingerprint,
        )
        self.new, self.fields, self.created = new, fields, created


def write_batch(
    conn: duckdb.DuckDBPyConnection,
    guru: str,
    pages: Sequence[tuple[Sequence[_Row], str | None]],
    seen: datetime,
    *,
    checked: bool,
) -> list[PageWrite]:
    """Upsert pages inside the caller's transaction (see the rules above); one result per page,
    counted as if each page had been written on its own, in order."""
    ids = list(dict.fromkeys(r[0] for rows, _user in pages for r in rows))
    users = {user for _rows, user in pages if user is not None}
    read = _PAGE_READ_SQL + (_PAGE_READ_USERS_SQL if users else "")
    known: dict[str, _Known] = {}
    before: dict[str, int] = {}  # stored last_used before the batch (an observation already)
    attributed: set[tuple[str, str]] = set()
    shared = False  # another guru has a session with one of these ids
    for kind, sid, owner, row, us, deleted, fingerprint, user_id in conn.execute(
        read, {"ids": ids}
    ).fetchall():
        if owner == guru and kind == "s":
            known[sid] = _Known(row, us, None, deleted, fingerprint)
            before[sid] = us
        elif owner == guru:
            attributed.add((sid, user_id))
        shared = shared or (kind == "s" and owner != guru)
    results: list[PageWrite] = []
    touched: dict[str, _Known] = {}
    refresh: set[str] = set()
    forward = undelete = False
    observe: dict[tuple[str, int], datetime] = {}
    attribute: list[tuple[str, str]] = []
    for rows, user in pages:
        winner: dict[str, int] = {}
        for k, r in enumerate(rows):
            j = winner.get(r[0])
            if j is None or r[1] >= rows[j][1]:
                winner[r[0]] = k
        kept = sorted(winner.values())
        # observations: every distinct (id, last_used) of the raw page not equal to the value
        # stored when the page is written (that one is an observation already)
        for sid, us, at, _f, _c in rows:
            state = known.get(sid)
            if (state is None or state.us != us) and before.get(sid) != us:
                observe.setdefault((sid, us), at)
        new: list[int] = []
        changed: list[int] = []
        for k in kept:
            sid, us, at, fields, created = rows[k]
            fingerprint = listing_fingerprint(fields)
            state = known.get(sid)
            if state is None:
                known[sid] = _Known(
                    None, us, at, False, fingerprint, new=True, fields=fields, created=created
                )
                new.append(k)
                continue
            moved = us > state.us
            if moved or state.deleted:
                changed.append(k)
            if us >= state.us and fingerprint != state.fingerprint:
                state.fields, state.fingerprint = fields, fingerprint
                if not state.new:
                    refresh.add(sid)
            if moved:
                state.us, state.at = us, at
                forward = forward or not state.new
            if not state.new:
                undelete = undelete or state.deleted
                touched[sid] = state
            state.deleted = False
        if user is not None:
            for k in kept:
                key = (rows[k][0], user)
                if key not in attributed:
                    attributed.add(key)
                    attribute.append(key)
        results.append(
            PageWrite(
                len(new),
                len(changed),
                len(kept) - len(new) - len(changed),
                _newest_first(rows, new),
                _newest_first(rows, changed),
            )
        )
    _apply(conn, guru, seen, known, touched, refresh, forward, undelete, shared)
    _observe(conn, guru, seen, observe, checked=checked)
    if attribute:
        conn.execute(
            _PAGE_ATTRIBUTE_SQL,
            {
                "guru": guru,
                "seen": seen,
                "id": [sid for sid, _u in attribute],
                "user": [u for _sid, u in attribute],
            },
        )
    return results


def _apply(
    conn: duckdb.DuckDBPyConnection,
    guru: str,
    seen: datetime,
    known: dict[str, _Known],
    touched: dict[str, _Known],
    refresh: set[str],
    forward: bool,
    undelete: bool,
    shared: bool,
) -> None:
    """The sessions statements of a batch: insert the new, touch the stored, rewrite text."""
    inserted = sorted(sid for sid, state in known.items() if state.new)
    if inserted:
        rows = [known[sid] for sid in inserted]
        conn.execute(
            _PAGE_INSERT_SQL,
            {
                "guru": guru,
                "seen": seen,
                "id": inserted,
                "last_used": [s.at for s in rows],
                **_field_params([s.fields for s in rows]),
                "date_created": [s.created for s in rows],
                "listing_md5": [s.fingerprint for s in rows],
            },
        )
    by = {"key": "rowid", "key_type": "BIGINT"} if shared else {"key": "id", "key_type": "VARCHAR"}

    def keys(sids: list[str]) -> list[Any]:
        return [known[sid].row for sid in sids] if shared else sids

    if touched:
        sids = list(touched)
        sql = _PAGE_TOUCH_SQL.format(
            forward=_PAGE_FORWARD if forward else "", undelete=_UNDELETE if undelete else "", **by
        )
        # a row that did not move keeps its stored last_used (greatest), so any value at most
        # the stored one will do for it: its own read is that
        conn.execute(
            sql,
            {"seen": seen, "key": keys(sids), "last_used": [_instant(touched[s]) for s in sids]},
        )
    if refresh:
        sids = sorted(refresh)
        conn.execute(
            _PAGE_REFRESH_SQL.format(**by),
            {
                "key": keys(sids),
                **_field_params([known[sid].fields for sid in sids]),
                "listing_md5": [known[sid].fingerprint for sid in sids],
            },
        )


def _instant(state: _Known) -> datetime:
    """A touched row's last_used: the newest read of the batch, else (unmoved) the stored one."""
    if state.at is not None:
        return state.at
    return _EPOCH + state.us * _ONE_US


def _field_params(fields: list[tuple[str | None, ...]]) -> dict[str, list[str | None]]:
    """The listing fields of some rows, one list per column, keyed like the SQL."""
    return {name: [f[k] for f in fields] for k, name in enumerate((*LISTING_TEXT, "extra"))}


def _observe(
    conn: duckdb.DuckDBPyConnection,
    guru: str,
    seen: datetime,
    values: dict[tuple[str, int], datetime],
    *,
    checked: bool,
) -> None:
    if not values:
        return
    pairs = sorted(values)
    params = {
        "guru": guru,
        "seen": seen,
        "id": [sid for sid, _us in pairs],
        "last_used": [values[key] for key in pairs],
    }
    if checked:
        conn.execute(_PAGE_OBSERVE_SQL + _IF_NEW, params)
        return
    try:
        conn.execute(_PAGE_OBSERVE_SQL, params)
    except duckdb.ConstraintException as exc:
        raise _ObservationsExist from exc


def _newest_first(rows: Sequence[_Row], positions: list[int]) -> tuple[str, ...]:
    order = sorted(positions, key=lambda k: (-rows[k][1], k))
    return tuple(rows[k][0] for k in order)


# --- bulk loads: the same rules, set-based ----------------------------------------------------

# The frame (deduplicated when an id repeats) classified against what is stored. Only narrow
# stored columns are read, and the stored row's rowid is kept so the updates below touch those
# rows directly (stable within the transaction: this Store is the file's only writer).
_STAGE_SQL = """
CREATE OR REPLACE TEMP TABLE _ga_stage AS
SELECT
    p.*,
    s.rowid AS srow,
    s.id IS NULL AS is_new,
    s.last_used AS stored_last_used,
    coalesce(p.last_used > s.last_used, false) AS forward,
    coalesce(s.deleted, false) AS undelete,
    coalesce(p.last_used >= s.last_used AND p.listing_md5 IS DISTINCT FROM s.listing_md5, false)
        AS refresh
FROM (
    SELECT *, {fingerprint} AS listing_md5
    FROM (
        SELECT id, last_used, guru_type_name, root_question_name, root_question_slug,
               root_question_link, extra::JSON AS extra, date_created, _ord
        FROM _ga_rows
        {dedupe}
    )
) AS p
LEFT JOIN sessions AS s ON s.guru = $guru AND s.id = p.id
"""
_STAGE_DEDUPE = "QUALIFY row_number() OVER (PARTITION BY id ORDER BY last_used DESC, _ord DESC) = 1"

# distinct, new, changed (forward or undeleted), listing rewritten, a value to observe
_STAGE_COUNTS_SQL = """
SELECT count(*),
       count(*) FILTER (WHERE is_new),
       count(*) FILTER (WHERE NOT is_new AND (forward OR undelete)),
       count(*) FILTER (WHERE NOT is_new AND (forward OR refresh)),
       count(*) FILTER (WHERE is_new OR last_used IS DISTINCT FROM stored_last_used)
FROM _ga_stage
"""

# Inserted in key order: DuckDB builds the primary-key index of a large insert at commit, and
# sorted keys make that markedly cheaper than random UUID order.
_INSERT_NEW_SQL = """
INSERT INTO sessions (guru, id, last_used, guru_type_name, root_question_name,
                      root_question_slug, root_question_link, extra, first_seen, last_seen,
                      deleted, deleted_at, date_created, listing_md5)
SELECT $guru, id, last_used, guru_type_name, root_question_name, root_question_slug,
       root_question_link, extra, $seen, $seen, false, NULL, date_created, listing_md5
FROM _ga_stage WHERE is_new ORDER BY id
"""

# Listing values come from a read at least as new as the stored one; last_used never moves back.
_REFRESH_SQL = """
UPDATE sessions SET
    last_used = greatest(sessions.last_used, p.last_used),
    guru_type_name = p.guru_type_name,
    root_question_name = p.root_question_name,
    root_question_slug = p.root_question_slug,
    root_question_link = p.root_question_link,
    extra = p.extra,
    listing_md5 = p.listing_md5
FROM _ga_stage AS p
WHERE sessions.rowid = p.srow AND NOT p.is_new AND (p.forward OR p.refresh)
"""

_TOUCH_SQL = """
UPDATE sessions SET
    last_seen = greatest(sessions.last_seen, $seen), deleted = false, deleted_at = NULL{date_created}
FROM _ga_stage AS p
WHERE sessions.rowid = p.srow AND NOT p.is_new
"""

# Every distinct (id, last_used) of the raw frame (a value equal to the stored last_used is
# already an observation: each write records the value it stores) and of the events frame,
# unless stored; in key order, like the sessions above.
_OBSERVE_SQL = """
INSERT INTO observations (guru, id, last_used, observed_at)
SELECT $guru, id, last_used, $seen
FROM ({values}) AS v
WHERE NOT EXISTS (
    SELECT 1 FROM observations AS o
    WHERE o.guru = $guru AND o.id = v.id AND o.last_used = v.last_used
)
ORDER BY id, last_used
"""
_OBSERVED_ROWS = """
SELECT r.id, r.last_used FROM _ga_rows AS r JOIN _ga_stage AS p ON p.id = r.id
WHERE r.last_used IS DISTINCT FROM p.stored_last_used
"""
_OBSERVED_EVENTS = "SELECT id, last_used FROM _ga_obs"

_ATTRIBUTE_SQL = """
INSERT INTO session_users (guru, id, external_user_id, first_seen)
SELECT $guru, id, external_user_id, $seen
FROM (
    SELECT DISTINCT id, external_user_id FROM _ga_users
    WHERE external_user_id IS NOT NULL AND external_user_id <> ''
) AS u
WHERE NOT EXISTS (
    SELECT 1 FROM session_users AS s
    WHERE s.guru = $guru AND s.id = u.id AND s.external_user_id = u.external_user_id
)
ORDER BY id, external_user_id
"""


def _upsert(
    conn: duckdb.DuckDBPyConnection,
    guru: str,
    seen: datetime,
    *,
    dedupe: bool,
    with_date_created: bool,
) -> tuple[PageWrite, bool]:
    """The sessions part of a bulk load over the registered ``_ga_rows``, leaving the
    classified ``_ga_stage`` behind; statements that would change nothing are skipped.
    Returns the session counts and whether any row needs an observation."""
    stage = _STAGE_SQL.format(
        fingerprint=LISTING_FINGERPRINT_SQL, dedupe=_STAGE_DEDUPE if dedupe else ""
    )
    conn.execute(stage, {"guru": guru})
    row = first_row(conn.execute(_STAGE_COUNTS_SQL))
    assert row is not None
    distinct, new, changed, rewrite, observe = (int(v) for v in row)
    if new:
        conn.execute(_INSERT_NEW_SQL, {"guru": guru, "seen": seen})
    if rewrite:
        conn.execute(_REFRESH_SQL)
    if distinct - new:
        extra_set = ", date_created = coalesce(p.date_created, sessions.date_created)"
        touch = _TOUCH_SQL.format(date_created=extra_set if with_date_created else "")
        conn.execute(touch, {"seen": seen})
    # a repeated id may carry values other than its winning row's: observe those too
    return PageWrite(new, changed, distinct - new - changed), bool(observe) or dedupe


class Sessions:
    """The sessions part of one cache file: listing pages and bulk loads."""

    def __init__(self, db: Database, clock: Callable[[], datetime]) -> None:
        self._db = db
        self._clock = clock

    def write_pages(
        self,
        guru: str,
        pages: Sequence[ListedPage],
        seen_at: datetime,
        state: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> list[PageWrite]:
        """Upsert listing pages and the listings' sync state in one transaction.

        The sync's path: rows are the client's typed sessions, taken as they are (no frame,
        no validation: their one producer is our client). Each page gets the ``write_page``
        rules and its own ``PageWrite``, counted as if the pages were written one by one in
        order; ``seen_at`` stamps them all. ``state`` maps listing keys to ``save_state``
        fields, upserted after the rows, so a pass's position never runs ahead of its rows.
        """
        rows = [([_typed_row(r) for r in page.rows], page.external_user_id) for page in pages]
        n = sum(len(r) for r, _user in rows)
        updates = [
            state_statement(guru, listing, dict(fields))
            for listing, fields in (state or {}).items()
        ]
        what = f"writing {len(rows)} page(s) of {n} sessions for guru {guru!r}"
        queued = [page.queue_new for page in pages]
        return self._write(what, guru, rows, seen_at, updates, queued)

    def write_page(
        self,
        guru: str,
        rows: pd.DataFrame,
        seen_at: datetime,
        *,
        external_user_id: str | None = None,
    ) -> PageWrite:
        """Upsert one listing page given as a DataFrame, in one transaction.

        Rows are deduplicated by id first (greatest ``last_used`` wins). Sessions get the
        current listing values, ``last_seen = seen_at``, their deleted flag cleared and
        ``first_seen`` kept; the stored ``last_used`` never moves back. Every distinct
        (id, last_used) becomes an observation; with ``external_user_id`` every id is
        attributed to that user. An empty frame writes nothing. The frame is validated.
        """
        check_guru(guru)
        seen = as_utc(seen_at, "seen_at")
        user = check_user(external_user_id)
        require(rows, LISTING_COLUMNS, "rows")
        if rows.empty:
            return PageWrite(0, 0, 0)
        page = rows_from_frame(rows, "rows")
        what = f"writing a page of {len(rows)} sessions for guru {guru!r}"
        return self._write(what, guru, [(page, user)], seen, [])[0]

    def _write(
        self,
        what: str,
        guru: str,
        pages: list[tuple[list[_Row], str | None]],
        seen: datetime,
        updates: list[tuple[str, list[Any]]],
        queued: Sequence[bool] = (),
    ) -> list[PageWrite]:
        for checked in (False, True):
            try:
                with self._db.transaction(what) as conn:
                    written = write_batch(conn, guru, pages, seen, checked=checked)
                    new = [
                        sid for w, q in zip(written, queued, strict=False) if q for sid in w.new_ids
                    ]
                    queue(conn, guru, new)
                    for sql, params in updates:
                        conn.execute(sql, params)
                return written
            except _ObservationsExist:
                continue
        raise AssertionError("unreachable: the checked write never raises _ObservationsExist")

    def load_frame(
        self,
        guru: str,
        sessions_df: pd.DataFrame,
        observations_df: pd.DataFrame | None = None,
        users_df: pd.DataFrame | None = None,
        *,
        seen_at: datetime | None = None,
    ) -> LoadResult:
        """Bulk-load whole frames with the same upsert rules as ``write_page`` (no HTTP).

        ``sessions_df`` needs ``id`` and ``last_used``; the other listing columns and
        ``date_created`` are optional. ``observations_df`` adds activity instants (columns
        ``id`` and ``last_used`` or ``ts``, e.g. ``synthetic.message_events``). ``users_df``
        (``id``, ``external_user_id``; empty user ids mean unattributed and are not stored)
        attributes sessions. One transaction for everything.
        """
        check_guru(guru)
        require(sessions_df, ("id", "last_used"), "sessions_df")
        seen = as_utc(self._clock() if seen_at is None else seen_at, "seen_at")
        page = _listing_frame(sessions_df, "sessions_df")
        observations = None
        if observations_df is not None:
            require(observations_df, ("id",), "observations_df")
            column = next((c for c in ("last_used", "ts") if c in observations_df.columns), None)
            if column is None:
                raise ConfigError(
                    "observations_df lacks a time column: pass 'last_used' (or 'ts') with tz-aware UTC values"
                )
            observations = pd.DataFrame(
                {
                    "id": id_column(observations_df, "id", "observations_df"),
                    "last_used": utc_column(
                        observations_df, column, "observations_df", required=True
                    ),
                }
            )
        users = None
        if users_df is not None:
            require(users_df, ("id", "external_user_id"), "users_df")
            users = pd.DataFrame(
                {
                    "id": id_column(users_df, "id", "users_df"),
                    "external_user_id": text_column(users_df, "external_user_id", "users_df"),
                }
            )
        frames = {"_ga_rows": page, "_ga_obs": observations, "_ga_users": users}
        what = f"loading {len(page)} sessions for guru {guru!r}"
        gs = {"guru": guru, "seen": seen}
        with self._db.transaction(what, frames) as conn:
            write, observed, attributed = PageWrite(0, 0, 0), 0, 0
            values = []
            if len(page):
                write, observe = _upsert(
                    conn,
                    guru,
                    seen,
                    dedupe=not page["id"].is_unique,
                    with_date_created=bool(page["date_created"].notna().any()),
                )
                values += [_OBSERVED_ROWS] if observe else []
            if observations is not None and len(observations):
                values.append(_OBSERVED_EVENTS)
            if values:
                sql = _OBSERVE_SQL.format(values=" UNION ".join(values))
                observed = count(conn.execute(sql, gs))
            if len(page):
                conn.execute("DROP TABLE _ga_stage")
            if users is not None and len(users):
                attributed = count(conn.execute(_ATTRIBUTE_SQL, gs))
        return LoadResult(write.new, write.changed, write.unchanged, observed, attributed)

    # --- deletions ------------------------------------------------------------------------

    def unseen_since(self, guru: str, since: datetime) -> pd.DataFrame:
        """Non-deleted sessions not seen since ``since``: after a complete full pass that
        started at ``since`` these are the deletion candidates."""
        check_guru(guru)
        cutoff = as_utc(since, "since")
        with self._db.reader() as conn:
            return conn.execute(
                f"SELECT {SESSION_COLUMNS} FROM sessions "
                "WHERE guru = ? AND NOT deleted AND last_seen < ? "
                "ORDER BY last_used DESC, id",
                [guru, cutoff],
            ).df()

    def mark_deleted(self, guru: str, ids: Iterable[str], at: datetime) -> int:
        """Flag sessions deleted (rows are kept); returns how many were not flagged before."""
        check_guru(guru)
        when = as_utc(at, "at")
        id_list = list(ids)
        if not all(isinstance(i, str) for i in id_list):
            raise ConfigError("ids must be session id strings")
        if not id_list:
            return 0
        with self._db.transaction(f"marking {len(id_list)} sessions of {guru!r} deleted") as conn:
            return count(
                conn.execute(
                    "UPDATE sessions SET deleted = true, deleted_at = ? "
                    "WHERE guru = ? AND NOT deleted AND id IN (SELECT unnest(?::VARCHAR[]))",
                    [when, guru, id_list],
                )
            )
