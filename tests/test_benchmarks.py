"""The benchmark suite's quick mode runs end to end and writes its table (issue 6).

No timing is asserted (figures depend on the machine); what is asserted is that every
benchmark row is present and that the figures which do not depend on speed (request
minimums, exact cache, the header facts) are the real ones.
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.plan import QUICK

REPO = Path(__file__).resolve().parents[1]


def _rows(text: str) -> list[list[str]]:
    """Cells of every body row of the Markdown table."""
    lines = [
        ln for ln in text.splitlines() if ln.startswith("| ") and not ln.startswith("| Benchmark")
    ]
    return [[c.strip() for c in re.split(r"(?<!\\)\|", ln.strip())[1:-1]] for ln in lines]


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_quick_mode_completes_and_writes_the_table(tmp_path: Path) -> None:
    out = tmp_path / "BENCH.md"
    env = {**os.environ, "PYTHONPATH": str(REPO), "MPLBACKEND": "Agg"}
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--out", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=230,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text(encoding="utf-8")
    assert text in proc.stdout  # printed as well as written

    # Header: date, machine, versions and the exact command.
    for fact in ("Date", "Machine", "Python", "pandas", "duckdb", "requests", "dlt", "Command"):
        assert f"- **{fact}**:" in text
    assert "`python -m benchmarks --quick --out " in text
    assert "cores, " in text

    rows = _rows(text)
    by_case = {r[1]: r for r in rows}
    assert all(len(r) == 8 for r in rows)
    assert not any(r[1] == "section failed" for r in rows)

    # 1. Request efficiency: the minimums are the real ones for the quick sizes.
    n = QUICK.full_sizes[0]
    full = by_case[f"full sync, N = {n:,}"]
    assert full[3] == f"ceil(N/30) = {math.ceil(n / 30)}"
    assert int(full[2].split()[0]) >= math.ceil(n / 30)  # no sync can beat the minimum
    base = QUICK.incremental_base
    for k, ref in ((0, 1), (10, 2), (100, 5)):
        assert by_case[f"incremental, k = {k} changed (of {base:,})"][3] == f"ceil(k/30)+1 = {ref}"
    assert any(c.startswith("per-user full sync, ") for c in by_case)
    drift_rows = [r for r in rows if "with drift" in r[1]]
    assert len(drift_rows) == 3
    assert all("cache " in r[7] for r in drift_rows)

    # 2. Rate limit: both rows, with a 429 count.
    rl = [r for r in rows if r[0] == "2. Rate limit"]
    assert len(rl) == 2 and all("429" in r[2] for r in rl)

    # 3. Throughput: every contender keeps its row, dlt included when it is missing.
    thr = {r[1].split(",")[0]: r for r in rows if r[0].startswith("3.")}
    assert set(thr) == {
        "guru_analytics sync",
        "naive loop (requests.post + row-by-row INSERT)",
        "dlt rest_api (merge)",
        "dlt rest_api (append)",
        "HTTP only (server ceiling)",
    }
    assert "sessions/s" in thr["guru_analytics sync"][2]
    naive = thr["naive loop (requests.post + row-by-row INSERT)"]
    assert f"got all {QUICK.throughput_sessions:,} sessions" in naive[7]
    if importlib.util.find_spec("dlt") is None:
        assert "dlt not installed" in thr["dlt rest_api (merge)"][2]
    else:
        assert "sessions/s" in thr["dlt rest_api (merge)"][2]

    # 4. Analytics: each frame beside its SQL twin, with the same numbers.
    an = [r for r in rows if r[0] == "4. Analytics" and r[1].startswith("frames.")]
    assert [r[1].split("(")[0] for r in an] == [
        "frames.activity",
        "frames.users",
        "frames.lifecycle",
        "frames.retention",
        "frames.sessions",
    ]
    assert all("same numbers" in r[7] for r in an)
    loads = [r[1] for r in rows if r[0] == "4. Analytics" and r[1].startswith("load ")]
    assert loads and loads[0].startswith(f"load {QUICK.analytics_sessions:,} sessions")

    # 6. Questions (issue 15): one export request against one Get Session per session.
    qs = [r for r in rows if r[0] == "6. Questions"]
    assert len(qs) == 3 * len(QUICK.full_sizes)
    assert qs[0][2].startswith("1 request") and qs[0][3] == f"{n:,} Get Session requests"
    assert qs[1][6] == "yes"  # every follow-up recovered, linked

    # 5. Scaling: both quick sizes and the growth row.
    lo, hi = QUICK.scaling_sizes
    sc = [r[1] for r in rows if r[0] == "5. Scaling"]
    assert sc == [
        f"sync {lo:,} sessions",
        f"sync {hi:,} sessions",
        f"growth {lo:,} -> {hi:,} sessions (x{hi / lo:g})",
    ]
