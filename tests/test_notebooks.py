"""Every notebook in notebooks/ runs top to bottom in a real kernel against the local server.

The kernel starts in a temporary directory with ``GURU_ANALYTICS_OUT`` pointing there and no
``GURUBASE_*`` variables (conftest clears them), so the notebooks take their local-server
branch. ``MPLBACKEND`` is removed for the kernel so the default inline backend is what runs.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import matplotlib.image
import nbformat
import pandas as pd
import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
ALL = sorted(NOTEBOOKS.glob("*.ipynb"))


# nbclient runs in a child process: resolving the python3 kernel spec imports ipykernel, and
# code that asks "am I in Jupyter?" by looking for ipykernel in sys.modules would then be
# fooled for the rest of the test session.
RUNNER = """
import sys
import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

source, out, target = sys.argv[1:]
nb = nbformat.read(source, as_version=4)
client = NotebookClient(nb, kernel_name="python3", timeout=120, resources={"metadata": {"path": out}})
try:
    client.execute(cwd=out)
except CellExecutionError as exc:
    print(exc, file=sys.stderr)
    sys.exit(1)
finally:
    nbformat.write(nb, target)
"""


def run(path: Path, out: Path, monkeypatch: pytest.MonkeyPatch) -> nbformat.NotebookNode:
    monkeypatch.setenv("GURU_ANALYTICS_OUT", str(out))
    monkeypatch.delenv("MPLBACKEND", raising=False)
    executed = out / f"executed-{path.name}"
    done = subprocess.run(
        [sys.executable, "-c", RUNNER, str(path), str(out), str(executed)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if done.returncode != 0:
        pytest.fail(f"{path.name} failed:\n{done.stderr[-4000:]}")
    return nbformat.read(executed, as_version=4)


def outputs_of(nb: nbformat.NotebookNode, kind: str) -> list[dict]:
    return [
        o for c in nb.cells if c.cell_type == "code" for o in c.outputs if kind in o.get("data", {})
    ]


def test_the_notebooks_are_committed_without_outputs() -> None:
    assert {p.name for p in ALL} >= {"session_trends.ipynb", "user_report.ipynb"}
    for path in ALL:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        assert nb.metadata["kernelspec"]["name"] == "python3"
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, path.name


def test_session_trends_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nb = run(NOTEBOOKS / "session_trends.ipynb", tmp_path, monkeypatch)
    assert len(outputs_of(nb, "image/png")) >= 5  # inline backend drew the figures
    (dash_cell,) = [c for c in nb.cells if c.source.startswith("dash = guru.dashboard")]
    assert "application/vnd.jupyter.widget-view+json" in dash_cell.outputs[0]["data"]
    bars = outputs_of(nb, "application/vnd.jupyter.widget-view+json")
    assert len(bars) >= 2  # the sync's progress bars are notebook widgets too
    report = pd.read_csv(tmp_path / "activity_per_week_by_user.csv")
    assert list(report.columns[:3]) == ["bucket", "user", "active_sessions"]
    assert report["active_sessions"].sum() > 1000
    exported = list(tmp_path.glob("demo-guru-active_sessions-per-week-top3-*.csv"))
    assert len(exported) == 1
    # frames.top_n's rule (the dashboard follows it since merging main): "other", then
    # "(unattributed)" apart as the last series when there is any.
    columns = list(pd.read_csv(exported[0]).columns)
    assert "other" in columns and columns[-1] in ("other", "(unattributed)")
    texts = "\n".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    assert "sync demo-guru: full, ok" in texts


def test_user_report_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run(NOTEBOOKS / "user_report.ipynb", tmp_path, monkeypatch)
    report = pd.read_csv(tmp_path / "user_report.csv")
    assert len(report) == 3 and (report["sessions"] > 0).all()
    overview = pd.read_csv(tmp_path / "users_overview.csv")
    assert (
        report["user"].tolist()
        == overview.loc[overview["user"] != "(unattributed)", "user"].head(3).tolist()
    )
    for row in report.itertuples():
        folder = tmp_path / row.folder
        sessions = pd.read_csv(folder / "sessions.csv")
        assert len(sessions) == row.sessions
        weekly = pd.read_csv(folder / "activity_per_week.csv")
        assert weekly["active_sessions"].sum() >= row.sessions
        for png in ("activity.png", "heatmap.png"):
            image = matplotlib.image.imread(folder / png)
            assert image.shape[0] > 200 and image.shape[1] > 400 and image.std() > 0.05
    assert (tmp_path / "top_users.png").stat().st_size > 10_000
