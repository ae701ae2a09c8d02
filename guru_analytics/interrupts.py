"""Interrupts: a Ctrl-C as Python raises it and as DuckDB raises it, and a short hold-off.

A SIGINT that lands while DuckDB runs a query does not surface as ``KeyboardInterrupt``:
DuckDB cancels the query and raises ``duckdb.InterruptException`` or a bare
``RuntimeError('Query interrupted')``. ``is_interrupt`` is the one test for all three, shared
by the store (never wraps an interrupt as a cache error), the sync (records the run as
``interrupted``) and the CLI (exit 130).
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

_QUERY_INTERRUPTED = "Query interrupted"


def is_interrupt(exc: BaseException) -> bool:
    """Whether ``exc`` is a Ctrl-C: Python's ``KeyboardInterrupt`` or DuckDB's forms of it."""
    if isinstance(exc, KeyboardInterrupt):
        return True
    duckdb = sys.modules.get("duckdb")  # never imported here: no DuckDB, no DuckDB interrupt
    if duckdb is not None and isinstance(exc, duckdb.InterruptException):
        return True
    return type(exc) is RuntimeError and str(exc) == _QUERY_INTERRUPTED


@contextmanager
def sigint_held_off() -> Iterator[None]:
    """Defer SIGINT for a short block (a few ms of bookkeeping that must not be cut in half,
    such as recording the end of a sync run); a Ctrl-C received meanwhile is delivered right
    after the block. Only the main thread can set signal handlers: elsewhere a no-op."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def note(signum: int, frame: FrameType | None) -> None:
        received.append(signum)

    previous = signal.signal(signal.SIGINT, note)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        signal.raise_signal(signal.SIGINT)  # to the handler that was there before
