"""``guru-analytics dashboard``: the notebook dashboard served as a web page by Voila.

People who want the numbers often do not run notebooks: this gives them a link. The page is
the same ``dashboard.Dashboard`` a notebook shows, so there is one dashboard, not two. The
served notebook is generated at run time in a temporary directory (never in the checkout)
and holds no secret: the API key reaches the kernel only through the environment
(``GURUBASE_API_KEY``), which Voila passes on. Voila runs as a child process bound to
127.0.0.1 in its own session, so Ctrl-C reaches this process only, which then stops Voila
(and its kernel) cleanly and removes the directory.

Voila is an optional extra (``pip install 'guru-analytics[web]'``); nothing here is imported
by the rest of the package.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import webbrowser
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ConfigError, NoDataError

if TYPE_CHECKING:
    from .dashboard import Dashboard

DEFAULT_PORT = 8866  # Voila's own default
NO_KEY = "No API key: set GURUBASE_API_KEY and restart the dashboard to sync."
_START_TIMEOUT = 60.0


def page_dashboard(slug: str, db: str, tz: str = "UTC") -> Dashboard:
    """The dashboard as the served page builds it (the generated notebook's only call).

    Reads the cache at ``db``; "Sync now" is on only when ``GURUBASE_API_KEY`` is set (the
    key is read by the sync, never written anywhere), and says why when it is off."""
    from .guru import Guru

    guru = Guru(slug, db=db, tz=tz)
    disabled = None if os.environ.get("GURUBASE_API_KEY") else NO_KEY
    return guru.dashboard(sync_disabled=disabled)


def notebook(slug: str, db: str, tz: str = "UTC") -> dict[str, Any]:
    """The served notebook (nbformat 4): one cell calling ``page_dashboard``. Arguments are
    written as Python literals (``repr``), so no value can become code."""
    source = (
        f"from guru_analytics.web import page_dashboard\npage_dashboard({slug!r}, {db!r}, {tz!r})"
    )
    return {
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": {
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
            "language_info": {"name": "python"},
        },
        "cells": [
            {
                "cell_type": "code",
                "id": "dashboard",
                "metadata": {},
                "execution_count": None,
                "outputs": [],
                "source": source,
            }
        ],
    }


def free_port() -> int:
    """A port free on 127.0.0.1 now (for ``--port 0``)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def voila_command(notebook_path: Path, port: int) -> list[str]:
    """Voila serving ``notebook_path`` at ``/`` on 127.0.0.1:``port`` (no retry on another
    port: the URL printed must be the one served)."""
    return [
        sys.executable,
        "-m",
        "voila",
        str(notebook_path),
        "--no-browser",
        f"--port={port}",
        "--Voila.ip=127.0.0.1",
        "--Voila.port_retries=0",
        "--VoilaConfiguration.show_tracebacks=False",
    ]


def serve(
    slug: str,
    db: str | os.PathLike[str],
    *,
    port: int = DEFAULT_PORT,
    tz: str = "UTC",
    open_browser: bool = True,
    echo: Callable[[str], None] = print,
) -> int:
    """Serve the dashboard until Ctrl-C (or SIGTERM); returns the exit status.

    Raises ``ConfigError`` when Voila is missing or the port is taken, ``NoDataError`` when
    there is no cache and no key to fill one.
    """
    if importlib.util.find_spec("voila") is None:
        raise ConfigError("the dashboard page needs Voila: pip install 'guru-analytics[web]'")
    path = Path(db).expanduser().resolve()
    if not path.is_file() and not os.environ.get("GURUBASE_API_KEY"):
        raise NoDataError(
            f"no cache at {path} and no GURUBASE_API_KEY to fill one: run "
            f"`guru-analytics sync {slug} --db {path}` first, or set the key"
        )
    port = free_port() if port == 0 else port
    if not _port_free(port):
        raise ConfigError(f"port {port} on 127.0.0.1 is in use: pass another with --port")
    with tempfile.TemporaryDirectory(prefix="guru-analytics-dashboard-") as tmp:
        nb = Path(tmp) / "dashboard.ipynb"
        nb.write_text(json.dumps(notebook(slug, str(path), tz)), encoding="utf-8")
        with _stop_signals():
            proc = subprocess.Popen(voila_command(nb, port), cwd=tmp, start_new_session=True)
            try:
                if not _wait_listening(proc, port):
                    code = proc.poll()
                    raise ConfigError(
                        f"Voila did not start on port {port}"
                        + (f" (exit status {code})" if code is not None else "")
                        + ": see its messages above"
                    )
                url = f"http://127.0.0.1:{port}/"
                echo(f"Dashboard of {slug} at {url} (Ctrl-C to stop)")
                if open_browser:
                    webbrowser.open(url)
                return proc.wait()
            except KeyboardInterrupt:
                echo("Stopping the dashboard…")
                return 0
            finally:
                _stop(proc)


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _wait_listening(proc: subprocess.Popen[bytes], port: int) -> bool:
    """Poll until the port accepts connections, or the child ends, or the timeout passes."""
    deadline = time.monotonic() + _START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.2)
    return False


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM lets Voila shut its kernels down; a child that ignores it is killed."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


@contextlib.contextmanager
def _stop_signals() -> Iterator[None]:
    """SIGTERM stops the page like Ctrl-C (a service manager or a test sends it)."""

    def interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may install handlers; Ctrl-C still works there
        return
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
