"""Drift: random touches, new sessions and deletes while a client pages (default: none).

Per-request drift hits the listed guru just before a List Sessions answer; per-second drift
is applied lazily to every guru at the start of each request, for the server-clock time
elapsed since the previous one. Draws come from their own seeded stream.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError
from ..timestamps import from_micros, to_micros
from ._state import GuruState, ServerState

_US_PER_S = 1_000_000


@dataclass(frozen=True)
class DriftConfig:
    """Random changes to the data while a client pages (default: none).

    ``*_per_request`` are expected counts (Poisson) applied to the listed guru just before
    answering each List Sessions request that passed auth and body checks (Get Session and
    rejected requests never drift). ``*_per_second`` are rates applied
    lazily to every guru at the start of each request, for the server-clock time elapsed since
    the previous request. Touches move sessions to the top (a follow-up question); new
    sessions appear on top, ``new_user_share`` of them attributed to an existing external
    user; deletes are soft. Draws come from their own stream (``seed``, default server seed + 2).
    """

    touch_per_request: float = 0.0
    new_per_request: float = 0.0
    delete_per_request: float = 0.0
    touch_per_second: float = 0.0
    new_per_second: float = 0.0
    delete_per_second: float = 0.0
    new_user_share: float = 0.5
    seed: int | None = None

    def __post_init__(self) -> None:
        for name in (
            "touch_per_request",
            "new_per_request",
            "delete_per_request",
            "touch_per_second",
            "new_per_second",
            "delete_per_second",
        ):
            if getattr(self, name) < 0:
                raise ConfigError(f"DriftConfig.{name} must be >= 0")
        if not 0.0 <= self.new_user_share <= 1.0:
            raise ConfigError("DriftConfig.new_user_share must be between 0 and 1")

    @property
    def per_second(self) -> bool:
        return bool(self.touch_per_second or self.new_per_second or self.delete_per_second)

    @property
    def per_request(self) -> bool:
        return bool(self.touch_per_request or self.new_per_request or self.delete_per_request)


class Drift:
    """The drift engine over a ``ServerState``; ``config`` may be replaced while serving."""

    def __init__(self, config: DriftConfig, state: ServerState, default_seed: int) -> None:
        self.config = config
        self.state = state
        self._rng = np.random.default_rng(config.seed if config.seed is not None else default_seed)
        self.last_us: int | None = None

    def start(self) -> None:
        """Per-second drift counts from now (the server is about to serve)."""
        self.last_us = to_micros(self.state.clock())

    def elapsed(self) -> None:
        """Apply per-second drift for the clock time since the previous request."""
        d = self.config
        now_us = to_micros(self.state.clock())
        last = self.last_us
        self.last_us = max(now_us, last or now_us)
        if not d.per_second or last is None or now_us <= last:
            return
        seconds = (now_us - last) / _US_PER_S
        for g in self.state.gurus.values():
            self._drift(
                g,
                d.touch_per_second * seconds,
                d.new_per_second * seconds,
                d.delete_per_second * seconds,
                window=(last, now_us),
            )

    def request(self, g: GuruState) -> None:
        """Apply per-request drift to the listed guru."""
        d = self.config
        if d.per_request:
            self._drift(g, d.touch_per_request, d.new_per_request, d.delete_per_request)

    def _drift(
        self,
        g: GuruState,
        touch: float,
        new: float,
        delete: float,
        window: tuple[int, int] | None = None,
    ) -> None:
        rng = self._rng
        n_touch, n_new, n_delete = (
            int(rng.poisson(x)) if x > 0 else 0 for x in (touch, new, delete)
        )
        times = self._times(g, n_touch + n_new, window)
        for t in times[:n_touch]:
            if not g.order:
                break
            _k, row = g.order[int(rng.integers(0, len(g.order)))]
            g.set_last(row, max(t, g.last[row]))
        users = [u for u, keys in g.by_user.items() if keys]
        for t in times[n_touch:]:
            user = None
            if users and rng.random() < self.config.new_user_share:
                user = users[int(rng.integers(0, len(users)))]
            self.state.add_sessions(g, self.state.new_sessions(g, [from_micros(t)], user))
        for _ in range(n_delete):
            if not g.order:
                break
            _k, row = g.order[int(rng.integers(0, len(g.order)))]
            g.delete(row)

    def _times(self, g: GuruState, n: int, window: tuple[int, int] | None) -> list[int]:
        """``n`` strictly increasing times on top of the guru: spread over ``window`` when
        given (per-second drift), else default 'now' times."""
        if n == 0:
            return []
        if window is None:
            return [self.state.next_default_us(g) for _ in range(n)]
        lo, hi = window
        spread = sorted(int(x) for x in self._rng.integers(lo + 1, hi + 1, size=n))
        out = []
        floor = max((g.top_us() or 0) + 1, self.state.last_default_us + 1)
        for t in spread:
            t = max(t, floor)
            out.append(t)
            floor = t + 1
        self.state.last_default_us = out[-1]
        return out
