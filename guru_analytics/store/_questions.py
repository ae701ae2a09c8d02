"""Export Analytics answers in the cache: exported questions and the ledger of exports.

One export (``wire.QuestionExport``, every question of an interval in one request) is stored
by ``Questions.write_questions`` in one transaction: the rows not stored before, and one row
in ``question_exports`` (also when empty, so the next sync asks for a short interval).
``last_question_export`` reads the ledger back; the sync chooses its next interval from it.

Idempotency. A row of the export has no id. Its key is ``question_row_key`` (kind, minute,
source, text, URL, follow-up flag) plus its occurrence number among identical rows of the
same export (0, 1, ...). A row whose (key, occurrence) is stored already is ignored, so a
re-export of an overlapping interval adds nothing, and N identical rows of one minute are
stored N times (the most any export showed), never 2N. This needs no clock agreement with
the server: the interval's edges never decide what is kept. Linked rows are unique by
(minute, URL) anyway; the occurrence number matters for the unlinked ones (first questions
of web sessions share their original's URL; unable-to-answer rows have no URL). A row
stored once is kept even if a later export no longer holds it (its session was deleted, or
it fell out of the 12 months): the cache only grows, as observations do.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import duckdb
import pandas as pd

from ._connection import Database, count, first_row
from ._schema import listing_fingerprint
from ._validate import UTC_US, as_utc, check_guru, opt_utc, py_utc

if TYPE_CHECKING:
    from ..wire import QuestionExport

QUESTION_KINDS = ("answered", "unanswered")
_QUESTION_FRAME_COLUMNS = (
    "row_key", "occurrence", "kind", "asked_at", "source", "question", "trust_score",
    "follow_up", "url", "session_id", "question_slug", "extra",
)  # fmt: skip


@dataclass(frozen=True)
class QuestionWrite:
    """What ``write_questions`` stored: the export's rows by kind, how many of the answered
    ones link to a session, and how many rows (of both kinds) were not stored before."""

    questions: int
    unanswered: int
    linked: int
    new: int


@dataclass(frozen=True)
class QuestionExportRecord:
    """One row of the export ledger (``question_exports``); times are tz-aware UTC."""

    guru: str
    exported_at: datetime
    interval: str
    covers_from: datetime | None
    scheme: str
    questions: int
    unanswered: int
    new: int


def question_row_key(
    kind: str,
    asked_at: datetime,
    source: str,
    question: str,
    url: str | None,
    follow_up: bool | None,
) -> int:
    """The fingerprint of an export row's identity: the listing fingerprint's encoding (first
    64 bits of the md5 of the fields, ``N`` for None or ``S<bytes>:<text>``, joined by ``|``)
    over kind, UTC minute, source, text, URL and follow-up flag. The trust score is left out:
    it is a value of the row, not its identity."""
    minute = asked_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M")
    flag = None if follow_up is None else ("1" if follow_up else "0")
    return listing_fingerprint((kind, minute, source, question, url, flag))


def question_frame(export: QuestionExport) -> pd.DataFrame:
    """The rows of a ``wire.QuestionExport`` as the ``questions`` table's columns (answered
    rows first, then unanswered), with ``row_key`` and ``occurrence``; ConfigError on rows
    that are not tz-aware."""
    cols: dict[str, list[Any]] = {c: [] for c in _QUESTION_FRAME_COLUMNS}
    seen: Counter[int] = Counter()

    def add(kind: str, row: Any, i: int, answered: bool) -> None:
        at = as_utc(row.asked_at, f"{kind} row {i} asked_at")
        url = row.url if answered else None
        follow = bool(row.follow_up) if answered else None
        key = question_row_key(kind, at, row.source, row.question, url, follow)
        cols["row_key"].append(key)
        cols["occurrence"].append(seen[key])
        seen[key] += 1
        cols["kind"].append(kind)
        cols["asked_at"].append(at)
        cols["source"].append(row.source)
        cols["question"].append(row.question)
        cols["trust_score"].append(row.trust_score if answered else None)
        cols["follow_up"].append(follow)
        cols["url"].append(url)
        cols["session_id"].append(row.session_id if answered else None)
        cols["question_slug"].append(row.question_slug if answered else None)
        cols["extra"].append(json.dumps(row.extra, sort_keys=True) if row.extra else None)

    for i, row in enumerate(export.questions):
        add("answered", row, i, True)
    for i, missed in enumerate(export.unanswered):
        add("unanswered", missed, i, False)
    return pd.DataFrame(
        {
            "row_key": pd.Series(cols["row_key"], dtype="uint64"),
            "occurrence": pd.Series(cols["occurrence"], dtype="int32"),
            "kind": pd.Series(cols["kind"], dtype=object),
            "asked_at": pd.Series(pd.to_datetime(cols["asked_at"], utc=True), dtype=UTC_US),
            "source": pd.Series(cols["source"], dtype=object),
            "question": pd.Series(cols["question"], dtype=object),
            "trust_score": pd.Series(cols["trust_score"], dtype="float64"),
            "follow_up": pd.Series(cols["follow_up"], dtype="boolean"),
            "url": pd.Series(cols["url"], dtype=object),
            "session_id": pd.Series(cols["session_id"], dtype=object),
            "question_slug": pd.Series(cols["question_slug"], dtype=object),
            "extra": pd.Series(cols["extra"], dtype=object),
        }
    )


_INSERT_QUESTIONS_SQL = """
INSERT INTO questions (guru, row_key, occurrence, kind, asked_at, source, question,
                       trust_score, follow_up, url, session_id, question_slug, extra,
                       first_exported)
SELECT $guru, n.row_key, n.occurrence, n.kind, n.asked_at, n.source, n.question,
       n.trust_score, n.follow_up, n.url, n.session_id, n.question_slug, n.extra::JSON, $at
FROM _ga_questions AS n
WHERE NOT EXISTS (SELECT 1 FROM questions AS q
                  WHERE q.guru = $guru AND q.row_key = n.row_key
                    AND q.occurrence = n.occurrence)
ORDER BY n.row_key, n.occurrence
"""


def insert_questions(
    conn: duckdb.DuckDBPyConnection,
    guru: str,
    frame: pd.DataFrame,
    *,
    exported_at: datetime,
    interval: str,
    covers_from: datetime | None,
    scheme: str,
) -> QuestionWrite:
    """Store ``question_frame`` rows not stored before and record the export in the ledger.

    Runs inside the caller's transaction; ``frame`` must be registered as ``_ga_questions``
    when it has rows. One anti-joined insert (not ``ON CONFLICT``, which DuckDB runs as a
    MERGE scanning the table anyway) and one ledger row."""
    new = 0
    if len(frame):
        new = count(conn.execute(_INSERT_QUESTIONS_SQL, {"guru": guru, "at": exported_at}))
    answered = frame["kind"] == "answered"
    write = QuestionWrite(
        questions=int(answered.sum()),
        unanswered=int((~answered).sum()),
        linked=int((answered & frame["session_id"].notna()).sum()),
        new=new,
    )
    conn.execute(
        "INSERT INTO question_exports (guru, exported_at, interval, covers_from, scheme, "
        "questions, unanswered, new_rows) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [guru, exported_at, interval, covers_from, scheme, write.questions, write.unanswered, new],
    )
    return write


def read_last_question_export(
    conn: duckdb.DuckDBPyConnection, guru: str
) -> QuestionExportRecord | None:
    """The newest export of ``guru`` in the ledger (None before the first)."""
    row = first_row(
        conn.execute(
            "SELECT exported_at, interval, covers_from, scheme, questions, unanswered, new_rows "
            "FROM question_exports WHERE guru = ? ORDER BY exported_at DESC, export_id DESC "
            "LIMIT 1",
            [guru],
        )
    )
    if row is None:
        return None
    at, interval, covers_from, scheme, n_q, n_u, new = row
    exported = py_utc(at)
    assert exported is not None
    return QuestionExportRecord(
        guru, exported, interval, py_utc(covers_from), scheme, int(n_q), int(n_u), int(new)
    )


class Questions:
    """The exported-questions part of one cache file."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def write_questions(
        self,
        guru: str,
        export: QuestionExport,
        exported_at: datetime,
        *,
        covers_from: datetime | None = None,
    ) -> QuestionWrite:
        """Store one Export Analytics answer in one transaction: rows not stored before, and
        the export in the ledger (also when empty, so the next sync asks for a short
        interval). Re-exports of overlapping intervals add nothing (see the module
        docstring). ``covers_from``: the start of the interval asked for."""
        check_guru(guru)
        at = as_utc(exported_at, "exported_at")
        since = opt_utc(covers_from, "covers_from")
        frame = question_frame(export)
        what = f"storing the question export of {guru!r} ({len(frame)} rows)"
        with self._db.transaction(what, {"_ga_questions": frame if len(frame) else None}) as conn:
            return insert_questions(
                conn,
                guru,
                frame,
                exported_at=at,
                interval=str(export.interval),
                covers_from=since,
                scheme=str(export.scheme),
            )

    def last_question_export(self, guru: str) -> QuestionExportRecord | None:
        """The newest question export of ``guru`` (None before the first)."""
        check_guru(guru)
        with self._db.reader() as conn:
            return read_last_question_export(conn, guru)
