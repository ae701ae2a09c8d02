"""The local DuckDB cache: schema, migrations, bulk upserts, runs and sync state.

One file holds many gurus. Every timestamp column is TIMESTAMPTZ and every connection this
module opens runs with ``TimeZone='UTC'`` so values come back tz-aware UTC.

Tables (schema version ``SCHEMA_VERSION``):

- ``meta(key, value)``: ``schema_version``.
- ``sessions``: one row per (guru, id) with the current listing values, first/last seen
  (client clock), the deleted flag, and ``date_created`` once messages were fetched.
- ``observations``: every distinct ``last_used`` ever seen per session, so activity over time
  survives later syncs overwriting ``sessions.last_used``.
- ``session_users``: which external user a session belongs to (from filtered listings).
- ``messages`` / ``message_fetches``: Get Session enrichment (opt-in).
- ``sync_runs``: one row per ``sync()`` call with its request and session counts.
- ``sync_state``: per listing (guru-wide, per user, per search) the committed watermark and
  the pass in progress, so an interrupted sync resumes.
"""

from __future__ import annotations

SCHEMA_VERSION = 1

# Listing keys in sync_state / sync_runs: '' is the guru-wide listing.
UNATTRIBUTED = "(unattributed)"

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
