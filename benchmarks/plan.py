"""How big and how often: the sizes and repeat counts of the full and the quick run.

The full run is what BENCHMARKS.md quotes (medians of >= 3 runs); the quick run is the same
code on smaller inputs with one run each, so CI can prove every benchmark still works in
well under two minutes.
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
)

QUICK = Plan(
    name="quick",
    repeats=1,
    full_sizes=(3_000,),
    incremental_base=3_000,
    incremental_changes=(0, 10, 100),
    user_sessions=1_500,
    n_users=50,
    user_changes=100,
    drift_sessions=1_500,
    rate_sessions=600,
    rate_limit=10,
    rate_window=1.0,
    throughput_sessions=6_000,
    analytics_sessions=100_000,
    analytics_users=1_000,
    analytics_observations=300_000,
    scaling_sizes=(3_000, 30_000),
)
