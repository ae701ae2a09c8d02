"""``python -m benchmarks [--quick] [--out PATH]``: run every benchmark, write the table.

A full run writes ``BENCHMARKS.md`` (the committed table); a ``--quick`` run writes
``.benchmarks/quick.md`` (ignored by git), so a smoke run never overwrites the full figures.

Progress goes to stderr; the finished Markdown goes to stdout and to ``--out``. A section
that crashes is reported as a failed row (with its traceback on stderr) and the exit code
is 1, so a broken benchmark is never mistaken for a finished table.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from . import analytics, questions, rate_limit, request_efficiency, scaling, throughput
from .machine import header
from .plan import FULL, QUICK, Plan
from .table import Report, Row, render

SECTIONS: dict[str, tuple[str, Callable[[Plan, Path, Callable[[str], None]], list[Row]]]] = {
    "requests": (request_efficiency.SECTION, request_efficiency.run),
    "ratelimit": (rate_limit.SECTION, rate_limit.run),
    "throughput": (throughput.SECTION, throughput.run),
    "analytics": (analytics.SECTION, analytics.run),
    "scaling": (scaling.SECTION, scaling.run),
    "questions": (questions.SECTION, questions.run),
}

log = logging.getLogger("benchmarks")


def notes(plan: Plan) -> list[str]:
    """How the figures were made, printed under the table."""
    return [
        f"Mode `{plan.name}`: timings are the median of {plan.repeats} run(s) "
        "(interleaved across contenders); request counts are exact and deterministic.",
        "Server: `guru_analytics.server.LocalGurubase` on 127.0.0.1 (page size 30), synthetic "
        "data with a fixed seed; it runs in the benchmark's parent process, the measured "
        "loader in a fresh child process.",
        "Requests are counted from the server's own request log (every answered request, "
        "429s and Get Session checks included). Exactness = the cache's live sessions and "
        "their last_used equal the server's truth after the sync.",
        "Peak memory = the resident-set high-water mark (`VmHWM`) of a fresh process running "
        "only that contender, so DuckDB's native memory counts (`tracemalloc` would miss it). "
        "Not `ru_maxrss`: on Linux a fresh child's `ru_maxrss` starts at its parent's RSS.",
        "Ratios are taken between figures of this same run. `Met` compares with the issue's "
        "target; a **no** is a finding, not hidden.",
        "dlt: `rest_api_source`, POST with json body, `page_number` paginator "
        "(`page_body_path=page_num`, `base_page=1`, `has_more_path=has_more`, "
        "`total_path=None`, `stop_after_empty_page=False`), data selector "
        "`$['today','last_week','older'][*]`; telemetry off, all dlt folders temporary.",
    ]


def main(argv: Sequence[str] | None = None) -> int:
    args_in = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, one run each (CI)")
    parser.add_argument(
        "--out",
        default=None,
        help="Markdown file to write (default BENCHMARKS.md; .benchmarks/quick.md with --quick)",
    )
    parser.add_argument(
        "--only",
        default="",
        help=f"comma-separated sections to run (default all): {','.join(SECTIONS)}",
    )
    parser.add_argument("--verbose", action="store_true", help="show the client's retry logs")
    args = parser.parse_args(args_in)
    plan = QUICK if args.quick else FULL
    chosen = [s.strip() for s in args.only.split(",") if s.strip()] or list(SECTIONS)
    unknown = [s for s in chosen if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}: use {', '.join(SECTIONS)}")

    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    if not args.verbose:
        logging.getLogger("guru_analytics").setLevel(logging.ERROR)
    started = time.perf_counter()

    def say(message: str) -> None:
        log.info("[%6.1f s] %s", time.perf_counter() - started, message)

    command = shlex.join(["python", "-m", "benchmarks", *args_in])
    report = Report(header=header(command), notes=notes(plan))
    failed = False
    with tempfile.TemporaryDirectory(prefix="gabench-") as tmp:
        for key in chosen:
            title, run = SECTIONS[key]
            say(f"== {title}")
            try:
                report.extend(run(plan, Path(tmp) / key, say))
            except Exception as exc:  # reported as a failed row and in the exit code
                log.exception("section %s failed", key)
                report.rows.append(Row(title, "section failed", f"{type(exc).__name__}: {exc}"))
                failed = True
    elapsed = time.perf_counter() - started
    report.header.append(("Run time", f"{elapsed:.0f} s"))
    text = render(report)
    out = Path(args.out or (".benchmarks/quick.md" if args.quick else "BENCHMARKS.md"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    print(text)
    say(f"wrote {out} ({len(report.rows)} rows)")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
