"""Small hand-computable caches for the analytics tests (frames, plots, reports).

The schema comes from ``guru_analytics.store.SCHEMA_V1``; rows are inserted with plain SQL so
these tests do not depend on the store's write path. The expected numbers in the tests are
worked out by hand from the data below (see the comments in ``MAIN``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb

from guru_analytics.store import SCHEMA_V1


def make_con(path: str | Path = ":memory:") -> duckdb.DuckDBPyConnection:
    """A DuckDB connection (in memory or a file) holding the empty cache schema."""
    con = duckdb.connect(str(path))
    con.execute("SET TimeZone='UTC'")
    con.execute(SCHEMA_V1)
    return con


def add_sessions(con: duckdb.DuckDBPyConnection, guru: str, rows: list[dict[str, Any]]) -> None:
    """Insert sessions: each row has ``id``, ``obs`` (UTC ISO strings of last_used values
    seen), optional ``title``, ``users``, ``deleted``, ``messages`` (dicts with ``ts`` and
    optional ``source``, ``trust``, ``vote``)."""
    for row in rows:
        obs = sorted(row["obs"])
        last = obs[-1]
        con.execute(
            """INSERT INTO sessions (guru, id, last_used, guru_type_name, root_question_name,
                   root_question_slug, root_question_link, first_seen, last_seen, deleted,
                   deleted_at)
               VALUES (?, ?, ?::TIMESTAMPTZ, 'Guru', ?, ?, ?, ?::TIMESTAMPTZ, ?::TIMESTAMPTZ,
                       ?, ?::TIMESTAMPTZ)""",
            [
                guru,
                row["id"],
                last,
                row.get("title", f"Question {row['id']}"),
                f"slug-{row['id']}",
                f"https://gurubase.io/g/{guru}/{row['id']}",
                obs[0],
                last,
                bool(row.get("deleted", False)),
                last if row.get("deleted") else None,
            ],
        )
        for ts in obs:
            con.execute(
                "INSERT INTO observations VALUES (?, ?, ?::TIMESTAMPTZ, ?::TIMESTAMPTZ)",
                [guru, row["id"], ts, ts],
            )
        for user in row.get("users", []):
            con.execute(
                "INSERT INTO session_users VALUES (?, ?, ?, ?::TIMESTAMPTZ)",
                [guru, row["id"], user, obs[0]],
            )
        for i, msg in enumerate(row.get("messages", [])):
            con.execute(
                """INSERT INTO messages (guru, session_id, id, slug, parent_slug, question,
                       date_created, source, trust_score, user_vote)
                   VALUES (?, ?, ?, ?, ?, 'q', ?::TIMESTAMPTZ, ?, ?, ?)""",
                [
                    guru,
                    row["id"],
                    f"{row['id']}-m{i}",
                    f"{row['id']}-m{i}",
                    None if i == 0 else f"{row['id']}-m0",
                    msg["ts"],
                    msg.get("source", "USER"),
                    msg.get("trust"),
                    msg.get("vote"),
                ],
            )


# Guru "g", April 2025 (UTC). Mondays: Apr 7, 14, 21, 28; Apr 13 is a Sunday.
# Events per session (messages that coincide with an observation count once):
#   a1 alice          Apr 7 10:00, Apr 8 10:00
#   a2 alice          Apr 13 18:00 (Sun), Apr 14 09:00
#   b1 bob            Apr 7 11:50 (message only), Apr 7 12:00 (observation + message)
#   b2 bob            Apr 28 08:00
#   c1 alice + carol  Apr 8 15:00, Apr 21 15:00
#   e1 erin           Apr 15 10:00, Apr 22 10:00
#   u1, u2 nobody     Apr 9 20:00 / Apr 9 21:00
#   d1 dave DELETED   Apr 12 10:00
MAIN: list[dict[str, Any]] = [
    {"id": "a1", "users": ["alice"], "title": "How to INSTALL the CLI",
     "obs": ["2025-04-07T10:00:00Z", "2025-04-08T10:00:00Z"]},
    {"id": "a2", "users": ["alice"], "title": '=HYPERLINK("http://evil.example")',
     "obs": ["2025-04-13T18:00:00Z", "2025-04-14T09:00:00Z"]},
    {"id": "b1", "users": ["bob"], "title": "+1 for tabs", "obs": ["2025-04-07T12:00:00Z"],
     "messages": [
         {"ts": "2025-04-07T11:50:00Z", "source": "USER", "trust": 80, "vote": "upvote"},
         {"ts": "2025-04-07T12:00:00Z", "source": "API", "trust": 60},
     ]},
    {"id": "b2", "users": ["bob"], "title": "-rf everything", "obs": ["2025-04-28T08:00:00Z"]},
    {"id": "c1", "users": ["alice", "carol"], "title": "@mention, \"quoted\"\nand newline",
     "obs": ["2025-04-08T15:00:00Z", "2025-04-21T15:00:00Z"]},
    {"id": "e1", "users": ["erin"], "title": "\tTabbed café ünïcode",
     "obs": ["2025-04-15T10:00:00Z", "2025-04-22T10:00:00Z"]},
    {"id": "u1", "title": "Install on Windows", "obs": ["2025-04-09T20:00:00Z"]},
    {"id": "u2", "title": "Plain question", "obs": ["2025-04-09T21:00:00Z"]},
    {"id": "d1", "users": ["dave"], "title": "Deleted install question", "deleted": True,
     "obs": ["2025-04-12T10:00:00Z"]},
]  # fmt: skip

# Guru "dst": events around the 2025 DST changes (all sessions unattributed).
DST: list[dict[str, Any]] = [
    # Berlin spring forward, 2025-03-30 02:00 CET -> 03:00 CEST (01:00Z)
    {"id": "p1", "obs": ["2025-03-29T12:00:00Z"]},  # Sat 13:00 CET
    {"id": "p2", "obs": ["2025-03-29T23:30:00Z"]},  # Sun 00:30 CET
    {"id": "p3", "obs": ["2025-03-30T21:30:00Z"]},  # Sun 23:30 CEST
    {"id": "p4", "obs": ["2025-03-30T22:30:00Z"]},  # Mon 00:30 CEST
    # Berlin fall back, 2025-10-26 03:00 CEST -> 02:00 CET (01:00Z)
    {"id": "f1", "obs": ["2025-10-25T22:30:00Z"]},  # Sun 00:30 CEST
    {"id": "f2", "obs": ["2025-10-26T00:30:00Z"]},  # Sun 02:30 CEST (first 02:30)
    {"id": "f3", "obs": ["2025-10-26T01:30:00Z"]},  # Sun 02:30 CET (second 02:30)
    {"id": "f4", "obs": ["2025-10-26T22:59:00Z"]},  # Sun 23:59 CET
    {"id": "f5", "obs": ["2025-10-26T23:00:00Z"]},  # Mon 00:00 CET
    # New York spring forward, 2025-03-09 02:00 EST -> 03:00 EDT (07:00Z)
    {"id": "n1", "obs": ["2025-03-09T04:30:00Z"]},  # Sat Mar 8 23:30 EST
    {"id": "n2", "obs": ["2025-03-09T06:30:00Z"]},  # Sun 01:30 EST
    {"id": "n3", "obs": ["2025-03-09T07:30:00Z"]},  # Sun 03:30 EDT
    {"id": "n4", "obs": ["2025-03-10T03:59:00Z"]},  # Sun 23:59 EDT
    {"id": "n5", "obs": ["2025-03-10T04:00:00Z"]},  # Mon Mar 10 00:00 EDT
]

# Guru "m": message-level data (binge length, sources, votes).
MSG: list[dict[str, Any]] = [
    {"id": "x1", "users": ["alice"], "obs": ["2025-06-02T10:00:00Z"],
     "messages": [{"ts": "2025-06-02T10:00:00Z", "source": "USER", "trust": 80, "vote": "upvote"}]},
    {"id": "x2", "users": ["bob"], "obs": ["2025-06-03T09:00:00Z"],
     "messages": [
         {"ts": "2025-06-02T11:00:00Z", "source": "API", "trust": 60},
         {"ts": "2025-06-02T11:05:00Z", "source": "API", "trust": 40, "vote": "downvote"},
         {"ts": "2025-06-03T09:00:00Z", "source": "USER", "trust": None},
     ]},
    {"id": "x3", "obs": ["2025-06-04T08:05:00Z"],
     "messages": [
         {"ts": f"2025-06-04T08:0{i}:00Z", "source": "WIDGET QUESTION", "trust": 100,
          "vote": "upvote" if i == 5 else None}
         for i in range(6)
     ]},
    {"id": "x4", "users": ["bob"], "obs": ["2025-06-03T12:00:00Z"]},
]  # fmt: skip


def main_cache(path: str | Path = ":memory:") -> duckdb.DuckDBPyConnection:
    """Gurus "g" (MAIN), "dst" (DST) and "m" (MSG) in one cache."""
    con = make_con(path)
    add_sessions(con, "g", MAIN)
    add_sessions(con, "dst", DST)
    add_sessions(con, "m", MSG)
    return con
