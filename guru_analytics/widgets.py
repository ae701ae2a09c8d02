"""The dashboard's parts: controls that produce parameters, a pure ``render`` that draws.

One responsibility: controls -> frozen ``DashboardParams`` -> ``render``/tables. Controls
(date range, bucket, time zone, metric, split, users, title search) only produce a
``DashboardParams``; ``render(con, guru, params)`` turns a cache connection and parameters
into tables and matplotlib ``Figure`` objects and touches no widget, so tests drive the
dashboard through the real widgets and assert on real artists and tables. The ``Dashboard``
widget that wires them together is ``dashboard.Dashboard``: that module imports this one,
never the other way.

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
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol
from zoneinfo import ZoneInfo, available_timezones

import ipywidgets as widgets
import pandas as pd

from .errors import ConfigError
from .timestamps import check_tz, instant, utc_now

if TYPE_CHECKING:
    from matplotlib.figure import Figure


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
        if self.split == "top" and self.metric == "active_users":
            raise ConfigError(
                "active users cannot be split per user (each user is 1 or 0): "
                "split active or new sessions instead"
            )
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
    return instant(datetime(day.year, day.month, day.day, tzinfo=ZoneInfo(tz))).tz_convert("UTC")


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
        # The label gets its own width ("initial") so the box keeps room for the number: with
        # the default label width a 110 px box left 22 px for the value.
        self.top_n = widgets.BoundedIntText(
            value=5,
            min=1,
            max=20,
            description="Top N",
            style=style,
            layout=widgets.Layout(width="120px", min_width="120px"),
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
        # Active users per user is only 1 or 0: that metric turns the split off (and back on).
        self.metric.observe(self._on_metric, names="value")
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

    def _on_metric(self, change: dict[str, Any]) -> None:
        per_user = change["new"] != "active_users"
        if not per_user:
            self.split.value = "none"
        self.split.disabled = not per_user
        self.top_n.disabled = not per_user

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
    """The activity table of a split view: ``frames.top_n`` (the one top-N-plus-other rule,
    shared with ``plots``) with ``bucket`` as a column, as the chart and the CSV show it."""
    from .frames import top_n

    wide = top_n(df, metric, n, "user").astype("int64")
    wide.columns.name = None
    return wide.reset_index()


# Above this many buckets the activity chart is a line per series instead of (stacked) bars:
# thousands of bar groups take tens of seconds to draw and cannot be told apart on screen.
MAX_BARS = 400
# The stat cards compare at most this many days at the end of the range with as many before.
CARD_DAYS = 28


class Superseded(Exception):
    """A newer view was requested while this one was computing: its result is not wanted.

    Control flow inside the dashboard only (never reaches a user), hence not an error of
    ``errors.py``."""


def render(
    con: Any,
    guru: str,
    params: DashboardParams,
    *,
    dpi: int = 100,
    now: datetime | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Rendered:
    """Compute every dashboard view for ``params`` from the cache and draw the figures.

    ``con`` is a DuckDB connection or a Store (anything ``frames`` reads). Touches no widget
    and no global matplotlib state, so it can run on any thread and be tested directly.
    ``now`` (default: the wall clock) decides which days are complete for the stat cards;
    ``should_stop`` is asked between steps and raises ``Superseded`` when it says yes.
    Raises ``NoDataError`` when the guru has nothing cached.
    """
    from matplotlib.figure import Figure

    from . import frames, plots

    def checkpoint() -> None:
        if should_stop is not None and should_stop():
            raise Superseded

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
    checkpoint()

    figures: dict[str, Figure] = {}
    # Fixed margins instead of constrained layout: a redraw costs half the time, and the
    # legend (outside, right) only appears with a split.
    fig = Figure(figsize=(10, 3.8), dpi=dpi)
    ax = fig.add_subplot()
    plots.plot_activity(
        long,
        metric,
        kind=chart_kind(len(table)),
        top=params.top_n,
        ax=ax,
        title=activity_title(params, len(table)),
    )
    fig.subplots_adjust(
        left=0.07, right=0.78 if params.split == "top" else 0.98, top=0.9, bottom=0.13
    )
    figures["activity"] = fig
    checkpoint()

    heat = frames.weekday_hour(con, guru, params.tz, **filters)
    fig = Figure(figsize=(7, 3), dpi=dpi)
    plots.plot_heatmap(heat, "active_sessions", ax=fig.add_subplot())
    fig.subplots_adjust(left=0.08, right=1.0, top=0.88, bottom=0.16)
    figures["heatmap"] = fig
    checkpoint()

    users = frames.users(con, guru, tz=params.tz, **filters)
    # the top ranked people, then "(unattributed)" apart (unranked: it is nobody's rank)
    ranked = users["rank"].notna()
    top_users = pd.concat(
        [users[ranked].head(max(10, params.top_n)), users[~ranked]], ignore_index=True
    )
    checkpoint()

    buckets = pd.DatetimeIndex(long["bucket"])
    period_start, period_end = card_period(params, buckets, now)
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


def chart_kind(n_buckets: int) -> str:
    """Bars while they can be seen one by one; lines beyond ``MAX_BARS`` buckets."""
    return "bar" if n_buckets <= MAX_BARS else "line"


def card_period(
    params: DashboardParams, buckets: pd.DatetimeIndex, now: datetime | None = None
) -> tuple[pd.Timestamp, pd.Timestamp]:
    """The stat cards' period as UTC instants [start, end): the last complete days of the
    range, at most ``CARD_DAYS`` of them (the cards compare it with as long just before).

    An open range is closed at the first and last bucket shown. A day is complete once it
    has ended in ``params.tz`` at ``now``; a range that has no complete day yet is taken as
    it stands (the cards then cover an unfinished day).
    """
    from .frames import bucket_end, complete_until

    lo = (
        params.start_ts if params.start_ts is not None else instant(buckets.min()).tz_convert("UTC")
    )
    hi = (
        params.end_ts
        if params.end_ts is not None
        else bucket_end(instant(buckets.max()), params.freq).tz_convert("UTC")
    )
    today = complete_until(now if now is not None else utc_now(), "day", params.tz)
    if lo < today < hi:
        hi = today
    lo = max(lo, instant(hi - pd.Timedelta(days=CARD_DAYS)))
    return lo, hi


def activity_title(params: DashboardParams, n_buckets: int = 0) -> str:
    label = dict((v, k) for k, v in METRICS)[params.metric]
    what = f"{label} per {params.freq}"
    if chart_kind(n_buckets) == "line":
        what += f" ({n_buckets:,} buckets: lines)"
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


_CARD_NAMES = {
    "active_sessions": "Active sessions",
    "new_sessions": "New sessions",
    "active_users": "Active users",
    "events": "Activity events",
    "messages": "Messages",
}


def summary_html(summary: pd.DataFrame, tz: str = "UTC") -> str:
    """Stat cards: the value in the cards' period and its change against the period before,
    with the period written out and, without messages, what an event is."""
    from .frames import BASIS_MESSAGES

    cards = []
    row: Any  # a pandas row tuple named by the summary's columns
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
            f'<div style="color:#57606a;font-size:12px">{html.escape(_CARD_NAMES.get(row.metric, row.metric))}</div>'
            f'<div style="font-size:22px;font-weight:600">{int(row.current):,}</div>'
            f'<div style="color:{colour};font-size:12px">{arrow} {change:+,}{pct} vs previous {int(row.previous):,}</div>'
            "</div>"
        )
    notes = []
    if len(summary):
        first = summary.iloc[0]
        lo, hi = (instant(first[c]).tz_convert(tz) for c in ("current_start", "current_end"))
        days = (hi - lo).total_seconds() / 86_400
        length = f"{days:.0f} day{'s' if round(days) != 1 else ''}" if days >= 1 else "period"
        notes.append(
            f"Cards: {lo:%Y-%m-%d %H:%M} – {hi:%Y-%m-%d %H:%M} ({html.escape(tz)}), the last "
            f"{length} of the range that are complete, against the {length} before."
        )
        if first.get("basis") != BASIS_MESSAGES:
            notes.append(
                "No messages fetched: an activity event is one observation of a session per "
                "sync (its last use), so events count sessions seen. Sync with messages for "
                "one event per message."
            )
    note = "".join(f'<div style="color:#57606a;font-size:12px">{n}</div>' for n in notes)
    return f'<div style="display:flex;gap:8px;flex-wrap:wrap">{"".join(cards)}</div>{note}'


# Columns holding a fraction 0..1 (shown as percentages) and a percentage (shown signed).
_FRACTIONS = frozenset({"share", "rate"})
_PERCENTS = frozenset({"change_pct"})


def readable(df: pd.DataFrame) -> pd.DataFrame:
    """A copy of a frame for people to read (notebooks, the dashboard): instants to the
    minute in their own zone (frames return them in the chosen one), ``share``/``rate`` as
    ``12.3%``, ``change_pct`` as ``+12%``. The frame itself keeps full precision; export
    that, not this."""
    out = df.copy()
    for name in out.columns:
        s = out[name]
        if isinstance(s.dtype, pd.DatetimeTZDtype):
            out[name] = s.dt.strftime("%Y-%m-%d %H:%M").where(s.notna(), "")
        elif name in _FRACTIONS and pd.api.types.is_numeric_dtype(s):
            out[name] = [("" if pd.isna(v) else f"{100 * v:.1f}%") for v in s]
        elif name in _PERCENTS and pd.api.types.is_numeric_dtype(s):
            out[name] = [("" if pd.isna(v) else f"{v:+.0f}%") for v in s]
        elif isinstance(s.dtype, pd.api.extensions.ExtensionDtype) and s.isna().any():
            out[name] = s.astype(object).where(s.notna(), "")  # blank, not "<NA>"
    return out


def users_html(top: pd.DataFrame) -> str:
    """The top-users table as people read it (``readable``)."""
    if top.empty:
        return "<i>No user activity in this selection.</i>"
    shown = readable(
        top[["rank", "user", "sessions", "events", "active_days", "last_active", "share"]]
    ).rename(columns={"active_days": "active days", "last_active": "last active"})
    return shown.to_html(index=False, border=0, classes="guru-users", escape=True)


def csv_download_html(table: pd.DataFrame, filename: str) -> str:
    """A link that downloads ``table`` as CSV from the page itself (a ``data:`` URL with a
    ``download`` name): no file server involved, so it works in Voila (whose file handler
    answers 403 for files not allow-listed) and in JupyterLab alike."""
    from .reports import write_csv

    buf = io.StringIO()
    write_csv(table, "-", stdout=buf)
    data = base64.b64encode(buf.getvalue().encode("utf-8")).decode("ascii")
    name = html.escape(filename, quote=True)
    return (
        f'<a class="guru-download" download="{name}" '
        f'href="data:text/csv;charset=utf-8;base64,{data}">⤓ {name}</a>'
        f' <span style="color:#57606a">({len(table):,} rows)</span>'
    )
