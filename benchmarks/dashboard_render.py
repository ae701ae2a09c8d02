"""The dashboard's redraw cost: ``widgets.render`` plus the PNG encoding of its figures (what
one control change costs in the kernel), on the demo data (3,000 sessions, 30 users, 180
days, synced from the local server into a temporary cache).

Now: median of 3 runs after a warm-up; baseline: 1 run. Baseline in the same run: the same views drawn as bars at every bucket count (the
dashboard before issue 12: ~4,300 stacked bar groups for hourly over 180 days).

    MPLBACKEND=Agg python -m benchmarks.dashboard_render

Not part of the suite's table (run on its own; it takes about a minute).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

VIEWS: dict[str, dict[str, object]] = {
    "day, no split (180 buckets)": {"freq": "day"},
    "hour, no split (~4,300 buckets)": {"freq": "hour"},
    "hour, top 5 users + other": {"freq": "hour", "split": "top"},
}


def _redraw_seconds(con: object, slug: str, params: object, runs: int) -> tuple[float, float]:
    """Median seconds of ``render`` alone and of ``render`` plus the PNG encoding."""
    from guru_analytics import widgets

    alone, total = [], []
    for _ in range(runs):
        t = time.perf_counter()
        r = widgets.render(con, slug, params)  # type: ignore[arg-type]
        alone.append(time.perf_counter() - t)
        for fig in r.figures.values():
            widgets.figure_output(fig)
        total.append(time.perf_counter() - t)
    return statistics.median(alone), statistics.median(total)


def main() -> None:
    from guru_analytics import widgets
    from guru_analytics.guru import Guru

    with (
        tempfile.TemporaryDirectory() as tmp,
        Guru.local(3000, 30, 180, db=Path(tmp) / "cache.duckdb") as g,
    ):
        g.sync(progress=False)
        print(
            "| view | render now (s) | + PNG now (s) | render, bars everywhere (s) "
            "| + PNG, bars everywhere (s) | ratio (+ PNG) |"
        )
        print("|---|---|---|---|---|---|")
        with g.reader() as con:
            for name, kw in VIEWS.items():
                params = widgets.DashboardParams(**kw)  # type: ignore[arg-type]
                _redraw_seconds(con, g.slug, params, 1)  # warm-up
                now = _redraw_seconds(con, g.slug, params, 3)
                kept = widgets.MAX_BARS
                widgets.MAX_BARS = 10**9  # the baseline: bars at any bucket count
                try:
                    bars = _redraw_seconds(con, g.slug, params, 1)
                finally:
                    widgets.MAX_BARS = kept
                print(
                    f"| {name} | {now[0]:.2f} | {now[1]:.2f} | {bars[0]:.2f} | {bars[1]:.2f} "
                    f"| {bars[1] / now[1]:.1f}x |"
                )


if __name__ == "__main__":
    main()
