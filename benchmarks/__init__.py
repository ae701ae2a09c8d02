"""Benchmarks for guru_analytics: ``python -m benchmarks [--quick] [--out BENCHMARKS.md]``.

Five sections, each a module with a ``run(plan, ...) -> list[Row]``:

1. ``request_efficiency``: exact request counts from the local server's log against the
   minimum the API allows, with and without drift, and the cache's exactness afterwards.
2. ``rate_limit``: wall time against the limit's pace, 429s, and a second client sharing
   the key's budget.
3. ``throughput``: sessions per second into the cache with the limit off, beside a naive
   loop (``naive``) and dlt's REST API source (``dlt_loader``).
4. ``analytics``: ``guru_analytics.frames`` beside hand-written DuckDB SQL (``handwritten``)
   on a million-session cache.
5. ``scaling``: sync time and peak memory from 3,000 to 300,000 sessions.

Everything runs against ``guru_analytics.server.LocalGurubase`` over loopback; contenders
whose memory is reported run in a fresh process (``worker``).
"""
