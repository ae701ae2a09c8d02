"""Export Analytics for the local server: every question of an interval in one file.

Faithful to the contract's "Export Analytics" section: intervals in UTC on the server's
clock, filters by source, the attachment header, the file's top-level keys per scheme
(``code``: questions / unable_to_answer / references, what the backend runs; ``docs``:
questions / out_of_context / referenced_sources, what the API docs say), the first
questions of sessions not started in Slack, Discord or GitHub listed only as their
original (no session in the URL), and 404 ``No data found to export`` for an empty
interval. The rows come from ``synthetic``, so a session's follow-ups here are exactly its
Get Session messages, to the minute. Deleted sessions' questions are left out.
"""

from __future__ import annotations

import bisect
import csv
import io
import json
import zipfile
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd

from .. import synthetic
from ..timestamps import micros_to_series, series_to_micros, to_micros
from ._exchange import Response, msg_response
from ._state import GuruState

EXPORT_SCHEMES: dict[str, tuple[str, str, str]] = {
    "code": ("questions", "unable_to_answer", "references"),
    "docs": ("questions", "out_of_context", "referenced_sources"),
}
SITE = "https://gurubase.io"
SOURCE_LABELS: dict[str, str] = {
    "USER": "Gurubase UI",
    "WIDGET QUESTION": "Widget",
    "API": "Api",
    "DISCORD": "Discord",
    "SLACK": "Slack",
    "GITHUB": "GitHub",
}
FILTER_SOURCES: dict[str, str] = {
    "user": "USER",
    "widget": "WIDGET QUESTION",
    "api": "API",
    "discord": "DISCORD",
    "slack": "SLACK",
    "github": "GITHUB",
}
_LINKED_STARTS = frozenset({"SLACK", "DISCORD", "GITHUB"})  # their first questions keep a session
_DAYS = {"7d": 7, "30d": 30, "3m": 90, "6m": 180, "12m": 365}
_US = timedelta(microseconds=1)


def interval_range(interval: str, now: datetime) -> tuple[datetime, datetime]:
    """The inclusive UTC range of an interval at ``now``, as the contract states.

    ``today``: 00:00 to the end of the current hour; ``yesterday``: the previous UTC day;
    ``7d``..``12m``: now minus N days truncated to 00:00, to today 23:59:59.999999. Anything
    else is ``today``, as the backend's fallback does.
    """
    now = now.astimezone(UTC)
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if interval == "yesterday":
        return midnight - timedelta(days=1), midnight - _US
    days = _DAYS.get(interval)
    if days is not None:
        start = (now - timedelta(days=days)).replace(hour=0, minute=0, second=0, microsecond=0)
        return start, midnight + timedelta(days=1) - _US
    hour = now.replace(minute=0, second=0, microsecond=0)
    return midnight, hour + timedelta(hours=1) - _US


@dataclass
class _Rows:
    """One kind of row, sorted by time: µs, API source code, the row without its filter."""

    ts: list[int] = field(default_factory=list)
    source: list[str] = field(default_factory=list)
    row: list[dict[str, Any]] = field(default_factory=list)
    refs: list[tuple[str, int]] = field(default_factory=list)  # (question, n references)

    def sort(self) -> None:
        order = sorted(range(len(self.ts)), key=lambda i: (self.ts[i], self.row[i].get("url", "")))
        self.ts = [self.ts[i] for i in order]
        self.source = [self.source[i] for i in order]
        self.row = [self.row[i] for i in order]
        if self.refs:
            self.refs = [self.refs[i] for i in order]

    def window(self, lo: int, hi: int, source: str | None) -> list[int]:
        """Indices in ``[lo, hi]`` (µs, inclusive) with that source (None = all), newest first."""
        a, b = bisect.bisect_left(self.ts, lo), bisect.bisect_right(self.ts, hi)
        return [i for i in range(b - 1, a - 1, -1) if source is None or self.source[i] == source]


@dataclass
class _Table:
    questions: _Rows
    unanswered: _Rows


class Exporter:
    """Answers Export Analytics requests; each guru's rows are built once per data version."""

    def __init__(self) -> None:
        self._cache: dict[str, tuple[int, _Table]] = {}

    def answer(self, g: GuruState, body: Mapping[str, Any], now: datetime, scheme: str) -> Response:
        export_type = body.get("export_type", "xlsx")
        filters = body.get("filters") or {}
        if export_type not in ("json", "csv", "xlsx") or not isinstance(filters, dict):
            return msg_response(500, "Internal server error")
        if export_type == "xlsx":
            return msg_response(
                400,
                "export_type 'xlsx' is not available on the local server: ask for 'json' or 'csv'",
            )
        raw_interval = body.get("interval", "today")
        interval = raw_interval if isinstance(raw_interval, str) else "today"
        start, end = interval_range(interval, now)
        lo, hi = to_micros(start), to_micros(end)
        table = self._table(g)
        q_idx = table.questions.window(lo, hi, _source_filter(filters.get("questions")))
        u_idx = table.unanswered.window(lo, hi, _source_filter(filters.get("out_of_context")))
        questions = [table.questions.row[i] for i in q_idx]
        unanswered = [table.unanswered.row[i] for i in u_idx]
        references = _references(table.questions, q_idx, filters.get("referenced_sources"))
        if not questions and not unanswered and not references:
            return msg_response(404, "No data found to export")
        keys = EXPORT_SCHEMES[scheme]
        stamp = int(now.timestamp())
        name = f"analytics_{g.slug}_{interval}_{stamp}"
        if export_type == "csv":
            data = _zip_csv((questions, unanswered, references))
            return Response(
                200,
                data,
                "application/zip",
                [("Content-Disposition", f'attachment; filename="{name}.zip"')],
            )
        payload = dict(zip(keys, (questions, unanswered, references), strict=True))
        data = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        return Response(
            200,
            data,
            "application/json",
            [("Content-Disposition", f'attachment; filename="{name}.json"')],
        )

    def _table(self, g: GuruState) -> _Table:
        hit = self._cache.get(g.slug)
        if hit is not None and hit[0] == g.version:
            return hit[1]
        table = _build(g)
        self._cache[g.slug] = (g.version, table)
        return table


def _source_filter(value: Any) -> str | None:
    """The API source code a filter value keeps; None keeps all (``all`` and unknown values)."""
    return FILTER_SOURCES.get(value) if isinstance(value, str) else None


def _minutes(us: np.ndarray) -> list[str]:
    """The file's ``datetime`` of each µs count: ``YYYY-MM-DD HH:MM`` in UTC (vectorised)."""
    text = np.datetime_as_string(np.asarray(us, dtype="datetime64[us]").astype("datetime64[m]"))
    return [t.replace("T", " ") for t in text.tolist()]


def _build(g: GuruState) -> _Table:
    """Every question of the guru's listed sessions, plus the standalone ones, as rows."""
    rows = [r for r in range(len(g.ids)) if g.has_root[r] and not g.deleted[r]]
    frame = pd.DataFrame(
        {
            "id": [g.ids[r] for r in rows],
            "date_created": micros_to_series([g.created[r] for r in rows]),
            "base_last_used": micros_to_series([g.base_last[r] for r in rows]),
            "n_messages": pd.Series([g.n_base[r] for r in rows], dtype="int64"),
            "has_root": pd.Series([True] * len(rows), dtype=bool),
            "root_question_name": pd.Series([g.title[r] for r in rows], dtype=object),
            "root_question_slug": pd.Series([g.qslug[r] for r in rows], dtype=object),
            "user_question": pd.Series([g.wording[r] for r in rows], dtype=object),
            "source": pd.Series([g.source[r] for r in rows], dtype=object),
        }
    )
    touches = {g.ids[r]: g.touches[r] for r in rows if r in g.touches}
    events = synthetic.question_events(frame, seed=g.seed, extra_times=touches)
    alone = synthetic.standalone_questions(frame, seed=g.seed)
    questions, unanswered = _Rows(), _Rows()
    guru = g.slug
    ev_us = series_to_micros(events["ts"])
    for t, when, sid, k, src, trust, slug, text, wording, root_slug, n_refs in zip(
        ev_us.tolist(),
        _minutes(ev_us),
        events["session_id"].tolist(),
        events["message_index"].tolist(),
        events["source"].tolist(),
        events["trust_score"].tolist(),
        events["slug"].tolist(),
        events["question"].tolist(),
        events["user_question"].tolist(),
        events["root_question_slug"].tolist(),
        events["n_references"].tolist(),
        strict=True,
    ):
        if k == 0 and src not in _LINKED_STARTS:
            # The copy in the session is left out; the original has no session in its URL.
            url = f"{SITE}/g/{guru}/{root_slug.rsplit('-', 1)[0]}"
        else:
            url = f"{SITE}/g/{guru}/{root_slug}/binge/{sid}?question_slug={slug}"
        questions.ts.append(t)
        questions.source.append(src)
        questions.row.append(_question_row(when, src, wording, trust, k > 0, url))
        questions.refs.append((text, n_refs))
    alone_us = series_to_micros(alone["ts"])
    for t, when, kind, src, text, slug, trust in zip(
        alone_us.tolist(),
        _minutes(alone_us),
        alone["kind"].tolist(),
        alone["source"].tolist(),
        alone["question"].tolist(),
        alone["slug"].tolist(),
        alone["trust_score"].tolist(),
        strict=True,
    ):
        if kind == "question":
            url = f"{SITE}/g/{guru}/{slug}"
            questions.ts.append(t)
            questions.source.append(src)
            questions.row.append(_question_row(when, src, text, trust, False, url))
            questions.refs.append((text, 0))
        else:
            unanswered.ts.append(t)
            unanswered.source.append(src)
            unanswered.row.append(
                {"datetime": when, "source": SOURCE_LABELS.get(src, src), "question": text}
            )
    questions.sort()
    unanswered.sort()
    return _Table(questions, unanswered)


def _question_row(
    when: str, src: str, text: str, trust: int, follow_up: bool, url: str
) -> dict[str, Any]:
    return {
        "datetime": when,
        "source": SOURCE_LABELS.get(src, src),
        "question": text,
        "trust_score": round(trust / 100, 2),
        "follow_up": follow_up,
        "url": url,
    }


def _references(rows: _Rows, idx: list[int], kind: Any) -> list[dict[str, Any]]:
    """Referenced pages of the questions in the interval, most referenced first. The
    synthetic references are all websites, so any other ``referenced_sources`` is empty."""
    if isinstance(kind, str) and kind not in ("all", "website"):
        return []
    asked = Counter(rows.refs[i] for i in idx)
    counts: dict[str, list[Any]] = {}
    for (question, n_refs), times in asked.items():
        for ref in synthetic.reference_list(question, n_refs):
            hit = counts.setdefault(ref["link"], [ref["title"], 0])
            hit[1] += times
    ordered = sorted(counts.items(), key=lambda kv: (-kv[1][1], kv[0]))
    return [
        {"title": title, "link": link, "type": "Website", "reference_count": n}
        for link, (title, n) in ordered
    ]


def _zip_csv(tables: tuple[list[dict[str, Any]], ...]) -> bytes:
    """The csv export: a zip of one CSV per list (named by the code scheme, as the backend)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, rows in zip(EXPORT_SCHEMES["code"], tables, strict=True):
            text = io.StringIO()
            if rows:
                writer = csv.DictWriter(text, fieldnames=list(rows[0]))
                writer.writeheader()
                writer.writerows(rows)
            zf.writestr(f"{name}.csv", text.getvalue())
    return buf.getvalue()
