"""Matplotlib charts of the analytics frames.

Each ``plot_*`` function draws one DataFrame from ``guru_analytics.frames`` (controls stay in
the frame call, drawing here), takes ``ax=None`` and returns the Axes. Without an ``ax`` it
builds a ``matplotlib.figure.Figure`` through the object-oriented API: no pyplot state, no
``show()``, so it is safe under Agg, in tests and in threads. ``chart(con, name, guru, ...)``
computes the frame from the cache and draws it in one call; ``save`` writes PNG or SVG.

Buckets that are not complete yet (the frame's ``complete`` column) are drawn hatched and
lighter, with a legend entry, so a partial last day does not read as a drop. The users chart
ranks people only: ``(unattributed)`` is a separate grey bar below them.

Date axes use ``AutoDateLocator`` + ``ConciseDateFormatter`` in the frame's time zone, so a
year of daily buckets gets a handful of month ticks instead of 365 overlapping labels.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import matplotlib.dates as mdates
import numpy as np
import pandas as pd
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle
from matplotlib.ticker import MaxNLocator

from . import catalog, frames
from .checks import whole_number
from .errors import ConfigError, NoDataError, OutputError
from .reports import atomic_write
from .store import UNATTRIBUTED

OTHER = frames.OTHER
PARTIAL_HATCH = "////"
PARTIAL_ALPHA = 0.45
_ADJ = {"H": "hourly", "D": "daily", "W": "weekly", "M": "monthly", "Q": "quarterly", "Y": "yearly"}


_label = catalog.metric_label


def _axes(ax: Axes | None, figsize: tuple[float, float] = (10.0, 4.5)) -> Axes:
    """The given Axes, or one on a new pyplot-free Figure."""
    if ax is not None:
        return ax
    fig = Figure(figsize=figsize, layout="constrained")
    return fig.add_subplot()


def _need(df: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ConfigError(
            f"cannot draw {what}: the frame lacks column(s) {', '.join(missing)}; pass the frame from frames.{what}()"
        )
    if df.empty:
        raise NoDataError(f"nothing to draw for {what}: the frame is empty (widen the filters)")


def _tz(df: pd.DataFrame, column: str = "bucket") -> str:
    tz = getattr(df[column].dt, "tz", None)
    return str(tz) if tz is not None else str(df.attrs.get("tz", "UTC"))


def _freq(df: pd.DataFrame, column: str = "bucket") -> str:
    """Bucket code from the frame's attrs, else guessed from the spacing of its buckets."""
    code = df.attrs.get("freq")
    if isinstance(code, str) and code in frames.FREQ_NAMES:
        return code
    starts = pd.Series(df[column].drop_duplicates().sort_values())
    if len(starts) < 2:
        return "D"
    hours = starts.diff().dropna().median() / pd.Timedelta(hours=1)
    for code, limit in (("H", 2), ("D", 30), ("W", 200), ("M", 1500), ("Q", 3000)):
        if hours < limit:
            return code
    return "Y"


def _num(ts: pd.Series | pd.Index) -> np.ndarray:
    """Matplotlib date numbers (days since the epoch, UTC) for tz-aware instants."""
    idx = pd.DatetimeIndex(ts).tz_convert("UTC").tz_localize(None)
    return np.asarray(mdates.date2num(idx.to_numpy()))


def _bucket_edges(starts: pd.DatetimeIndex, freq: str) -> tuple[np.ndarray, np.ndarray]:
    """Left edges and widths (days) of consecutive buckets; DST days and months vary."""
    nxt = frames.bucket_end(starts[-1], freq)
    edges = _num(starts.append(pd.DatetimeIndex([nxt])))
    return edges[:-1], np.diff(edges)


def _date_axis(ax: Axes, tz: str, axis: str = "x") -> None:
    zone = ZoneInfo(tz)
    locator = mdates.AutoDateLocator(tz=zone, minticks=3, maxticks=8)
    formatter = mdates.ConciseDateFormatter(locator, tz=zone)
    target = ax.xaxis if axis == "x" else ax.yaxis
    target.set_major_locator(locator)
    target.set_major_formatter(formatter)


def _bars_or_lines(
    ax: Axes,
    wide: pd.DataFrame,
    freq: str,
    kind: str,
    partial: set[pd.Timestamp] | None = None,
) -> None:
    """Stacked bars or one line per column of ``wide``; ``partial`` buckets marked."""
    starts = pd.DatetimeIndex(wide.index)
    partial = partial or set()
    if kind == "bar":
        left, width = _bucket_edges(starts, freq)
        bottom = np.zeros(len(wide))
        gap = 0.9 if len(wide) <= 400 else 1.0
        for name in wide.columns:
            values = wide[name].to_numpy(dtype=float)
            ax.bar(left, values, width * gap, bottom=bottom, align="edge", label=str(name))
            bottom = bottom + values
        if partial:
            _mark_partial_bars(ax, left, partial, starts)
    elif kind == "line":
        x = _num(starts)
        where = np.array([b in partial for b in starts], dtype=bool)
        for name in wide.columns:
            y = wide[name].to_numpy(dtype=float)
            (line,) = ax.plot(x, y, label=str(name), marker="." if len(x) < 60 else None)
            if where.any():  # partial points: hollow markers in the series' colour
                ax.scatter(
                    x[where], y[where], facecolors="none", edgecolors=line.get_color(), zorder=3
                )
    else:
        raise ConfigError(f"unknown kind {kind!r}: use 'bar' or 'line'")


def _legend(ax: Axes, extra: Sequence[Artist] = ()) -> None:
    """Legend outside the plot area, on the right, so it never hides a bar; ``extra``
    handles (the partial-bucket key) come after the series."""
    handles, labels = ax.get_legend_handles_labels()
    handles = [*handles, *extra]
    labels = [*labels, *(h.get_label() for h in extra)]
    ax.legend(
        handles, labels, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small",
        frameon=False,
    )  # fmt: skip


def _partial_buckets(df: pd.DataFrame, column: str = "bucket") -> set[pd.Timestamp]:
    """Bucket starts the frame marks as not complete (none when it has no ``complete``)."""
    if "complete" not in df.columns:
        return set()
    return set(pd.DatetimeIndex(df.loc[~df["complete"].astype(bool), column]))


def _partial_key(df: pd.DataFrame, kind: str = "bar") -> Artist:
    """The legend handle explaining the partial marking (data until the horizon)."""
    until = df.attrs.get("horizon")
    note = f" (data until {pd.Timestamp(until):%Y-%m-%d %H:%M})" if until else ""
    label = f"partial bucket{note}"
    if kind == "line":
        return Line2D([], [], color="gray", marker="o", markerfacecolor="none", label=label)
    return Patch(facecolor="lightgray", hatch=PARTIAL_HATCH, edgecolor="gray", label=label)


def _mark_partial_bars(
    ax: Axes, left: np.ndarray, partial: set[pd.Timestamp], starts: pd.DatetimeIndex
) -> None:
    """Hatch and lighten every bar whose bucket is partial (the bars stay where they are)."""
    lefts = {round(float(x), 9) for x, b in zip(left, starts, strict=True) if b in partial}
    for patch in ax.patches:
        if isinstance(patch, Rectangle) and round(float(patch.get_x()), 9) in lefts:
            patch.set_hatch(PARTIAL_HATCH)
            patch.set_alpha(PARTIAL_ALPHA)
            patch.set_edgecolor("gray")


def _count_axis(ax: Axes, axis: str = "y") -> None:
    """Integer ticks for counts (no '0.25 sessions')."""
    (ax.yaxis if axis == "y" else ax.xaxis).set_major_locator(MaxNLocator(integer=True))


def _bucket_title(what: str, freq: str, tz: str, detail: str = "") -> str:
    """'Active sessions per day by user, top 5 + other (Europe/Berlin)'."""
    return f"{what} per {frames.FREQ_NAMES[freq]}{detail} ({tz})"


# --- charts of frames -------------------------------------------------------------------


def plot_activity(
    df: pd.DataFrame,
    metric: str = "active_sessions",
    *,
    kind: str = "bar",
    top: int = 5,
    ax: Axes | None = None,
    title: str | None = None,
) -> Axes:
    """Activity over time from ``frames.activity``: bars (stacked by the ``top`` users or
    gurus plus ``other`` when the frame is grouped) or one line per series."""
    if metric == "active_users" and "user" in df.columns:
        raise ConfigError(
            "active_users is not defined per user: draw active_sessions, or activity without by='user'"
        )
    _need(df, ["bucket", metric], "activity")
    whole_number(top, "top", minimum=1)
    ax = _axes(ax)
    tz, freq = _tz(df), _freq(df)
    group = next((g for g in ("user", "guru", "source") if g in df.columns), None)
    if group is None:
        wide = df.set_index("bucket")[[metric]].sort_index()
    else:
        wide = frames.top_n(df, metric, top, group)
    partial = _partial_buckets(df)
    _bars_or_lines(ax, wide, freq, kind, partial)
    _date_axis(ax, tz)
    if metric != "share":
        _count_axis(ax)
    ax.set_ylabel(_label(metric))
    detail = ""
    extra = [_partial_key(df, kind)] if partial else []
    if group is not None:
        detail = f" by {group}" + (f", top {top} + {OTHER}" if OTHER in wide.columns else "")
        _legend(ax, extra)
    elif extra:  # one series: only the partial key, inside, where it hides least
        ax.set_ylim(top=ax.get_ylim()[1] * 1.15)  # headroom for the key
        ax.legend(handles=extra, loc="upper right", fontsize="small", framealpha=0.9)
    ax.set_title(title or _bucket_title(_label(metric), freq, tz, detail))
    ax.margins(x=0.01)
    return ax


def plot_users(
    df: pd.DataFrame,
    metric: str = "sessions",
    *,
    top: int = 20,
    ax: Axes | None = None,
    title: str | None = None,
) -> Axes:
    """Horizontal bars of the ``top`` known users by ``metric`` (largest at the top) from
    ``frames.users``. ``(unattributed)`` is not a person: it never takes a top place and is
    drawn apart, as a grey bar below a gap, so it is never hidden either."""
    _need(df, ["user", metric], "users")
    whole_number(top, "top", minimum=1)
    people = df[df["user"] != UNATTRIBUTED]
    anon = df[df["user"] == UNATTRIBUTED]
    best = people.sort_values([metric, "user"], ascending=[False, True], kind="stable").head(top)
    ax = _axes(ax, (8.0, max(2.5, 0.32 * (len(best) + 2 * len(anon)) + 1.2)))
    names = [u if len(u) <= 32 else u[:31] + "…" for u in best["user"].astype(str)]
    y = np.arange(len(best))[::-1] + (1.5 if len(anon) else 0.0)
    ax.barh(y, best[metric].to_numpy(dtype=float), color="tab:blue", label="known users, ranked")
    ticks, labels = list(y), names
    if len(anon):
        ax.barh([0.0], anon[metric].to_numpy(dtype=float)[:1], color="tab:gray",
                label=f"{UNATTRIBUTED}, not ranked")  # fmt: skip
        ticks.append(0.0)
        labels.append(UNATTRIBUTED)
        ax.axhline(0.75, color="lightgray", linewidth=0.8)
        ax.legend(loc="lower right", fontsize="small", frameon=False)
    ax.set_yticks(ticks, labels)
    ax.set_xlabel(_label(metric))
    if metric != "share":
        _count_axis(ax, "x")
    shown = f"Top {len(best)} users" if len(people) > len(best) else f"All {len(best)} users"
    ax.set_title(title or f"{shown} by {_label(metric).lower()}")
    return ax


def plot_heatmap(
    df: pd.DataFrame,
    metric: str = "events",
    *,
    ax: Axes | None = None,
    title: str | None = None,
) -> Axes:
    """Weekday × hour heatmap from ``frames.weekday_hour`` (rows in the frame's week order)."""
    _need(df, ["weekday_name", "hour", metric], "weekday_hour")
    ax = _axes(ax, (10.0, 3.8))
    days = list(dict.fromkeys(df["weekday_name"]))
    grid = df.pivot(index="weekday_name", columns="hour", values=metric).reindex(days)
    image = ax.imshow(grid.to_numpy(dtype=float), aspect="auto", cmap="viridis", origin="upper")
    ax.set_yticks(np.arange(len(days)), days)
    hours = np.arange(0, 24, 2)
    ax.set_xticks(hours, [f"{h:02d}" for h in hours])
    ax.set_xlabel("Hour of day")
    ax.figure.colorbar(image, ax=ax, label=_label(metric))
    tz = str(df.attrs.get("tz", "UTC"))
    ax.set_title(title or f"{_label(metric)} by weekday and hour ({tz})")
    return ax


_LIFECYCLE_PARTS = [
    ("new_users", "new", "tab:green"),
    ("returning_users", "returning", "tab:blue"),
    ("resurrected_users", "resurrected", "tab:orange"),
    ("dormant_users", "dormant", "tab:gray"),
]


def plot_lifecycle(df: pd.DataFrame, *, ax: Axes | None = None, title: str | None = None) -> Axes:
    """Stacked bars from ``frames.lifecycle``: new, returning, resurrected above zero and
    dormant (already negative in the frame) below it."""
    _need(df, ["bucket", *(c for c, _l, _c in _LIFECYCLE_PARTS)], "lifecycle")
    ax = _axes(ax)
    tz, freq = _tz(df), _freq(df)
    starts = pd.DatetimeIndex(df["bucket"])
    left, width = _bucket_edges(starts, freq)
    bottom = np.zeros(len(df))
    for column, label, color in _LIFECYCLE_PARTS:
        values = df[column].to_numpy(dtype=float)
        base = np.zeros(len(df)) if column == "dormant_users" else bottom
        ax.bar(left, values, width * 0.9, bottom=base, align="edge", label=label, color=color)
        if column != "dormant_users":
            bottom = bottom + values
    partial = _partial_buckets(df)
    if partial:
        _mark_partial_bars(ax, left, partial, starts)
    ax.axhline(0, color="black", linewidth=0.8)
    _date_axis(ax, tz)
    _count_axis(ax)
    ax.set_ylabel("Users (dormant below zero)")
    _legend(ax, [_partial_key(df)] if partial else [])
    ax.set_title(title or _bucket_title("User lifecycle", freq, tz))
    ax.margins(x=0.01)
    return ax


def plot_retention(
    df: pd.DataFrame,
    value: str = "rate",
    *,
    ax: Axes | None = None,
    title: str | None = None,
    annotate: bool | None = None,
) -> Axes:
    """Cohort × period heatmap from ``frames.retention`` (blank where not observed yet);
    cells are annotated when there are few enough to read. A partial period (``complete``
    false) has no rate: its cell stays blank, hatched, with the users so far in grey."""
    _need(df, ["cohort", "period", value], "retention")
    matrix = frames.retention_matrix(df, value)
    ax = _axes(ax, (9.0, max(3.0, 0.35 * len(matrix) + 1.5)))
    data = matrix.to_numpy(dtype=float)
    image = ax.imshow(
        np.ma.masked_invalid(data),
        aspect="auto",
        cmap="Blues",
        vmin=0,
        vmax=1.0 if value == "rate" else None,
    )
    tz, freq = _tz(df, "cohort"), _freq(df, "cohort")
    fmt = "%Y-%m-%d %H:%M" if freq == "H" else "%Y-%m-%d"
    cohorts = pd.DatetimeIndex(matrix.index).strftime(fmt)
    step = max(1, len(cohorts) // 25)
    rows = np.arange(0, len(cohorts), step)
    ax.set_yticks(rows, [cohorts[i] for i in rows])
    ax.set_xticks(np.arange(matrix.shape[1]), [str(p) for p in matrix.columns])
    ax.set_xlabel(f"{frames.FREQ_NAMES[freq].capitalize()}s since first activity")
    ax.set_ylabel("Cohort")
    partial = np.zeros(data.shape, dtype=bool)
    if "complete" in df.columns:
        flags = df.pivot(index="cohort", columns="period", values="complete")
        partial = ~flags.reindex_like(matrix).fillna(True).to_numpy(dtype=bool)
        users = frames.retention_matrix(df, "users").to_numpy(dtype=float)
        data = np.where(partial, np.nan, data)
        image.set_data(np.ma.masked_invalid(data))
    if annotate is None:
        annotate = data.size <= 400
    if annotate:
        r, c = np.nonzero(~np.isnan(data))
        for i, j in zip(r, c, strict=True):
            text = f"{data[i, j]:.0%}" if value == "rate" else f"{int(data[i, j])}"
            dark = value == "rate" and data[i, j] > 0.6
            ax.text(
                int(j),
                int(i),
                text,
                ha="center",
                va="center",
                fontsize=7,
                color="white" if dark else "black",
            )
    for i, j in zip(*np.nonzero(partial), strict=True):  # partial: hatched, users so far
        ax.add_artist(
            Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch=PARTIAL_HATCH,
                      edgecolor="lightgray", linewidth=0)
        )  # fmt: skip
        if annotate:
            ax.text(j, i, f"({int(users[i, j])})", ha="center", va="center", fontsize=7,
                    color="gray", style="italic")  # fmt: skip
    if partial.any():
        ax.legend(
            handles=[Patch(facecolor="white", hatch=PARTIAL_HATCH, edgecolor="lightgray",
                           label="partial period: no rate yet (users so far)")],
            loc="upper left", bbox_to_anchor=(0.0, -0.12), fontsize="small", frameon=False,
        )  # fmt: skip
    ax.figure.colorbar(image, ax=ax, label="Retention rate" if value == "rate" else "Users")
    what = "Retention rate" if value == "rate" else "Retained users"
    ax.set_title(title or f"{what} by {_ADJ[freq]} cohort ({tz})")
    return ax


def plot_sources(
    df: pd.DataFrame,
    *,
    kind: str = "bar",
    top: int = 6,
    ax: Axes | None = None,
    title: str | None = None,
) -> Axes:
    """Messages per bucket stacked by source, from ``frames.sources``."""
    return _by_source(df, "sources", "messages", "Messages", kind, top, ax, title)


def _by_source(
    df: pd.DataFrame,
    report: str,
    metric: str,
    label: str,
    kind: str,
    top: int,
    ax: Axes | None,
    title: str | None,
) -> Axes:
    """A count per bucket stacked by source: the top ``top`` sources, the rest as other."""
    _need(df, ["bucket", "source", metric], report)
    ax = _axes(ax)
    tz, freq = _tz(df), _freq(df)
    wide = frames.top_n(df, metric, top, "source")
    _bars_or_lines(ax, wide, freq, kind)
    _date_axis(ax, tz)
    _count_axis(ax)
    ax.set_ylabel(label)
    _legend(ax)
    ax.set_title(title or _bucket_title(label, freq, tz, " by source"))
    ax.margins(x=0.01)
    return ax


def plot_binge_length(
    df: pd.DataFrame,
    *,
    bins: int | Sequence[float] | None = None,
    ax: Axes | None = None,
    title: str | None = None,
) -> Axes:
    """Histogram of messages per session from ``frames.sessions`` (its ``messages`` column;
    sessions whose messages were never fetched are left out and counted in the title)."""
    _need(df, ["messages"], "sessions")
    counts = df["messages"].dropna().to_numpy(dtype=float)
    if counts.size == 0:
        raise NoDataError(
            "no session in the frame has stored messages: run `guru-analytics sync GURU --messages` first"
        )
    ax = _axes(ax, (8.0, 4.0))
    if bins is None:
        top = int(counts.max())
        bins = np.arange(0.5, top + 1.5).tolist() if top <= 60 else 40
    ax.hist(counts, bins=bins, color="tab:purple", edgecolor="white")
    ax.set_xlabel("Messages per session")
    _count_axis(ax)
    ax.set_ylabel("Sessions")
    skipped = len(df) - counts.size
    note = f"; {skipped} without messages left out" if skipped else ""
    ax.set_title(title or f"Messages per session ({counts.size} sessions{note})")
    return ax


def plot_trust(df: pd.DataFrame, *, ax: Axes | None = None, title: str | None = None) -> Axes:
    """Mean trust score per bucket from ``frames.votes`` (gaps where nothing was scored)."""
    _need(df, ["bucket", "mean_trust_score"], "votes")
    ax = _axes(ax)
    tz, freq = _tz(df), _freq(df)
    x = _num(df["bucket"])
    ax.plot(
        x,
        df["mean_trust_score"].to_numpy(dtype=float),
        marker="o",
        markersize=3,
        label="mean trust score",
    )
    ax.set_ylim(0, 100)
    _date_axis(ax, tz)
    ax.set_ylabel("Trust score (0-100)")
    ax.set_title(title or _bucket_title("Mean trust score", freq, tz))
    return ax


def plot_question_sources(
    df: pd.DataFrame,
    *,
    kind: str = "bar",
    top: int = 6,
    ax: Axes | None = None,
    title: str | None = None,
) -> Axes:
    """Exported questions per bucket stacked by source, from ``frames.question_sources``."""
    return _by_source(df, "question_sources", "questions", "Questions", kind, top, ax, title)


def plot_question_trust(
    df: pd.DataFrame, *, ax: Axes | None = None, title: str | None = None
) -> Axes:
    """Mean and median trust score (0-1) of exported questions per bucket, from
    ``frames.question_trust`` (gaps where nothing was scored)."""
    _need(df, ["bucket", "mean_trust_score", "median_trust_score"], "question_trust")
    ax = _axes(ax)
    tz, freq = _tz(df), _freq(df)
    x = _num(df["bucket"])
    for column, label in (("mean_trust_score", "mean"), ("median_trust_score", "median")):
        ax.plot(x, df[column].to_numpy(dtype=float), marker="o", markersize=3, label=label)
    ax.set_ylim(0, 1)
    _date_axis(ax, tz)
    ax.set_ylabel("Trust score (0-1)")
    _legend(ax)
    ax.set_title(title or _bucket_title("Trust score of questions", freq, tz))
    return ax


def plot_unanswered(df: pd.DataFrame, *, ax: Axes | None = None, title: str | None = None) -> Axes:
    """Answered and unanswered questions per bucket (stacked bars), from ``frames.unanswered``."""
    _need(df, ["bucket", "questions", "unanswered"], "unanswered")
    ax = _axes(ax)
    tz, freq = _tz(df), _freq(df)
    wide = df.set_index("bucket")[["questions", "unanswered"]].rename(
        columns={"questions": "answered", "unanswered": "unanswered"}
    )
    _bars_or_lines(ax, wide, freq, "bar")
    _date_axis(ax, tz)
    _count_axis(ax)
    ax.set_ylabel("Questions")
    _legend(ax)
    ax.set_title(title or _bucket_title("Answered and unanswered questions", freq, tz))
    ax.margins(x=0.01)
    return ax


# --- from the cache in one call ---------------------------------------------------------

PlotFn = Callable[..., Axes]


def _charts() -> dict[str, tuple[Callable[..., pd.DataFrame], PlotFn, frozenset[str]]]:
    return {
        name: (frames.FRAMES[c.report], globals()[c.plot], c.plot_options)
        for name, c in catalog.CHARTS.items()
    }


CHARTS = _charts()
"""Chart name -> (frame function, plot function, the keyword arguments that go to the plot):
a view of ``catalog.CHARTS``."""


def chart(
    con: frames.Source,
    name: str,
    guru: str | Sequence[str],
    *,
    ax: Axes | None = None,
    **params: Any,
) -> Axes:
    """Compute the frame for chart ``name`` from the cache and draw it.

    ``params`` are split: drawing options (``metric``, ``kind``, ``top``, ``value``, ``bins``,
    ``title``) go to the plot, everything else (``freq``, ``tz``, ``by``, ``start``, ...) to
    the frame function. A catalogue option the chart's frame does not take (``freq`` for
    the users chart, ``by`` for binge length) is a ConfigError, not silently dropped.
    """
    entry = catalog.chart(name)
    frame_fn, plot_fn, plot_keys = CHARTS[name]
    plot_params = {k: v for k, v in params.items() if k in plot_keys}
    frame_params = {k: v for k, v in params.items() if k not in plot_keys}
    takes = catalog.chart_options(name)
    wrong = sorted(k for k in frame_params if k in catalog.OPTIONS and k not in takes)
    if wrong:
        raise ConfigError(f"{', '.join(wrong)} does not apply to the {entry.name} chart: drop it")
    df = frame_fn(con, guru, **frame_params)
    return plot_fn(df, ax=ax, **plot_params)


def save(target: Axes | Figure, path: str | os.PathLike[str], *, dpi: int = 120) -> Path:
    """Write the chart's figure to ``path`` as PNG or SVG (by extension), atomically and with
    the same file mode as the CSV reports (``reports.atomic_write``), so a failed write
    never leaves a half file behind."""
    out = Path(path)
    fmt = out.suffix.lower().lstrip(".")
    if fmt not in ("png", "svg"):
        raise ConfigError(f"cannot save a chart as {out.name!r}: use a .png or .svg file name")
    fig = target if isinstance(target, Figure) else target.figure
    if not isinstance(fig, Figure):
        raise ConfigError("save() needs a matplotlib Axes or Figure")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # no permission, read-only file system
        raise OutputError.writing(out, exc) from exc
    with atomic_write(out) as tmp:  # a full disk while writing is an OutputError too
        fig.savefig(tmp, format=fmt, dpi=dpi, bbox_inches="tight")
    return out
