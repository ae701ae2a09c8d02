"""Exports (CSV, Parquet, stdout) and the `report` / `plot` CLI commands."""

from __future__ import annotations

import io
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest
from analytics_fixtures import DST, MAIN, MSG, add_sessions, main_cache

from guru_analytics import cli, frames, reports
from guru_analytics.errors import ConfigError, NoDataError
from guru_analytics.store import Store


@pytest.fixture(scope="module")
def con() -> Iterator[duckdb.DuckDBPyConnection]:
    c = main_cache()
    yield c
    c.close()


@pytest.fixture
def cache_file(tmp_path: Path) -> Path:
    """A real cache file made by Store (schema + meta), filled with the analytics fixtures."""
    path = tmp_path / "cache.duckdb"
    store = Store(path)
    with store.writer() as c:
        add_sessions(c, "g", MAIN)
        add_sessions(c, "dst", DST)
        add_sessions(c, "m", MSG)
    store.close()
    return path


def read_back(path: Path | io.StringIO, frame: pd.DataFrame) -> pd.DataFrame:
    """read_csv, then parse the ISO timestamp columns back into the frame's zone."""
    back = pd.read_csv(path, keep_default_na=True)
    for name in frame.columns:
        if isinstance(frame[name].dtype, pd.DatetimeTZDtype):
            back[name] = pd.to_datetime(back[name], utc=True, format="ISO8601").dt.tz_convert(
                frame[name].dt.tz
            )
    return back


# --- CSV ----------------------------------------------------------------------------------


def test_csv_round_trip_keeps_values_and_offsets(con: duckdb.DuckDBPyConnection, tmp_path) -> None:
    out = tmp_path / "activity.csv"
    df = reports.export(
        con, "activity", out, "dst", freq="H", tz="Europe/Berlin",
        start="2025-10-26T00:00+02:00", end="2025-10-26T04:00+01:00",
    )  # fmt: skip
    text = out.read_text(encoding="utf-8")
    assert (
        text.splitlines()[0]
        == "bucket,active_sessions,new_sessions,events,active_users,messages,complete"
    )
    # the two 02:00 hours keep their own offsets
    assert [line.split(",")[0] for line in text.splitlines()[1:]] == [
        "2025-10-26T00:00:00+02:00",
        "2025-10-26T01:00:00+02:00",
        "2025-10-26T02:00:00+02:00",
        "2025-10-26T02:00:00+01:00",
        "2025-10-26T03:00:00+01:00",
    ]
    back = read_back(out, df)
    assert back["bucket"].tolist() == df["bucket"].tolist()
    assert back["events"].tolist() == [1, 0, 1, 1, 0]
    assert back["messages"].isna().all()  # no messages for this guru: empty, not 0


def test_csv_sessions_round_trip_and_formula_neutralising(
    con: duckdb.DuckDBPyConnection, tmp_path
) -> None:
    out = tmp_path / "sessions.csv"
    df = reports.export(con, "sessions", out, "g", tz="America/New_York")
    back = read_back(out, df)
    assert list(back.columns) == list(df.columns)
    for name in ["guru", "id", "slug", "link", "users", "n_users", "events", "deleted"]:
        assert back[name].tolist() == df[name].tolist(), name
    for name in ["first_seen", "first_event", "last_event", "last_used"]:
        assert back[name].tolist() == df[name].tolist(), name
    assert back["messages"].fillna(-1).tolist() == df["messages"].fillna(-1).tolist()
    titles = dict(zip(back["id"], back["title"], strict=True))
    assert titles["a2"] == '\'=HYPERLINK("http://evil.example")'
    assert titles["b1"] == "'+1 for tabs"
    assert titles["b2"] == "'-rf everything"
    assert titles["c1"] == '\'@mention, "quoted"\nand newline'
    assert titles["e1"] == "'\tTabbed café ünïcode"
    assert titles["a1"] == "How to INSTALL the CLI"  # harmless text untouched
    assert "2025-04-07T08:00:00-04:00" in out.read_text(encoding="utf-8")  # b1 first event


def test_csv_numbers_stay_numbers(con: duckdb.DuckDBPyConnection, tmp_path) -> None:
    out = tmp_path / "summary.csv"
    reports.export(con, "summary", out, "g", now="2025-04-22T00:00Z")
    back = pd.read_csv(out)
    assert back["change"].tolist() == [-3, -3, 1, -4, 0]  # negative numbers not prefixed
    assert back["change"].dtype == "int64"
    assert back["change_pct"].iloc[3] == -400 / 6
    users = tmp_path / "users.csv"
    df = reports.export(con, "users", users, "g")
    assert pd.read_csv(users)["share"].tolist() == df["share"].tolist()


def test_stdout(con: duckdb.DuckDBPyConnection) -> None:
    buf = io.StringIO()
    df = reports.export(con, "lifecycle", "-", "g", stdout=buf)
    buf.seek(0)
    back = read_back(buf, df)
    assert back["dormant_users"].tolist() == [0, -2, 0, -3]
    assert back["bucket"].tolist() == df["bucket"].tolist()


def test_message_reports(con: duckdb.DuckDBPyConnection, tmp_path) -> None:
    votes = reports.export(con, "votes", tmp_path / "v.csv", "m")
    back = pd.read_csv(tmp_path / "v.csv")
    assert back["upvotes"].tolist() == votes["upvotes"].tolist() == [1, 0, 1]
    assert np.isnan(back["mean_trust_score"].iloc[1])
    reports.export(con, "binge_length", tmp_path / "b.csv", "m", by="user")
    assert pd.read_csv(tmp_path / "b.csv")["messages"].tolist() == [6, 1, 3]
    reports.export(con, "sources", tmp_path / "s.csv", "m", freq="M")
    assert pd.read_csv(tmp_path / "s.csv")[["source", "messages"]].values.tolist() == [
        ["API", 2], ["USER", 2], ["WIDGET QUESTION", 6],
    ]  # fmt: skip


# --- Parquet ------------------------------------------------------------------------------


def test_parquet_round_trip_via_duckdb(con: duckdb.DuckDBPyConnection, tmp_path) -> None:
    out = tmp_path / "sessions.parquet"
    df = reports.export(con, "sessions", out, "g", tz="Europe/Berlin")
    check = duckdb.connect()
    check.execute("SET TimeZone='UTC'")
    back = check.execute("SELECT * FROM read_parquet(?)", [str(out)]).fetchdf()
    described = check.execute("DESCRIBE SELECT * FROM read_parquet(?)", [str(out)]).fetchall()
    types = {row[0]: row[1] for row in described}
    assert list(back.columns) == list(df.columns)
    assert types["last_used"] == "TIMESTAMP WITH TIME ZONE" and types["events"] == "BIGINT"
    assert back["title"].tolist() == df["title"].tolist()  # Parquet keeps raw text
    assert back["last_used"].dt.tz_convert("Europe/Berlin").tolist() == df["last_used"].tolist()
    assert back["events"].tolist() == df["events"].tolist()
    assert back["messages"].isna().tolist() == df["messages"].isna().tolist()
    wide = tmp_path / "wide.parquet"
    reports.export(con, "activity", wide, "g", freq="W", by="user", wide="events")
    cols = check.execute("SELECT * FROM read_parquet(?)", [str(wide)]).fetchdf()
    assert list(cols.columns) == ["bucket", "(unattributed)", "alice", "bob", "carol", "erin"]
    assert cols["alice"].tolist() == [4, 1, 1, 0]


# --- nothing written on errors ------------------------------------------------------------


def test_errors_write_nothing(con: duckdb.DuckDBPyConnection, tmp_path) -> None:
    with pytest.raises(NoDataError, match="nothing to export"):
        reports.export(con, "users", tmp_path / "u.csv", "g", users=["nobody"])
    with pytest.raises(NoDataError, match="no sessions cached for guru 'zzz'"):
        reports.export(con, "activity", tmp_path / "a.parquet", "zzz")
    with pytest.raises(ConfigError, match=r"\.csv or \.parquet"):
        reports.export(con, "activity", tmp_path / "a.xlsx", "g")
    with pytest.raises(ConfigError, match="unknown report"):
        reports.export(con, "bogus", tmp_path / "a.csv", "g")
    with pytest.raises(ConfigError, match="does not exist"):
        reports.export(con, "users", tmp_path / "missing" / "u.csv", "g")
    assert list(tmp_path.iterdir()) == []


# --- CLI ------------------------------------------------------------------------------------


def test_cli_report_csv_parquet_and_stdout(cache_file: Path, tmp_path, capsys) -> None:
    out = tmp_path / "weekly.csv"
    code = cli.main(
        ["report", "activity", "g", "--db", str(cache_file), "--freq", "W",
         "--tz", "Europe/Berlin", "--by", "user", "--user", "alice", "erin", "-o", str(out)]
    )  # fmt: skip
    assert code == 0
    back = pd.read_csv(out)
    assert back["user"].unique().tolist() == ["alice", "erin"]
    # the span is the selection's (alice and erin: Apr 7 .. Apr 22), so three weeks
    assert back.loc[back["user"] == "alice", "active_sessions"].tolist() == [3, 1, 1]
    assert back.loc[back["user"] == "erin", "events"].tolist() == [0, 1, 1]
    assert back["bucket"].iloc[0] == "2025-04-07T00:00:00+02:00"
    assert "wrote 6 rows of activity" in capsys.readouterr().err

    pq = tmp_path / "ret.parquet"
    assert (
        cli.main(
            ["report", "retention", "g", "--db", str(cache_file), "--periods", "2", "-o", str(pq)]
        )
        == 0
    )
    assert duckdb.connect().execute(
        "SELECT sum(users) FROM read_parquet(?)", [str(pq)]
    ).fetchone() == (6,)
    assert "wrote 4 rows of retention" in capsys.readouterr().err

    assert (
        cli.main(
            ["report", "summary", "g", "--db", str(cache_file), "--now", "2025-04-22", "-o", "-"]
        )
        == 0
    )
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[0].startswith("metric,current,previous,change,change_pct")
    assert lines[1].startswith("active_sessions,2,5,-3,-60.0,")
    assert captured.err == ""


def test_cli_plot_writes_png_and_svg(cache_file: Path, tmp_path) -> None:
    png = tmp_path / "activity.png"
    args = ["plot", "activity", "g", "--db", str(cache_file), "--by", "user", "--top", "2"]
    assert cli.main([*args, "-o", str(png)]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG"
    svg = tmp_path / "heat.svg"
    assert (
        cli.main(
            ["plot", "heatmap", "g", "--db", str(cache_file), "--tz", "Asia/Tokyo", "-o", str(svg)]
        )
        == 0
    )
    assert "Asia/Tokyo" in svg.read_text(encoding="utf-8")
    for chart in ("users", "lifecycle", "retention"):
        assert (
            cli.main(
                ["plot", chart, "g", "--db", str(cache_file), "-o", str(tmp_path / f"{chart}.png")]
            )
            == 0
        )
    for chart in ("sources", "binge_length", "trust"):
        assert (
            cli.main(
                ["plot", chart, "m", "--db", str(cache_file), "-o", str(tmp_path / f"{chart}.png")]
            )
            == 0
        )
    assert len(list(tmp_path.glob("*.png"))) == 7


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["report", "activity", "nope"], 1, "no sessions cached for guru 'nope'"),
        (["report", "activity", "g", "--tz", "Mars/Base"], 2, "unknown time zone"),
        (["report", "activity", "g", "--freq", "fortnight"], 2, "unknown freq"),
        (
            ["report", "activity", "g", "--start", "2025-05-01", "--end", "2025-04-01"],
            2,
            "not before end",
        ),
        (["report", "sessions", "g", "--freq", "W"], 2, "--freq does not apply"),
        (["report", "users", "g", "--user", "nobody"], 1, "nothing to export"),
        (["report", "binge_length", "dst"], 1, "no messages cached for guru 'dst'"),
        (["plot", "lifecycle", "g", "--top", "3"], 2, "--top does not apply"),
    ],
)
def test_cli_errors_one_line_no_file(
    cache_file: Path, tmp_path, capsys, argv: list[str], code: int, message: str
) -> None:
    out = tmp_path / ("out.png" if argv[0] == "plot" else "out.csv")
    assert cli.main([*argv, "--db", str(cache_file), "-o", str(out)]) == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and err.startswith("guru-analytics: error:")
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache.duckdb"]


def test_cli_missing_cache_is_not_created(tmp_path, capsys) -> None:
    db = tmp_path / "none.duckdb"
    out = tmp_path / "x.csv"
    assert cli.main(["report", "sessions", "g", "--db", str(db), "-o", str(out)]) == 1
    assert "no cache at" in capsys.readouterr().err
    assert not db.exists() and not out.exists()


def test_cli_empty_cache_subprocess(tmp_path) -> None:
    """The real entry point: one line on stderr, non-zero exit, no traceback, no file."""
    db = tmp_path / "empty.duckdb"
    Store(db).close()
    out = tmp_path / "a.png"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "guru_analytics",
            "plot",
            "activity",
            "g",
            "--db",
            str(db),
            "-o",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert proc.stderr == (
        "guru-analytics: error: no sessions cached for guru 'g': run `guru-analytics sync g` first\n"
    )
    assert not out.exists()


def test_frame_columns_are_documented() -> None:
    for name, spec in frames.COLUMNS.items():
        assert all(c.doc for c in spec), name
    assert set(reports.REPORTS) == set(frames.FRAMES)
