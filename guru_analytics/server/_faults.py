"""Fault injection for the local server: which requests fail, and how their answers change.

Draws come from their own seeded stream and take the same number of draws on every request,
so the sequence of faults depends only on the order of requests. A faulted request is
processed like any other; only the answer sent is replaced.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from http import HTTPStatus

from ..errors import ConfigError
from ._exchange import (
    HTML_500,
    Response,
    html_response,
    json_response,
    msg_response,
    proxy_error_page,
)

_HTML_200 = (
    "<!doctype html><html><head><title>Gurubase</title></head>"
    '<body><div id="root">Loading…</div></body></html>'
)


@dataclass(frozen=True)
class FaultConfig:
    """Injected faults; each ``*_rate`` is a probability per endpoint request (default 0).

    Draws come from their own seeded stream (``seed``, default the server's seed + 1) and
    take the same number of draws on every request, so the sequence of faults depends only
    on the order of requests. Faults never apply to unknown paths.

    - ``error_rate``: answer a status from ``error_statuses`` with a body kind from
      ``error_bodies`` (``"html"`` like a proxy page, ``"json"`` = ``{"msg": ...}``).
    - ``drop_rate``: close the connection without answering (logged with status None).
    - ``slow_rate`` / ``slow_seconds``: sleep before answering (to trip client timeouts).
    - ``throttle_rate``: start a burst of ``throttle_burst`` 429 answers saying
      ``throttle_seconds``.
    - ``retry_after_header``: send ``Retry-After`` on every 429 (injected and real); when
      False only the body carries the seconds, like a proxy that strips the header.
    - ``malformed_json_rate``: a 200 whose JSON body is cut in half.
    - ``html_200_rate``: a 200 with an HTML page instead of JSON.

    Precedence when several fire: drop > throttle > error > malformed > html; slow combines
    with any of them. ``malformed``/``html`` only replace answers that were 200.
    """

    error_rate: float = 0.0
    error_statuses: tuple[int, ...] = (500, 502, 503)
    error_bodies: tuple[str, ...] = ("html",)
    drop_rate: float = 0.0
    slow_rate: float = 0.0
    slow_seconds: float = 2.0
    throttle_rate: float = 0.0
    throttle_burst: int = 1
    throttle_seconds: int = 1
    retry_after_header: bool = True
    malformed_json_rate: float = 0.0
    html_200_rate: float = 0.0
    seed: int | None = None

    def __post_init__(self) -> None:
        for name in (
            "error_rate",
            "drop_rate",
            "slow_rate",
            "throttle_rate",
            "malformed_json_rate",
            "html_200_rate",
        ):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"FaultConfig.{name} must be between 0 and 1, got {value}")
        if not self.error_statuses or any(not 400 <= s <= 599 for s in self.error_statuses):
            raise ConfigError(
                "FaultConfig.error_statuses must be HTTP error codes such as (500, 502, 503)"
            )
        if not self.error_bodies or any(b not in ("html", "json") for b in self.error_bodies):
            raise ConfigError("FaultConfig.error_bodies must contain only 'html' and/or 'json'")
        if self.throttle_burst < 1 or self.throttle_seconds < 0 or self.slow_seconds < 0:
            raise ConfigError(
                "FaultConfig: throttle_burst >= 1, throttle_seconds and slow_seconds >= 0"
            )


@dataclass(frozen=True)
class FaultDraw:
    """The faults picked for one request."""

    drop: bool
    slow: bool
    throttle: bool
    error: tuple[int, str] | None
    malformed: bool
    html200: bool


class Faults:
    """The fault stream: ``draw()`` once per endpoint request, ``apply()`` to its answer.

    ``config`` may be replaced while serving (the stream continues).
    """

    def __init__(self, config: FaultConfig, default_seed: int) -> None:
        self.config = config
        self._rng = random.Random(config.seed if config.seed is not None else default_seed)
        self._throttle_left = 0

    def draw(self) -> FaultDraw:
        """Decide this request's faults: always the same number of draws per request."""
        f = self.config
        u = [self._rng.random() for _ in range(7)]
        status = f.error_statuses[int(u[5] * len(f.error_statuses))]
        kind = f.error_bodies[int(u[6] * len(f.error_bodies))]
        throttle = False
        if self._throttle_left > 0:
            self._throttle_left -= 1
            throttle = True
        elif u[2] < f.throttle_rate:
            self._throttle_left = f.throttle_burst - 1
            throttle = True
        return FaultDraw(
            drop=u[0] < f.drop_rate,
            slow=u[1] < f.slow_rate,
            throttle=throttle,
            error=(status, kind) if u[3] < f.error_rate else None,
            malformed=u[4] < f.malformed_json_rate,
            html200=u[4] >= 1.0 - f.html_200_rate,
        )

    def throttled(self, seconds: int) -> Response:
        """The API's 429 (``Retry-After`` unless the config strips it like some proxies)."""
        headers = [("Retry-After", str(seconds))] if self.config.retry_after_header else []
        return json_response(
            429,
            {"msg": f"Request was throttled. Expected available in {seconds} seconds."},
            headers,
        )

    def apply(self, answer: Response, f: FaultDraw) -> Response:
        """Replace the answer as the draw says (precedence in ``FaultConfig``'s docstring)."""
        if f.drop:
            answer = Response(0, b"", drop=True)
        elif f.throttle:
            answer = self.throttled(self.config.throttle_seconds)
        elif f.error is not None:
            status, kind = f.error
            if kind == "json":
                answer = msg_response(
                    status, "Internal server error" if status == 500 else HTTPStatus(status).phrase
                )
            else:
                answer = html_response(
                    status, HTML_500 if status == 500 else proxy_error_page(status)
                )
        elif answer.status == 200 and f.malformed:
            answer = Response(200, answer.body[: max(1, len(answer.body) // 2)], "application/json")
        elif answer.status == 200 and f.html200:
            answer = html_response(200, _HTML_200)
        if f.slow:
            answer.delay = self.config.slow_seconds
        return answer
