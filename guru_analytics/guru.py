"""``Guru``: the one object a notebook needs; its one responsibility is configuration and
delegation.

It holds a guru slug, where the key comes from, the cache path and the known external user
ids, and delegates: ``sync`` to ``sync.sync`` (the only call that talks to the API), the
frame methods to ``frames``, ``plot_*`` to ``plots``, ``export`` to ``reports`` and
``dashboard`` to ``dashboard.Dashboard`` (which sees it only as a ``DashboardSource``). Reads
open the cache read-only for the length of one call, so a sync running in another process is
blocked for at most that long.

The key is kept private and shown at most masked (``errors.mask_key``).
"""

from __future__ import annotations

import contextlib
import html
import os
import shutil
import tempfile
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import pandas as pd

from . import catalog
from .checks import guru_slug
from .errors import CacheError, ConfigError, mask_key
from .timestamps import check_tz, utc_now

if TYPE_CHECKING:
    import requests
    from matplotlib.axes import Axes

    from .dashboard import Dashboard
    from .progress import ProgressCallback
    from .server import LocalGurubase
    from .sync import SyncSummary

_TZ_DEFAULTED = tuple(name for name, r in catalog.REPORTS.items() if r.takes("tz"))
"""Reports that get ``Guru.tz`` when no ``tz`` is passed (from the catalogue)."""
_STATUS_FIGURES = (
    "sessions",
    "deleted",
    "users",
    "messages",
    "pending_messages",
    "first_event",
    "last_event",
    "last_run",
)


@dataclass(frozen=True)
class CacheStatus:
    """What the cache holds for one guru: the numbers ``repr(guru)`` shows."""

    slug: str
    path: str
    exists: bool
    sessions: int = 0
    deleted: int = 0
    users: int = 0
    messages: int = 0
    pending_messages: int = 0
    first_event: datetime | None = None
    last_event: datetime | None = None
    last_run: dict[str, Any] | None = None

    @property
    def span(self) -> str:
        if self.first_event is None or self.last_event is None:
            return "-"
        return f"{self.first_event:%Y-%m-%d} – {self.last_event:%Y-%m-%d}"

    @property
    def last_sync(self) -> str:
        run = self.last_run
        if not run:
            return "never"
        when = run.get("ended_at") or run.get("started_at")
        stamp = f"{when:%Y-%m-%d %H:%M} UTC" if when is not None else "?"
        return f"{stamp} ({run.get('mode')}, {run.get('outcome')})"

    @classmethod
    def of(cls, slug: str, path: str, info: Mapping[str, Any]) -> CacheStatus:
        """The status of an existing cache from ``Store.status(slug)``'s figures."""
        return cls(slug, path, exists=True, **{name: info[name] for name in _STATUS_FIGURES})

    def describe(self) -> str:
        """One line: ``2,000 sessions, 25 users, 2025-05-05 – 2025-11-01, last sync ...``."""
        if not self.exists or (self.sessions == 0 and self.last_run is None):
            return "cache empty: run .sync()"
        msgs = f", {self.messages:,} messages" if self.messages else ""
        return (
            f"{self.sessions:,} sessions, {self.users:,} users{msgs}, {self.span}, "
            f"last sync {self.last_sync}"
        )


class Guru:
    """A guru's sessions: sync them into the cache, then read frames, plots and reports.

    ``api_key`` falls back to ``GURUBASE_API_KEY`` and ``base_url`` to ``GURUBASE_BASE_URL``
    (then the hosted API) when ``sync()`` runs; ``db`` to ``GURU_ANALYTICS_DB`` or the default
    cache path. ``users`` are the external user ids to sync per user (the API cannot list
    them). ``tz`` is the default time zone of frames and plots. ``rate_limit`` requests per
    ``rate_window`` seconds (10/60 s is Gurubase's default; ``None`` = no client pacing).

    Only ``sync()`` calls the API; every other method reads the cache, opening it read-only
    for the length of the call.
    """

    def __init__(
        self,
        slug: str,
        api_key: str | None = None,
        base_url: str | None = None,
        db: str | os.PathLike[str] | None = None,
        *,
        rate_limit: int | None = 10,
        rate_window: float = 60.0,
        users: Iterable[str] | None = None,
        tz: str = "UTC",
        timeout: float = 30.0,
        max_retries: int = 5,
        session: requests.Session | None = None,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        slug = guru_slug(slug)
        if isinstance(users, str):
            raise ConfigError("users must be a list of external user ids, not one string")
        from .store import default_cache_path

        self.slug = slug
        self._api_key = api_key
        self.base_url = base_url
        self.db = Path(db).expanduser() if db is not None else default_cache_path()
        self.rate_limit = rate_limit
        self.rate_window = rate_window
        self.users_to_sync: list[str] = list(dict.fromkeys(users or ()))
        self.tz = check_tz(tz)
        self.timeout = timeout
        self.max_retries = max_retries
        self._session = session
        self._clock = clock
        self._store: Any = None
        self.server: LocalGurubase | None = None
        self._cleanup: Callable[[], None] | None = None

    # --- construction helpers ---

    @classmethod
    def local(
        cls,
        n_sessions: int = 3000,
        n_users: int = 30,
        days: int = 180,
        *,
        seed: int = 0,
        end: datetime | None = None,
        db: str | os.PathLike[str] | None = None,
        rate_limit: int | None = None,
        server_rate_limit: int | None = None,
        tz: str = "UTC",
        **server_options: Any,
    ) -> Guru:
        """A guru served by an in-process ``LocalGurubase`` with synthetic data (no key, no
        network). ``end`` defaults to a fixed date so the same seed gives the same data on
        every run (a kept ``db`` then syncs incrementally). Without ``db`` the cache lives in
        a temporary directory removed by ``close()``. Rate limits default to off."""
        srv, tmpdir, path = _start_local(
            n_sessions,
            n_users,
            days,
            seed=seed,
            end=end,
            db=db,
            rate_limit=server_rate_limit,
            **server_options,
        )
        try:
            assert srv.guru_slug is not None
            guru = cls(
                srv.guru_slug,
                api_key=srv.api_key,
                base_url=srv.base_url,
                db=path,
                rate_limit=rate_limit,
                users=srv.users(srv.guru_slug),
                tz=tz,
            )
        except BaseException:
            _stop_local(srv, tmpdir)
            raise
        guru.server = srv
        guru._cleanup = weakref.finalize(guru, _stop_local, srv, tmpdir)
        return guru

    def close(self) -> None:
        """Close the cache and stop an owned local server (removing its temporary cache)."""
        if self._store is not None:
            self._store.close()
            self._store = None
        if self._cleanup is not None:
            self._cleanup()
            self._cleanup = None

    def __enter__(self) -> Guru:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- cache access ---

    @property
    def store(self) -> Any:
        """The ``Store`` of ``db`` (created on first use; holds no lock while idle)."""
        if self._store is None:
            from .store import Store

            self._store = Store(self.db, clock=self._clock)
        return self._store

    @contextlib.contextmanager
    def reader(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A read-only connection for one block (never creates a cache file)."""
        from .errors import NoDataError

        if self._store is None and not self.db.is_file():
            raise NoDataError(f"no cache at {self.db} yet: run guru.sync() first")
        with self.store.reader() as con:
            yield con

    def status(self) -> CacheStatus:
        """Counts, data span and last sync of this guru in the cache (no API call)."""
        if self._store is None and not self.db.is_file():
            return CacheStatus(self.slug, str(self.db), exists=False)
        return CacheStatus.of(self.slug, str(self.db), self.store.status(self.slug))

    def user_ids(self) -> list[str]:
        """External user ids with cached sessions, most sessions first."""
        if self._store is None and not self.db.is_file():
            return []
        with self.reader() as con:
            rows = con.execute(
                """SELECT u.external_user_id FROM session_users u
                   JOIN sessions s ON s.guru = u.guru AND s.id = u.id
                   WHERE u.guru = ? AND NOT s.deleted
                   GROUP BY 1 ORDER BY count(*) DESC, 1""",
                [self.slug],
            ).fetchall()
        return [r[0] for r in rows]

    # --- the one call that fetches ---

    def sync(
        self,
        *,
        users: Iterable[str] | None = None,
        guru_wide: bool = True,
        search: str | None = None,
        full: bool = False,
        messages: bool = False,
        max_requests: int | None = None,
        progress: bool | None = None,
        on_progress: ProgressCallback | None = None,
        questions: bool = False,
        recheck_unattributed: str = "full",
    ) -> SyncSummary:
        """Bring the cache up to date: the guru-wide listing and one listing per user, in one
        run with one summary (``sync.sync``).

        ``users`` defaults to the ids given at construction (``[]`` = none);
        ``guru_wide=False`` reads only their listings (a partial cache). ``messages`` then
        fetches the conversations of new or changed sessions (one request each, at most
        ``max_requests``). ``questions`` stores every question since the last export (one
        Export Analytics request, guru-wide, after the listings). ``on_progress(SyncProgress)``
        hears every page, answer, the export and each wait second. The first run reads
        everything; later runs stop at what the cache has, and read user listings only to
        attribute new sessions. ``recheck_unattributed`` (``full``, ``daily``, ``never``): when
        sessions no given user owns are swept again (see ``sync.RECHECK_CHOICES``).
        """
        from .client import GurubaseClient
        from .sync import sync as run_sync

        if isinstance(users, str):
            raise ConfigError("users must be a list of external user ids, not one string")
        user_list = list(dict.fromkeys(self.users_to_sync if users is None else users))
        if not guru_wide and not user_list:
            raise ConfigError("nothing to sync: pass users=[...] or keep guru_wide=True")
        client = GurubaseClient(
            self._api_key,
            self.base_url,
            session=self._session,
            rate_limit=self.rate_limit,
            rate_window=self.rate_window,
            timeout=self.timeout,
            max_retries=self.max_retries,
            clock=self._clock,
        )
        try:
            return run_sync(
                self.slug,
                client=client,
                store=self.store,
                users=user_list or None,
                guru_wide=guru_wide,
                search=search,
                full=full,
                messages=messages,
                questions=questions,
                max_requests=max_requests,
                progress=progress,
                on_progress=on_progress,
                clock=self._clock,
                recheck_unattributed=recheck_unattributed,
            )
        finally:
            client.close()

    # --- frames (read the cache, never fetch) ---

    def _frame(self, name: str, *args: Any, **params: Any) -> pd.DataFrame:
        from . import frames

        fn = frames.FRAMES[name]
        if catalog.report(name).takes("tz") and params.get("tz") is None:
            params["tz"] = self.tz
        with self.reader() as con:
            return fn(con, self.slug, *args, **params)

    def report(self, name: str, **params: Any) -> pd.DataFrame:
        """Any report of the catalogue by name (``catalog.REPORTS``), e.g.
        ``guru.report("votes", freq="week")``; the named methods below are shortcuts."""
        return self._frame(catalog.report(name).name, **params)

    def sessions(self, **filters: Any) -> pd.DataFrame:
        """One row per cached session (``frames.sessions``: start, end, users, search, ...)."""
        return self._frame("sessions", **filters)

    def activity(
        self, freq: str = "day", tz: str | None = None, by: str | None = None, **filters: Any
    ) -> pd.DataFrame:
        """Active/new sessions, events and active users per bucket (``frames.activity``)."""
        return self._frame("activity", freq=freq, tz=tz, by=by, **filters)

    def users(self, **filters: Any) -> pd.DataFrame:
        """Per external user: sessions, events, active days, share, rank (``frames.users``)."""
        return self._frame("users", **filters)

    def lifecycle(self, freq: str = "week", tz: str | None = None, **filters: Any) -> pd.DataFrame:
        """New / returning / resurrected / dormant users per bucket (``frames.lifecycle``)."""
        return self._frame("lifecycle", freq=freq, tz=tz, **filters)

    def retention(
        self, freq: str = "week", periods: int = 8, tz: str | None = None, **filters: Any
    ) -> pd.DataFrame:
        """Cohort retention, long format (``frames.retention``; ``retention_matrix`` pivots)."""
        return self._frame("retention", freq=freq, periods=periods, tz=tz, **filters)

    def summary(
        self, period: str = "7d", now: Any = None, tz: str | None = None, **filters: Any
    ) -> pd.DataFrame:
        """Headline figures for the last ``period`` against the one before (``frames.summary``).

        ``now`` is read by ``frames.parse_now``: ``"now"`` (the default, the current UTC
        instant), ``"today"`` (local midnight in ``tz``), ``"latest"`` (just after the newest
        cached activity, for data that stopped, like the synthetic demo) or an instant."""
        return self._frame("summary", period=period, now=now, tz=tz, **filters)

    def heatmap(self, tz: str | None = None, **filters: Any) -> pd.DataFrame:
        """Events and active sessions per local weekday x hour (``frames.weekday_hour``)."""
        return self._frame("heatmap", tz=tz, **filters)

    def binge_length(self, by: str | None = None, **filters: Any) -> pd.DataFrame:
        """Messages per session: mean, median, p90, max (needs ``sync(messages=True)``)."""
        return self._frame("binge_length", by=by, **filters)

    def sources(self, freq: str = "week", tz: str | None = None, **filters: Any) -> pd.DataFrame:
        """Messages per bucket per source (needs ``sync(messages=True)``)."""
        return self._frame("sources", freq=freq, tz=tz, **filters)

    def votes(self, freq: str = "week", tz: str | None = None, **filters: Any) -> pd.DataFrame:
        """Votes and mean trust score per bucket (needs ``sync(messages=True)``)."""
        return self._frame("votes", freq=freq, tz=tz, **filters)

    # --- plots ---

    def _chart(self, name: str, ax: Axes | None, params: dict[str, Any]) -> Axes:
        from . import plots

        params = {k: v for k, v in params.items() if v is not None}
        if "tz" not in params and "tz" in catalog.chart_options(name):
            params["tz"] = self.tz
        with self.reader() as con:
            return plots.chart(con, name, self.slug, ax=ax, **params)

    def plot(self, name: str, *, ax: Axes | None = None, **params: Any) -> Axes:
        """Any chart of the catalogue by name (``catalog.CHARTS``), e.g.
        ``guru.plot("trust", freq="week")``; the ``plot_*`` methods below are shortcuts."""
        return self._chart(catalog.chart(name).name, ax, params)

    def plot_activity(
        self,
        freq: str = "day",
        tz: str | None = None,
        by: str | None = None,
        *,
        metric: str = "active_sessions",
        kind: str = "bar",
        top: int = 5,
        ax: Axes | None = None,
        **filters: Any,
    ) -> Axes:
        """Bars of ``metric`` per bucket (stacked by the top users with ``by='user'``)."""
        return self._chart(
            "activity",
            ax,
            {
                "freq": freq,
                "tz": tz,
                "by": by,
                "metric": metric,
                "kind": kind,
                "top": top,
                **filters,
            },
        )

    def plot_users(
        self, metric: str = "sessions", *, top: int = 20, ax: Axes | None = None, **filters: Any
    ) -> Axes:
        """Horizontal bars of the top users by ``metric``."""
        return self._chart("users", ax, {"metric": metric, "top": top, **filters})

    def plot_heatmap(
        self,
        tz: str | None = None,
        *,
        metric: str = "events",
        ax: Axes | None = None,
        **filters: Any,
    ) -> Axes:
        """Weekday x hour heatmap in the time zone."""
        return self._chart("heatmap", ax, {"tz": tz, "metric": metric, **filters})

    def plot_lifecycle(
        self, freq: str = "week", tz: str | None = None, *, ax: Axes | None = None, **filters: Any
    ) -> Axes:
        """New / returning / resurrected users above zero, dormant below."""
        return self._chart("lifecycle", ax, {"freq": freq, "tz": tz, **filters})

    def plot_retention(
        self,
        freq: str = "week",
        periods: int = 8,
        tz: str | None = None,
        *,
        value: str = "rate",
        ax: Axes | None = None,
        **filters: Any,
    ) -> Axes:
        """Cohort x period retention heatmap."""
        return self._chart(
            "retention", ax, {"freq": freq, "periods": periods, "tz": tz, "value": value, **filters}
        )

    def plot_sources(
        self, freq: str = "week", tz: str | None = None, *, ax: Axes | None = None, **filters: Any
    ) -> Axes:
        """Messages per bucket stacked by source (needs messages)."""
        return self._chart("sources", ax, {"freq": freq, "tz": tz, **filters})

    def plot_binge_length(self, *, ax: Axes | None = None, **filters: Any) -> Axes:
        """Histogram of messages per session (needs messages)."""
        return self._chart("binge_length", ax, dict(filters))

    def plot_trust(
        self, freq: str = "week", tz: str | None = None, *, ax: Axes | None = None, **filters: Any
    ) -> Axes:
        """Mean trust score per bucket (needs messages)."""
        return self._chart("trust", ax, {"freq": freq, "tz": tz, **filters})

    # --- reports and the dashboard ---

    def export(self, report: str, path: str | os.PathLike[str], **params: Any) -> pd.DataFrame:
        """Write report ``report`` (``sessions``, ``activity``, ``users``, ``lifecycle``,
        ``retention``, ``summary``, ``heatmap``, ...) to ``.csv`` or ``.parquet``; returns it."""
        from . import reports

        if report in _TZ_DEFAULTED and params.get("tz") is None:
            params["tz"] = self.tz
        with self.reader() as con:
            return reports.export(con, report, path, self.slug, **params)

    def dashboard(self, **options: Any) -> Dashboard:
        """The interactive dashboard (an ipywidgets widget; see ``dashboard.Dashboard``)."""
        from .dashboard import Dashboard

        return Dashboard(self, **options)

    # --- display ---

    def _key_note(self) -> str:
        if self._api_key is not None:
            return mask_key(self._api_key)
        env = os.environ.get("GURUBASE_API_KEY")
        return f"{mask_key(env)} (GURUBASE_API_KEY)" if env else "<none>"

    def _status_or_error(self) -> tuple[CacheStatus | None, str]:
        try:
            status = self.status()
        except CacheError as exc:
            return None, f"cache unreadable: {exc}"
        return status, status.describe()

    def __repr__(self) -> str:
        _status, text = self._status_or_error()
        where = f", base_url={self.base_url!r}" if self.base_url else ""
        return f"Guru({self.slug!r}, key={self._key_note()}{where}, db={str(self.db)!r}): {text}"

    def _repr_html_(self) -> str:
        status, text = self._status_or_error()
        rows: list[tuple[str, str]] = [("guru", self.slug), ("API key", self._key_note())]
        if self.base_url:
            rows.append(("API", self.base_url))
        rows.append(("cache", str(self.db)))
        rows += _status_rows(status, text)
        body = "".join(
            f"<tr><th style='text-align:left'>{html.escape(k)}</th>"
            f"<td style='text-align:left'>{html.escape(v)}</td></tr>"
            for k, v in rows
        )
        return f"<table>{body}</table>"


def _status_rows(status: CacheStatus | None, text: str) -> list[tuple[str, str]]:
    """The cache's figures as (label, value) rows of ``Guru._repr_html_``; ``text`` alone
    when the cache is unreadable or empty."""
    if status is None or not status.exists or status.last_run is None and status.sessions == 0:
        return [("cached", text)]
    deleted = f" (+{status.deleted:,} deleted)" if status.deleted else ""
    pending = f" ({status.pending_messages:,} to fetch)" if status.pending_messages else ""
    return [
        ("sessions", f"{status.sessions:,}{deleted}"),
        ("users", f"{status.users:,}"),
        ("messages", f"{status.messages:,}{pending}"),
        ("span", status.span),
        ("last sync", status.last_sync),
    ]


def _start_local(
    n_sessions: int,
    n_users: int,
    days: int,
    *,
    seed: int,
    end: datetime | None,
    db: str | os.PathLike[str] | None,
    rate_limit: int | None,
    **server_options: Any,
) -> tuple[LocalGurubase, str | None, str | os.PathLike[str]]:
    """A started ``LocalGurubase`` with synthetic data for ``Guru.local``, the temporary
    directory made for its cache (None when ``db`` is given) and the cache path."""
    from .server import LocalGurubase
    from .synthetic import DEFAULT_END
    from .timestamps import running_from

    data_end = end if end is not None else DEFAULT_END
    # The server's clock runs on from the data's end, so `sync(questions=True)` (Export
    # Analytics, up to 12 months back from the server's now) finds the synthetic history.
    server_options.setdefault("clock", running_from(data_end))
    srv = LocalGurubase.demo(
        n_sessions,
        n_users,
        days,
        seed=seed,
        end=data_end,
        rate_limit=rate_limit,
        **server_options,
    ).start()
    if db is not None:
        return srv, None, db
    try:
        tmpdir = tempfile.mkdtemp(prefix="guru-analytics-")
    except BaseException:
        srv.stop()
        raise
    return srv, tmpdir, Path(tmpdir) / "cache.duckdb"


def _stop_local(srv: LocalGurubase, tmpdir: str | None) -> None:
    srv.stop()
    if tmpdir is not None:
        shutil.rmtree(tmpdir, ignore_errors=True)
