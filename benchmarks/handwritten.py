"""The hand-written DuckDB queries ``guru_analytics.frames`` is measured against.

Each is what an analyst fluent in SQL would write for the same question on a cache of one
guru, in UTC, with no filters and no messages cached: the same definitions as ``frames``
(an event is each distinct ``last_used`` seen plus the current one; a session is active in a
bucket with an event there and new in the bucket of its first event; unattributed sessions
count under ``(unattributed)`` and is not ranked; deleted sessions are left out; empty
buckets appear as 0; a retention period whose week has not ended by the newest event has
no rate),
without ``frames``' generality (time zones, ranges, filters, several gurus, messages).
The benchmark checks that both give the same numbers before it compares their speed.
"""

from __future__ import annotations

UNATTRIBUTED = "(unattributed)"

_BASE = f"""
live AS (SELECT * FROM sessions WHERE guru = $guru AND NOT deleted),
ev AS (SELECT o.id, o.last_used AS ts FROM observations o
       WHERE o.guru = $guru AND o.id IN (SELECT id FROM live)
       UNION SELECT id, last_used FROM live),
lab AS (SELECT l.id, coalesce(u.external_user_id, '{UNATTRIBUTED}') AS label
        FROM live l LEFT JOIN session_users u ON u.guru = $guru AND u.id = l.id)"""

ACTIVITY_DAY_BY_USER = f"""
WITH {_BASE},
per AS (SELECT id, date_trunc('day', ts) AS b, count(*) AS n FROM ev GROUP BY ALL),
firsts AS (SELECT id, date_trunc('day', min(ts)) AS fb FROM ev GROUP BY id),
agg AS (SELECT lab.label AS "user", per.b, count(*) AS active_sessions,
               count(*) FILTER (WHERE firsts.fb = per.b) AS new_sessions,
               sum(per.n) AS events
        FROM per JOIN lab USING (id) JOIN firsts USING (id) GROUP BY ALL),
days AS (SELECT unnest(generate_series(min(b), max(b), INTERVAL 1 day)) AS b FROM per),
who AS (SELECT DISTINCT "user" FROM agg)
SELECT days.b AS bucket, who."user",
       coalesce(agg.active_sessions, 0) AS active_sessions,
       coalesce(agg.new_sessions, 0) AS new_sessions,
       coalesce(agg.events, 0) AS events
FROM days CROSS JOIN who LEFT JOIN agg ON agg.b = days.b AND agg."user" = who."user"
ORDER BY bucket, who."user"
"""

USERS = f"""
WITH {_BASE},
tot AS (SELECT count(DISTINCT id) AS n FROM ev),
kn AS (SELECT count(DISTINCT ev.id) AS n FROM ev JOIN lab USING (id)
       WHERE lab.label <> '{UNATTRIBUTED}'),
per AS (SELECT lab.label AS "user", count(DISTINCT ev.id) AS sessions, count(*) AS events,
               min(ts) AS first_active, max(ts) AS last_active,
               count(DISTINCT CAST(ts AS DATE)) AS active_days,
               count(DISTINCT date_trunc('week', ts)) AS active_weeks
        FROM ev JOIN lab USING (id) GROUP BY lab.label)
SELECT "user", sessions, events, first_active, last_active, active_days, active_weeks,
       CASE WHEN "user" = '{UNATTRIBUTED}' THEN sessions / (SELECT n FROM tot)
            ELSE sessions / (SELECT n FROM kn) END AS share,
       CASE WHEN "user" <> '{UNATTRIBUTED}' THEN rank() OVER (
           PARTITION BY "user" = '{UNATTRIBUTED}' ORDER BY sessions DESC, events DESC) END AS rank
FROM per ORDER BY rank NULLS LAST, "user"
"""

_WEEKS = f"""
ul AS (SELECT DISTINCT lab.label AS u, date_trunc('week', ev.ts) AS b
       FROM ev JOIN lab USING (id) WHERE lab.label <> '{UNATTRIBUTED}'),
bk AS (SELECT b, row_number() OVER (ORDER BY b) AS idx
       FROM (SELECT unnest(generate_series(min(b), max(b), INTERVAL 7 day)) AS b FROM ul)),
ui AS (SELECT ul.u, bk.idx FROM ul JOIN bk USING (b))"""

LIFECYCLE_WEEK = f"""
WITH {_BASE}, {_WEEKS},
w AS (SELECT u, idx, lag(idx) OVER (PARTITION BY u ORDER BY idx) AS prev,
             lead(idx) OVER (PARTITION BY u ORDER BY idx) AS nxt,
             min(idx) OVER (PARTITION BY u) AS first
      FROM ui),
act AS (SELECT idx, count(*) AS active_users,
               count(*) FILTER (WHERE idx = first) AS new_users,
               count(*) FILTER (WHERE prev = idx - 1) AS returning_users,
               count(*) FILTER (WHERE idx <> first AND prev < idx - 1) AS resurrected_users
        FROM w GROUP BY idx),
dorm AS (SELECT idx + 1 AS idx, count(*) AS dormant FROM w
         WHERE nxt IS NULL OR nxt > idx + 1 GROUP BY 1)
SELECT bk.b AS bucket,
       coalesce(act.active_users, 0) AS active_users,
       coalesce(act.new_users, 0) AS new_users,
       coalesce(act.returning_users, 0) AS returning_users,
       coalesce(act.resurrected_users, 0) AS resurrected_users,
       -coalesce(dorm.dormant, 0) AS dormant_users
FROM bk LEFT JOIN act USING (idx) LEFT JOIN dorm USING (idx)
ORDER BY bucket
"""

RETENTION_WEEK_8 = f"""
WITH {_BASE}, {_WEEKS},
coh AS (SELECT u, min(idx) AS cidx FROM ui GROUP BY u),
cs AS (SELECT cidx, count(*) AS cohort_size FROM coh GROUP BY cidx),
per AS (SELECT coh.cidx, ui.idx - coh.cidx AS period, count(*) AS users
        FROM ui JOIN coh USING (u) WHERE ui.idx - coh.cidx < 8 GROUP BY ALL),
grid AS (SELECT cs.cidx, cs.cohort_size, p.range AS period
         FROM cs CROSS JOIN range(8) p WHERE cs.cidx + p.range <= (SELECT max(idx) FROM bk))
SELECT c.b AS cohort, grid.cohort_size, grid.period, pb.b AS bucket,
       coalesce(per.users, 0) AS users,
       CASE WHEN pb.b + INTERVAL 7 day <= (SELECT max(ts) FROM ev) + INTERVAL 1 microsecond
            THEN coalesce(per.users, 0) / grid.cohort_size END AS rate
FROM grid JOIN bk c ON c.idx = grid.cidx JOIN bk pb ON pb.idx = grid.cidx + grid.period
LEFT JOIN per ON per.cidx = grid.cidx AND per.period = grid.period
ORDER BY cohort, period
"""

SESSIONS = f"""
WITH {_BASE},
agg AS (SELECT id, min(ts) AS first_event, max(ts) AS last_event, count(*) AS events
        FROM ev GROUP BY id),
lb AS (SELECT id, string_agg(label, '; ' ORDER BY label) AS users,
              count(*) FILTER (WHERE label <> '{UNATTRIBUTED}') AS n_users
       FROM lab GROUP BY id)
SELECT s.guru, s.id, s.root_question_name AS title, s.root_question_slug AS slug,
       s.root_question_link AS link, lb.users, lb.n_users, s.first_seen, s.date_created,
       agg.first_event, agg.last_event, s.last_used, agg.events, s.deleted, s.deleted_at
FROM live s JOIN lb USING (id) JOIN agg USING (id)
ORDER BY s.last_used DESC, s.id
"""

QUERIES: dict[str, str] = {
    "activity": ACTIVITY_DAY_BY_USER,
    "users": USERS,
    "lifecycle": LIFECYCLE_WEEK,
    "retention": RETENTION_WEEK_8,
    "sessions": SESSIONS,
}
