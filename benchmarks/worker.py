"""Run one contender in a fresh Python process and read its peak memory.

Peak memory is the process's resident-set high-water mark (``VmHWM``, the figure behind
``ru_maxrss``; resident set, so DuckDB's native buffers count, which ``tracemalloc`` would
miss). A fresh interpreter per contender keeps one contender's
allocations, caches and imports out of another's figure. The child reads its keyword
arguments as JSON from stdin and writes ``{"result", "peak_rss_mb", "start_rss_mb"}`` to a
file, so library chatter on stdout cannot corrupt the result.

Usage (child side): ``python -m benchmarks.worker module:function RESULT_PATH < kwargs.json``.
"""

from __future__ import annotations

import importlib
import json
import os
import resource
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Outcome:
    """What a fresh-process run gave back; ``error`` is set instead of ``result`` on failure."""

    result: dict[str, Any] | None
    peak_rss_mb: float | None
    start_rss_mb: float | None
    error: str | None = None


def current_rss_mb() -> float:
    """Resident set size now (Linux ``/proc/self/statm``; falls back to the peak)."""
    statm = Path("/proc/self/statm")
    if statm.exists():
        pages = int(statm.read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    return peak_rss_mb()


def peak_rss_mb() -> float:
    """This process's peak resident set (MB), or a waited-for child's if that was higher.

    Linux's ``VmHWM`` is used for the process itself: ``ru_maxrss`` of a freshly exec'd
    child starts at its *parent's* resident set at fork time (the kernel carries the old
    image's high-water mark across exec), which would credit every contender with the
    harness's memory. Children (dlt may fork workers) come from ``RUSAGE_CHILDREN``.
    """
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return max(int(line.split()[1]) / 1024, kids)
    return max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, kids)


def run_fresh(
    target: str,
    kwargs: dict[str, Any],
    *,
    timeout: float = 1800.0,
    env: dict[str, str] | None = None,
) -> Outcome:
    """Call ``module:function(**kwargs)`` in a new interpreter and return its outcome.

    The function must return a JSON-serialisable dict. A crash, a non-zero exit or a timeout
    comes back as ``Outcome.error`` (one line) so the table can say so instead of losing
    the row.
    """
    child_env = dict(os.environ)
    child_env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO_ROOT), child_env.get("PYTHONPATH", "")) if p
    )
    child_env.update(env or {})
    with tempfile.TemporaryDirectory(prefix="gabench-worker-") as tmp:
        result_path = Path(tmp) / "result.json"
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "benchmarks.worker", target, str(result_path)],
                input=json.dumps(kwargs),
                capture_output=True,
                text=True,
                timeout=timeout,
                env=child_env,
                cwd=tmp,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return Outcome(None, None, None, f"timed out after {timeout:.0f} s")
        if proc.returncode != 0 or not result_path.exists():
            lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
            last = lines[-1] if lines else f"exit code {proc.returncode}"
            return Outcome(None, None, None, last[:300])
        payload = json.loads(result_path.read_text())
    return Outcome(payload["result"], payload["peak_rss_mb"], payload["start_rss_mb"])


def _child(target: str, result_path: str) -> None:
    module_name, func_name = target.split(":", 1)
    kwargs = json.loads(sys.stdin.read() or "{}")
    func = getattr(importlib.import_module(module_name), func_name)
    start = current_rss_mb()
    result = func(**kwargs)
    payload = {"result": result, "peak_rss_mb": peak_rss_mb(), "start_rss_mb": start}
    Path(result_path).write_text(json.dumps(payload))


if __name__ == "__main__":
    _child(sys.argv[1], sys.argv[2])
