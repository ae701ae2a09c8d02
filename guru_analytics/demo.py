"""``guru-analytics demo``: the whole job on built-in data, with no key and no network.

It starts the local Gurubase-compatible server in this process with a synthetic guru, syncs
the guru-wide listing and one listing per (synthetic) external user, fetches the messages
of every session, and writes the cache, CSV reports and PNG charts into one folder. The data
ends on a fixed date, so a second run against the same folder finds nothing new and its sync
costs one request per listing: that is what an incremental sync of a real guru looks like.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from . import catalog
from .checks import whole_number
from .errors import ConfigError

if TYPE_CHECKING:
    import pandas as pd

    from .guru import Guru
    from .sync import SyncSummary

DEFAULT_OUT = "guru-analytics-demo"
# Sized to finish in well under a minute on 2 cores with every session's messages fetched
# (measured ~20 s for 3,000: answers are written 50 to a transaction, under 1 ms each).
DEFAULT_SESSIONS = 3000
DEFAULT_USERS = 30
DEFAULT_DAYS = 180
# Requests per minute, shared by the client and the in-process server: high enough that a
# few thousand sessions with messages sync in seconds, but still paced by the real limiter.
DEFAULT_RATE_LIMIT = 30_000

# The outputs come from the catalogue (each entry's ``demo``); these are views of it.
# file stem -> (report name, frame parameters). Every report goes through reports.export.
CSV_REPORTS: dict[str, tuple[str, dict[str, Any]]] = {
    stem: (name, params) for name, r in catalog.REPORTS.items() for stem, params in r.demo
}
# file stem -> (chart name, parameters); drawn by plots.chart and saved by plots.save.
PNG_CHARTS: dict[str, tuple[str, dict[str, Any]]] = {
    stem: (name, params) for name, c in catalog.CHARTS.items() for stem, params in c.demo
}
# The demo's data stops at a fixed date: its horizon is the newest event ("latest"), so the
# last (partial) day or week is marked as such, and the summary compares whole local days.
DEMO_NOW = "latest"


@dataclass
class DemoResult:
    """What a demo run did and wrote."""

    out: Path
    db: Path
    sync: SyncSummary
    incremental: bool
    csvs: dict[str, Path] = field(default_factory=dict)
    pngs: dict[str, Path] = field(default_factory=dict)
    summary: pd.DataFrame | None = None
    seconds: float = 0.0


def run_demo(
    out: str | Path = DEFAULT_OUT,
    *,
    n_sessions: int = DEFAULT_SESSIONS,
    n_users: int = DEFAULT_USERS,
    days: int = DEFAULT_DAYS,
    seed: int = 0,
    rate_limit: int | None = DEFAULT_RATE_LIMIT,
    tz: str = "UTC",
    messages: bool = True,
    progress: bool | None = None,
    stdout: TextIO | None = None,
    questions: bool = True,
    monotonic: Callable[[], float] = time.monotonic,
) -> DemoResult:
    """Run the demo into ``out`` and print what happened (see the module docstring)."""
    from .guru import Guru
    from .server import LocalGurubase
    from .synthetic import DEFAULT_END
    from .timestamps import running_from

    echo = _printer(stdout)
    for value, name in ((n_sessions, "n_sessions"), (n_users, "n_users"), (days, "days")):
        whole_number(value, name, minimum=1)
    t0 = monotonic()
    out_dir = Path(out).expanduser()
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out {out_dir} is a file: pass a directory")
    out_dir.mkdir(parents=True, exist_ok=True)
    db = out_dir / "cache.duckdb"

    # The server's clock runs on from the data's fixed end, so Export Analytics intervals
    # (computed on the server's clock, up to 12 months back) cover the synthetic history.
    clock = running_from(DEFAULT_END)
    srv = LocalGurubase.demo(
        n_sessions,
        n_users,
        days,
        seed=seed,
        end=DEFAULT_END,
        rate_limit=rate_limit,
        rate_window=60.0,
        clock=clock,
    )
    with srv:
        assert srv.guru_slug is not None
        users = srv.users(srv.guru_slug)
        limit = "off" if rate_limit is None else f"{rate_limit:,} requests/min"
        echo(
            f"Local Gurubase at {srv.base_url}: guru {srv.guru_slug!r}, {len(srv.truth(srv.guru_slug)):,} "
            f"sessions, {len(users)} external users, {days} days to {DEFAULT_END:%Y-%m-%d} "
            f"(seed {seed}); rate limit {limit}"
        )
        guru = Guru(
            srv.guru_slug,
            api_key=srv.api_key,
            base_url=srv.base_url,
            db=db,
            rate_limit=rate_limit,
            rate_window=60.0,
            users=users,
            tz=tz,
            clock=clock,
        )
        summary = guru.sync(messages=messages, progress=progress, questions=questions)
    incremental = summary.mode == "incremental"
    echo(_sync_line(summary, questions=questions))

    result = DemoResult(out=out_dir, db=db, sync=summary, incremental=incremental)
    try:
        _write_outputs(guru, result, messages=messages, questions=questions)
    finally:
        guru.close()
    result.seconds = monotonic() - t0
    _print_summary(result, echo)
    return result


def _write_outputs(
    guru: Guru, result: DemoResult, *, messages: bool, questions: bool = True
) -> None:
    """CSV reports and PNG charts from the cache (reads only)."""
    from . import frames, plots, reports

    last = guru.status().last_event
    # The synthetic data ends on a fixed date: compare the last whole local days of it, not
    # the (empty) weeks before today, and not a partial last day.
    whole_days = (
        frames.complete_until(last + timedelta(microseconds=1), "D", guru.tz)
        if last is not None
        else None
    )
    with guru.reader() as con:
        for stem, (report, params) in CSV_REPORTS.items():
            entry = catalog.REPORTS[report]
            if (entry.needs_messages and not messages) or (entry.needs_questions and not questions):
                continue
            kwargs = {**_defaults(entry.options, guru.tz), **params}
            if report == "summary":
                kwargs["now"] = whole_days
            path = result.out / f"{stem}.csv"
            reports.export(con, report, path, guru.slug, **kwargs)
            result.csvs[stem] = path
        for stem, (chart, params) in PNG_CHARTS.items():
            entry_chart = catalog.CHARTS[chart]
            if (entry_chart.needs_messages and not messages) or (
                entry_chart.needs_questions and not questions
            ):
                continue
            kwargs = {**_defaults(catalog.chart_options(chart), guru.tz), **params}
            ax = plots.chart(con, chart, guru.slug, **kwargs)
            result.pngs[stem] = plots.save(ax, result.out / f"{stem}.png")
        result.summary = frames.summary(con, guru.slug, period="28d", now=whole_days, tz=guru.tz)


def _defaults(options: frozenset[str], tz: str) -> dict[str, Any]:
    """The demo's ``tz`` and ``now`` for whichever of them the report or chart takes."""
    return {k: v for k, v in (("tz", tz), ("now", DEMO_NOW)) if k in options}


def _sync_line(s: SyncSummary, *, questions: bool = False) -> str:
    n_listings = len(s.listings)
    exports = 1 if questions else 0  # one Export Analytics request per sync
    requests = s.requests - exports
    head = (
        f"{s.mode.capitalize()} sync: {requests:,} requests for {n_listings} listings "
        f"({s.pages:,} pages), {s.sessions_new:,} new and {s.sessions_changed:,} changed "
        f"sessions, messages of {s.messages_fetched:,} sessions"
    )
    if questions:
        head += f", 1 request for every question since the last export ({s.questions_new:,} new)"
    head += f", {s.seconds:.1f} s"
    if s.mode == "incremental":
        per = requests / max(1, n_listings)
        head += (
            f". The cache was already up to date: {per:.1f} requests per listing, nothing "
            "re-downloaded."
        )
    if s.outcome != "ok":
        head += f" Outcome: {s.outcome}."
    return head


def _print_summary(result: DemoResult, echo: Callable[[str], None]) -> None:
    import pandas as pd

    if result.summary is not None:
        df = result.summary
        start, end = df["current_start"].iloc[0], df["current_end"].iloc[0]
        echo("")
        echo(
            f"Last 28 complete days of data ({start:%Y-%m-%d} – {end:%Y-%m-%d}, end exclusive) "
            "against the 28 days before:"
        )
        table = pd.DataFrame(
            {
                "metric": df["metric"],
                "current": df["current"],
                "previous": df["previous"],
                "change": ["" if pd.isna(p) else f"{p:+.0f}%" for p in df["change_pct"].tolist()],
            }
        ).dropna(subset=["current"])
        for line in table.to_string(index=False).splitlines():
            echo("  " + line)
    echo("")
    echo(f"Wrote to {result.out}/ ({result.seconds:.1f} s):")
    echo(f"  cache   {result.db.name}")
    echo("  CSV     " + ", ".join(p.name for p in result.csvs.values()))
    echo("  PNG     " + ", ".join(p.name for p in result.pngs.values()))
    if not result.incremental:
        echo("Run the same command again to see an incremental sync.")
    echo("Open notebooks/session_trends.ipynb to explore the same data interactively.")


def _printer(stdout: TextIO | None) -> Callable[[str], None]:
    def echo(line: str) -> None:
        print(line, file=stdout or sys.stdout, flush=True)

    return echo
