"""``LocalGurubase``: a Gurubase-compatible HTTP server on loopback, for tests and demos.

It implements the contract in ``gurubase-api.md`` (List Sessions, Get Session and Export
Analytics) with the awkward parts on purpose, so the client and the crawl are tested
against them:

- order ``last_used`` desc with **no tie-breaker**: with ``tie_shuffle`` (default) rows of
  equal ``last_used`` come back in a fresh random order on every request;
- offset paging; ``has_more`` counts rows without a root question, which are dropped *after*
  the page cut (short or empty pages with ``has_more`` true);
- grouping into today / last_week / older by UTC calendar day of the injectable clock;
- a sliding-window rate limit per key *owner*, shared by every endpoint and checked before
  the key (bad-key calls count against an anonymous bucket per client address);
- drift (touch / create / delete while a client pages), scripted or random;
- fault injection (5xx, dropped connections, slow answers, 429 bursts, malformed JSON,
  HTML with 200).

This package is the server's face; its parts each do one thing: ``_state`` (gurus, keys,
sessions and their administration), ``_drift``, ``_faults``, ``_export`` (the analytics
file), ``_app`` (the pure ``handle(request) -> response``, see its docstring for the
pipeline) and ``_http`` (the socket shell). Get Session ignores the request body; for a
session without a root question it answers 200 with an empty ``conversation``. A bug while
answering gives an HTML 500 and is recorded in ``srv.internal_errors``; the server keeps
serving.

It never imports ``client``, ``paging`` or ``sync``: a paging bug must not hide on both
sides.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any

import pandas as pd

from .. import synthetic
from ..errors import ConfigError
from ..timestamps import utc_now
from ._app import App, LoggedRequest
from ._drift import Drift, DriftConfig
from ._exchange import Request, Response
from ._export import EXPORT_SCHEMES
from ._faults import FaultConfig, Faults
from ._http import HTTPServer
from ._state import ServerState

__all__ = [
    "DEFAULT",
    "DriftConfig",
    "FaultConfig",
    "LocalGurubase",
    "LoggedRequest",
    "Request",
    "Response",
]


class _Default:
    """Sentinel type: 'use the default' where None is a meaningful value."""

    def __repr__(self) -> str:
        return "DEFAULT"


DEFAULT = _Default()


class LocalGurubase:
    """A Gurubase-compatible server for tests and demos (see the package docstring).

    Use as ``with LocalGurubase.demo(...) as srv:`` or ``srv.start()`` / ``srv.stop()``;
    ``srv.handle(Request(...))`` answers one request without a socket.
    ``export_scheme`` picks the Export Analytics file's top-level keys: ``"code"``
    (``questions``/``unable_to_answer``/``references``, what the backend runs) or ``"docs"``
    (``questions``/``out_of_context``/``referenced_sources``, what the API docs say).
    """

    def __init__(
        self,
        page_size: int = 30,
        rate_limit: int | None = 10,
        rate_window: float = 60.0,
        tie_shuffle: bool = True,
        clock: Callable[[], datetime] | None = None,
        seed: int = 0,
        faults: FaultConfig | None = None,
        drift: DriftConfig | None = None,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        host: str = "127.0.0.1",
        port: int = 0,
        export_scheme: str = "code",
    ) -> None:
        if page_size < 1:
            raise ConfigError(f"page_size must be >= 1, got {page_size}")
        if rate_limit is not None and rate_limit < 1:
            raise ConfigError("rate_limit must be >= 1, or None to disable the rate limit")
        if rate_window <= 0:
            raise ConfigError("rate_window must be > 0 seconds")
        if export_scheme not in EXPORT_SCHEMES:
            raise ConfigError(
                f"export_scheme {export_scheme!r} is not valid: use one of {sorted(EXPORT_SCHEMES)}"
            )
        self.page_size = page_size
        self.rate_limit = rate_limit
        self.rate_window = rate_window
        self.tie_shuffle = tie_shuffle
        self.seed = seed
        self.sleep = sleep
        self.host = host
        self.port = port
        self.guru_slug: str | None = None
        self.api_key: str | None = None
        self.synthetic: synthetic.SyntheticGuru | None = None
        self._state = ServerState(clock or utc_now, seed)
        self._lock = self._state.lock
        self._app = App(
            self._state,
            Faults(faults or FaultConfig(), seed + 1),
            Drift(drift or DriftConfig(), self._state, seed + 2),
            page_size=page_size,
            rate_limit=rate_limit,
            rate_window=rate_window,
            tie_shuffle=tie_shuffle,
            monotonic=monotonic,
            seed=seed,
            export_scheme=export_scheme,
        )
        self._httpd: HTTPServer | None = None
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        state = self.base_url if self._httpd else "not started"
        return (
            f"LocalGurubase({state}, gurus={sorted(self._state.gurus)}, "
            f"keys={len(self._state.keys)})"
        )

    # --- settings that may change while serving ----------------------------------------------

    @property
    def clock(self) -> Callable[[], datetime]:
        """The server's wall clock (grouping, drift, export intervals)."""
        return self._state.clock

    @clock.setter
    def clock(self, value: Callable[[], datetime]) -> None:
        self._state.clock = value

    @property
    def faults(self) -> FaultConfig:
        return self._app.faults.config

    @faults.setter
    def faults(self, value: FaultConfig) -> None:
        self._app.faults.config = value

    @property
    def drift(self) -> DriftConfig:
        return self._app.drift.config

    @drift.setter
    def drift(self, value: DriftConfig) -> None:
        self._app.drift.config = value

    @property
    def export_scheme(self) -> str:
        return self._app.export_scheme

    @export_scheme.setter
    def export_scheme(self, value: str) -> None:
        if value not in EXPORT_SCHEMES:
            raise ConfigError(
                f"export_scheme {value!r} is not valid: use one of {sorted(EXPORT_SCHEMES)}"
            )
        self._app.export_scheme = value

    @property
    def monotonic(self) -> Callable[[], float]:
        return self._app.monotonic

    @property
    def internal_errors(self) -> list[str]:
        """Bugs hit while answering (tests assert it stays empty)."""
        return self._app.internal_errors

    # --- construction ------------------------------------------------------------------------

    @classmethod
    def demo(
        cls,
        n_sessions: int = 5000,
        n_users: int = 50,
        days: int = 120,
        *,
        seed: int = 0,
        guru_slug: str = "demo-guru",
        end: datetime | None = None,
        unattributed_share: float = 0.3,
        rootless_share: float = 0.0,
        api_key: str | None = None,
        owner: str = "demo-owner",
        **kwargs: Any,
    ) -> LocalGurubase:
        """One synthetic guru and one key (``srv.guru_slug``, ``srv.api_key``, ``srv.synthetic``).

        ``end`` defaults to the server clock's now, so recent sessions land in ``today`` and
        ``last_week``; pass a fixed ``end`` for data that is identical run to run. Other
        keyword arguments go to the constructor (``rate_limit``, ``clock``, ``faults``...).
        Not started: use ``with`` or ``start()``.
        """
        srv = cls(seed=seed, **kwargs)
        guru = synthetic.generate(
            n_sessions,
            n_users,
            days,
            seed=seed,
            guru_slug=guru_slug,
            end=end if end is not None else srv.clock(),
            unattributed_share=unattributed_share,
            rootless_share=rootless_share,
        )
        srv.add_guru(guru)
        key = api_key or "gb-" + secrets.token_hex(16)
        srv.add_key(key, owner, gurus=[guru_slug])
        srv.guru_slug, srv.api_key, srv.synthetic = guru_slug, key, guru
        return srv

    def add_guru(
        self,
        guru: synthetic.SyntheticGuru | str,
        sessions_df: pd.DataFrame | synthetic.SyntheticGuru | None = None,
        name: str | None | _Default = DEFAULT,
        *,
        seed: int | None = None,
    ) -> str:
        """Serve a guru: a ``SyntheticGuru`` or a slug with an optional sessions frame.

        A frame needs ``id`` and ``last_used`` (tz-aware); missing columns are filled
        (``date_created`` = ``last_used``, one message, generated titles, no user, has_root).
        ``name=None`` serves ``guru_type_name: null``. Returns the slug.
        """
        if isinstance(sessions_df, synthetic.SyntheticGuru):  # a slug plus a generated guru
            seed = sessions_df.seed if seed is None else seed
            sessions_df = sessions_df.sessions
        frame: pd.DataFrame | None
        if isinstance(guru, synthetic.SyntheticGuru):
            slug, frame = guru.slug, guru.sessions if sessions_df is None else sessions_df
            default_name, guru_seed = guru.name, guru.seed if seed is None else seed
        else:
            slug, frame = str(guru), sessions_df
            default_name, guru_seed = (
                synthetic.guru_name(str(guru)),
                self.seed if seed is None else seed,
            )
        served_name = default_name if isinstance(name, _Default) else name
        self._state.add_guru(slug, served_name, guru_seed, frame)
        return slug

    def add_key(self, key: str, owner: str, gurus: Sequence[str] | None = None) -> None:
        """Accept ``key`` for ``owner``; ``gurus`` = the slugs it may read (None = all).

        The rate limit is per owner: two keys of one owner share one window.
        """
        self._state.add_key(key, owner, gurus)

    # --- lifecycle ---------------------------------------------------------------------------

    def bind(self) -> LocalGurubase:
        """Open the listening socket (port 0 = any free port) without serving yet."""
        if self._httpd is None:
            self._httpd = HTTPServer((self.host, self.port), self._app, lambda s: self.sleep(s))
            with self._lock:
                self._app.drift.start()
        return self

    def start(self) -> LocalGurubase:
        """Serve in a background daemon thread. Returns self."""
        if self._thread is not None:
            return self
        httpd = self.bind()._httpd
        assert httpd is not None
        self._thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="LocalGurubase",
            daemon=True,
        )
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve in the calling thread until ``KeyboardInterrupt`` (used by the CLI)."""
        httpd = self.bind()._httpd
        assert httpd is not None
        try:
            httpd.serve_forever(poll_interval=0.2)
        finally:
            httpd.server_close()
            httpd.close_connections()
            self._httpd = None

    def stop(self) -> None:
        """Stop serving, close the listening socket and cut open keep-alive connections
        (idempotent)."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        if self._thread is not None:
            httpd.shutdown()
        httpd.server_close()
        httpd.close_connections()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> LocalGurubase:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/api/v1`` once started."""
        if self._httpd is None:
            raise ConfigError("the server is not started: call start() or use it in a with block")
        host, port = self._httpd.socket.getsockname()[:2]  # the bound (IPv4) address
        return f"http://{host}:{port}/api/v1"

    def handle(self, request: Request) -> Response:
        """Answer one request without a socket (same pipeline, rate limit and log as HTTP)."""
        return self._app.handle(request)

    # --- truth and scripted changes ----------------------------------------------------------

    def gurus(self) -> list[str]:
        with self._lock:
            return sorted(self._state.gurus)

    def truth(self, slug: str, external_user_id: str | None = None) -> pd.DataFrame:
        """The listable sessions now (has a root question, not deleted), last_used desc, id asc.

        Columns: id, last_used, date_created, root_question_name, root_question_slug,
        user_question, external_user_id, n_messages (incl. touches), source.
        """
        return self._state.truth(slug, external_user_id)

    def users(self, slug: str) -> list[str]:
        """External user ids with at least one non-deleted session (sorted)."""
        return self._state.users(slug)

    def conversation(self, session_id: str) -> list[dict[str, Any]]:
        """What Get Session would return in ``conversation`` for this session now."""
        return self._state.conversation(session_id)

    def touch(
        self, slug: str, ids: str | Iterable[str], at: datetime | None = None
    ) -> list[datetime]:
        """Ask a follow-up in each session: ``last_used`` becomes ``at`` (all the same, so ties
        are easy to make) or, by default, strictly increasing times on top of the list (server
        clock, at least 1 µs after the current newest). Returns the new times."""
        return self._state.touch(slug, ids, at)

    def create(
        self,
        slug: str,
        n: int | pd.DataFrame = 1,
        external_user_id: str | None = None,
        *,
        at: datetime | None = None,
    ) -> list[str]:
        """Add new sessions on top (one message each) and return their ids.

        ``n`` is a count (generated titles, created at strictly increasing default times or all
        at ``at``) or a frame of rows (``id``/``last_used``/... optional; missing ones are
        generated). ``external_user_id`` applies to rows that do not name one.
        """
        return self._state.create(slug, n, external_user_id, at)

    def delete(self, slug: str, ids: str | Iterable[str]) -> None:
        """Soft delete: gone from listings and truth; Get Session answers 404."""
        self._state.delete(slug, ids)

    def on_request(self, n: int, fn: Callable[[LocalGurubase], Any]) -> None:
        """Run ``fn(srv)`` just before handling the ``n``-th request (1-based, every request
        counted in arrival order, including errors and unknown paths)."""
        if n < 1:
            raise ConfigError("on_request needs n >= 1 (requests are counted from 1)")
        with self._lock:
            self._app.hooks.setdefault(n, []).append(lambda: fn(self))

    # --- the request log ---------------------------------------------------------------------

    @property
    def log(self) -> list[LoggedRequest]:
        """A copy of the request log, oldest first."""
        with self._lock:
            return list(self._app.log)

    @property
    def requests_received(self) -> int:
        with self._lock:
            return self._app.n_requests

    def request_count(self, path_contains: str | None = None, status: int | None = None) -> int:
        """How many logged requests match (both filters optional)."""
        with self._lock:
            return sum(
                1
                for r in self._app.log
                if (path_contains is None or path_contains in r.path)
                and (status is None or r.status == status)
            )

    def clear_log(self) -> None:
        with self._lock:
            self._app.log.clear()
