"""The notebook dashboard widget over a small source protocol.

One responsibility: the ``Dashboard`` VBox (controls, stat cards, activity plot, top users,
heatmap, "Sync now", "Export CSV") and its sync bar ``SyncProgressView``, wired to whatever
``DashboardSource`` it is given. It never imports ``Guru``: ``Guru.dashboard()`` passes itself,
and anything with a slug, a time zone, a cache reader, a status and a ``sync`` will do. The
controls, parameters and the pure ``render`` it draws with are ``widgets``.
"""

from __future__ import annotations

import html
import logging
import math
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from zoneinfo import ZoneInfo

import ipywidgets as widgets

from .errors import ConfigError, GuruAnalyticsError, NoDataError
from .progress import SyncProgress, duration_text
from .timestamps import check_tz
from .widgets import (
    DashboardControls,
    DashboardParams,
    Debouncer,
    Rendered,
    Superseded,
    TimerFactory,
    activity_title,
    csv_download_html,
    figure_output,
    html_output,
    render,
    replace_outputs,
    summary_html,
    users_html,
)

if TYPE_CHECKING:
    import duckdb

    from .sync import SyncSummary

_log = logging.getLogger("guru_analytics.dashboard")


class CacheState(Protocol):
    """What the dashboard reads of the cache's status (``guru.CacheStatus`` is one)."""

    @property
    def first_event(self) -> datetime | None: ...

    @property
    def last_event(self) -> datetime | None: ...

    def describe(self) -> str: ...


class DashboardSource(Protocol):
    """What the dashboard needs from its source (a ``Guru`` is one): the guru's slug and
    default zone, a read-only cache connection per block, the cache's status and users, and
    the sync behind "Sync now" (called with the dashboard's ``sync_options`` as keywords)."""

    @property
    def slug(self) -> str: ...

    @property
    def tz(self) -> str: ...

    def reader(self) -> AbstractContextManager[duckdb.DuckDBPyConnection]: ...

    def status(self) -> CacheState: ...

    def user_ids(self) -> list[str]: ...

    @property
    def sync(self) -> Callable[..., SyncSummary]: ...


# --- sync progress (a pure consumer of SyncProgress records) ------------------------------------


def describe_progress(p: SyncProgress, fraction: float | None, sessions: int) -> str:
    """One line for a progress record. ``fraction`` and ``sessions`` are what the bar shows
    (never below what it showed before); pace, ETA and wait are the record's own figures."""
    parts: list[str] = []
    if p.phase == "done":
        read = f", {sessions:,} sessions read" if sessions else ""
        return f"Done: {p.requests:,} requests{read}."
    if p.phase == "wait":
        parts.append(f"waiting for the rate limit: {math.ceil(p.wait_seconds):,} s")
    elif p.phase in ("messages", "questions"):
        parts.append(f"fetching {p.phase}")
    elif p.listing:
        parts.append(f"reading {p.listing}")
    if fraction is not None:
        parts.append(f"{fraction:.0%}")
    if p.total_sessions is not None:
        parts.append(f"{sessions:,} of ~{p.total_sessions:,} sessions")
    elif sessions or p.pages:  # a record with no page read yet knows no session count
        parts.append(f"{sessions:,} sessions so far (total unknown until the last page)")
    total = f" of ~{p.total_requests:,}" if p.total_requests is not None else ""
    parts.append(f"{p.requests:,}{total} requests")
    if p.seconds_per_request is not None:
        parts.append(f"{p.seconds_per_request:.1f} s/request")
    if p.eta_seconds is not None:
        parts.append(f"about {duration_text(p.eta_seconds)} left")
    return " · ".join(parts)


class SyncProgressView:
    """The dashboard's sync bar. ``apply(progress)`` shows one ``SyncProgress`` record: the bar
    follows ``fraction`` when the sync knows its total (hidden while it does not), the text
    gives sessions so far, pace, ETA and a wait that counts down, all from the record; the
    bar and the session count never move backwards within a run. It computes nothing
    itself: the sync is the one place that knows the pace."""

    def __init__(self) -> None:
        self.bar = widgets.FloatProgress(
            value=0.0,
            min=0.0,
            max=1.0,
            layout=widgets.Layout(width="200px", min_width="200px", display="none"),
        )
        self.label = widgets.HTML(layout=widgets.Layout(flex="1 1 auto"))
        self.widget = widgets.HBox(
            [self.bar, self.label], layout=widgets.Layout(align_items="center")
        )
        self.fraction: float | None = None
        self.sessions = 0
        self.last: SyncProgress | None = None

    def start(self, text: str = "Starting the sync…") -> None:
        """A new run: forget the last run's figures."""
        self.fraction, self.sessions, self.last = None, 0, None
        self.bar.value = 0.0
        self.bar.bar_style = "info"
        self.bar.layout.display = "none"
        self.label.value = html.escape(text)

    def apply(self, progress: SyncProgress) -> None:
        """Show one record (the sync's ``on_progress`` callback)."""
        self.last = progress
        self.sessions = max(self.sessions, progress.sessions)
        if progress.phase == "done":
            self.fraction = 1.0
        elif progress.fraction is not None:
            self.fraction = max(self.fraction or 0.0, min(1.0, progress.fraction))
        if self.fraction is not None:
            self.bar.value = self.fraction
            self.bar.layout.display = None
        self.bar.bar_style = "success" if progress.phase == "done" else "info"
        self.label.value = html.escape(describe_progress(progress, self.fraction, self.sessions))

    def fail(self, text: str) -> None:
        self.bar.bar_style = "danger"
        self.label.value = f'<span style="color:#cf222e">{html.escape(text)}</span>'


# --- the dashboard widget ---------------------------------------------------------------------

# Dims a view while it is being recomputed or after an error (it no longer shows the controls).
_STYLE = """<style>
.guru-stale { opacity: 0.35; transition: opacity 0.15s; }
.guru-dashboard .guru-users td, .guru-dashboard .guru-users th { padding: 2px 8px; }
</style>"""
_BUTTON = {"width": "130px", "min_width": "130px", "flex": "0 0 auto"}


class Dashboard(widgets.VBox):
    """The ``Guru.dashboard()`` widget: controls, stat cards, activity plot, top users, heatmap,
    over any ``DashboardSource`` (``guru``).

    Every control change schedules one debounced redraw. Redraws never queue: a request
    while one is computing only raises the generation, the running one is dropped at its
    next step and the newest parameters are drawn next (``generation``, ``dropped``).
    While a view computes, the page says so and dims the views; an error dims them too.
    "Sync now" runs the incremental sync on a background thread (``sync_thread``), disabled
    with the reason when ``sync_disabled`` is given (e.g. no API key). "Export CSV" offers
    the current activity table as a download from the page itself. ``last`` is the latest
    ``Rendered``; ``timer_factory`` replaces ``threading.Timer`` (tests fire the debounce by
    hand); ``renderer`` replaces ``render`` (tests hold a redraw half-way).
    """

    def __init__(
        self,
        guru: DashboardSource,
        *,
        debounce: float = 0.3,
        timer_factory: TimerFactory | None = None,
        export_dir: str | Path | None = None,
        sync_options: dict[str, Any] | None = None,
        sync_disabled: str | None = None,
        tz: str | None = None,
        renderer: Callable[..., Rendered] = render,
    ) -> None:
        self.guru = guru
        self.export_dir = Path(export_dir) if export_dir is not None else Path.cwd()
        self.sync_options = {"questions": True, **(sync_options or {})}
        self.sync_disabled = sync_disabled
        self.last: Rendered | None = None
        self.last_error: str | None = None
        self.last_export: Path | None = None
        self.sync_thread: threading.Thread | None = None
        self.sync_summary: Any = None
        self.sync_error: BaseException | None = None
        self._renderer = renderer
        self._render_lock = threading.Lock()  # one matplotlib render at a time
        self._state = threading.Lock()  # guards the generation and the running flag
        self.generation = 0
        self.dropped = 0
        self._drawn = -1  # the generation on screen
        self._running = False

        self.controls = DashboardControls(tz=tz or guru.tz)
        self.sync_button = widgets.Button(
            description="Sync now",
            icon="refresh",
            tooltip=sync_disabled or "incremental sync",
            disabled=sync_disabled is not None,
            layout=widgets.Layout(**_BUTTON),
        )
        self.export_button = widgets.Button(
            description="Export CSV",
            icon="download",
            tooltip="download the activity table shown",
            layout=widgets.Layout(**_BUTTON),
        )
        self.progress = SyncProgressView()
        if sync_disabled is not None:
            self.progress.label.value = (
                f'<span style="color:#57606a">{html.escape(sync_disabled)}</span>'
            )
        self.status = widgets.HTML()
        self.summary_view = widgets.Output()
        self.activity_view = widgets.Output()
        self.users_view = widgets.Output()
        self.heatmap_view = widgets.Output()
        self.export_link = widgets.HTML(layout=widgets.Layout(flex="1 1 auto", overflow="hidden"))
        self.sync_button.on_click(lambda _b: self.sync_now())
        self.export_button.on_click(lambda _b: self._export_clicked())
        self._views = (self.summary_view, self.activity_view, self.users_view, self.heatmap_view)
        for view, name in zip(
            self._views, ("summary", "activity", "users", "heatmap"), strict=True
        ):
            view.add_class(f"guru-{name}")  # stable hooks for the page's CSS and browser tests

        header = widgets.HTML(f"{_STYLE}<b>{html.escape(guru.slug)}</b>")
        actions = widgets.HBox(
            [self.sync_button, self.export_button, self.export_link],
            layout=widgets.Layout(align_items="center"),
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
        super().__init__(
            [header, self.controls.widget, actions, self.progress.widget, self.status, views]
        )
        self.add_class("guru-dashboard")

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
            self._set_busy(True)  # at once, not after the debounce: the page reacts
            self._debouncer()

    def flush(self) -> None:
        """Run a pending debounced refresh now (tests; also harmless interactively)."""
        self._debouncer.flush()

    @property
    def busy(self) -> bool:
        return "guru-busy" in self._dom_classes

    def refresh(self) -> Rendered | None:
        """Read the controls, render from the cache and swap the views, superseding any redraw
        still computing. Errors become a readable status line (and dim the views), never a
        traceback in the notebook. Returns None when there is nothing to show. A caller of
        ``refresh()`` gets its render even if a newer request arrives meanwhile (that one
        then replaces it on screen)."""
        self._debouncer.cancel()  # this draws the current controls: a pending redraw would repeat it
        with self._state:
            self.generation += 1
            generation = self.generation
        return self._render_generation(generation, wanted=True)

    def _refresh_in_background(self) -> None:
        """The debounced redraw. If one is running, only raise the generation: the running
        one stops at its next step and this loop draws the newest parameters, so requests
        never queue. On a timer thread an exception would only reach stderr: a bug is shown
        in the status line and logged, never lost."""
        with self._state:
            self.generation += 1
            if self._running:
                return
            self._running = True
        try:
            while True:
                with self._state:
                    generation = self.generation
                self._render_generation(generation)
                with self._state:
                    if self.generation == generation:
                        self._running = False
                        return
        except Exception as exc:  # noqa: BLE001 - a thread has nobody to raise to
            with self._state:
                self._running = False
            _log.exception("dashboard redraw failed")
            self._set_error(f"Redraw failed with an unexpected {type(exc).__name__}: {exc}")

    def _stale(self, generation: int) -> bool:
        return self.generation != generation

    def _render_generation(self, generation: int, *, wanted: bool = False) -> Rendered | None:
        """Render ``generation`` unless a newer one is requested (then drop it, at the latest
        at its next step); ``wanted`` = a caller waits for the result: finish it anyway."""
        with self._render_lock:
            if self._stale(generation) and not wanted:
                self.dropped += 1
                return None
            if generation == self._drawn and self.last is not None:
                return self.last  # already drawn by a synchronous refresh()
            try:
                params = self.controls.params()
                self._set_busy(True, f"Computing: {activity_title(params)}…")
                with self.guru.reader() as con:
                    rendered = self._renderer(
                        con,
                        self.guru.slug,
                        params,
                        should_stop=None if wanted else lambda: self._stale(generation),
                    )
                outputs = self._outputs(rendered)
            except Superseded:
                self.dropped += 1
                return None
            except NoDataError as exc:
                self._set_error(f"{exc} (or press Sync now)", generation)
                return None
            except GuruAnalyticsError as exc:
                self._set_error(str(exc), generation)
                return None
            if self._stale(generation):
                self.dropped += 1  # drawn, but a newer view is already wanted: not shown
                if wanted:
                    return rendered
                rendered.figures.clear()
                return None
            self.render_count += 1
            self._drawn = generation
            self._show(rendered, outputs)
            return rendered

    def _outputs(self, rendered: Rendered) -> dict[widgets.Output, dict[str, Any]]:
        """Every view's new content, made before any is swapped (PNG encoding is slow)."""
        return {
            self.summary_view: html_output(summary_html(rendered.summary, rendered.params.tz)),
            self.activity_view: figure_output(rendered.figures["activity"]),
            self.heatmap_view: figure_output(rendered.figures["heatmap"]),
            self.users_view: html_output(users_html(rendered.top_users)),
        }

    def _show(self, rendered: Rendered, outputs: dict[widgets.Output, dict[str, Any]]) -> None:
        previous, self.last = self.last, rendered
        for view, output in outputs.items():
            replace_outputs(view, output)
        self.last_error = None
        self._set_busy(False)
        if self.sync_thread is None or not self.sync_thread.is_alive():
            self.status.value = self._describe(rendered)
        if previous is not None:
            previous.figures.clear()  # nothing else refers to old figures: they are freed

    def _set_busy(self, busy: bool, text: str = "Computing…") -> None:
        """Say that a view is computing and dim the views, or undo both."""
        if busy:
            self.add_class("guru-busy")
            for view in self._views:
                view.add_class("guru-stale")
            self.status.value = f"⏳ {html.escape(text)}"
        else:
            self.remove_class("guru-busy")
            for view in self._views:
                view.remove_class("guru-stale")

    def _describe(self, rendered: Rendered) -> str:
        table = rendered.table
        total = int(table.drop(columns="bucket").to_numpy().sum()) if len(table) else 0
        return html.escape(
            f"{len(table)} {rendered.params.freq} buckets, {total:,} in total "
            f"({rendered.params.tz}); {self.guru.status().describe()}"
        )

    def _set_error(self, message: str, generation: int | None = None) -> None:
        """Show ``message``; the views stay dimmed (they no longer match the controls).
        An error of a superseded redraw is not shown (a newer view is on its way)."""
        if generation is not None and self._stale(generation):
            return
        self.last_error = message
        self.remove_class("guru-busy")
        for view in self._views:
            view.add_class("guru-stale")
        self.status.value = f'<span style="color:#cf222e">⚠ {html.escape(message)}</span>'

    # --- sync ---

    def sync_now(self) -> threading.Thread | None:
        """Start the incremental sync on a background thread and return it (None if one is
        already running or syncing is disabled). The dashboard refreshes when it ends."""
        if self.sync_disabled is not None:
            self.status.value = html.escape(f"Sync is off: {self.sync_disabled}")
            return None
        if self.sync_thread is not None and self.sync_thread.is_alive():
            self.status.value = html.escape("A sync is already running.")
            return None
        self.sync_button.disabled = True
        self.progress.start(f"Syncing {self.guru.slug}…")
        self.status.value = html.escape(f"Syncing {self.guru.slug}…")
        thread = threading.Thread(target=self._sync_worker, name="guru-analytics-sync", daemon=True)
        self.sync_thread = thread
        thread.start()
        return thread

    def _run_sync(self) -> Any:
        """The one call site of the dashboard's sync: its bar reads the sync's own progress."""
        return self.guru.sync(progress=False, on_progress=self.progress.apply, **self.sync_options)

    def _sync_worker(self) -> None:
        try:
            summary = self._run_sync()
        except GuruAnalyticsError as exc:
            self.progress.fail("Sync failed.")
            self.sync_error = exc
            self._set_error(f"Sync failed: {exc}")
        except Exception as exc:  # noqa: BLE001 - a thread has nobody to raise to: show it, keep it
            self.progress.fail("Sync failed.")
            self.sync_error = exc
            _log.exception("dashboard sync failed")
            self._set_error(f"Sync failed with an unexpected {type(exc).__name__}: {exc}")
        else:
            self.sync_summary = summary
            if self.progress.last is None or self.progress.last.phase != "done":
                # The sync's own "done" record is the one to show; without it, what is known.
                self.progress.apply(
                    SyncProgress("done", requests=summary.requests, pages=summary.pages)
                )
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

    def _current(self) -> Rendered:
        """The render matching the controls now (drawn first if the debounce is pending)."""
        rendered = self.last
        if rendered is None or rendered.params != self.controls.params():
            rendered = self.refresh()
        if rendered is None:
            raise ConfigError(f"nothing to export: {self.last_error}")
        return rendered

    def export_name(self, params: DashboardParams) -> str:
        span = f"{params.start or 'all'}_{params.end or 'all'}"
        split = f"-top{params.top_n}" if params.split == "top" else ""
        return f"{self.guru.slug}-{params.metric}-per-{params.freq}{split}-{span}.csv"

    def export_csv(self, path: str | Path | None = None) -> Path:
        """Write the current activity table (what the plot shows) as CSV and return the path
        (default: ``export_dir``). The button offers the same table as a download instead."""
        from .reports import write_csv

        rendered = self._current()
        out = (
            Path(path) if path is not None else self.export_dir / self.export_name(rendered.params)
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        write_csv(rendered.table, out)
        self.last_export = out
        return out

    def _export_clicked(self) -> None:
        try:
            rendered = self._current()
        except GuruAnalyticsError as exc:
            self._set_error(f"Export failed: {exc}")
            return
        self.export_link.value = csv_download_html(
            rendered.table, self.export_name(rendered.params)
        )


def _valid_tz(tz: str) -> bool:
    try:
        check_tz((tz or "").strip())
    except ConfigError:
        return False
    return True
