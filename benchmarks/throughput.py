"""3. Throughput with the limit off: sessions per second into a DuckDB file.

Where a deployment allows more than 10 requests a minute, the package should beat what a
user would otherwise reach for. Each contender loads the same guru from the same local
server (hosted by this, the parent, process) into its own fresh file, in a fresh process
(peak RSS = ``VmHWM``, see ``worker``), run after run in turn so slow drifts of the machine hit all
alike; the figure is the median of the runs.

Contenders: ``guru_analytics.sync`` (``package_loader``), the naive loop (``naive``), dlt's
REST API source with ``merge`` on ``id`` and with ``append`` (``dlt_loader``), plus the bare
HTTP page fetch as the server's ceiling (context, no target).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import dlt_loader
from .fixture import demo_server
from .plan import Plan
from .table import Row, fmt_mb, fmt_ratio, fmt_seconds
from .worker import run_fresh

SECTION = "3. Throughput (limit off)"


@dataclass
class Contender:
    """One loader: how to call it in a fresh process and what it measured."""

    name: str
    target: str
    extra: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    times: list[float] = field(default_factory=list)
    peaks: list[float] = field(default_factory=list)
    requests: list[int] = field(default_factory=list)
    complete: list[bool] = field(default_factory=list)
    distinct: list[int] = field(default_factory=list)
    error: str | None = None

    def rate(self, n: int) -> float | None:
        return n / statistics.median(self.times) if self.times else None


def _contenders(workdir: Path) -> list[Contender]:
    out = [
        Contender("guru_analytics sync", "benchmarks.package_loader:package_load"),
        Contender("naive loop (requests.post + row-by-row INSERT)", "benchmarks.naive:naive_load"),
    ]
    for disposition in ("merge", "append"):
        c = Contender(
            f"dlt rest_api ({disposition})",
            "benchmarks.dlt_loader:dlt_load",
            extra={"write_disposition": disposition},
        )
        if not dlt_loader.dlt_available():
            c.error = "dlt not installed (pip install '.[bench]')"
        out.append(c)
    return out


def measure(
    n: int,
    repeats: int,
    workdir: Path,
    say: Callable[[str], None],
) -> tuple[list[Contender], Contender]:
    """Run every contender ``repeats`` times in turn against one server of ``n`` sessions."""
    workdir.mkdir(parents=True, exist_ok=True)
    contenders = _contenders(workdir)
    ceiling = Contender("HTTP only (server ceiling)", "benchmarks.package_loader:http_only")
    srv = demo_server(n)
    try:
        common = {"base_url": srv.base_url, "api_key": srv.api_key, "slug": srv.guru_slug}
        expected = len(srv.truth(srv.guru_slug or ""))
        for rep in range(repeats):
            for i, c in enumerate([*contenders, ceiling]):
                if c.error is not None and not c.times:
                    continue
                say(f"throughput: {c.name}, run {rep + 1}/{repeats}")
                kwargs: dict[str, Any] = {**common, "expected": expected, **c.extra}
                env: dict[str, str] = {}
                if c is not ceiling:
                    kwargs["db_path"] = str(workdir / f"contender{i}-run{rep}.duckdb")
                if c.target.startswith("benchmarks.dlt_loader"):
                    kwargs["workdir"] = str(workdir / f"dlt-{rep}-{c.extra['write_disposition']}")
                    env = dlt_loader.offline_env(kwargs["workdir"])
                srv.clear_log()
                outcome = run_fresh(c.target, kwargs, env=env)
                if outcome.error is not None or outcome.result is None:
                    c.error = outcome.error or "no result"
                    continue
                r = outcome.result
                c.times.append(float(r["elapsed"]))
                c.peaks.append(float(outcome.peak_rss_mb or 0.0))
                c.requests.append(len(srv.log))
                c.complete.append(bool(r["complete"]))
                c.distinct.append(int(r["distinct"]))
                for path in workdir.glob("*.duckdb*"):
                    path.unlink()
    finally:
        srv.stop()
    return contenders, ceiling


def _coverage(c: Contender, expected: int) -> str:
    if not c.complete:
        return ""
    if all(c.complete):
        return f"got all {expected:,} sessions"
    return f"MISSED sessions: got {min(c.distinct):,} of {expected:,}"


def rows_for(n: int, contenders: list[Contender], ceiling: Contender, repeats: int) -> list[Row]:
    package = contenders[0]
    pkg_rate = package.rate(n)
    out: list[Row] = []
    for c in contenders:
        rate = c.rate(n)
        if rate is None:
            out.append(
                Row(
                    SECTION,
                    f"{c.name}, {n:,} sessions",
                    c.error or "not run",
                    notes="row kept: could not run",
                )
            )
            continue
        notes = (
            f"median of {len(c.times)}: {fmt_seconds(statistics.median(c.times))}; "
            f"{c.requests[-1]} requests; peak RSS {fmt_mb(max(c.peaks))}; {_coverage(c, n)}"
        )
        if c.error:
            notes += f"; a run failed: {c.error}"
        if c is package:
            out.append(
                Row(SECTION, f"{c.name}, {n:,} sessions", f"{rate:,.0f} sessions/s", notes=notes)
            )
            continue
        ratio = pkg_rate / rate if pkg_rate else None
        target = 10.0 if c.name.startswith("naive") else 5.0
        out.append(
            Row(
                SECTION,
                f"{c.name}, {n:,} sessions",
                f"{rate:,.0f} sessions/s",
                f"guru_analytics {pkg_rate:,.0f} sessions/s" if pkg_rate else "",
                f"{fmt_ratio(ratio)} (guru_analytics / this)",
                f">= {target:.0f}x",
                None if ratio is None else ratio >= target,
                notes,
            )
        )
    rate = ceiling.rate(n)
    if rate is not None:
        out.append(
            Row(
                SECTION,
                f"{ceiling.name}, {n:,} sessions",
                f"{rate:,.0f} sessions/s",
                notes=(
                    "keep-alive POSTs, pages discarded: the local server's own limit "
                    f"(median of {len(ceiling.times)}: {fmt_seconds(statistics.median(ceiling.times))})"
                ),
            )
        )
    return out


def run(plan: Plan, workdir: Path, say: Callable[[str], None]) -> list[Row]:
    n = plan.throughput_sessions
    contenders, ceiling = measure(n, plan.repeats, workdir, say)
    return rows_for(n, contenders, ceiling, plan.repeats)
