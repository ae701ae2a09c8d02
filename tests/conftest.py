"""Shared test setup: headless matplotlib, no progress bars, no stray environment."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never pick up a developer's real key, base URL or cache path."""
    for name in ("GURUBASE_API_KEY", "GURUBASE_BASE_URL", "GURU_ANALYTICS_DB"):
        monkeypatch.delenv(name, raising=False)
