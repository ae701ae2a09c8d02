"""Deterministic fake guru data, so every layer can be tested and demoed without the API.

``generate`` builds a whole guru's sessions in one vectorised pass (numpy, no Python loop per
session): a million sessions take a few seconds. Everything follows from ``seed``; the
default ``end`` is a fixed date so the same seed always yields the same frame.

Messages (the Get Session conversation) are not stored: they are recomputed on demand from a
hash of (seed, session id) and the session's row, both one session at a time
(``SyntheticGuru.messages``) and in bulk (``message_events``), and both paths share the same
vectorised core, so they always agree. ``question_events`` is the same messages as one row
each (what the analytics export lists), and ``standalone_questions`` adds the questions that
belong to no session: ones asked on their own page and ones the guru could not answer.

The shapes are meant to look like a real guru: a few power users and a long tail, widget
visitors without an external user id, a weekday and time-of-day rhythm (UTC), growth over
time with a launch-day burst, titles drawn from a handful of support topics, a hidden
original wording that differs from the title, 1..15 messages per session with gaps from
seconds to days.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd

from ._corpus import FIRST_NAMES, FOLLOW_UPS, LAST_NAMES, OFF_TOPIC, TOPICS
from .errors import ConfigError, NotFoundError
from .timestamps import (
    format_offset,
    from_micros,
    micros_to_series,
    series_to_micros,
    to_micros,
)

DEFAULT_END = datetime(2025, 11, 1, tzinfo=UTC)
"""The default end of the generated history: fixed, so a seed always gives the same data."""

SOURCES: tuple[str, ...] = ("USER", "WIDGET QUESTION", "API", "SLACK", "DISCORD", "GITHUB")
MAX_MESSAGES = 15
SESSION_COLUMNS: tuple[str, ...] = (
    "id",
    "last_used",
    "date_created",
    "root_question_name",
    "root_question_slug",
    "user_question",
    "external_user_id",
    "n_messages",
    "source",
    "has_root",
)

_US_PER_S = 1_000_000
_US_PER_DAY = 86_400 * _US_PER_S

# Salts for the per-message hash streams.
(
    _SALT_GAP,
    _SALT_SOURCE,
    _SALT_TRUST,
    _SALT_VOTE,
    _SALT_FOLLOW,
    _SALT_REFS,
    _SALT_SLUG,
    _SALT_ALONE,
) = range(1, 9)


@dataclass
class SyntheticGuru:
    """One generated guru: its identity, the sessions frame and the seed its messages use."""

    slug: str
    name: str
    seed: int
    sessions: pd.DataFrame
    _index: dict[str, int] | None = field(default=None, init=False, repr=False, compare=False)

    def row(self, session_id: str) -> Mapping[str, Any]:
        """The sessions row of ``session_id`` as a dict (raises ``NotFoundError``)."""
        if self._index is None:
            self._index = {sid: i for i, sid in enumerate(self.sessions["id"].tolist())}
        pos = self._index.get(session_id)
        if pos is None:
            raise NotFoundError(f"session {session_id!r} is not in synthetic guru {self.slug!r}")
        return self.sessions.iloc[pos].to_dict()

    def messages(self, session_id: str) -> list[dict[str, Any]]:
        """The Get Session ``conversation`` of one session (deterministic from seed and id)."""
        return conversation(self.row(session_id), seed=self.seed)

    def message_events(self) -> pd.DataFrame:
        """One row per message of every session (see ``message_events``)."""
        return message_events(self.sessions, seed=self.seed)

    def __len__(self) -> int:
        return len(self.sessions)


# --- public functions ---------------------------------------------------------------------


def generate(
    n_sessions: int = 5000,
    n_users: int = 50,
    days: int = 120,
    *,
    seed: int = 0,
    guru_slug: str = "demo-guru",
    end: datetime | None = None,
    unattributed_share: float = 0.3,
    rootless_share: float = 0.0,
) -> SyntheticGuru:
    """Generate ``n_sessions`` sessions over the ``days`` days before ``end`` (vectorised).

    ``unattributed_share`` of the sessions have no external user (widget visitors);
    ``rootless_share`` have no first question (``has_root`` False: the API drops them from
    listings after the page cut).
    """
    _check_args(n_sessions, n_users, days, unattributed_share, rootless_share)
    end = DEFAULT_END if end is None else end
    if end.tzinfo is None:
        raise ConfigError("end must be a tz-aware datetime: pass e.g. datetime(..., tzinfo=UTC)")
    rng = np.random.default_rng(seed)
    n = int(n_sessions)
    end_us = to_micros(end)
    start_us = end_us - days * _US_PER_DAY

    ids = _uuid4_strings(rng, n)
    titles, slug_bases, wordings, _topics = _catalog(seed)
    title_idx = _popular_indices(rng, len(titles), n)
    variant_idx = rng.integers(0, wordings.shape[1], size=n)
    names = titles[title_idx]
    slugs = _concat(slug_bases[title_idx], "-", _base36(rng.permutation(n) + 36**4))
    user_q = wordings[title_idx, variant_idx]

    users = _user_ids(n_users)
    attributed = rng.random(n) >= unattributed_share
    if n_users == 0:
        attributed[:] = False
    user_w = 1.0 / np.arange(1, max(n_users, 1) + 1) ** 1.1
    user_pick = rng.choice(max(n_users, 1), size=n, p=user_w / user_w.sum())
    ext = np.full(n, None, dtype=object)
    if n_users:
        ext[attributed] = users[np.minimum(user_pick, n_users - 1)][attributed]

    sources = np.empty(n, dtype=object)
    src_user = np.array(["API", "SLACK", "DISCORD", "GITHUB", "WIDGET QUESTION"], dtype=object)
    src_anon = np.array(["WIDGET QUESTION", "USER"], dtype=object)
    sources[attributed] = src_user[
        rng.choice(5, size=int(attributed.sum()), p=[0.35, 0.25, 0.2, 0.05, 0.15])
    ]
    sources[~attributed] = src_anon[rng.choice(2, size=int((~attributed).sum()), p=[0.6, 0.4])]

    created = _creation_times(rng, n, start_us, end_us, days)
    ext = _respect_join_dates(
        np.random.default_rng([seed, 31337]), ext, user_pick, users, created, start_us, end_us
    )
    n_msgs = rng.zipf(1.9, size=n)
    too_many = n_msgs > MAX_MESSAGES
    n_msgs[too_many] = rng.integers(1, 6, size=int(too_many.sum()))
    span = _spans(rng, n_msgs, created, end_us)
    last_used = created + span

    rootless = rng.random(n) < rootless_share
    names = names.copy()
    names[rootless] = None
    slugs[rootless] = None
    user_q = user_q.copy()
    user_q[rootless] = None
    n_msgs = np.where(rootless, 0, n_msgs)

    # Listing order (last_used desc); a stable numpy sort, not a pandas multi-key sort on
    # strings, which would dominate the run time at a million rows.
    o = np.argsort(-last_used, kind="stable")
    frame = pd.DataFrame(
        {
            "id": pd.Series(ids[o], dtype="str"),
            "last_used": micros_to_series(last_used[o]),
            "date_created": micros_to_series(created[o]),
            "root_question_name": pd.Series(names[o], dtype="str"),
            "root_question_slug": pd.Series(slugs[o], dtype="str"),
            "user_question": pd.Series(user_q[o], dtype="str"),
            "external_user_id": pd.Series(ext[o], dtype="str"),
            "n_messages": n_msgs[o].astype("int64"),
            "source": pd.Series(sources[o], dtype="str"),
            "has_root": ~rootless[o],
        }
    )
    frame.attrs["synthetic_seed"] = seed
    return SyntheticGuru(slug=guru_slug, name=guru_name(guru_slug), seed=seed, sessions=frame)


def guru_name(slug: str) -> str:
    """A display name for a slug: ``'demo-guru'`` -> ``'Demo Guru'``."""
    return " ".join(part.capitalize() for part in re.split(r"[-_\s]+", slug) if part) or slug


def new_sessions(
    n: int,
    *,
    seed: int,
    at: Sequence[datetime] | pd.Series,
    external_user_id: str | None = None,
    source: str | None = None,
    slug_counter_start: int = 0,
) -> pd.DataFrame:
    """Rows for ``n`` brand-new one-message sessions created at ``at`` (one time each).

    Used by the local server to simulate users asking new questions. Slugs get an ``n``-prefixed
    counter suffix so they never collide with ``generate``'s.
    """
    if len(at) != n:
        raise ConfigError(f"new_sessions needs {n} creation times, got {len(at)}")
    rng = np.random.default_rng([seed, slug_counter_start, 7919])
    titles, slug_bases, wordings, _topics = _catalog(seed)
    title_idx = _popular_indices(rng, len(titles), n)
    variant_idx = rng.integers(0, wordings.shape[1], size=n)
    suffix = _concat(
        np.full(n, "n", dtype=object),
        _base36(np.arange(slug_counter_start, slug_counter_start + n)),
    )
    if isinstance(at, pd.Series):
        at_us = series_to_micros(at)
    else:
        at_us = np.array([to_micros(t) for t in at], dtype=np.int64)
    src = source or ("API" if external_user_id else "WIDGET QUESTION")
    return pd.DataFrame(
        {
            "id": pd.Series(_uuid4_strings(rng, n), dtype="str"),
            "last_used": micros_to_series(at_us),
            "date_created": micros_to_series(at_us),
            "root_question_name": pd.Series(titles[title_idx], dtype="str"),
            "root_question_slug": pd.Series(
                _concat(slug_bases[title_idx], "-", suffix), dtype="str"
            ),
            "user_question": pd.Series(wordings[title_idx, variant_idx], dtype="str"),
            "external_user_id": pd.Series([external_user_id] * n, dtype="str"),
            "n_messages": np.ones(n, dtype="int64"),
            "source": pd.Series([src] * n, dtype="str"),
            "has_root": np.ones(n, dtype=bool),
        }
    )


def message_events(sessions: pd.DataFrame, *, seed: int | None = None) -> pd.DataFrame:
    """One row per message: ``id`` (session id), ``message_index`` (0 = root), ``ts`` (UTC).

    Vectorised over the whole frame; equal to the ``date_created`` of ``conversation()``'s
    messages for the same seed. ``seed`` defaults to the one ``generate`` stored in
    ``sessions.attrs["synthetic_seed"]`` (else 0). Sessions without a root question have no
    messages.
    """
    if seed is None:
        seed = int(sessions.attrs.get("synthetic_seed", 0))
    n_msgs = sessions["n_messages"].to_numpy(dtype=np.int64)
    n_msgs = np.where(sessions["has_root"].to_numpy(dtype=bool), n_msgs, 0)
    keys = session_keys(sessions["id"], seed)
    created = series_to_micros(sessions["date_created"])
    last = series_to_micros(sessions["last_used"])
    row, k, ts = _message_times(keys, created, last, n_msgs)
    ids = sessions["id"].to_numpy(dtype=object)
    return pd.DataFrame(
        {
            "id": pd.Series(ids[row], dtype="str"),
            "message_index": k.astype("int64"),
            "ts": micros_to_series(ts),
        }
    )


def conversation(
    row: Mapping[str, Any], *, seed: int, extra_times: Sequence[datetime] = ()
) -> list[dict[str, Any]]:
    """The Get Session messages of one session row, oldest first.

    The root message asks ``root_question_name`` (hidden wording ``user_question``) at
    ``date_created``; the last message is at ``last_used``. ``extra_times`` appends one
    follow-up per time (the local server's touches), after the generated messages.
    """
    if not bool(row.get("has_root", True)):
        return []
    n = int(row.get("n_messages", 1) or 1)
    keys = session_keys([str(row["id"])], seed)
    created = np.array([to_micros(_as_datetime(row["date_created"]))], dtype=np.int64)
    base_last = row.get("base_last_used", row["last_used"])
    last = np.array([to_micros(_as_datetime(base_last))], dtype=np.int64)
    _row, k, ts = _message_times(keys, created, last, np.array([n], dtype=np.int64))
    extra_us = [to_micros(t) for t in extra_times]
    k_all = np.concatenate([k, np.arange(n, n + len(extra_us), dtype=np.int64)])
    ts_all = np.concatenate([ts, np.array(extra_us, dtype=np.int64)])
    key = np.full(len(k_all), keys[0], dtype=np.uint64)
    title = str(row.get("root_question_name") or "")
    hidden = row.get("user_question")
    hidden = (
        title
        if hidden is None or (isinstance(hidden, float) and math.isnan(hidden))
        else str(hidden)
    )
    f = _message_fields(
        key,
        k_all,
        np.full(len(k_all), str(row.get("source") or "USER"), dtype=object),
        np.full(len(k_all), title, dtype=object),
        np.full(len(k_all), hidden, dtype=object),
        np.full(len(k_all), str(row.get("root_question_slug") or ""), dtype=object),
    )
    msg_ids = (keys[0] % np.uint64(2**48)) * np.uint64(16)
    out: list[dict[str, Any]] = []
    parent: str | None = None
    for i in range(len(k_all)):
        kk = int(k_all[i])
        when = from_micros(int(ts_all[i]))
        question, slug, n_refs = f["question"][i], f["slug"][i], int(f["n_references"][i])
        out.append(
            {
                "id": str(int(msg_ids) + kk),
                "slug": slug,
                "user_question": f["user_question"][i],
                "question": question,
                "answer": _answer(question, n_refs),
                "date_created": format_offset(when),
                "date_updated": format_offset(when + timedelta(seconds=2 + kk % 7)),
                "references": reference_list(question, n_refs),
                "trust_score": int(f["trust_score"][i]),
                "parent_slug": parent,
                "source": f["source"][i],
                "user_vote": f["user_vote"][i],
            }
        )
        parent = slug
    return out


def reference_list(question: str, n_refs: int) -> list[dict[str, str]]:
    """The ``references`` of a message: ``n_refs`` docs pages named after its question."""
    return [
        {
            "link": f"https://docs.example.com/{_slugify(question)[:40]}/{j + 1}",
            "icon": "https://docs.example.com/favicon.ico",
            "title": f"Docs: {question[:50]} (part {j + 1})",
        }
        for j in range(n_refs)
    ]


def question_events(
    sessions: pd.DataFrame,
    *,
    seed: int | None = None,
    extra_times: Mapping[str, Sequence[int]] | None = None,
) -> pd.DataFrame:
    """One row per message of every session, with what Get Session says of it (vectorised).

    Columns: ``session_id``, ``message_index`` (0 = root), ``ts`` (tz-aware UTC),
    ``source`` (API code), ``trust_score`` (0-100), ``slug``, ``question``, ``user_question``,
    ``root_question_slug``, ``n_references``. It shares its core with ``conversation()``, so
    the two always agree. ``extra_times`` maps a session id to follow-up times in µs (the
    local server's touches); a ``base_last_used`` column, when present, is the generated
    history's end (``last_used`` minus touches). Sessions without a root question have none.
    """
    if seed is None:
        seed = int(sessions.attrs.get("synthetic_seed", 0))
    n_msgs = sessions["n_messages"].to_numpy(dtype=np.int64)
    n_msgs = np.where(sessions["has_root"].to_numpy(dtype=bool), np.maximum(n_msgs, 1), 0)
    keys = session_keys(sessions["id"], seed)
    created = series_to_micros(sessions["date_created"])
    last_col = "base_last_used" if "base_last_used" in sessions.columns else "last_used"
    last = series_to_micros(sessions[last_col])
    row, k, ts = _message_times(keys, created, last, n_msgs)
    ids = sessions["id"].to_numpy(dtype=object)
    if extra_times:
        pos = {sid: i for i, sid in enumerate(ids.tolist())}
        x_row, x_k, x_ts = [], [], []
        for sid, times in extra_times.items():
            i = pos.get(sid)
            if i is None or n_msgs[i] == 0:
                continue
            for j, t in enumerate(times):
                x_row.append(i)
                x_k.append(int(n_msgs[i]) + j)
                x_ts.append(int(t))
        row = np.concatenate([row, np.array(x_row, dtype=np.int64)])
        k = np.concatenate([k, np.array(x_k, dtype=np.int64)])
        ts = np.concatenate([ts, np.array(x_ts, dtype=np.int64)])
    titles = _fill_text(sessions["root_question_name"], "")
    hidden = _fill_text(sessions["user_question"], None)
    hidden = np.where(pd.isna(hidden), titles, hidden)
    f = _message_fields(
        keys[row],
        k,
        _fill_text(sessions["source"], "USER")[row],
        titles[row],
        hidden[row],
        _fill_text(sessions["root_question_slug"], "")[row],
    )
    return pd.DataFrame(
        {
            "session_id": pd.Series(ids[row], dtype="str"),
            "message_index": k.astype("int64"),
            "ts": micros_to_series(ts),
            "source": pd.Series(f["source"], dtype="str"),
            "trust_score": f["trust_score"].astype("int64"),
            "slug": pd.Series(f["slug"], dtype="str"),
            "question": pd.Series(f["question"], dtype="str"),
            "user_question": pd.Series(f["user_question"], dtype="str"),
            "root_question_slug": pd.Series(f["root_slug"], dtype="str"),
            "n_references": f["n_references"].astype("int64"),
        }
    )


def standalone_questions(sessions: pd.DataFrame, *, seed: int | None = None) -> pd.DataFrame:
    """Questions outside any session, and questions the guru could not answer.

    Deterministic per (seed, session id): about 12% of sessions with a root question have a
    question asked on its own page up to two hours before the session started (``kind``
    ``"question"``, with a slug and a trust score), about 8% an unanswerable question up to
    two hours before (``kind`` ``"unanswered"``). Columns: ``kind``, ``ts`` (tz-aware UTC),
    ``source`` (API code), ``question``, ``slug`` (None for unanswered), ``trust_score``.
    """
    if seed is None:
        seed = int(sessions.attrs.get("synthetic_seed", 0))
    has_root = sessions["has_root"].to_numpy(dtype=bool)
    keys = session_keys(sessions["id"], seed)
    created = series_to_micros(sessions["date_created"])
    zero = np.zeros(len(keys), dtype=np.int64)
    u_alone = _uniform(keys, zero, _SALT_ALONE)
    u_when = _uniform(keys, zero + 1, _SALT_ALONE)
    u_pick = _uniform(keys, zero + 2, _SALT_ALONE)
    u_src = _uniform(keys, zero + 3, _SALT_ALONE)
    u_trust = _uniform(keys, zero + 4, _SALT_ALONE)
    asked = has_root & (u_alone < 0.12)
    unanswered = has_root & (u_alone >= 0.12) & (u_alone < 0.20)
    titles, slug_bases, _wordings, _topics = _catalog(seed)
    ts = created - (u_when * 2 * 3600 * _US_PER_S).astype(np.int64)
    source = np.array(SOURCES, dtype=object)[(u_src * len(SOURCES)).astype(np.int64)]
    pick_title = (u_pick * len(titles)).astype(np.int64)
    pick_off = (u_pick * len(OFF_TOPIC)).astype(np.int64)
    suffix = [f"{int(h) & 0xFFFFFF:06x}" for h in keys[asked]]
    q_slug = _concat(slug_bases[pick_title[asked]], "-q", np.array(suffix, dtype=object))
    n_q, n_u = int(asked.sum()), int(unanswered.sum())
    trust = np.clip(np.round(100 * u_trust**0.35).astype(np.int64), 0, 100)
    return pd.DataFrame(
        {
            "kind": pd.Series(["question"] * n_q + ["unanswered"] * n_u, dtype="str"),
            "ts": micros_to_series(np.concatenate([ts[asked], ts[unanswered]])),
            "source": pd.Series(np.concatenate([source[asked], source[unanswered]]), dtype="str"),
            "question": pd.Series(
                np.concatenate(
                    [
                        titles[pick_title[asked]],
                        np.array(OFF_TOPIC, dtype=object)[pick_off[unanswered]],
                    ]
                ),
                dtype="str",
            ),
            "slug": pd.Series(
                np.concatenate([q_slug, np.full(n_u, None, dtype=object)]), dtype="str"
            ),
            "trust_score": pd.Series(
                np.concatenate([trust[asked], np.zeros(n_u, dtype=np.int64)]), dtype="int64"
            ),
        }
    )


def session_keys(ids: Sequence[str] | pd.Series | np.ndarray, seed: int) -> np.ndarray:
    """A 64-bit hash per session id, mixed with ``seed`` (vectorised FNV-1a + splitmix64)."""
    arr = np.asarray(
        list(ids) if not isinstance(ids, np.ndarray | pd.Series) else ids, dtype=object
    )
    if len(arr) == 0:
        return np.zeros(0, dtype=np.uint64)
    try:
        raw = arr.astype("S")
    except UnicodeEncodeError:
        raw = np.array([str(s).encode("utf-8") for s in arr], dtype="S")
    width = raw.dtype.itemsize
    u8 = raw.view(np.uint8).reshape(len(arr), width)
    h = np.full(len(arr), 0xCBF29CE484222325, dtype=np.uint64)
    prime = np.uint64(0x100000001B3)
    for j in range(width):
        c = u8[:, j].astype(np.uint64)
        h = np.where(c != 0, (h ^ c) * prime, h)
    seed_mix = _mix(np.array([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))[0]
    return _mix(h ^ seed_mix)


# --- vectorised internals -----------------------------------------------------------------


def _check_args(n: int, users: int, days: int, unattributed: float, rootless: float) -> None:
    if n < 0 or users < 0:
        raise ConfigError("n_sessions and n_users must be >= 0")
    if days < 1:
        raise ConfigError("days must be >= 1")
    for name, value in (("unattributed_share", unattributed), ("rootless_share", rootless)):
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"{name} must be between 0 and 1, got {value}")


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser on a uint64 array (wraps modulo 2**64, as intended)."""
    z = x + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _uniform(keys: np.ndarray, k: np.ndarray, salt: int) -> np.ndarray:
    """A uniform [0, 1) per (session key, message index, salt)."""
    h = _mix(
        keys
        ^ _mix(
            k.astype(np.uint64) * np.uint64(0xD6E8FEB86659FD93)
            + np.uint64((salt * 0x632BE59BD9B4E019) & 0xFFFFFFFFFFFFFFFF)
        )
    )
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / 2**53)


def _message_fields(
    key: np.ndarray,
    k: np.ndarray,
    session_source: np.ndarray,
    title: np.ndarray,
    hidden: np.ndarray,
    root_slug: np.ndarray,
) -> dict[str, np.ndarray]:
    """What each message says, one array per field, from (session key, message index) and
    its session's row values (one per message): the one core of ``conversation()`` and
    ``question_events()``."""
    u_source = _uniform(key, k, _SALT_SOURCE)
    u_trust = _uniform(key, k, _SALT_TRUST)
    u_vote = _uniform(key, k, _SALT_VOTE)
    u_follow = _uniform(key, k, _SALT_FOLLOW)
    u_refs = _uniform(key, k, _SALT_REFS)
    slug_hash = _mix(
        key ^ (k.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)) ^ np.uint64(_SALT_SLUG)
    )
    follow = np.minimum((u_follow * len(FOLLOW_UPS)).astype(np.int64), len(FOLLOW_UPS) - 1)
    follow_q = np.array(FOLLOW_UPS, dtype=object)
    follow_w = np.array([q.lower().rstrip("?!.") for q in FOLLOW_UPS], dtype=object)
    follow_s = np.array([_slugify(q) + "-" for q in FOLLOW_UPS], dtype=object)
    root = k == 0
    hexes = np.array([f"{int(h) & 0xFFFFFFFF:08x}" for h in slug_hash], dtype=object)
    alt = np.array(SOURCES, dtype=object)[(u_source * 100).astype(np.int64) % len(SOURCES)]
    vote = np.full(u_vote.shape, None, dtype=object)
    vote[u_vote < 0.2] = "downvote"
    vote[u_vote < 0.15] = "upvote"
    return {
        "question": np.where(root, title, follow_q[follow]),
        "user_question": np.where(root, hidden, follow_w[follow]),
        "slug": np.where(root, root_slug, _concat(follow_s[follow], hexes)),
        "root_slug": root_slug,
        "source": np.where(u_source < 0.9, session_source, alt),
        "trust_score": np.clip(np.round(100 * u_trust**0.35).astype(np.int64), 0, 100),
        "user_vote": vote,
        "n_references": (u_refs * 4).astype(np.int64),
    }


def _fill_text(s: pd.Series, default: str | None) -> np.ndarray:
    """A text column as an object array, missing values replaced by ``default``."""
    arr = s.to_numpy(dtype=object, copy=True)
    arr[pd.isna(arr)] = default
    return arr


def _message_times(
    keys: np.ndarray, created: np.ndarray, last: np.ndarray, n_msgs: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Message times per session: first at ``created``, last at ``last``, strictly increasing
    when the span allows (each gap >= 1 µs), interior gaps exponential-weighted.

    Returns (row index, message index, time in µs), session-major.
    """
    n_msgs = np.asarray(n_msgs, dtype=np.int64)
    total = int(n_msgs.sum())
    row = np.repeat(np.arange(len(n_msgs)), n_msgs)
    starts = np.cumsum(n_msgs) - n_msgs
    k = np.arange(total, dtype=np.int64) - np.repeat(starts, n_msgs)
    # Integer gap weights (exponential-shaped) so per-session cumulative sums are exact and
    # the bulk and single-session paths give bit-identical times. Weight of message 0 is 0.
    u = _uniform(keys[row], k, _SALT_GAP)
    w = np.where(k == 0, 0, 1 + (-np.log1p(-u) * 2**20).astype(np.int64))
    cum = np.cumsum(w)
    before = np.repeat(cum[starts] - w[starts], n_msgs) if total else cum
    cum_in = cum - before
    ends = starts + n_msgs - 1
    tot_in = np.repeat(cum[ends] - cum[starts] if total else cum, n_msgs) if total else cum
    span = np.maximum((last - created)[row], 0)
    room = np.maximum(span - (n_msgs[row] - 1), 0)
    frac = cum_in.astype(np.float64) / np.maximum(tot_in, 1).astype(np.float64)
    offset = np.minimum(k + np.floor(room * frac).astype(np.int64), span)
    is_last = k == n_msgs[row] - 1
    ts = np.where(is_last, last[row], created[row] + offset)
    return row, k, ts


def _uuid4_strings(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` random version-4 UUID strings from ``rng`` (vectorised, object array)."""
    if n == 0:
        return np.zeros(0, dtype=object)
    b = rng.integers(0, 256, size=(n, 16), dtype=np.uint8)
    b[:, 6] = (b[:, 6] & 0x0F) | 0x40
    b[:, 8] = (b[:, 8] & 0x3F) | 0x80
    hexchars = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
    nib = np.empty((n, 32), dtype=np.uint8)
    nib[:, 0::2] = hexchars[b >> 4]
    nib[:, 1::2] = hexchars[b & 0x0F]
    out = np.full((n, 36), ord("-"), dtype=np.uint8)
    for dst, src in ((0, 0), (9, 8), (14, 12), (19, 16), (24, 20)):
        width = {0: 8, 9: 4, 14: 4, 19: 4, 24: 12}[dst]
        out[:, dst : dst + width] = nib[:, src : src + width]
    return out.view("S36").ravel().astype("U36").astype(object)


def _base36(values: np.ndarray) -> np.ndarray:
    """Base-36 strings (lowercase, fixed width = widest value) as an object array."""
    values = np.asarray(values, dtype=np.int64)
    if len(values) == 0:
        return np.zeros(0, dtype=object)
    width = max(1, int(math.ceil(math.log(int(values.max()) + 1, 36))) if values.max() > 0 else 1)
    digits = np.frombuffer(b"0123456789abcdefghijklmnopqrstuvwxyz", dtype=np.uint8)
    out = np.empty((len(values), width), dtype=np.uint8)
    v = values.copy()
    for j in range(width - 1, -1, -1):
        out[:, j] = digits[v % 36]
        v //= 36
    return out.view(f"S{width}").ravel().astype(f"U{width}").astype(object)


def _concat(*parts: np.ndarray | str) -> np.ndarray:
    """Element-wise string concatenation of object arrays / scalars."""
    out: Any = None
    for part in parts:
        out = part if out is None else out + part
    return np.asarray(out, dtype=object)


def _popular_indices(rng: np.random.Generator, size: int, n: int) -> np.ndarray:
    """Indices into the title catalog with a Zipf-like popularity (a seeded ranking)."""
    ranking = rng.permutation(size)
    w = 1.0 / np.arange(1, size + 1) ** 0.9
    return ranking[rng.choice(size, size=n, p=w / w.sum())]


def _creation_times(
    rng: np.random.Generator, n: int, start_us: int, end_us: int, days: int
) -> np.ndarray:
    """Creation times with growth, a weekday rhythm, a launch burst and a UTC daily peak."""
    first_day = (start_us // _US_PER_DAY) * _US_PER_DAY
    n_days = int(-(-(end_us - first_day) // _US_PER_DAY))
    d = np.arange(n_days)
    weekday = ((first_day // _US_PER_DAY) + d + 3) % 7  # 1970-01-01 was a Thursday (3)
    w = np.exp(math.log(3.0) * d / max(n_days - 1, 1))
    w *= np.where(weekday >= 5, 0.45, 1.0)
    launch = int(n_days * 0.3)
    if n_days >= 10:
        w[launch] *= 8.0
        w[launch + 1] *= 3.0
        w[launch + 2] *= 1.8
    day = rng.choice(n_days, size=n, p=w / w.sum())
    hours = np.arange(24)
    hw = (
        0.15
        + np.exp(-0.5 * ((hours - 15) / 2.5) ** 2)
        + 0.5 * np.exp(-0.5 * ((hours - 9) / 1.5) ** 2)
        + 0.35 * np.exp(-0.5 * ((hours - 20) / 1.5) ** 2)
    )
    hour = rng.choice(24, size=n, p=hw / hw.sum())
    t = (
        first_day
        + day * _US_PER_DAY
        + hour * 3600 * _US_PER_S
        + rng.integers(0, 3600 * _US_PER_S, size=n)
    )
    window = end_us - start_us
    outside = (t < start_us) | (t >= end_us - _US_PER_S)
    t[outside] = start_us + (t[outside] - start_us) % max(window - _US_PER_S, 1)
    return t.astype(np.int64)


def _spans(
    rng: np.random.Generator, n_msgs: np.ndarray, created: np.ndarray, end_us: int
) -> np.ndarray:
    """First-to-last message span: seconds-minutes per follow-up, sometimes a return days later."""
    follow = n_msgs - 1
    sitting = follow * rng.lognormal(math.log(90.0), 0.8, size=len(n_msgs))
    later = (rng.random(len(n_msgs)) < 0.2) * rng.exponential(1.5 * 86_400, size=len(n_msgs))
    span = ((sitting + np.where(follow > 0, later, 0.0)) * _US_PER_S).astype(np.int64)
    span = np.maximum(span, follow * 1000)
    room = end_us - 1 - created
    over = span >= room
    span[over] = (room[over] * rng.uniform(0.1, 0.9, size=int(over.sum()))).astype(np.int64)
    return np.maximum(span, np.minimum(follow, room))


def _respect_join_dates(
    rng: np.random.Generator,
    ext: np.ndarray,
    pick: np.ndarray,
    users: np.ndarray,
    created: np.ndarray,
    start_us: int,
    end_us: int,
) -> np.ndarray:
    """Users join over time (the top tenth from the start, the rest at random dates), so
    'new users per week' is a real curve. A session dated before its user joined goes to a
    user who had joined by then (uniformly), or to nobody if no one had."""
    n_users = len(users)
    if n_users == 0 or len(ext) == 0:
        return ext
    join = start_us + (rng.random(n_users) * 0.85 * (end_us - start_us)).astype(np.int64)
    join[: max(1, n_users // 10)] = start_us
    attributed = pd.notna(ext)
    early = attributed & (created < join[np.minimum(pick, n_users - 1)])
    if not early.any():
        return ext
    order = np.argsort(join, kind="stable")
    eligible = np.searchsorted(join[order], created[early], side="right")
    chosen = np.floor(rng.random(int(early.sum())) * eligible).astype(np.int64)
    out = ext.copy()
    out[early] = np.where(eligible > 0, users[order][np.minimum(chosen, n_users - 1)], None)
    return out


def _user_ids(n_users: int) -> np.ndarray:
    """External user ids: ``user-0001`` style and email-ish, unique."""
    out = []
    for i in range(1, n_users + 1):
        if i % 3 == 0:
            first = FIRST_NAMES[i % len(FIRST_NAMES)]
            last = LAST_NAMES[(i // len(FIRST_NAMES)) % len(LAST_NAMES)]
            out.append(f"{first}.{last}{i}@example.com")
        else:
            out.append(f"user-{i:04d}")
    return np.array(out, dtype=object)


_CATALOG_CACHE: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}


def _catalog(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Titles, slug bases, 4 hidden wordings per title, topic per title (cached per seed)."""
    cached = _CATALOG_CACHE.get(seed)
    if cached is not None:
        return cached
    rng = np.random.default_rng([seed, 104729])
    titles: list[str] = []
    topics: list[str] = []
    for topic, (templates, subjects) in TOPICS.items():
        for template in templates:
            for subject in subjects:
                titles.append(template.format(s=subject))
                topics.append(topic)
    wordings = np.empty((len(titles), 4), dtype=object)
    for i, title in enumerate(titles):
        low = title.lower().rstrip("?")
        wordings[i, 0] = low
        wordings[i, 1] = ("hi, " if rng.random() < 0.5 else "hey team - ") + low + " ??"
        wordings[i, 2] = _typo(low, rng)
        wordings[i, 3] = "quick question: " + low.replace("how do i", "how can i") + " pls"
    result = (
        np.array(titles, dtype=object),
        np.array([_slugify(t) for t in titles], dtype=object),
        wordings,
        np.array(topics, dtype=object),
    )
    if len(_CATALOG_CACHE) > 64:
        _CATALOG_CACHE.clear()
    _CATALOG_CACHE[seed] = result
    return result


def _typo(text: str, rng: np.random.Generator) -> str:
    """Swap two adjacent letters inside one longer word: 'install' -> 'isntall'."""
    words = text.split(" ")
    long_words = [i for i, w in enumerate(words) if len(w) >= 5 and w.isalpha()]
    if not long_words:
        return text + " thx"
    i = long_words[int(rng.integers(0, len(long_words)))]
    w = words[i]
    j = int(rng.integers(1, len(w) - 2))
    words[i] = w[:j] + w[j + 1] + w[j] + w[j + 2 :]
    return " ".join(words)


def _slugify(text: str) -> str:
    """Lowercase, non-alphanumerics to single dashes, at most 60 characters."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60].rstrip("-")


def _answer(question: str, n_refs: int) -> str:
    refs = " See the linked docs for details." if n_refs else ""
    return (
        f"**Short answer:** here is how to handle *{question.rstrip('?')}*.\n\n"
        "1. Open the settings page.\n2. Apply the change.\n3. Verify it worked.\n\n"
        f"```bash\ngurubase --help\n```\n{refs}"
    )


# --- time conversions ---------------------------------------------------------------------


def _as_datetime(value: Any) -> datetime:
    if isinstance(value, pd.Timestamp):
        return value.to_pydatetime()
    if isinstance(value, datetime):
        return value
    if isinstance(value, np.datetime64):
        return from_micros(int(value.astype("datetime64[us]").astype(np.int64)))
    raise ConfigError(f"expected a datetime, got {type(value).__name__}")
