"""What one ``sync()`` did: ``SyncSummary`` (a small table in a terminal and in Jupyter)."""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass
class SyncSummary:
    """What one ``sync()`` did; ``str()`` renders a small table."""

    guru: str
    mode: str
    listings: list[str]
    requests: int = 0
    throttled: int = 0
    retries: int = 0
    pages: int = 0
    sessions_new: int = 0
    sessions_changed: int = 0
    sessions_deleted: int = 0
    tie_rereads: int = 0
    top_ups: int = 0
    verified: int = 0
    unverified: int = 0
    messages_fetched: int = 0
    messages_remaining: int = 0
    questions_exported: int = 0
    questions_new: int = 0
    listings_skipped: int = 0
    seconds: float = 0.0
    outcome: str = "running"
    run_id: int | None = None
    notes: list[str] = field(default_factory=list)

    def _rows(self) -> list[tuple[str, str]]:
        rows = [
            ("listings", _listings_text(self.listings)),
            (
                "requests",
                f"{self.requests} (pages {self.pages}, tie re-reads {self.tie_rereads}, "
                f"top-ups {self.top_ups}; 429s {self.throttled}, retries {self.retries})",
            ),
            (
                "sessions",
                f"{self.sessions_new} new, {self.sessions_changed} changed, "
                f"{self.sessions_deleted} deleted",
            ),
            ("verified", f"{self.verified} kept by Get Session, {self.unverified} unverified"),
            (
                "messages",
                f"{self.messages_fetched} sessions fetched, {self.messages_remaining} remaining",
            ),
        ]
        if self.listings_skipped:
            rows.append(
                ("skipped", f"{self.listings_skipped} user listing(s), nothing to attribute")
            )
        if self._questions_shown():
            rows.append(
                ("questions", f"{self.questions_exported} exported, {self.questions_new} new")
            )
        return rows

    def _questions_shown(self) -> bool:
        return bool(self.questions_exported or self.questions_new)

    def _head(self) -> str:
        run = f"run {self.run_id}" if self.run_id is not None else "no run"
        return f"sync {self.guru}: {self.mode}, {self.outcome} ({run}, {self.seconds:.1f} s)"

    def __str__(self) -> str:
        rows = self._rows()
        width = max(len(k) for k, _ in rows)
        lines = [self._head(), *(f"  {k:<{width}}  {v}" for k, v in rows)]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def __repr__(self) -> str:
        """One line (a notebook cell ending in ``g.sync()`` shows this, not a field dump)."""
        notes = f", {len(self.notes)} note(s)" if self.notes else ""
        questions = f", {self.questions_new} new questions" if self._questions_shown() else ""
        return (
            f"<SyncSummary {self.guru}: {self.mode}, {self.outcome}, {self.requests} requests, "
            f"{self.sessions_new} new, {self.sessions_changed} changed, "
            f"{self.sessions_deleted} deleted{questions}{notes}>"
        )

    def _repr_html_(self) -> str:
        """A small table for Jupyter."""
        cell = "<tr><th style='text-align:left'>{}</th><td style='text-align:left'>{}</td></tr>"
        body = "".join(cell.format(html.escape(k), html.escape(v)) for k, v in self._rows())
        body += "".join(cell.format("note", html.escape(n)) for n in self.notes)
        return f"<table><caption>{html.escape(self._head())}</caption>{body}</table>"


def _listing_label(key: str) -> str:
    return "guru-wide" if key == "" else key


def _listings_text(keys: Sequence[str], shown: int = 4) -> str:
    """Name a few listings and count the rest, so 50 users stay one readable line."""
    labels = [_listing_label(k) for k in keys]
    if len(labels) <= shown:
        return ", ".join(labels)
    return f"{', '.join(labels[:shown])} and {len(labels) - shown} more ({len(labels)} listings)"
