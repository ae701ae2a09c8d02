"""``guru-analytics dashboard`` without a browser: the generated notebook, the page's
dashboard, and the errors before anything is served (the browser test serves it for real)."""

from __future__ import annotations

import ast
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from guru_analytics import web
from guru_analytics.cli import main
from guru_analytics.errors import ConfigError, NoDataError
from guru_analytics.guru import Guru


def test_the_notebook_holds_literals_only_and_no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GURUBASE_API_KEY", "gb-secret-key-1234")
    slug = "x'); import os; os.system('echo pwned'); ('"
    nb = web.notebook(slug, "/tmp/c.duckdb", "Europe/Berlin")
    (cell,) = nb["cells"]
    tree = ast.parse(cell["source"])
    call = tree.body[-1].value
    assert isinstance(call, ast.Call) and call.func.id == "page_dashboard"
    assert [ast.literal_eval(a) for a in call.args] == [slug, "/tmp/c.duckdb", "Europe/Berlin"]
    assert len(tree.body) == 2  # the import and the one call: the slug stayed a string
    assert "gb-secret" not in str(nb)


def test_the_page_dashboard_reads_the_cache_and_syncs_only_with_a_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "c.duckdb"
    with Guru.local(80, 3, 20, db=db) as g:
        g.sync(progress=False)
        slug = g.slug
    monkeypatch.delenv("GURUBASE_API_KEY", raising=False)
    d = web.page_dashboard(slug, str(db))
    assert d.last is not None and int(d.last.table["active_sessions"].sum()) == 80
    assert d.sync_button.disabled and d.sync_disabled == web.NO_KEY
    monkeypatch.setenv("GURUBASE_API_KEY", "gb-some-key-0000")
    assert not web.page_dashboard(slug, str(db)).sync_button.disabled


def test_no_cache_and_no_key_is_an_error_before_serving(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("GURUBASE_API_KEY", raising=False)
    with pytest.raises(NoDataError, match="guru-analytics sync my-guru"):
        web.serve("my-guru", tmp_path / "none.duckdb", open_browser=False)
    assert main(["dashboard", "my-guru", "--db", str(tmp_path / "none.duckdb")]) == 1
    assert "no cache at" in capsys.readouterr().err


def test_a_taken_port_is_a_config_error(tmp_path: Path) -> None:
    db = tmp_path / "c.duckdb"
    db.write_bytes(b"")  # only its existence is checked before the port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(ConfigError, match=f"port {port} .* in use"):
            web.serve("g", db, port=port, open_browser=False)


def test_the_command_is_listed_with_its_options() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "guru_analytics", "dashboard", "--help"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    for option in ("--db", "--port", "--no-browser", "--tz", "guru-analytics[web]"):
        assert option in out
