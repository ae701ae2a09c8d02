"""5. Scaling: sync time and peak memory from 3,000 to 300,000 sessions (limit off).

Pages are streamed into the cache (one upsert per page, nothing kept), so peak memory should
stay flat as N grows while time grows linearly. Each size runs in a fresh process (peak RSS
via ``VmHWM``, see ``worker``) against a server hosted by this, the parent, process.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from pathlib import Path

from .fixture import demo_server
from .plan import Plan
from .table import Row, fmt_mb, fmt_seconds
from .worker import run_fresh

SECTION = "5. Scaling"
MEMORY_CEILING_MB = 300.0
FLAT = 1.25  # peak RSS at the largest N within 25% of the smallest counts as flat


def run(plan: Plan, workdir: Path, say: Callable[[str], None]) -> list[Row]:
    workdir.mkdir(parents=True, exist_ok=True)
    results: dict[int, tuple[float, float, float, bool, str]] = {}
    rows: list[Row] = []
    for n in plan.scaling_sizes:
        srv = demo_server(n)
        times: list[float] = []
        peaks: list[float] = []
        starts: list[float] = []
        complete = True
        error = ""
        try:
            expected = len(srv.truth(srv.guru_slug or ""))
            repeats = plan.scaling_repeats(n)
            for rep in range(repeats):
                say(f"scaling: {n:,} sessions, run {rep + 1}/{repeats}")
                db = workdir / f"scale-{n}-{rep}.duckdb"
                outcome = run_fresh(
                    "benchmarks.package_loader:package_load",
                    {
                        "base_url": srv.base_url,
                        "api_key": srv.api_key,
                        "slug": srv.guru_slug,
                        "db_path": str(db),
                        "expected": expected,
                    },
                    timeout=7200,
                )
                for path in workdir.glob("scale-*.duckdb*"):
                    path.unlink()
                if outcome.result is None:
                    error = outcome.error or "no result"
                    break
                times.append(float(outcome.result["elapsed"]))
                peaks.append(float(outcome.peak_rss_mb or 0.0))
                starts.append(float(outcome.start_rss_mb or 0.0))
                complete = complete and bool(outcome.result["complete"])
        finally:
            srv.stop()
        if not times:
            rows.append(Row(SECTION, f"sync {n:,} sessions", f"failed: {error}"))
            continue
        t = statistics.median(times)
        results[n] = (t, max(peaks), statistics.median(starts), complete, error)
        rows.append(
            Row(
                SECTION,
                f"sync {n:,} sessions",
                f"{fmt_seconds(t)} ({n / t:,.0f} sessions/s); peak RSS {fmt_mb(max(peaks))}",
                notes=(
                    f"median of {len(times)}; RSS after imports {fmt_mb(statistics.median(starts))}; "
                    + ("cache complete" if complete else "cache INCOMPLETE")
                    + (f"; {error}" if error else "")
                ),
            )
        )
    if len(results) >= 2:
        lo, hi = min(results), max(results)
        t_lo, p_lo = results[lo][0], results[lo][1]
        t_hi, p_hi = results[hi][0], results[hi][1]
        rows.append(
            Row(
                SECTION,
                f"growth {lo:,} -> {hi:,} sessions (x{hi / lo:g})",
                f"time x{t_hi / t_lo:.1f}; peak RSS x{p_hi / p_lo:.2f} "
                f"({fmt_mb(p_lo)} -> {fmt_mb(p_hi)})",
                f"N x{hi / lo:g}",
                f"{p_hi / p_lo:.2f}x memory",
                f"memory flat (<= {FLAT:g}x) and < {MEMORY_CEILING_MB:.0f} MB at {hi:,}",
                p_hi / p_lo <= FLAT and p_hi < MEMORY_CEILING_MB,
                "time should grow ~linearly with N; memory should not",
            )
        )
    return rows
