"""The catalogue is the one list of reports and charts: everything else agrees with it."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

from guru_analytics import catalog, cli, demo, frames, plots
from guru_analytics.guru import _TZ_DEFAULTED, Guru

README = Path(__file__).resolve().parents[1] / "README.md"


def _block(text: str, name: str) -> str:
    m = re.search(rf"<!-- catalog:{name} [^>]*-->\n(.*?)\n<!-- /catalog:{name} -->", text, re.S)
    assert m is not None, f"README lacks the catalog:{name} block"
    return m.group(1)


def test_readme_tables_are_the_catalogue() -> None:
    text = README.read_text(encoding="utf-8")
    assert _block(text, "columns") == catalog.columns_markdown()
    assert _block(text, "reports") == catalog.reports_markdown()
    # the command table names the same reports and charts, in the same order
    assert f"report {{{','.join(catalog.REPORTS)}}}" in text
    assert f"plot {{{','.join(catalog.CHARTS)}}}" in text


def test_options_are_the_frame_functions_keywords() -> None:
    for name, report in catalog.REPORTS.items():
        fn = frames.FRAMES[name]
        assert fn is getattr(frames, report.function)
        params = set(inspect.signature(fn).parameters)
        assert report.options == params & set(catalog.OPTIONS), name
        assert [c.name for c in report.columns] == [c.name for c in frames.COLUMNS[name]]


def test_views_and_consumers_follow_the_catalogue() -> None:
    assert list(frames.FRAMES) == list(catalog.REPORTS)
    assert list(plots.CHARTS) == list(catalog.CHARTS)
    for name, chart in catalog.CHARTS.items():
        frame_fn, plot_fn, keys = plots.CHARTS[name]
        assert frame_fn is frames.FRAMES[chart.report] and plot_fn is getattr(plots, chart.plot)
        assert keys == chart.plot_options
    # Guru.report(name)/Guru.plot(name) reach every entry; today's entries also have
    # named shortcuts (a new report needs none).
    shortcuts = ["sessions", "activity", "users", "lifecycle", "retention", "summary",
                 "heatmap", "binge_length", "sources", "votes"]  # fmt: skip
    assert all(callable(getattr(Guru, n)) for n in shortcuts)
    charts = ["activity", "users", "heatmap", "lifecycle", "retention", "sources",
              "binge_length", "trust"]  # fmt: skip
    assert all(callable(getattr(Guru, f"plot_{n}")) for n in charts)
    assert callable(Guru.report) and callable(Guru.plot)
    assert set(_TZ_DEFAULTED) == {n for n, r in catalog.REPORTS.items() if "tz" in r.options}
    assert {r for r, _p in demo.CSV_REPORTS.values()} <= set(catalog.REPORTS)
    assert {c for c, _p in demo.PNG_CHARTS.values()} <= set(catalog.CHARTS)
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    report = sub.choices["report"]
    assert next(a for a in report._actions if a.dest == "report").choices == tuple(catalog.REPORTS)
    plot = sub.choices["plot"]
    assert next(a for a in plot._actions if a.dest == "chart").choices == tuple(catalog.CHARTS)


def test_metric_labels_live_in_one_place() -> None:
    assert plots._label("active_sessions") == catalog.metric_label("active_sessions")
    assert catalog.metric_label("odd_metric") == "Odd metric"
