"""The ``guru-analytics`` command line: a thin layer over the library.

Each subcommand has a ``_add_<name>(subparsers)`` that declares its options (with help for
every switch) and a ``_cmd_<name>(args) -> int`` that calls the library. Errors from the
package (``GuruAnalyticsError``) print one line to stderr and exit non-zero, never a
traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from . import __version__
from .checks import whole_number_arg
from .errors import (
    AuthenticationError,
    ConfigError,
    ForbiddenError,
    GuruAnalyticsError,
    NotFoundError,
    OutputError,
)
from .interrupts import is_interrupt

# Exit codes: 0 ok, 1 other package error, 2 usage/config, 3 auth/forbidden, 4 not found.
EXIT_CODES: dict[type[GuruAnalyticsError], int] = {
    ConfigError: 2,
    AuthenticationError: 3,
    ForbiddenError: 3,
    NotFoundError: 4,
}


def _exit_code(exc: GuruAnalyticsError) -> int:
    for cls, code in EXIT_CODES.items():
        if isinstance(exc, cls):
            return code
    return 1


# Each entry: (add_parser_function, command_function). Sections below register here.
COMMANDS: dict[str, tuple[Callable[..., None], Callable[[argparse.Namespace], int]]] = {}


_whole_number = whole_number_arg  # argparse ``type`` for whole numbers >= minimum (checks.py)
_whole_non_negative = _whole_number(0)
_positive = _whole_number(1)


# --- serve (local Gurubase-compatible server) -------------------------------------------
# (section owned by the server work)


def _rate(value: str) -> int | None:
    """``--rate-limit``: a positive integer, or ``none`` to switch the limit off."""
    if value.strip().lower() in ("none", "off", "0"):
        return None
    try:
        n = int(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"expected a number of requests or 'none', got {value!r}"
        ) from exc
    if n < 1:
        raise argparse.ArgumentTypeError("the rate limit must be >= 1 (or 'none')")
    return n


def _share(value: str) -> float:
    """A probability / share between 0 and 1."""
    try:
        x = float(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"expected a number between 0 and 1, got {value!r}"
        ) from exc
    if not 0.0 <= x <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {value!r}")
    return x


def _non_negative(value: str) -> float:
    try:
        x = float(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {value!r}") from exc
    if x < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {value!r}")
    return x


def _add_serve(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(
        name,
        help="run a local Gurubase-compatible API server with synthetic data",
        description="Serve a synthetic guru over the Gurubase sessions API (List Sessions, Get "
        "Session) on this machine, for trying the client, notebooks and reports without an API "
        "key. Runs in the foreground until Ctrl-C.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument(
        "--port", type=int, default=8029, help="port to listen on; 0 = any free port (default 8029)"
    )
    p.add_argument(
        "--sessions", type=int, default=5000, help="number of synthetic sessions (default 5000)"
    )
    p.add_argument("--users", type=int, default=50, help="number of external users (default 50)")
    p.add_argument(
        "--days", type=int, default=120, help="days of history before --end (default 120)"
    )
    p.add_argument(
        "--end", default=None, help="end of the history, ISO 8601 with offset (default: now)"
    )
    p.add_argument(
        "--seed", type=int, default=0, help="random seed for data, ties and faults (default 0)"
    )
    p.add_argument("--guru", default="demo-guru", help="guru slug to serve (default demo-guru)")
    p.add_argument(
        "--api-key",
        default=None,
        help="API key to accept (default: a random one, printed at start)",
    )
    p.add_argument("--page-size", type=int, default=30, help="sessions per page (default 30)")
    p.add_argument(
        "--rate-limit",
        type=_rate,
        default=10,
        help="requests per window per key owner, or 'none' (default 10)",
    )
    p.add_argument(
        "--rate-window", type=float, default=60.0, help="rate limit window in seconds (default 60)"
    )
    p.add_argument(
        "--no-tie-shuffle",
        action="store_true",
        help="serve equal last_used values in a stable order",
    )
    p.add_argument(
        "--unattributed-share",
        type=_share,
        default=0.3,
        help="share of sessions without an external user (default 0.3)",
    )
    p.add_argument(
        "--rootless-share",
        type=_share,
        default=0.0,
        help="share of sessions without a first question (default 0)",
    )
    f = p.add_argument_group("fault injection (probabilities per request)")
    f.add_argument("--fault-error-rate", type=_share, default=0.0, help="answer a 5xx error")
    f.add_argument(
        "--fault-statuses",
        default="500,502,503",
        help="comma-separated statuses for injected errors (default 500,502,503)",
    )
    f.add_argument(
        "--fault-body",
        choices=("html", "json", "both"),
        default="html",
        help="body of injected errors (default html)",
    )
    f.add_argument(
        "--fault-drop-rate", type=_share, default=0.0, help="close the connection without answering"
    )
    f.add_argument(
        "--fault-slow-rate", type=_share, default=0.0, help="answer late (see --fault-slow-seconds)"
    )
    f.add_argument(
        "--fault-slow-seconds",
        type=_non_negative,
        default=2.0,
        help="delay of a slow answer (default 2)",
    )
    f.add_argument(
        "--fault-throttle-rate", type=_share, default=0.0, help="start a burst of 429 answers"
    )
    f.add_argument(
        "--fault-throttle-burst", type=int, default=1, help="429 answers per burst (default 1)"
    )
    f.add_argument(
        "--fault-throttle-seconds",
        type=int,
        default=1,
        help="seconds an injected 429 asks to wait (default 1)",
    )
    f.add_argument(
        "--fault-no-retry-after",
        action="store_true",
        help="omit the Retry-After header on 429 (body still says)",
    )
    f.add_argument(
        "--fault-malformed-rate", type=_share, default=0.0, help="answer 200 with truncated JSON"
    )
    f.add_argument(
        "--fault-html200-rate", type=_share, default=0.0, help="answer 200 with an HTML page"
    )
    d = p.add_argument_group("drift (the data changing while clients page)")
    d.add_argument(
        "--drift-touch-per-request",
        type=_non_negative,
        default=0.0,
        help="expected follow-ups per listing request",
    )
    d.add_argument(
        "--drift-new-per-request",
        type=_non_negative,
        default=0.0,
        help="expected new sessions per listing request",
    )
    d.add_argument(
        "--drift-delete-per-request",
        type=_non_negative,
        default=0.0,
        help="expected deletions per listing request",
    )
    d.add_argument(
        "--drift-touch-per-second",
        type=_non_negative,
        default=0.0,
        help="follow-ups per second of server time",
    )
    d.add_argument(
        "--drift-new-per-second",
        type=_non_negative,
        default=0.0,
        help="new sessions per second of server time",
    )
    d.add_argument(
        "--drift-delete-per-second",
        type=_non_negative,
        default=0.0,
        help="deletions per second of server time",
    )


def _cmd_serve(args: argparse.Namespace) -> int:
    from datetime import datetime

    from .server import DriftConfig, FaultConfig, LocalGurubase  # lazy: keeps the CLI start fast

    try:
        statuses = tuple(int(x) for x in args.fault_statuses.split(",") if x.strip())
    except ValueError as exc:
        raise ConfigError(
            f"--fault-statuses must be comma-separated numbers such as 500,502: {exc}"
        ) from exc
    end = None
    if args.end:
        try:
            end = datetime.fromisoformat(args.end)
        except ValueError as exc:
            raise ConfigError(
                f"--end {args.end!r} is not ISO 8601: use e.g. 2025-11-01T00:00:00+00:00"
            ) from exc
        if end.tzinfo is None:
            raise ConfigError("--end needs a UTC offset, e.g. 2025-11-01T00:00:00+00:00")
    faults = FaultConfig(
        error_rate=args.fault_error_rate,
        error_statuses=statuses,
        error_bodies=("html", "json") if args.fault_body == "both" else (args.fault_body,),
        drop_rate=args.fault_drop_rate,
        slow_rate=args.fault_slow_rate,
        slow_seconds=args.fault_slow_seconds,
        throttle_rate=args.fault_throttle_rate,
        throttle_burst=args.fault_throttle_burst,
        throttle_seconds=args.fault_throttle_seconds,
        retry_after_header=not args.fault_no_retry_after,
        malformed_json_rate=args.fault_malformed_rate,
        html_200_rate=args.fault_html200_rate,
    )
    drift = DriftConfig(
        touch_per_request=args.drift_touch_per_request,
        new_per_request=args.drift_new_per_request,
        delete_per_request=args.drift_delete_per_request,
        touch_per_second=args.drift_touch_per_second,
        new_per_second=args.drift_new_per_second,
        delete_per_second=args.drift_delete_per_second,
    )
    srv = LocalGurubase.demo(
        args.sessions,
        args.users,
        args.days,
        seed=args.seed,
        guru_slug=args.guru,
        end=end,
        unattributed_share=args.unattributed_share,
        rootless_share=args.rootless_share,
        api_key=args.api_key,
        page_size=args.page_size,
        rate_limit=args.rate_limit,
        rate_window=args.rate_window,
        tie_shuffle=not args.no_tie_shuffle,
        faults=faults,
        drift=drift,
        host=args.host,
        port=args.port,
    )
    limit = "off" if args.rate_limit is None else f"{args.rate_limit} per {args.rate_window:g} s"
    try:
        try:
            srv.bind()
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {args.host}:{args.port} ({exc.strerror}): pick another --port"
            ) from exc
        print(f"Serving {args.sessions} sessions of guru {srv.guru_slug!r} at {srv.base_url}")
        print(f"  guru slug: {srv.guru_slug}")
        print(f"  API key:   {srv.api_key}")
        print(
            f"  rate limit: {limit}; page size {args.page_size}. Press Ctrl-C to stop.", flush=True
        )
        srv.serve_forever()
    except KeyboardInterrupt:
        print("stopped", flush=True)
    return 0


COMMANDS["serve"] = (_add_serve, _cmd_serve)

# --- sync -------------------------------------------------------------------------------
# (section owned by the sync work)


def _add_sync(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(
        name,
        help="page a guru's sessions into the local DuckDB cache",
        description="Bring the cache up to date with a guru's sessions: the first run (or "
        "--full) reads every page, later runs only what changed since the last one. Safe to "
        "interrupt: the next run resumes. Prints a summary.",
    )
    p.add_argument("guru", metavar="GURU", help="the guru slug (from the guru's URL)")
    p.add_argument(
        "--db", default=None, help="cache file (default $GURU_ANALYTICS_DB or the user cache dir)"
    )
    p.add_argument(
        "--base-url",
        default=None,
        help="API base URL (default $GURUBASE_BASE_URL or api.gurubase.io)",
    )
    p.add_argument(
        "--api-key", default=None, help="API key (default $GURUBASE_API_KEY; prefer the variable)"
    )
    p.add_argument(
        "--user",
        dest="users",
        action="append",
        default=None,
        metavar="ID",
        help="sync this external user's sessions (with attribution); repeat for several",
    )
    p.add_argument(
        "--users-file",
        default=None,
        metavar="FILE",
        help="file of external user ids, one per line (# comments and blank lines ignored)",
    )
    p.add_argument(
        "--search", default=None, metavar="Q", help="only sessions whose first question matches Q"
    )
    p.add_argument(
        "--full",
        action="store_true",
        help="re-read every page (finds deleted sessions; costs one request per 30 sessions)",
    )
    p.add_argument(
        "--recheck-unattributed",
        choices=["full", "daily", "never"],
        default="full",
        help="when sessions none of the users owns are swept again: on --full (default), "
        "at most daily when they changed, or never",
    )
    p.add_argument(
        "--messages",
        action="store_true",
        help="also fetch the messages of new/changed sessions (one request per session)",
    )
    p.add_argument(
        "--questions",
        action="store_true",
        help="also store every question since the last export (Export Analytics: one request)",
    )
    p.add_argument(
        "--max-requests",
        type=_whole_non_negative,
        default=None,
        metavar="N",
        help="at most N requests for --messages (the rest waits for the next run)",
    )
    p.add_argument(
        "--rate-limit",
        type=_rate,
        default=10,
        metavar="N|none",
        help="requests per minute to stay under, or 'none' (default 10, the API's limit)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _cmd_sync(args: argparse.Namespace) -> int:
    from .sync import read_users_file, sync_guru  # lazy: keeps the CLI start fast

    users = list(args.users or [])
    if args.users_file:
        users += read_users_file(args.users_file)
    summary = sync_guru(
        args.guru,
        api_key=args.api_key,
        base_url=args.base_url,
        db=args.db,
        rate_limit=args.rate_limit,
        users=users or None,
        search=args.search,
        full=args.full,
        recheck_unattributed=args.recheck_unattributed,
        messages=args.messages,
        questions=args.questions,
        max_requests=args.max_requests,
        progress=False if args.no_progress else None,
    )
    print(summary)
    return 0


COMMANDS["sync"] = (_add_sync, _cmd_sync)

# --- report / plot ----------------------------------------------------------------------
# (section owned by the analytics work)

# Report and chart names, and which options each takes, come from catalog.py.
# CLI option (dest) -> frame keyword (a catalog.OPTIONS name); options left at None are not
# passed on.
_FRAME_OPTIONS = {
    "freq": "freq", "tz": "tz", "by": "by", "start": "start", "end": "end", "user": "users",
    "search": "search", "week_start": "week_start", "include_deleted": "include_deleted",
    "periods": "periods", "period": "period", "now": "now",
}  # fmt: skip
_PLOT_OPTIONS = {"metric": "metric", "kind": "kind", "top": "top", "value": "value"}


def _add_analytics_options(p: argparse.ArgumentParser) -> None:
    """Options shared by ``report`` and ``plot`` (all optional; defaults live in frames)."""
    p.add_argument("guru", nargs="+", metavar="GURU", help="guru slug(s) in the cache")
    p.add_argument(
        "--db", help="cache file (default: $GURU_ANALYTICS_DB or the default cache path)"
    )
    p.add_argument(
        "--freq", help="bucket: H, D, W, M, Q, Y or hour, day, week, month, quarter, year"
    )
    p.add_argument("--tz", help="IANA time zone for buckets and timestamps (default UTC)")
    p.add_argument(
        "--by", choices=["user", "guru"], help="split activity/binge_length per user or guru"
    )
    p.add_argument("--start", help="first instant or date, inclusive (naive = in --tz)")
    p.add_argument(
        "--end", help="end instant or date, exclusive (e.g. 2025-04-01 for all of March)"
    )
    p.add_argument(
        "--user",
        nargs="+",
        action="extend",
        metavar="ID",
        help="only sessions of these external user ids ('(unattributed)' for none)",
    )
    p.add_argument("--search", help="only sessions whose title contains this (case-insensitive)")
    p.add_argument(
        "--week-start", dest="week_start", help="first day of week buckets: MON..SUN (default MON)"
    )
    p.add_argument(
        "--include-deleted",
        dest="include_deleted",
        action="store_true",
        default=None,
        help="count sessions deleted upstream too",
    )
    p.add_argument(
        "--periods",
        type=_positive,
        help="retention: number of periods including period 0 (default 8)",
    )
    p.add_argument("--period", help="summary: length of the period, e.g. 24h, 7d, 4w (default 7d)")
    p.add_argument(
        "--now",
        help="now (the current UTC instant), today (midnight in --tz), latest (just after the "
        "newest event) or an instant: summary: end of the current period (default now); "
        "activity/lifecycle/retention: the horizon that decides which buckets are complete "
        "(default: the end of the last sync)",
    )


def _add_report(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(
        name,
        help="write an analytics table as CSV or Parquet",
        description="Compute an analytics table from the local cache (never calls the API) and "
        "write it as CSV (.csv or - for stdout) or Parquet (.parquet).",
    )
    from .catalog import REPORTS

    p.add_argument("report", choices=tuple(REPORTS), help="which table")
    _add_analytics_options(p)
    p.add_argument(
        "-o",
        "--output",
        default="-",
        metavar="FILE",
        help="output .csv, .parquet or - for stdout (default -)",
    )


def _add_plot(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(
        name,
        help="draw an analytics chart to PNG or SVG",
        description="Draw a chart from the local cache (never calls the API) to a .png or .svg file.",
    )
    from .catalog import CHARTS

    p.add_argument("chart", choices=tuple(CHARTS), help="which chart")
    _add_analytics_options(p)
    p.add_argument(
        "--metric",
        help="activity: active_sessions, new_sessions, events, active_users, messages; "
        "users: sessions, events, ...; heatmap: events or active_sessions",
    )
    p.add_argument(
        "--kind", choices=["bar", "line"], help="activity/sources: bars (default) or lines"
    )
    p.add_argument(
        "--top", type=_positive, help="series or users shown before the rest become 'other'"
    )
    p.add_argument("--value", choices=["rate", "users"], help="retention: rate (default) or users")
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="output .png or .svg")


def _frame_kwargs(args: argparse.Namespace, accepted: frozenset[str], what: str) -> dict[str, Any]:
    """The options the user set, as frame keywords; an option the catalogue does not list
    for this report/chart is an error rather than silently ignored."""
    kwargs: dict[str, Any] = {}
    for dest, key in _FRAME_OPTIONS.items():
        value = getattr(args, dest, None)
        if value is None:
            continue
        if key not in accepted:
            flag = "--" + dest.replace("_", "-")
            raise ConfigError(f"{flag} does not apply to {what}: drop it")
        kwargs[key] = value
    return kwargs


def _analytics_db(args: argparse.Namespace) -> str:
    """The cache path to read; never creates a cache (a missing file is an error)."""
    from pathlib import Path

    from .errors import NoDataError
    from .store import default_cache_path

    db = Path(args.db) if args.db else Path(default_cache_path())
    if not db.is_file():
        slug = args.guru[0]
        raise NoDataError(f"no cache at {db}: run `guru-analytics sync {slug} --db {db}` first")
    return str(db)


def _analytics_gurus(args: argparse.Namespace) -> str | list[str]:
    """The GURU arguments, each checked as a slug (one slug, or a list of several)."""
    from .checks import guru_slug

    slugs = [guru_slug(g) for g in args.guru]
    return slugs[0] if len(slugs) == 1 else slugs


def _cmd_report(args: argparse.Namespace) -> int:
    from . import catalog, reports
    from .store import Store

    kwargs = _frame_kwargs(args, catalog.report(args.report).options, f"the {args.report} report")
    reports.file_format(args.output)  # a bad name fails before any work
    guru = _analytics_gurus(args)
    with Store(_analytics_db(args)).reader() as con:
        df = reports.export(con, args.report, args.output, guru, **kwargs)
    if args.output != "-":
        print(f"wrote {len(df)} rows of {args.report} to {args.output}", file=sys.stderr)
    return 0


def _cmd_plot(args: argparse.Namespace) -> int:
    from pathlib import Path

    from . import catalog, plots
    from .store import Store

    if Path(args.output).suffix.lower() not in (".png", ".svg"):
        raise ConfigError(f"cannot save a chart as {args.output!r}: use a .png or .svg file name")
    kwargs = _frame_kwargs(args, catalog.chart_options(args.chart), f"the {args.chart} chart")
    for dest, key in _PLOT_OPTIONS.items():
        value = getattr(args, dest, None)
        if value is None:
            continue
        if key not in catalog.chart(args.chart).plot_options:
            raise ConfigError(f"--{dest} does not apply to the {args.chart} chart: drop it")
        kwargs[key] = value
    guru = _analytics_gurus(args)
    with Store(_analytics_db(args)).reader() as con:
        ax = plots.chart(con, args.chart, guru, **kwargs)
    plots.save(ax, args.output)
    print(f"wrote {args.chart} chart to {args.output}", file=sys.stderr)
    return 0


COMMANDS["report"] = (_add_report, _cmd_report)
COMMANDS["plot"] = (_add_plot, _cmd_plot)

# --- demo -------------------------------------------------------------------------------
# (section owned by the notebook/demo work)


def _add_demo(sub: argparse._SubParsersAction, name: str) -> None:
    from .demo import DEFAULT_DAYS, DEFAULT_OUT, DEFAULT_RATE_LIMIT, DEFAULT_SESSIONS, DEFAULT_USERS

    p = sub.add_parser(
        name,
        help="run the whole job on built-in synthetic data (no key, no network)",
        description="Start a local Gurubase-compatible server in this process with a synthetic "
        "guru, sync every session, every external user and the messages into DuckDB, then "
        "write CSV reports and PNG charts. Run it twice: the second sync is incremental.",
    )
    p.add_argument("--out", default=DEFAULT_OUT, metavar="DIR",
                   help=f"output folder for cache.duckdb, CSVs and PNGs (default ./{DEFAULT_OUT})")  # fmt: skip
    p.add_argument("--sessions", type=_positive, default=DEFAULT_SESSIONS,
                   help=f"synthetic sessions (default {DEFAULT_SESSIONS})")  # fmt: skip
    p.add_argument("--users", type=_positive, default=DEFAULT_USERS,
                   help=f"synthetic external users (default {DEFAULT_USERS})")  # fmt: skip
    p.add_argument("--days", type=_positive, default=DEFAULT_DAYS,
                   help=f"days of history (default {DEFAULT_DAYS})")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="random seed of the data (default 0)")
    p.add_argument("--rate-limit", type=_rate, default=DEFAULT_RATE_LIMIT,
                   help="requests per minute for both the client and the local server, or 'none' "
                   f"(default {DEFAULT_RATE_LIMIT})")  # fmt: skip
    p.add_argument(
        "--tz", default="UTC", help="IANA time zone of buckets and timestamps (default UTC)"
    )
    p.add_argument("--no-messages", action="store_true",
                   help="skip Get Session (no messages, binge length or sources outputs)")  # fmt: skip
    p.add_argument("--no-questions", action="store_true",
                   help="skip Export Analytics (no question outputs)")  # fmt: skip
    bar = p.add_mutually_exclusive_group()
    bar.add_argument("--progress", dest="progress", action="store_true", default=None,
                     help="always show the progress bar (default: when stderr is a terminal)")  # fmt: skip
    bar.add_argument(
        "--no-progress", dest="progress", action="store_false", help="never show the progress bar"
    )


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo
    from .timestamps import check_tz

    run_demo(
        args.out,
        n_sessions=args.sessions,
        n_users=args.users,
        days=args.days,
        seed=args.seed,
        rate_limit=args.rate_limit,
        tz=check_tz(args.tz),
        messages=not args.no_messages,
        progress=args.progress,
        questions=not args.no_questions,
    )
    return 0


COMMANDS["demo"] = (_add_demo, _cmd_demo)

# --- dashboard ------------------------------------------------------------------------
# (section owned by the web dashboard work, issue 12)


def _add_dashboard(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(
        name,
        help="serve the dashboard as a web page (needs: pip install 'guru-analytics[web]')",
        description="Serve the interactive dashboard of a cached guru as a web page with Voila "
        "on 127.0.0.1 and print its URL. Works on an existing cache without a key; with "
        "GURUBASE_API_KEY set, its Sync now button brings the cache up to date. Ctrl-C stops it. "
        "Needs Voila: pip install 'guru-analytics[web]'.",
    )
    p.add_argument("guru", metavar="GURU", help="the guru slug (from the guru's URL)")
    p.add_argument(
        "--db", default=None, help="cache file (default $GURU_ANALYTICS_DB or the user cache dir)"
    )
    p.add_argument("--port", type=_whole_non_negative, default=8866,
                   help="port on 127.0.0.1 (default 8866; 0 = any free port)")  # fmt: skip
    p.add_argument("--tz", default="UTC", help="IANA time zone the page starts in (default UTC)")
    p.add_argument("--no-browser", action="store_true", help="do not open a browser")


def _cmd_dashboard(args: argparse.Namespace) -> int:
    from .store import default_cache_path
    from .timestamps import check_tz
    from .web import serve

    db = args.db if args.db else str(default_cache_path())
    return serve(
        args.guru, db, port=args.port, tz=check_tz(args.tz), open_browser=not args.no_browser
    )


COMMANDS["dashboard"] = (_add_dashboard, _cmd_dashboard)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="guru-analytics",
        description="Sync a Gurubase guru's sessions into DuckDB and report on them.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (add, _cmd) in COMMANDS.items():
        add(sub, name)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    _add, cmd = COMMANDS[args.command]
    try:
        try:
            return cmd(args)
        except Exception as exc:
            # DuckDB's own exceptions, which the store does not (yet) translate everywhere
            ours = _duckdb_as_ours(exc, args)
            if ours is exc:
                raise
            raise ours from exc
    except GuruAnalyticsError as exc:
        if isinstance(exc, OutputError) and exc.target == "-":
            if isinstance(exc.__cause__, BrokenPipeError):
                return _broken_pipe()
            _drop_stdout()
        print(f"guru-analytics: error: {exc}", file=sys.stderr)
        return _exit_code(exc)
    except BrokenPipeError:  # stdout's reader went away (`... | head`): nothing more to say
        return _broken_pipe()
    except KeyboardInterrupt:
        # argv None: this is the process's own command line, which now only exits; more
        # Ctrl-Cs during the exit would print tracebacks from interpreter shutdown
        return _interrupted(keep_ignoring=argv is None)


def _drop_stdout() -> None:
    """Stdout cannot be written (full disk, closed pipe): point it at /dev/null so the exit
    flush of what is still buffered does not print a second error and exit 120."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass  # not a real file descriptor (captured output): nothing will flush it


# What a shell reports for a process ended by SIGPIPE (128 + 13), as other tools in a pipe do.
EXIT_BROKEN_PIPE = 141


def _broken_pipe() -> int:
    """The reader of stdout went away (``guru-analytics report ... -o - | head``): exit
    quietly, as the Python docs advise, with stdout on /dev/null so the exit flush of what
    is still buffered does not raise again."""
    _drop_stdout()
    return EXIT_BROKEN_PIPE


_INTERRUPTED = "guru-analytics: interrupted; the cache keeps every page written so far"


def _interrupted(*, keep_ignoring: bool) -> int:
    """Say so in one line and exit 130; a second Ctrl-C while saying it changes nothing."""
    import signal
    import threading

    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main_thread else None
    try:
        print(_INTERRUPTED, file=sys.stderr, flush=True)
    finally:
        if previous is not None and not keep_ignoring:
            signal.signal(signal.SIGINT, previous)
    return 130


def _duckdb_as_ours(exc: Exception, args: argparse.Namespace) -> BaseException:
    """DuckDB's interrupt (a Ctrl-C that landed inside a query) as ``KeyboardInterrupt``,
    running out of memory (e.g. hourly buckets since year 1) as one line; anything else
    unchanged (a bug should show its traceback). The store itself turns DuckDB's I/O errors
    on the cache (a truncated file, a full disk) into ``CacheError``."""
    if is_interrupt(exc):
        return KeyboardInterrupt()
    duckdb = sys.modules.get("duckdb")
    if duckdb is None:
        return exc
    if isinstance(exc, duckdb.OutOfMemoryException):
        detail = (str(exc).strip().splitlines() or ["out of memory"])[0][:160]
        return GuruAnalyticsError(
            f"not enough memory for this ({detail}): narrow --start/--end, use a coarser "
            "--freq or fewer gurus/users"
        )
    return exc
