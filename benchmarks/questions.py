"""6. Questions: question-level activity via Export Analytics against Get Session (issue 15).

For N sessions (the plan's full-sync sizes) on the local server, after one listing sync:

- the requests one ``sync_questions`` costs (1 export) against the requests the messages
  phase costs (one Get Session per session), both counted from the server's log;
- the share of the server's true question events (every message of every listed session,
  from ``synthetic.question_events``, to the minute) that the export recovers linked to their
  session: every follow-up, first questions only where linkable (Slack/Discord/GitHub);
- daily active sessions from ``observations+questions`` (and from observations alone, and
  with messages) against the truth: (session, UTC day) pairs with a question.

The server's clock sits an hour after the synthetic data's end, so ``12m`` covers it all.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd

from guru_analytics import frames, synthetic
from guru_analytics.client import GurubaseClient
from guru_analytics.server import LocalGurubase
from guru_analytics.store import Store
from guru_analytics.sync import sync, sync_questions

from .fixture import END
from .plan import Plan
from .table import Row, fmt_ratio

SECTION = "6. Questions"
RATE_PER_MINUTE = 10  # the API's limit, for the wall-time note


def _clock() -> datetime:
    return END + timedelta(hours=1)


def _pairs_per_day(con: Store, slug: str) -> int:
    """(session, UTC day) pairs with an activity event: the sum of daily active sessions."""
    df = frames.activity(con, slug, freq="D", tz="UTC")
    return int(df["active_sessions"].sum())


def _hours(requests: int) -> str:
    minutes = requests / RATE_PER_MINUTE
    return f"{minutes / 60:.1f} h" if minutes >= 60 else f"{minutes:.1f} min"


def run(plan: Plan, work: Path, say: Callable[[str], None]) -> list[Row]:
    work.mkdir(parents=True, exist_ok=True)
    rows: list[Row] = []
    for n in plan.full_sizes:
        say(f"questions: {n:,} sessions")
        srv = LocalGurubase.demo(n, 50, seed=0, end=END, rate_limit=None, clock=_clock).start()
        slug = srv.guru_slug or ""
        client = GurubaseClient(srv.api_key, srv.base_url, rate_limit=None)
        store = Store(work / f"q{n}.duckdb")
        try:
            sync(slug, client=client, store=store, progress=False, clock=_clock)
            observed_pairs = _pairs_per_day(store, slug)

            srv.clear_log()
            sync_questions(slug, client=client, store=store, clock=_clock)
            export_requests = len(srv.log)
            question_pairs = _pairs_per_day(store, slug)

            truth = synthetic.question_events(srv.synthetic.sessions, seed=srv.synthetic.seed)
            truth = truth.assign(minute=truth["ts"].dt.floor("min"), day=truth["ts"].dt.floor("D"))
            true_pairs = len(truth[["session_id", "day"]].drop_duplicates())
            with store.reader() as con:
                got = con.execute(
                    "SELECT session_id, asked_at FROM questions "
                    "WHERE guru = ? AND session_id IS NOT NULL",
                    [slug],
                ).df()
            got = got.assign(minute=pd.to_datetime(got["asked_at"], utc=True)).drop_duplicates(
                ["session_id", "minute"]
            )
            hit = truth.merge(
                got[["session_id", "minute"]],
                on=["session_id", "minute"],
                how="left",
                indicator=True,
            )
            found = hit["_merge"] == "both"
            follow = hit["message_index"] > 0
            linkable = follow | hit["source"].isin(["SLACK", "DISCORD", "GITHUB"])
            share_all = found.mean()
            share_follow = found[follow].mean()
            share_roots = found[~follow].mean()
            share_linkable = found[linkable].mean()
            per_session = len(truth) / n

            srv.clear_log()
            summary = sync(
                slug, client=client, store=store, messages=True, progress=False, clock=_clock
            )
            get_requests = srv.request_count("/conversation/")
            message_pairs = _pairs_per_day(store, slug)
        finally:
            client.close()
            store.close()
            srv.stop()
        rows.append(
            Row(
                SECTION,
                f"question-level activity, N = {n:,} ({per_session:.2f} questions/session)",
                f"{export_requests} request (Export Analytics)",
                f"{get_requests:,} Get Session requests",
                fmt_ratio(get_requests / max(1, export_requests), 0) + " fewer",
                "1 request",
                export_requests == 1,
                f"at {RATE_PER_MINUTE} requests/min: one request against {_hours(get_requests)}; "
                f"messages fetched for {summary.messages_fetched:,} sessions",
            )
        )
        rows.append(
            Row(
                SECTION,
                f"question events recovered, N = {n:,}",
                f"{share_all:.1%} of {len(truth):,} events, linked to their session",
                "server truth (every message)",
                "",
                "every follow-up",
                bool(share_follow == 1.0),
                f"follow-ups {share_follow:.1%}; first questions {share_roots:.1%} (only "
                f"Slack/Discord/GitHub sessions are linked); linkable events {share_linkable:.1%}",
            )
        )
        rows.append(
            Row(
                SECTION,
                f"daily active sessions, N = {n:,}",
                f"observations+questions: {question_pairs / true_pairs:.1%} of true "
                f"(session, day) pairs",
                f"observations only: {observed_pairs / true_pairs:.1%}",
                fmt_ratio(question_pairs / max(1, observed_pairs)),
                "",
                None,
                f"{true_pairs:,} true pairs; observations+messages+questions: "
                f"{message_pairs / true_pairs:.1%} (after {get_requests:,} more requests)",
            )
        )
    return rows
