"""The cache's schema: table definitions, the listing fingerprint and the migration steps.

Tables (schema version ``SCHEMA_VERSION``):

- ``meta(key, value)``: ``schema_version``.
- ``sessions``: one row per (guru, id) with the current listing values, first/last seen
  (client clock), the deleted flag, ``date_created`` once messages were fetched, and (v2)
  ``listing_md5``, a fingerprint of the listing text (internal; rows are never deleted).
  (v3) A second index on ``id`` alone: DuckDB 2.0.1 never scans a multi-column primary key,
  so it is what lets a page write find its 30 rows without reading the whole table.
- ``observations``: every distinct ``last_used`` ever seen per session, so activity over time
  survives later syncs overwriting ``sessions.last_used``.
- ``session_users``: which external user a session belongs to (from filtered listings);
  (v3) indexed on ``id`` for the same reason.
- ``messages`` / ``message_fetches``: Get Session enrichment (opt-in).
- ``sync_runs``: one row per ``sync()`` call with its request and session counts, and (v2)
  the PID and host that ran it.
- ``sync_state``: per listing (guru-wide, per user, per search) the committed watermark and
  the pass in progress, so an interrupted sync resumes.
- (v4) ``questions`` / ``question_exports``: rows of Export Analytics (every question of an
  interval in one request) and the ledger of exports; see ``_questions``.
- (v5) ``unattributed``: sessions no user listing has attributed yet, per guru: ``pending``
  (new in the guru-wide listing, not yet swept through the given users' listings) or
  ``proven`` (the last sweep read every given user's listing deep enough and none showed
  it), with ``checked_at``; and ``sync_runs.listings_skipped`` (user listings a run did not
  read because the guru-wide listing proved them idle). See ``_unattributed``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence

import duckdb

from ..errors import CacheSchemaError, ConfigError
from ..interrupts import is_interrupt
from ._connection import first_row, one_line

SCHEMA_VERSION = 5


SCHEMA_V1 = """
CREATE TABLE IF NOT EXISTS meta (
    key VARCHAR PRIMARY KEY,
    value VARCHAR NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (
    guru VARCHAR NOT NULL,
    id VARCHAR NOT NULL,
    last_used TIMESTAMPTZ NOT NULL,
    guru_type_name VARCHAR,
    root_question_name VARCHAR,
    root_question_slug VARCHAR,
    root_question_link VARCHAR,
    extra JSON,
    first_seen TIMESTAMPTZ NOT NULL,
    last_seen TIMESTAMPTZ NOT NULL,
    deleted BOOLEAN NOT NULL DEFAULT false,
    deleted_at TIMESTAMPTZ,
    date_created TIMESTAMPTZ,
    PRIMARY KEY (guru, id)
);
CREATE TABLE IF NOT EXISTS observations (
    guru VARCHAR NOT NULL,
    id VARCHAR NOT NULL,
    last_used TIMESTAMPTZ NOT NULL,
    observed_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (guru, id, last_used)
);
CREATE TABLE IF NOT EXISTS session_users (
    guru VARCHAR NOT NULL,
    id VARCHAR NOT NULL,
    external_user_id VARCHAR NOT NULL,
    first_seen TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (guru, id, external_user_id)
);
CREATE TABLE IF NOT EXISTS messages (
    guru VARCHAR NOT NULL,
    session_id VARCHAR NOT NULL,
    id VARCHAR NOT NULL,
    slug VARCHAR,
    parent_slug VARCHAR,
    question VARCHAR,
    user_question VARCHAR,
    date_created TIMESTAMPTZ NOT NULL,
    date_updated TIMESTAMPTZ,
    source VARCHAR,
    trust_score INTEGER,
    user_vote VARCHAR,
    answer VARCHAR,
    n_references INTEGER,
    extra JSON,
    PRIMARY KEY (guru, session_id, id)
);
CREATE TABLE IF NOT EXISTS message_fetches (
    guru VARCHAR NOT NULL,
    session_id VARCHAR NOT NULL,
    fetched_last_used TIMESTAMPTZ,
    fetched_at TIMESTAMPTZ NOT NULL,
    status VARCHAR NOT NULL,
    PRIMARY KEY (guru, session_id)
);
CREATE SEQUENCE IF NOT EXISTS sync_run_ids START 1;
CREATE TABLE IF NOT EXISTS sync_runs (
    run_id BIGINT PRIMARY KEY DEFAULT nextval('sync_run_ids'),
    guru VARCHAR NOT NULL,
    mode VARCHAR NOT NULL,
    listings VARCHAR,
    search_query VARCHAR,
    started_at TIMESTAMPTZ NOT NULL,
    ended_at TIMESTAMPTZ,
    requests INTEGER NOT NULL DEFAULT 0,
    throttled INTEGER NOT NULL DEFAULT 0,
    retries INTEGER NOT NULL DEFAULT 0,
    pages INTEGER NOT NULL DEFAULT 0,
    sessions_new INTEGER NOT NULL DEFAULT 0,
    sessions_changed INTEGER NOT NULL DEFAULT 0,
    sessions_deleted INTEGER NOT NULL DEFAULT 0,
    messages_fetched INTEGER NOT NULL DEFAULT 0,
    messages_remaining INTEGER NOT NULL DEFAULT 0,
    outcome VARCHAR NOT NULL,
    error VARCHAR
);
CREATE TABLE IF NOT EXISTS sync_state (
    guru VARCHAR NOT NULL,
    listing VARCHAR NOT NULL,
    watermark TIMESTAMPTZ,
    completed_at TIMESTAMPTZ,
    pass_mode VARCHAR,
    pass_started_at TIMESTAMPTZ,
    pass_top TIMESTAMPTZ,
    pass_next_page INTEGER,
    PRIMARY KEY (guru, listing)
);
"""
# The v2 listing fingerprint (kept for the v2 step; v3 replaced it with LISTING_FINGERPRINT_SQL).
_LISTING_MD5_V2_SQL = (
    "md5_number_lower(json_array(guru_type_name, root_question_name, root_question_slug, "
    "root_question_link, extra)::VARCHAR)"
)

# v2: who ran each sync (so a run a killed process left 'running' is told apart from one in
# progress in another process, which releases the file while it waits), and the listing
# fingerprint, backfilled for rows written by v1.
SCHEMA_V2 = f"""
ALTER TABLE sync_runs ADD COLUMN pid INTEGER;
ALTER TABLE sync_runs ADD COLUMN host VARCHAR;
ALTER TABLE sessions ADD COLUMN listing_md5 UBIGINT;
UPDATE sessions SET listing_md5 = {_LISTING_MD5_V2_SQL};
"""

# The listing fingerprint (column listing_md5): one short value per session, so a page write can
# tell whether the listing text changed by reading one narrow column instead of five wide ones.
# It is the first 64 bits of the md5 of the listing fields, each written as 'N' (NULL) or
# 'S<bytes>:<text>' and joined by '|', so NULL stays apart from '' and no field can run into the
# next. Python computes it for page writes (``listing_fingerprint``, no page data sent to DuckDB
# just to hash it) and SQL for bulk loads and the v3 backfill; tests hold the two equal.
_FINGERPRINT_FIELDS = (
    "guru_type_name",
    "root_question_name",
    "root_question_slug",
    "root_question_link",
    "extra::VARCHAR",
)
LISTING_FINGERPRINT_SQL = (
    "('0x' || md5("
    + " || '|' || ".join(
        f"CASE WHEN {f} IS NULL THEN 'N' ELSE 'S' || strlen({f}) || ':' || {f} END"
        for f in _FINGERPRINT_FIELDS
    )
    + ")[1:16])::UBIGINT"
)


def listing_fingerprint(values: Sequence[str | None]) -> int:
    """``LISTING_FINGERPRINT_SQL`` of one session's listing fields, computed in Python.

    ``values``: guru_type_name, root_question_name, root_question_slug, root_question_link and
    extra (JSON text), each str or None."""
    text = "|".join(
        "N" if v is None else f"S{len(v.encode('utf-8', 'surrogatepass'))}:{v}" for v in values
    )
    digest = hashlib.md5(text.encode("utf-8", "surrogatepass"), usedforsecurity=False)
    return int(digest.hexdigest()[:16], 16)


# v3: single-column indexes on id, so page writes look their rows up instead of scanning
# (DuckDB 2.0.1 uses an ART index for a scan only when it covers one column, and turns
# ON CONFLICT into a MERGE that scans the target), and the fingerprint above.
SCHEMA_V3 = f"""
CREATE INDEX IF NOT EXISTS sessions_by_id ON sessions (id);
CREATE INDEX IF NOT EXISTS session_users_by_id ON session_users (id);
UPDATE sessions SET listing_md5 = {LISTING_FINGERPRINT_SQL};
"""

# v4 (issue 15): the rows of Export Analytics and the ledger of exports. A row has no id in
# the file, so its key is a fingerprint of its fields (``_questions.question_row_key``) plus
# its occurrence among identical rows of one export; see ``_questions`` for the overlap rule.
SCHEMA_V4 = """
CREATE TABLE IF NOT EXISTS questions (
    guru VARCHAR NOT NULL,
    row_key UBIGINT NOT NULL,
    occurrence INTEGER NOT NULL,
    kind VARCHAR NOT NULL,
    asked_at TIMESTAMPTZ NOT NULL,
    source VARCHAR NOT NULL,
    question VARCHAR NOT NULL,
    trust_score DOUBLE,
    follow_up BOOLEAN,
    url VARCHAR,
    session_id VARCHAR,
    question_slug VARCHAR,
    extra JSON,
    first_exported TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (guru, row_key, occurrence)
);
CREATE SEQUENCE IF NOT EXISTS question_export_ids START 1;
CREATE TABLE IF NOT EXISTS question_exports (
    export_id BIGINT PRIMARY KEY DEFAULT nextval('question_export_ids'),
    guru VARCHAR NOT NULL,
    exported_at TIMESTAMPTZ NOT NULL,
    interval VARCHAR NOT NULL,
    covers_from TIMESTAMPTZ,
    scheme VARCHAR NOT NULL,
    questions INTEGER NOT NULL,
    unanswered INTEGER NOT NULL,
    new_rows INTEGER NOT NULL
);
"""

# v5 (issue 13): the attribution queue of the guru-wide change feed; see ``_unattributed``.
SCHEMA_V5 = """
CREATE TABLE IF NOT EXISTS unattributed (
    guru VARCHAR NOT NULL,
    id VARCHAR NOT NULL,
    state VARCHAR NOT NULL,
    checked_at TIMESTAMPTZ,
    PRIMARY KEY (guru, id)
);
ALTER TABLE sync_runs ADD COLUMN listings_skipped INTEGER DEFAULT 0;
"""

Migration = tuple[int, "str | Callable[[duckdb.DuckDBPyConnection], None]"]
"""``(version, step)``: ``step`` is SQL text (may hold several statements) or a callable
taking the open connection. Each step runs in its own transaction together with the
``meta.schema_version`` bump, so a failed upgrade leaves the previous version intact."""

MIGRATIONS: tuple[Migration, ...] = (
    (1, SCHEMA_V1),
    (2, SCHEMA_V2),
    (3, SCHEMA_V3),
    (4, SCHEMA_V4),
    (5, SCHEMA_V5),
)

LISTING_COLUMNS = (
    "id",
    "last_used",
    "guru_type_name",
    "root_question_name",
    "root_question_slug",
    "root_question_link",
    "extra",
)
LISTING_TEXT = ("guru_type_name", "root_question_name", "root_question_slug", "root_question_link")

MESSAGE_COLUMNS = (
    "id",
    "slug",
    "parent_slug",
    "question",
    "user_question",
    "date_created",
    "date_updated",
    "source",
    "trust_score",
    "user_vote",
    "answer",
    "n_references",
    "extra",
)
MESSAGE_TEXT = (
    "slug",
    "parent_slug",
    "question",
    "user_question",
    "source",
    "user_vote",
    "answer",
)
MESSAGE_INT = ("trust_score", "n_references")


def check_migrations(migrations: Iterable[Migration]) -> tuple[Migration, ...]:
    steps = tuple(migrations)
    versions = [v for v, _ in steps]
    if (
        not steps
        or any(not isinstance(v, int) or v < 1 for v in versions)
        or versions != sorted(set(versions))
    ):
        raise ConfigError(
            "migrations must be (version, step) pairs with strictly increasing versions from 1"
        )
    for version, step in steps:
        if not (isinstance(step, str) or callable(step)):
            raise ConfigError(f"migration {version} must be SQL text or a callable(connection)")
    return steps


def read_version(conn: duckdb.DuckDBPyConnection, path: str) -> int:
    """0 for an empty database; raise if the file is some other DuckDB database."""
    tables = {
        row[0]
        for row in conn.execute(
            "SELECT table_name FROM duckdb_tables() "
            "WHERE database_name = current_database() AND NOT temporary"
        ).fetchall()
    }
    if not tables:
        return 0
    not_ours = CacheSchemaError(
        f"{path} is a DuckDB database but not a guru_analytics cache: pass a different --db path"
    )
    if "meta" not in tables:
        raise not_ours
    row = first_row(conn.execute("SELECT value FROM meta WHERE key = 'schema_version'"))
    if row is None:
        raise not_ours
    try:
        return int(row[0])
    except ValueError:
        raise not_ours from None


def check_not_newer(version: int, target: int, path: str) -> None:
    """Refuse a cache written by a newer package (its schema is unknown here)."""
    if version > target:
        raise CacheSchemaError(
            f"cache {path} has schema version {version}, written by a newer "
            f"guru_analytics (this one reads up to {target}); upgrade the package "
            "or pass a different --db"
        )


def upgrade(
    conn: duckdb.DuckDBPyConnection,
    path: str,
    migrations: Sequence[Migration],
    rollback: Callable[[duckdb.DuckDBPyConnection, BaseException], None],
) -> None:
    """Apply every migration step above the stored version, one transaction each."""
    current = read_version(conn, path)
    check_not_newer(current, migrations[-1][0], path)
    for version, step in migrations:
        if version <= current:
            continue
        conn.execute("BEGIN TRANSACTION")
        try:
            if isinstance(step, str):
                conn.execute(step)
            else:
                step(conn)
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('schema_version', ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [str(version)],
            )
            conn.execute("COMMIT")
        except BaseException as exc:
            rollback(conn, exc)
            if isinstance(exc, duckdb.Error) and not is_interrupt(exc):
                raise CacheSchemaError(
                    f"upgrading cache {path} to schema version {version} failed and "
                    f"was rolled back to version {current} ({one_line(exc)}): report this "
                    "bug; the cache is unchanged"
                ) from exc
            raise
        current = version
