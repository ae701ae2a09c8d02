"""The served dashboard in a real browser: ``guru-analytics dashboard`` (the real CLI, as a
subprocess) on loopback over a real cache, driven with Playwright in Debian's chromium.

It changes every control through the page and checks, by hashing a screenshot of the chart
element, that the chart really changed; downloads the CSV through the page's own link and
checks its numbers against ``frames`` on the same cache; checks the buttons keep their size
after an export; saves a screenshot and the redraw times per control under
``tests/artifacts/`` (ignored by git); and stops every process it started.

Nothing downloads a browser: Playwright drives ``/usr/bin/chromium`` (``.ci/run`` installs it
with apt). Without chromium, Playwright or Voila the test is skipped.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from guru_analytics import frames
from guru_analytics.guru import Guru

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).parent / "artifacts"
N_SESSIONS, N_USERS, DAYS = 1000, 12, 120

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin"),
]
playwright_api = pytest.importorskip("playwright.sync_api")
pytest.importorskip("voila")


@dataclass
class Served:
    """The running ``guru-analytics dashboard`` and what it started."""

    proc: subprocess.Popen[str]
    url: str
    db: Path
    slug: str
    lines: list[str] = field(default_factory=list)

    def descendants(self) -> set[int]:
        """Every process below the CLI (Voila, its kernels), read from /proc."""
        found: set[int] = set()
        todo = [self.proc.pid]
        while todo:
            pid = todo.pop()
            try:
                kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            except OSError:
                continue
            for kid in map(int, kids):
                if kid not in found:
                    found.add(kid)
                    todo.append(kid)
        return found


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """~1,000 synthetic sessions synced from the local server into a real DuckDB file."""
    db = tmp_path_factory.mktemp("browser") / "cache.duckdb"
    with Guru.local(N_SESSIONS, N_USERS, DAYS, db=db) as g:
        g.sync(progress=False)
        return db, g.slug


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture
def served(cache: tuple[Path, str]) -> Iterator[Served]:
    db, slug = cache
    env = {k: v for k, v in os.environ.items() if k != "GURUBASE_API_KEY"}  # no key: read-only
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "guru_analytics",
            "dashboard",
            slug,
            "--db",
            str(db),
            "--port",
            "0",
            "--no-browser",
        ],  # fmt: skip
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    lines: queue.Queue[str] = queue.Queue()
    seen: list[str] = []

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            seen.append(line)
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    started: set[int] = set()
    try:
        deadline = time.monotonic() + 60
        url = None
        while url is None and time.monotonic() < deadline:
            try:
                line = lines.get(timeout=1)
            except queue.Empty:
                assert proc.poll() is None, "".join(seen)
                continue
            if line.startswith("Dashboard of"):
                url = line.split(" at ")[1].split()[0]
        assert url is not None and url.startswith("http://127.0.0.1:"), "".join(seen)
        s = Served(proc, url, db, slug, seen)
        yield s
        started = s.descendants()
        # Stop it as a person would: Ctrl-C. It must exit 0 and leave nothing running.
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0, "".join(seen)
        deadline = time.monotonic() + 30
        while any(_alive(p) for p in started) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [p for p in started if _alive(p)], "processes left behind"
    finally:
        for pid in [proc.pid, *started]:  # only if the test failed half-way
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        proc.wait(10)


# --- page helpers -------------------------------------------------------------------------

BUSY = ".guru-dashboard.guru-busy"
CHART = ".guru-activity img"


def control(page: Any, label: str, widget: str, element: str) -> Any:
    """The input of the ipywidget whose description is ``label``."""
    return page.locator(f".{widget}:has(> label:text-is('{label}')) {element}").first


def chart_src(page: Any) -> str:
    return str(page.locator(CHART).get_attribute("src"))


def chart_hash(page: Any) -> str:
    """Hash of what the browser shows for the chart element (a screenshot of it)."""
    return hashlib.sha256(page.locator(CHART).screenshot()).hexdigest()


def wait_redrawn(page: Any, old_src: str, timeout: float = 60_000) -> None:
    """Until the chart image is a new one and the page no longer says it is computing."""
    page.wait_for_function(
        """([sel, old]) => {
            const img = document.querySelector(sel);
            const dash = document.querySelector('.guru-dashboard');
            return img && img.src !== old && !dash.classList.contains('guru-busy');
        }""",
        arg=[CHART, old_src],
        timeout=timeout,
    )


def button_boxes(page: Any) -> dict[str, tuple[float, float]]:
    boxes = {}
    for name in ("Sync now", "Export CSV"):
        box = page.locator(f"button.widget-button:has-text('{name}')").bounding_box()
        boxes[name] = (box["width"], box["height"])
    return boxes


def download_csv(page: Any) -> tuple[str, pd.DataFrame]:
    """Click Export CSV, then the link the page offers; returns its file name and rows."""
    before = page.locator("a.guru-download").count() and page.locator(
        "a.guru-download"
    ).get_attribute("download")
    page.locator("button.widget-button:has-text('Export CSV')").click()
    page.wait_for_function(
        """(old) => { const a = document.querySelector('a.guru-download');
                      return a && a.getAttribute('download') !== old; }""",
        arg=before or None,
    )
    with page.expect_download() as info:
        page.locator("a.guru-download").click()
    download = info.value
    text = Path(download.path()).read_text(encoding="utf-8")
    return download.suggested_filename, pd.read_csv(io.StringIO(text))


# --- the test -------------------------------------------------------------------------------


def test_served_dashboard_in_chromium(served: Served) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    timings: dict[str, float] = {}
    with playwright_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900}, accept_downloads=True)
            t0 = time.perf_counter()
            page.goto(served.url)
            page.wait_for_selector(CHART, timeout=90_000)
            page.wait_for_selector(f".guru-dashboard:not(.guru-busy) {CHART}", timeout=60_000)
            timings["first page (kernel start + first render)"] = time.perf_counter() - t0
            # The page scrolls inside Voila's container: a tall viewport shows all of it.
            page.set_viewport_size({"width": 1100, "height": 1480})
            page.screenshot(path=str(ARTIFACTS / "dashboard.png"))

            # No key: the sync button is off and the page says why.
            assert page.locator("button.widget-button:has-text('Sync now')").is_disabled()
            assert page.get_by_text("No API key: set GURUBASE_API_KEY").count() == 1
            # The cards say what they compare and what an event is.
            assert page.get_by_text("against the 28 days before").count() == 1
            assert page.get_by_text("one observation of a session per sync").count() == 1

            # Export at the default view, through the page's own link.
            boxes = button_boxes(page)
            assert all(w >= 100 and h >= 20 for w, h in boxes.values()), boxes
            name, csv = download_csv(page)
            assert name.startswith(f"{served.slug}-active_sessions-per-day-") and name.endswith(
                ".csv"
            )
            with Guru(served.slug, db=served.db) as g, g.reader() as con:
                want = frames.activity(con, served.slug, "day", "UTC")
            assert list(csv.columns) == ["bucket", "active_sessions"]
            assert csv["active_sessions"].tolist() == want["active_sessions"].tolist()
            assert int(csv["active_sessions"].sum()) == N_SESSIONS
            assert button_boxes(page) == boxes  # no 20-px stubs after an export
            top_n = control(page, "Top N", "widget-inline-hbox", "input").bounding_box()
            assert top_n["width"] >= 50, top_n  # the value can be seen

            # Every control, one after the other: the chart must really change each time.
            first_day = csv["bucket"].iloc[0][:10]
            picked = page.locator(".widget-select-multiple select option").nth(1).inner_text()
            steps: list[tuple[str, Any]] = [
                ("Bucket: Week", lambda: control(page, "Bucket", "widget-dropdown", "select")
                    .select_option(label="Week")),
                ("Metric: Active users", lambda: control(page, "Metric", "widget-dropdown",
                    "select").select_option(label="Active users")),
                ("Metric: New sessions", lambda: control(page, "Metric", "widget-dropdown",
                    "select").select_option(label="New sessions")),
                ("Split: Top N users", lambda: page.locator(
                    "button.widget-toggle-button:has-text('Top N users')").click()),
                ("Top N: 2", lambda: _type(control(page, "Top N", "widget-inline-hbox",
                    "input"), "2")),
                ("Bucket: Hour (lines)", lambda: control(page, "Bucket", "widget-dropdown",
                    "select").select_option(label="Hour")),
                ("Time zone: Asia/Tokyo", lambda: _type(control(page, "Time zone",
                    "widget-inline-hbox", "input"), "Asia/Tokyo")),
                ("From: a later day", lambda: _type(control(page, "From", "widget-inline-hbox",
                    "input"), _plus_days(first_day, 60))),
                ("Users: pick one", lambda: page.locator(".widget-select-multiple select")
                    .select_option(index=1)),
                ("Title search", lambda: _type(control(page, "Title search",
                    "widget-inline-hbox", "input"), "api")),
                ("Bucket: Day", lambda: control(page, "Bucket", "widget-dropdown", "select")
                    .select_option(label="Day")),
            ]  # fmt: skip
            hashes = {chart_hash(page)}
            for label, act in steps:
                old = chart_src(page)
                t = time.perf_counter()
                act()
                try:
                    wait_redrawn(page, old)
                except playwright_api.TimeoutError:
                    page.screenshot(path=str(ARTIFACTS / "failed.png"))
                    text = page.locator(".guru-dashboard").inner_text()[:1500]
                    pytest.fail(f"no new chart after {label!r}; the page says:\n{text}")
                timings[label] = time.perf_counter() - t
                h = chart_hash(page)
                assert h not in hashes, f"the chart did not change after {label}"
                hashes.add(h)
                assert "⚠" not in page.locator(".guru-dashboard").inner_text(), label

            # A second export follows the controls (split, zone, bucket).
            name, csv = download_csv(page)
            assert "-new_sessions-per-day-top2-" in name
            assert list(csv.columns) == ["bucket", picked]  # one user picked: no "other"
            assert csv["bucket"].str.endswith("+09:00").all()
            assert button_boxes(page) == boxes

            page.screenshot(path=str(ARTIFACTS / "dashboard-after-controls.png"))
        finally:
            browser.close()
    (ARTIFACTS / "redraw_times.json").write_text(json.dumps(timings, indent=1))
    print("\nredraw times (s):", json.dumps({k: round(v, 2) for k, v in timings.items()}))


def _type(locator: Any, text: str) -> None:
    """Replace an input's text and commit it (Enter), as a person would."""
    locator.fill(text)
    locator.press("Enter")


def _plus_days(day: str, n: int) -> str:
    return (pd.Timestamp(day) + pd.Timedelta(days=n)).strftime("%Y-%m-%d")
