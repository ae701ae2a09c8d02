"""How big and how often: the sizes and repeat counts of the full and the quick run.

The full run is what BENCHMARKS.md quotes (medians of >= 3 runs, the issue's sizes); the
quick run is the same code on inputs small enough (one run each) that CI proves every
benchmark still works in about a minute on 2 cores. Its figures are not for quoting.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Plan:
    """Every size and repeat count one benchmark run uses."""

    name: str
    repeats: int
    # 1. request efficiency
    full_sizes: tuple[int, ...]
    incremental_base: int
    incremental_changes: tuple[int, ...]
    user_sessions: int
    n_users: int
    user_changes: int
    drift_sessions: int
    # 2. rate-limit obedience: R requests per window seconds, over a guru of this size
    rate_sessions: int
    rate_limit: int
    rate_window: float
    # 3. throughput with the limit off
    throughput_sessions: int
    # 4. analytics at scale
    analytics_sessions: int
    analytics_users: int
    analytics_observations: int
    # 5. scaling
    scaling_sizes: tuple[int, ...]
    # runs at sizes of 100,000 sessions and more (each one is a long sync)
    big_repeats: int = 1

    def scaling_repeats(self, n: int) -> int:
        """Runs for one scaling size: ``repeats``, or ``big_repeats`` for the largest sizes."""
        return self.big_repeats if n >= 100_000 else self.repeats


FULL = Plan(
    name="full",
    repeats=3,
    full_sizes=(3_000, 30_000),
    incremental_base=3_000,
    incremental_changes=(0, 10, 100),
    user_sessions=6_000,
    n_users=50,
    user_changes=100,
    drift_sessions=3_000,
    rate_sessions=3_000,
    rate_limit=10,
    rate_window=2.0,
    throughput_sessions=30_000,
    analytics_sessions=1_000_000,
    analytics_users=10_000,
    analytics_observations=3_000_000,
    scaling_sizes=(3_000, 30_000, 300_000),
    big_repeats=3,
)

QUICK = Plan(
    name="quick",
    repeats=1,
    full_sizes=(900,),
    incremental_base=900,
    incremental_changes=(0, 10, 100),
    user_sessions=900,
    n_users=50,
    user_changes=100,
    drift_sessions=900,
    rate_sessions=600,
    rate_limit=10,
    rate_window=2.0,
    throughput_sessions=900,
    analytics_sessions=20_000,
    analytics_users=500,
    analytics_observations=60_000,
    scaling_sizes=(900, 3_600),
)
