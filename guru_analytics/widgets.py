"""The notebook dashboard: controls that produce parameters, a pure ``render`` that draws.

Controls (date range, bucket, time zone, metric, split, users, title search) only produce a
``DashboardParams``; ``render(con, guru, params)`` turns a cache connection and parameters
into tables and matplotlib ``Figure`` objects and touches no widget, so tests drive the
dashboard through the real widgets and assert on real artists and tables.

Figures are made with the object-oriented API (``matplotlib.figure.Figure``), never pyplot,
so the inline backend does not show them a second time and nothing keeps them alive after
the next render. They are turned into PNG bytes here and handed to ``Output`` widgets as
one replacement of the widget's outputs (what ``clear_output(wait=True)`` + ``display``
achieves on the kernel thread), which works from the debounce timer and the sync thread
too and needs no ipympl.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from zoneinfo import ZoneInfo, available_timezones

import ipywidgets as widgets
import pandas as pd

from .errors import ConfigError, GuruAnalyticsError, NoDataError
from .timestamps import check_tz

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from .guru import Guru

FREQS: tuple[tuple[str, str], ...] = (
    ("Hour", "hour"),
    ("Day", "day"),
    ("Week", "week"),
    ("Month", "month"),
)
METRICS: tuple[tuple[str, str], ...] = (
    ("Active sessions", "active_sessions"),
    ("New sessions", "new_sessions"),
    ("Active users", "active_users"),
)
SPLITS: tuple[tuple[str, str], ...] = (("None", "none"), ("Top N users", "top"))
COMMON_TIMEZONES: tuple[str, ...] = (
    "UTC",
    "Europe/London",
    "Europe/Berlin",
    "Europe/Istanbul",
    "America/New_York",
    "America/Chicago",
    "America/Los_Angeles",
    "America/Sao_Paulo",
    "Asia/Kolkata",
    "Asia/Shanghai",
    "Asia/Tokyo",
    "Australia/Sydney",
)
_log = logging.getLogger("guru_analytics.widgets")


# --- debouncing ---------------------------------------------------------------------------


class Timer(Protocol):
    """What ``Debouncer`` needs from a timer (``threading.Timer`` fits)."""

    def start(self) -> None: ...

    def cancel(self) -> None: ...


TimerFactory = Callable[[float, Callable[[], None]], Timer]


class Debouncer:
    """Run ``fn`` once, ``delay`` seconds after the last of a burst of calls.

    Dragging a date or typing a search fires many widget events; redrawing on each would
    queue up seconds of plotting. The timer is injectable so tests fire it by hand
    (``flush()``) instead of sleeping.
    """

    def __init__(
        self,
        fn: Callable[[], object],
        delay: float = 0.3,
        timer_factory: TimerFactory | None = None,
    ) -> None:
        self._fn = fn
        self.delay = delay
        self._factory: TimerFactory = timer_factory or _daemon_timer
        self._lock = threading.Lock()
        self._timer: Timer | None = None
        self.calls = 0
        self.runs = 0

    def __call__(self, *_args: object) -> None:
        """Schedule a run (widget observers pass a change dict; it is not needed)."""
        with self._lock:
            self.calls += 1
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self._factory(self.delay, self._fire)
            self._timer.start()

    @property
    def pending(self) -> bool:
        return self._timer is not None

    def _fire(self) -> None:
        with self._lock:
            if self._timer is None:
                return
            self._timer = None
        self.runs += 1
        self._fn()

    def flush(self) -> None:
        """Run a pending call now (no-op when nothing is pending)."""
        with self._lock:
            timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
            self.runs += 1
            self._fn()

    def cancel(self) -> None:
        with self._lock:
            timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()


def _daemon_timer(delay: float, fn: Callable[[], None]) -> Timer:
    timer = threading.Timer(delay, fn)
    timer.daemon = True  # a pending redraw must not keep the interpreter alive
    return timer


# --- parameters and controls ----------------------------------------------------------------


@dataclass(frozen=True)
class DashboardParams:
    """Everything a dashboard view depends on; ``render`` reads nothing else.

    ``start``/``end`` are calendar days in ``tz``, both inclusive (``None`` = open).
    ``users`` empty means every user; ``split='top'`` draws one line per top-``top_n`` user
    (among the selected users, if any) and the rest as ``other``.
    """

    start: date | None = None
    end: date | None = None
    freq: str = "day"
    tz: str = "UTC"
    metric: str = "active_sessions"
    split: str = "none"
    top_n: int = 5
    users: tuple[str, ...] = ()
    search: str = ""

    def __post_init__(self) -> None:
        if self.freq not in {v for _, v in FREQS}:
            raise ConfigError(f"bucket {self.freq!r} is not valid: use hour, day, week or month")
        if self.metric not in {v for _, v in METRICS}:
            raise ConfigError(
                f"metric {self.metric!r} is not valid: use active_sessions, new_sessions or active_users"
            )
        if self.split not in {v for _, v in SPLITS}:
            raise ConfigError(f"split {self.split!r} is not valid: use 'none' or 'top'")
        if self.top_n < 1:
            raise ConfigError(f"top N {self.top_n!r} is not valid: use 1 or more")
        if self.start is not None and self.end is not None and self.end < self.start:
            raise ConfigError(
                f"date range {self.start} .. {self.end} is empty: pick an end on or after the start"
            )
        check_tz(self.tz)

    @property
    def start_ts(self) -> pd.Timestamp | None:
        """Start of ``start`` in ``tz`` as a UTC instant (inclusive)."""
        return _local_midnight(self.start, self.tz) if self.start is not None else None

    @property
    def end_ts(self) -> pd.Timestamp | None:
        """Start of the day after ``end`` in ``tz`` as a UTC instant (exclusive)."""
        return (
            _local_midnight(self.end + timedelta(days=1), self.tz) if self.end is not None else None
        )

    def previous(self) -> DashboardParams | None:
        """The same number of days immediately before this range (None if the range is open)."""
        if self.start is None or self.end is None:
            return None
        days = (self.end - self.start).days + 1
        return replace(
            self, start=self.start - timedelta(days=days), end=self.start - timedelta(days=1)
        )


def _local_midnight(day: date, tz: str) -> pd.Timestamp:
    return pd.Timestamp(datetime(day.year, day.month, day.day), tz=ZoneInfo(tz)).tz_convert("UTC")


class DashboardControls:
    """The input widgets. ``params()`` reads them into a ``DashboardParams``.

    The user list keeps selected users visible while the filter box narrows the rest, so
    filtering never silently drops a selection.
    """

    def __init__(self, users: Sequence[str] = (), *, tz: str = "UTC") -> None:
        style = {"description_width": "initial"}
        self.start = widgets.DatePicker(description="From", style=style)
        self.end = widgets.DatePicker(description="To", style=style)
        self.freq = widgets.Dropdown(options=FREQS, value="day", description="Bucket", style=style)
        zones = sorted(available_timezones() - set(COMMON_TIMEZONES))
        self.tz = widgets.Combobox(
            options=[*COMMON_TIMEZONES, *zones],
            value=tz,
            description="Time zone",
            placeholder="IANA name, e.g. Europe/Berlin",
            ensure_option=False,
            continuous_update=False,
            style=style,
        )
        self.metric = widgets.Dropdown(
            options=METRICS, value="active_sessions", description="Metric", style=style
        )
        self.split = widgets.ToggleButtons(
            options=SPLITS, value="none", description="Split", style=style
        )
        self.top_n = widgets.BoundedIntText(
            value=5, min=1, max=20, description="N", layout={"width": "110px"}
        )
        self.user_filter = widgets.Text(
            placeholder="filter users…", description="Users", continuous_update=True, style=style
        )
        self.user_select = widgets.SelectMultiple(options=(), rows=6, layout={"width": "260px"})
        self.search = widgets.Text(
            placeholder="words in the first question", description="Title search", style=style
        )
        self._all_users: tuple[str, ...] = ()
        self._selected: tuple[str, ...] = ()
        self._syncing_options = False
        self._callbacks: list[Callable[[dict[str, Any]], object]] = []
        self.user_select.observe(self._on_select, names="value")
        self.user_filter.observe(lambda _c: self._refilter(), names="value")
        self.set_users(users)
        self.widget = widgets.VBox(
            [
                widgets.HBox([self.start, self.end, self.freq, self.tz]),
                widgets.HBox([self.metric, self.split, self.top_n]),
                widgets.HBox([widgets.VBox([self.user_filter, self.user_select]), self.search]),
            ]
        )

    # Widgets whose change means "redraw". The user list goes through ``_on_select`` (the
    # filter box changes its options and must not count as a new selection).
    @property
    def inputs(self) -> tuple[widgets.ValueWidget, ...]:
        return (
            self.start,
            self.end,
            self.freq,
            self.tz,
            self.metric,
            self.split,
            self.top_n,
            self.search,
        )

    def observe(self, callback: Callable[[dict[str, Any]], object]) -> None:
        """Call ``callback`` on any change that changes the parameters."""
        for w in self.inputs:
            w.observe(callback, names="value")
        self._callbacks.append(callback)

    @property
    def users(self) -> tuple[str, ...]:
        """Every user the list knows (filtered or not)."""
        return self._all_users

    @property
    def selected_users(self) -> tuple[str, ...]:
        return self._selected

    def set_users(self, users: Iterable[str]) -> None:
        """Replace the list of known users (after a sync); keeps still-known selections."""
        self._all_users = tuple(dict.fromkeys(str(u) for u in users))
        self._set_selected(tuple(u for u in self._selected if u in self._all_users))
        self._refilter()

    def select_users(self, users: Iterable[str]) -> None:
        """Select exactly ``users``, as clicks would (ids not in the list have no data: ignored)."""
        self._set_selected(tuple(u for u in dict.fromkeys(users) if u in self._all_users))
        self._refilter()

    def _set_selected(self, selected: tuple[str, ...]) -> None:
        if selected == self._selected:
            return
        self._selected = selected
        for callback in self._callbacks:
            callback({"name": "users", "new": selected})

    def _refilter(self) -> None:
        needle = self.user_filter.value.strip().lower()
        shown = [u for u in self._all_users if needle in u.lower() or u in self._selected]
        self._syncing_options = True
        try:
            self.user_select.options = shown
            self.user_select.value = tuple(u for u in shown if u in self._selected)
        finally:
            self._syncing_options = False

    def _on_select(self, change: dict[str, Any]) -> None:
        if self._syncing_options:
            return
        # A click only knows the visible options; selections hidden by the filter stay.
        visible = set(self.user_select.options)
        kept = [u for u in self._selected if u not in visible]
        self._set_selected(tuple(kept + [u for u in change["new"] if u not in kept]))

    def params(self) -> DashboardParams:
        """The current parameters; raises ``ConfigError`` for an invalid entry (e.g. a zone)."""
        tz = (self.tz.value or "").strip()
        return DashboardParams(
            start=self.start.value,
            end=self.end.value,
            freq=self.freq.value,
            tz=tz,
            metric=self.metric.value,
            split=self.split.value,
            top_n=int(self.top_n.value),
            users=self._selected,
            search=self.search.value.strip(),
        )


# --- rendering (pure: parameters in, tables and figures out) ----------------------------------

SERIES_OTHER = "other"


@dataclass
class Rendered:
    """One render of the dashboard: the tables shown and the figures drawn from them.

    ``table`` is the activity view as a table (one row per bucket, one column per series),
    which is what "Export CSV" writes; the activity figure is drawn from exactly it.
    """

    params: DashboardParams
    table: pd.DataFrame
    summary: pd.DataFrame
    top_users: pd.DataFrame
    heatmap: pd.DataFrame
    figures: dict[str, Figure] = field(default_factory=dict)

    @property
    def series(self) -> list[str]:
        return [str(c) for c in self.table.columns if c != "bucket"]


def top_series(df: pd.DataFrame, metric: str, n: int) -> pd.DataFrame:
    """Wide bucket x user table of the ``n`` users with the largest ``metric`` total and the
    rest summed as ``other`` (same choice and order as ``plots.plot_activity``)."""
    totals = (
        df.groupby("user", sort=False)[metric].sum().sort_values(ascending=False, kind="stable")
    )
    keep = list(totals.index[:n])
    labels = df["user"].where(df["user"].isin(keep), SERIES_OTHER)
    wide = (
        df.assign(series=labels)
        .pivot_table(index="bucket", columns="series", values=metric, aggfunc="sum", fill_value=0)
        .sort_index()
    )
    order = keep + (
        [SERIES_OTHER] if SERIES_OTHER in wide.columns and SERIES_OTHER not in keep else []
    )
    wide = wide[order].astype("int64")
    wide.columns.name = None
    return wide.reset_index()


def render(con: Any, guru: str, params: DashboardParams, *, dpi: int = 100) -> Rendered:
    """Compute every dashboard view for ``params`` from the cache and draw the figures.

    ``con`` is a DuckDB connection or a Store (anything ``frames`` reads). Touches no widget
    and no global matplotlib state, so it can run on any thread and be tested directly.
    Raises ``NoDataError`` when the guru has nothing cached.
    """
    from matplotlib.figure import Figure

    from . import frames, plots

    start, end = params.start_ts, params.end_ts
    filters: dict[str, Any] = {
        "start": start,
        "end": end,
        "users": list(params.users) or None,
        "search": params.search or None,
    }
    metric = params.metric
    if params.split == "top":
        long = frames.activity(con, guru, params.freq, params.tz, "user", **filters)
        table = top_series(long, metric, params.top_n)
    else:
        long = frames.activity(con, guru, params.freq, params.tz, **filters)
        table = long[["bucket", metric]].reset_index(drop=True)
    table.attrs = {**long.attrs, "metric": metric}

    figures: dict[str, Figure] = {}
    # Fixed margins instead of constrained layout: a redraw costs half the time, and the
    # legend (outside, right) only appears with a split.
    fig = Figure(figsize=(10, 3.8), dpi=dpi)
    ax = fig.add_subplot()
    plots.plot_activity(
        long, metric, kind="bar", top=params.top_n, ax=ax, title=_activity_title(params)
    )
    fig.subplots_adjust(
        left=0.07, right=0.78 if params.split == "top" else 0.98, top=0.9, bottom=0.13
    )
    figures["activity"] = fig

    heat = frames.weekday_hour(con, guru, params.tz, **filters)
    fig = Figure(figsize=(7, 3), dpi=dpi)
    plots.plot_heatmap(heat, "active_sessions", ax=fig.add_subplot())
    fig.subplots_adjust(left=0.08, right=1.0, top=0.88, bottom=0.16)
    figures["heatmap"] = fig

    users = frames.users(con, guru, tz=params.tz, **filters)
    top_users = users.head(max(10, params.top_n)).reset_index(drop=True)

    # The summary compares the shown range with the same length just before it; an open
    # range is closed at the first and last bucket shown.
    buckets = pd.DatetimeIndex(long["bucket"])
    period_start = start if start is not None else buckets.min().tz_convert("UTC")
    period_end = (
        end if end is not None else _bucket_end(buckets.max(), params.freq).tz_convert("UTC")
    )
    summary = frames.summary(
        con,
        guru,
        period=(period_end - period_start).to_pytimedelta(),
        now=period_end,
        tz=params.tz,
        users=filters["users"],
        search=filters["search"],
    )
    return Rendered(params, table, summary, top_users, heat, figures)


def _bucket_end(bucket: pd.Timestamp, freq: str) -> pd.Timestamp:
    """End of the local bucket starting at ``bucket`` (calendar steps, DST-safe)."""
    step = {
        "hour": pd.Timedelta(hours=1),
        "day": pd.DateOffset(days=1),
        "week": pd.DateOffset(days=7),
        "month": pd.DateOffset(months=1),
    }[freq]
    return bucket + step


def _activity_title(params: DashboardParams) -> str:
    label = dict((v, k) for k, v in METRICS)[params.metric]
    what = f"{label} per {params.freq}"
    if params.split == "top":
        what += f", top {params.top_n} users + other"
    if params.users:
        what += f", {len(params.users)} selected user{'s' if len(params.users) > 1 else ''}"
    if params.search:
        what += f', titles with "{params.search}"'
    return f"{what} ({params.tz})"


# --- the dashboard widget -----------------------------------------------------------------------


def figure_output(fig: Figure, dpi: int = 100) -> dict[str, Any]:
    """A ``display_data`` output holding ``fig`` as PNG (works on any thread, any backend)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return {
        "output_type": "display_data",
        "data": {
            "image/png": data,
            "text/plain": f"<{fig.axes[0].get_title() if fig.axes else 'figure'}>",
        },
        "metadata": {},
    }


def html_output(markup: str, text: str = "") -> dict[str, Any]:
    return {
        "output_type": "display_data",
        "data": {"text/html": markup, "text/plain": text or html.unescape(markup)},
        "metadata": {},
    }


def replace_outputs(out: widgets.Output, *outputs: dict[str, Any]) -> None:
    """Swap an ``Output``'s content in one state update: the old view stays until the new
    one is complete (what ``clear_output(wait=True)`` gives on the kernel thread), and it
    also works from the debounce timer and the sync thread."""
    out.outputs = tuple(outputs)


def summary_html(summary: pd.DataFrame) -> str:
    """Stat cards: the value in the range and its change against the previous range."""
    names = {
        "active_sessions": "Active sessions",
        "new_sessions": "New sessions",
        "active_users": "Active users",
        "events": "Activity events",
        "messages": "Messages",
    }
    cards = []
    for row in summary.itertuples(index=False):
        if pd.isna(row.current):
            continue
        change = int(row.change) if not pd.isna(row.change) else 0
        arrow, colour = (
            ("▲", "#1a7f37") if change > 0 else ("▼", "#cf222e") if change < 0 else ("■", "#57606a")
        )
        pct = "" if pd.isna(row.change_pct) else f" ({row.change_pct:+.0f}%)"
        cards.append(
            '<div style="border:1px solid #d0d7de;border-radius:6px;padding:6px 12px;min-width:120px">'
            f'<div style="color:#57606a;font-size:12px">{html.escape(names.get(row.metric, row.metric))}</div>'
            f'<div style="font-size:22px;font-weight:600">{int(row.current):,}</div>'
            f'<div style="color:{colour};font-size:12px">{arrow} {change:+,}{pct} vs previous {int(row.previous):,}</div>'
            "</div>"
        )
    first = summary.iloc[0] if len(summary) else None
    note = ""
    if first is not None:
        note = (
            f'<div style="color:#57606a;font-size:12px">{first.current_start:%Y-%m-%d %H:%M} – '
            f"{first.current_end:%Y-%m-%d %H:%M} against the same length before it</div>"
        )
    return f'<div style="display:flex;gap:8px;flex-wrap:wrap">{"".join(cards)}</div>{note}'


def users_html(top: pd.DataFrame) -> str:
    if top.empty:
        return "<i>No user activity in this selection.</i>"
    shown = pd.DataFrame(
        {
            "rank": top["rank"],
            "user": top["user"],
            "sessions": top["sessions"],
            "events": top["events"],
            "active days": top["active_days"],
            "last active": top["last_active"].dt.strftime("%Y-%m-%d %H:%M"),
            "share": (top["share"] * 100).round(1).astype(str) + "%",
        }
    )
    return shown.to_html(index=False, border=0, classes="guru-users", escape=True)


class Dashboard(widgets.VBox):
    """The ``Guru.dashboard()`` widget: controls, stat cards, activity plot, top users, heatmap.

    Every control change schedules one debounced ``refresh()``; "Sync now" runs the
    incremental sync on a background thread (``sync_thread``; the kernel stays free) and
    "Export CSV" writes the current activity table. ``last`` is the latest ``Rendered``.
    ``timer_factory`` replaces ``threading.Timer`` (tests fire the debounce by hand).
    """

    def __init__(
        self,
        guru: Guru,
        *,
        debounce: float = 0.3,
        timer_factory: TimerFactory | None = None,
        export_dir: str | Path | None = None,
        sync_options: dict[str, Any] | None = None,
        tz: str | None = None,
    ) -> None:
        self.guru = guru
        self.export_dir = Path(export_dir) if export_dir is not None else Path.cwd()
        self.sync_options = {"questions": True, **(sync_options or {})}
        self.last: Rendered | None = None
        self.last_error: str | None = None
        self.last_export: Path | None = None
        self.sync_thread: threading.Thread | None = None
        self.sync_summary: Any = None
        self.sync_error: BaseException | None = None
        self._render_lock = threading.Lock()

        self.controls = DashboardControls(tz=tz or guru.tz)
        self.sync_button = widgets.Button(
            description="Sync now", icon="refresh", tooltip="incremental sync"
        )
        self.export_button = widgets.Button(
            description="Export CSV", icon="download", tooltip="write the activity table"
        )
        self.progress = widgets.IntProgress(
            value=0, min=0, max=1, layout={"width": "220px", "visibility": "hidden"}
        )
        self.status = widgets.HTML()
        self.summary_view = widgets.Output()
        self.activity_view = widgets.Output()
        self.users_view = widgets.Output()
        self.heatmap_view = widgets.Output()
        self.export_view = widgets.Output()
        self.sync_button.on_click(lambda _b: self.sync_now())
        self.export_button.on_click(lambda _b: self._export_clicked())

        header = widgets.HTML(f"<b>{html.escape(guru.slug)}</b>")
        actions = widgets.HBox(
            [self.sync_button, self.progress, self.export_button, self.export_view]
        )
        views = widgets.VBox(
            [
                self.summary_view,
                self.activity_view,
                widgets.HBox(
                    [self.users_view, self.heatmap_view], layout={"flex_flow": "row wrap"}
                ),
            ]
        )
        super().__init__([header, self.controls.widget, actions, self.status, views])

        self._debouncer = Debouncer(self._refresh_in_background, debounce, timer_factory)
        self._quiet = False
        self._auto_end: date | None = None
        self.render_count = 0
        self.controls.observe(self._on_control)
        self._load_users_and_range()
        self.refresh()

    # --- rendering ---

    def params(self) -> DashboardParams:
        return self.controls.params()

    def _load_users_and_range(self) -> None:
        """Fill the user list and default the date range to the cached data (in the zone).

        An end date the dashboard chose itself follows new data after a sync; one the user
        picked stays. Programmatic changes do not schedule an extra redraw.
        """
        status = self.guru.status()
        self._quiet = True
        try:
            self.controls.set_users(self.guru.user_ids())
            if status.first_event is None or status.last_event is None:
                return
            zone = self.controls.tz.value.strip()
            tz = ZoneInfo(zone if _valid_tz(zone) else "UTC")
            first = status.first_event.astimezone(tz).date()
            last = status.last_event.astimezone(tz).date()
            if self.controls.start.value is None:
                self.controls.start.value = first
            if self.controls.end.value is None or self.controls.end.value == self._auto_end:
                self.controls.end.value = last
            self._auto_end = last
        finally:
            self._quiet = False

    def _on_control(self, _change: dict[str, Any]) -> None:
        if not self._quiet:
            self._debouncer()

    def flush(self) -> None:
        """Run a pending debounced refresh now (tests; also harmless interactively)."""
        self._debouncer.flush()

    def refresh(self) -> Rendered | None:
        """Read the controls, render from the cache, and swap the views. Errors become a
        readable status line, never a traceback in the notebook."""
        with self._render_lock:
            try:
                params = self.controls.params()
                with self.guru.reader() as con:
                    rendered = render(con, self.guru.slug, params)
            except NoDataError as exc:
                self._set_error(f"{exc} (or press Sync now)")
                return None
            except GuruAnalyticsError as exc:
                self._set_error(str(exc))
                return None
            self.render_count += 1
            self._show(rendered)
            return rendered

    def _refresh_in_background(self) -> None:
        """The debounced redraw runs on a timer thread, where an exception would only reach
        stderr: a bug is shown in the status line and logged, never lost."""
        try:
            self.refresh()
        except Exception as exc:  # noqa: BLE001 - a thread has nobody to raise to
            _log.exception("dashboard redraw failed")
            self._set_error(f"Redraw failed with an unexpected {type(exc).__name__}: {exc}")

    def _show(self, rendered: Rendered) -> None:
        previous, self.last = self.last, rendered
        replace_outputs(self.summary_view, html_output(summary_html(rendered.summary)))
        replace_outputs(self.activity_view, figure_output(rendered.figures["activity"]))
        replace_outputs(self.heatmap_view, figure_output(rendered.figures["heatmap"]))
        replace_outputs(self.users_view, html_output(users_html(rendered.top_users)))
        self.last_error = None
        if self.sync_thread is None or not self.sync_thread.is_alive():
            self.status.value = self._describe(rendered)
        if previous is not None:
            previous.figures.clear()  # nothing else refers to old figures: they are freed

    def _describe(self, rendered: Rendered) -> str:
        table = rendered.table
        total = int(table.drop(columns="bucket").to_numpy().sum()) if len(table) else 0
        return html.escape(
            f"{len(table)} {rendered.params.freq} buckets, {total:,} in total "
            f"({rendered.params.tz}); {self.guru.status().describe()}"
        )

    def _set_error(self, message: str) -> None:
        self.last_error = message
        self.status.value = f'<span style="color:#cf222e">⚠ {html.escape(message)}</span>'

    # --- sync ---

    def sync_now(self) -> threading.Thread | None:
        """Start the incremental sync on a background thread and return it (None if one is
        already running). The dashboard refreshes when it ends."""
        if self.sync_thread is not None and self.sync_thread.is_alive():
            self.status.value = html.escape("A sync is already running.")
            return None
        self.sync_button.disabled = True
        self.progress.value, self.progress.max = 0, 1
        self.progress.bar_style = "info"
        self.progress.layout.visibility = "visible"
        self.status.value = html.escape(f"Syncing {self.guru.slug}…")
        thread = threading.Thread(target=self._sync_worker, name="guru-analytics-sync", daemon=True)
        self.sync_thread = thread
        thread.start()
        return thread

    def _on_request(self, n: int) -> None:
        """Per API request of the running sync: move the bar, say how many requests so far."""
        if n >= self.progress.max:
            # The number of pages is unknown until the last one: keep the bar short of full.
            self.progress.max = max(2 * self.progress.max, n + 1)
        self.progress.value = n
        self.status.value = html.escape(
            f"Syncing {self.guru.slug}… {n} request{'s' if n != 1 else ''}"
        )

    def _sync_worker(self) -> None:
        try:
            summary = self.guru.sync(
                progress=False,
                on_progress=lambda p: self._on_request(p.requests),
                **self.sync_options,
            )
        except GuruAnalyticsError as exc:
            self.progress.bar_style = "danger"
            self.sync_error = exc
            self._set_error(f"Sync failed: {exc}")
        except Exception as exc:  # noqa: BLE001 - a thread has nobody to raise to: show it, keep it
            self.progress.bar_style = "danger"
            self.sync_error = exc
            _log.exception("dashboard sync failed")
            self._set_error(f"Sync failed with an unexpected {type(exc).__name__}: {exc}")
        else:
            self.sync_summary = summary
            self.progress.max = max(1, self.progress.value)
            self.progress.value = self.progress.max
            self.progress.bar_style = "success"
            self._load_users_and_range()
            rendered = self.refresh()
            if rendered is not None:
                self.status.value = html.escape(
                    f"Synced ({summary.mode}): {summary.sessions_new} new, "
                    f"{summary.sessions_changed} changed, {summary.sessions_deleted} deleted "
                    f"in {summary.requests} request{'s' if summary.requests != 1 else ''}. "
                    f"{self.guru.status().describe()}"
                )
        finally:
            self.sync_button.disabled = False

    # --- export ---

    def export_csv(self, path: str | Path | None = None) -> Path:
        """Write the current activity table (what the plot shows) as CSV and return the path."""
        from .reports import write_csv

        rendered = self.last
        if rendered is None or rendered.params != self.controls.params():
            rendered = self.refresh()
        if rendered is None:
            raise ConfigError(f"nothing to export: {self.last_error}")
        p = rendered.params
        if path is None:
            span = f"{p.start or 'all'}_{p.end or 'all'}"
            split = f"-top{p.top_n}" if p.split == "top" else ""
            path = self.export_dir / f"{self.guru.slug}-{p.metric}-per-{p.freq}{split}-{span}.csv"
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        write_csv(rendered.table, out)
        self.last_export = out
        return out

    def _export_clicked(self) -> None:
        try:
            out = self.export_csv()
        except (GuruAnalyticsError, OSError) as exc:
            self._set_error(f"Export failed: {exc}")
            return
        replace_outputs(self.export_view, html_output(file_link_html(out), str(out)))


def file_link_html(path: Path) -> str:
    """A link to ``path`` that Jupyter serves: relative to the notebook's directory when the
    file is under it (FileLink's rule), else the absolute path as text."""
    from IPython.display import FileLink

    try:
        rel = path.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        return f"Wrote <code>{html.escape(str(path))}</code>"
    return "Wrote " + FileLink(str(rel))._repr_html_()


def _valid_tz(tz: str) -> bool:
    try:
        check_tz((tz or "").strip())
    except ConfigError:
        return False
    return True
