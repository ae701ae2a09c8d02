"""guru_analytics: every session of a Gurubase guru in a local DuckDB cache, as DataFrames,
plots, a notebook dashboard and CSV reports.

Nothing heavy is imported here: names resolve lazily so ``import guru_analytics`` is instant
and has no side effects. (The ``sync`` function is not re-exported: ``guru_analytics.sync``
is the module, so ``from guru_analytics.sync import sync`` is the one unambiguous spelling.)
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "Guru": "guru_analytics.guru",
    "sync_guru": "guru_analytics.sync",
    "SyncSummary": "guru_analytics.sync",
    "GurubaseClient": "guru_analytics.client",
    "Store": "guru_analytics.store",
    "LocalGurubase": "guru_analytics.server",
    "errors": "guru_analytics.errors",
}

__all__ = sorted([*_LAZY, "__version__"])


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'guru_analytics' has no attribute {name!r}")
    mod = importlib.import_module(module)
    return mod if name == "errors" else getattr(mod, name)
