"""The local server's data: gurus, their sessions, keys, and the administration of both.

Each guru's sessions live in columnar lists with a sorted order keyed
``(-last_used_us, row)`` that is kept sorted between changes (bisect), so a listing request
costs O(page + boundary tie groups), not a sort. Touch / create / delete / truth are the
scripted changes and the ground truth tests compare against.
"""

from __future__ import annotations

import bisect
import json
import math
import threading
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from .. import synthetic
from ..errors import ConfigError, NotFoundError
from ..timestamps import (
    format_drf,
    from_micros,
    micros_to_series,
    series_to_micros,
    to_micros,
)

Key = tuple[int, int]
"""A listing key: (-last_used in µs, row number)."""


class GuruState:
    """One guru's sessions in columnar lists plus sorted orders keyed (-last_used_us, row)."""

    def __init__(self, slug: str, name: str | None, seed: int, frame: pd.DataFrame) -> None:
        self.slug = slug
        self.name = name
        self.seed = seed
        self.ids: list[str] = []
        self.title: list[str | None] = []
        self.qslug: list[str | None] = []
        self.wording: list[str | None] = []
        self.user: list[str | None] = []
        self.source: list[str] = []
        self.has_root: list[bool] = []
        self.created: list[int] = []
        self.base_last: list[int] = []
        self.last: list[int] = []
        self.n_base: list[int] = []
        self.deleted: list[bool] = []
        self.touches: dict[int, list[int]] = {}
        self.order: list[Key] = []
        self.by_user: dict[str, list[Key]] = {}
        self.version = 0
        self.new_counter = 0
        self._search_cache: dict[tuple[str, str | None], tuple[int, list[Key]]] = {}
        self._json_cache: dict[int, tuple[int, bytes]] = {}
        self.append(frame)

    def append(self, frame: pd.DataFrame) -> list[int]:
        """Add rows (already normalised); returns their row numbers."""
        start = len(self.ids)
        n = len(frame)
        if n == 0:
            return []
        self.ids.extend(frame["id"].astype(str).tolist())
        self.title.extend(_none_list(frame["root_question_name"]))
        self.qslug.extend(_none_list(frame["root_question_slug"]))
        self.wording.extend(_none_list(frame["user_question"]))
        self.user.extend(_none_list(frame["external_user_id"]))
        self.source.extend(frame["source"].astype(str).tolist())
        self.has_root.extend(frame["has_root"].astype(bool).tolist())
        created = series_to_micros(frame["date_created"]).tolist()
        last = series_to_micros(frame["last_used"]).tolist()
        self.created.extend(created)
        self.base_last.extend(last)
        self.last.extend(last)
        self.n_base.extend(frame["n_messages"].astype("int64").tolist())
        self.deleted.extend([False] * n)
        rows = list(range(start, start + n))
        new_keys = sorted((-self.last[r], r) for r in rows)
        if len(new_keys) > 64 and len(new_keys) * 4 > len(self.order):
            self.order = sorted(self.order + new_keys)
        else:
            for key in new_keys:
                bisect.insort(self.order, key)
        for key in new_keys:
            user = self.user[key[1]]
            if user is not None:
                bisect.insort(self.by_user.setdefault(user, []), key)
        self.version += 1
        return rows

    def top_us(self) -> int | None:
        return -self.order[0][0] if self.order else None

    def _remove_key(self, row: int) -> Key:
        key = (-self.last[row], row)
        i = bisect.bisect_left(self.order, key)
        if i >= len(self.order) or self.order[i] != key:
            raise ConfigError(f"session {self.ids[row]!r} is not listed (deleted?)")
        del self.order[i]
        user = self.user[row]
        if user is not None:
            lst = self.by_user[user]
            del lst[bisect.bisect_left(lst, key)]
        return key

    def set_last(self, row: int, at_us: int) -> None:
        """A follow-up at ``at_us``: the session moves to its new place in the order."""
        self._remove_key(row)
        self.last[row] = at_us
        key = (-at_us, row)
        bisect.insort(self.order, key)
        user = self.user[row]
        if user is not None:
            bisect.insort(self.by_user[user], key)
        self.touches.setdefault(row, []).append(at_us)
        self.version += 1

    def delete(self, row: int) -> None:
        self._remove_key(row)
        self.deleted[row] = True
        self.version += 1

    def listing(self, query: str, user: str | None) -> list[Key]:
        """The sorted keys a listing pages through (rootless included, deleted excluded)."""
        base = self.order if user is None else self.by_user.get(user, [])
        if not query:
            return base
        cache_key = (query, user)
        hit = self._search_cache.get(cache_key)
        if hit is not None and hit[0] == self.version:
            return hit[1]
        q = query.lower()
        out = []
        for key in base:
            r = key[1]
            if not self.has_root[r]:
                continue  # no first question: nothing to match
            if (
                q in (self.title[r] or "").lower()
                or q in (self.wording[r] or "").lower()
                or q in (self.qslug[r] or "").lower()
            ):
                out.append(key)
        if len(self._search_cache) > 256:
            self._search_cache.clear()
        self._search_cache[cache_key] = (self.version, out)
        return out

    def session_json(self, row: int) -> bytes:
        """The List Sessions object of a row as JSON bytes, cached until its last_used changes."""
        last = self.last[row]
        hit = self._json_cache.get(row)
        if hit is not None and hit[0] == last:
            return hit[1]
        sid, qslug = self.ids[row], self.qslug[row]
        obj = {
            "id": sid,
            "last_used": format_drf(from_micros(last)),
            "guru_type_slug": self.slug,
            "guru_type_name": self.name,
            "root_question_name": self.title[row],
            "root_question_slug": qslug,
            "root_question_link": f"https://gurubase.io/g/{self.slug}/{qslug}/binge/{sid}",
        }
        data = json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        self._json_cache[row] = (last, data)
        return data

    def row_dict(self, row: int) -> dict[str, Any]:
        return {
            "id": self.ids[row],
            "has_root": self.has_root[row],
            "n_messages": self.n_base[row],
            "date_created": from_micros(self.created[row]),
            "base_last_used": from_micros(self.base_last[row]),
            "last_used": from_micros(self.last[row]),
            "root_question_name": self.title[row],
            "root_question_slug": self.qslug[row],
            "user_question": self.wording[row],
            "source": self.source[row],
        }

    def conversation(self, row: int) -> list[dict[str, Any]]:
        """Get Session's ``conversation`` of a row now (generated messages plus touches)."""
        extra = [from_micros(t) for t in self.touches.get(row, ())]
        return synthetic.conversation(self.row_dict(row), seed=self.seed, extra_times=extra)


def _none_list(s: pd.Series) -> list[Any]:
    return [
        None if (v is None or (isinstance(v, float) and math.isnan(v))) else str(v)
        for v in s.tolist()
    ]


class ServerState:
    """Every served guru and key, and the scripted changes to them (callers hold ``lock``)."""

    def __init__(self, clock: Callable[[], datetime], seed: int) -> None:
        self.clock = clock
        self.seed = seed
        self.lock = threading.RLock()
        self.gurus: dict[str, GuruState] = {}
        self.session_index: dict[str, tuple[str, int]] = {}
        self.keys: dict[str, tuple[str, frozenset[str] | None]] = {}
        self.last_default_us = 0

    # --- gurus and keys ----------------------------------------------------------------

    def add_guru(self, slug: str, name: str | None, seed: int, frame: pd.DataFrame | None) -> None:
        if not slug or "/" in slug:
            raise ConfigError(f"guru slug {slug!r} is not valid: use letters, digits and dashes")
        frame = self.normalise(frame, seed, None)
        with self.lock:
            if slug in self.gurus:
                raise ConfigError(f"guru {slug!r} is already served: pick another slug")
            self.check_new_ids(frame["id"])
            state = GuruState(slug, name, seed, frame)
            self.gurus[slug] = state
            for row, sid in enumerate(state.ids):
                self.session_index[sid] = (slug, row)

    def add_key(self, key: str, owner: str, gurus: Iterable[str] | None) -> None:
        if not key or not owner:
            raise ConfigError("add_key needs a non-empty key and owner")
        with self.lock:
            self.keys[key] = (owner, None if gurus is None else frozenset(gurus))

    def guru(self, slug: str) -> GuruState:
        g = self.gurus.get(slug)
        if g is None:
            raise NotFoundError(f"guru {slug!r} is not served: add it with add_guru() first")
        return g

    def find(self, session_id: str) -> tuple[str, int]:
        hit = self.session_index.get(session_id)
        if hit is None:
            raise NotFoundError(f"session {session_id!r} is not on this server")
        return hit

    def row_of(self, g: GuruState, session_id: str) -> int:
        hit = self.session_index.get(session_id)
        if hit is None or hit[0] != g.slug:
            raise NotFoundError(f"session {session_id!r} is not in guru {g.slug!r}")
        if g.deleted[hit[1]]:
            raise NotFoundError(f"session {session_id!r} was deleted")
        return hit[1]

    def check_new_ids(self, ids: pd.Series) -> None:
        if not ids.is_unique:
            raise ConfigError("session ids must be unique within a frame")
        clash = [sid for sid in ids.tolist() if sid in self.session_index]
        if clash:
            raise ConfigError(
                f"session id {clash[0]!r} is already served: generate further gurus with another seed"
            )

    def add_sessions(self, g: GuruState, frame: pd.DataFrame) -> list[int]:
        """Append normalised rows to a guru and index them; returns their row numbers."""
        self.check_new_ids(frame["id"])
        rows = g.append(frame)
        for row in rows:
            self.session_index[g.ids[row]] = (g.slug, row)
        return rows

    def next_default_us(self, g: GuruState) -> int:
        """'Now' for a change: the clock, but strictly after the guru's newest and the last
        default time handed out (so default changes never tie)."""
        t = max(to_micros(self.clock()), (g.top_us() or 0) + 1, self.last_default_us + 1)
        self.last_default_us = t
        return t

    # --- truth ---------------------------------------------------------------------------

    def truth(self, slug: str, external_user_id: str | None = None) -> pd.DataFrame:
        """The listable sessions now (has a root question, not deleted), last_used desc, id asc."""
        with self.lock:
            g = self.guru(slug)
            keys = g.order if external_user_id is None else g.by_user.get(external_user_id, [])
            rows = [r for _k, r in keys if g.has_root[r]]
            frame = pd.DataFrame(
                {
                    "id": pd.Series([g.ids[r] for r in rows], dtype="str"),
                    "last_used": micros_to_series(
                        np.array([g.last[r] for r in rows], dtype=np.int64)
                    ),
                    "date_created": micros_to_series(
                        np.array([g.created[r] for r in rows], dtype=np.int64)
                    ),
                    "root_question_name": pd.Series([g.title[r] for r in rows], dtype="str"),
                    "root_question_slug": pd.Series([g.qslug[r] for r in rows], dtype="str"),
                    "user_question": pd.Series([g.wording[r] for r in rows], dtype="str"),
                    "external_user_id": pd.Series([g.user[r] for r in rows], dtype="str"),
                    "n_messages": pd.Series(
                        [g.n_base[r] + len(g.touches.get(r, ())) for r in rows], dtype="int64"
                    ),
                    "source": pd.Series([g.source[r] for r in rows], dtype="str"),
                }
            )
        return frame.sort_values(["last_used", "id"], ascending=[False, True], ignore_index=True)

    def users(self, slug: str) -> list[str]:
        with self.lock:
            return sorted(u for u, keys in self.guru(slug).by_user.items() if keys)

    def conversation(self, session_id: str) -> list[dict[str, Any]]:
        with self.lock:
            slug, row = self.find(session_id)
            return self.gurus[slug].conversation(row)

    # --- scripted changes ----------------------------------------------------------------

    def touch(self, slug: str, ids: str | Iterable[str], at: datetime | None) -> list[datetime]:
        id_list = [ids] if isinstance(ids, str) else list(ids)
        with self.lock:
            g = self.guru(slug)
            rows = [self.row_of(g, sid) for sid in id_list]
            times: list[int] = []
            for row in rows:
                t = to_micros(at) if at is not None else self.next_default_us(g)
                if t < g.last[row]:
                    raise ConfigError(
                        f"touch time {from_micros(t).isoformat()} is before session "
                        f"{g.ids[row]!r}'s last_used: touch moves time forward only"
                    )
                g.set_last(row, t)
                times.append(t)
            return [from_micros(t) for t in times]

    def create(
        self,
        slug: str,
        n: int | pd.DataFrame,
        external_user_id: str | None,
        at: datetime | None,
    ) -> list[str]:
        with self.lock:
            g = self.guru(slug)
            if isinstance(n, pd.DataFrame):
                frame = n.copy()
                if "last_used" not in frame.columns:
                    frame["last_used"] = micros_to_series(
                        np.array(
                            [self.next_default_us(g) for _ in range(len(frame))], dtype=np.int64
                        )
                    )
                frame = self.normalise(frame, g.seed, g, external_user_id)
            else:
                if n < 0:
                    raise ConfigError("create needs n >= 0")
                times = [
                    from_micros(to_micros(at) if at is not None else self.next_default_us(g))
                    for _ in range(n)
                ]
                frame = self.new_sessions(g, times, external_user_id)
            return [g.ids[r] for r in self.add_sessions(g, frame)]

    def new_sessions(
        self, g: GuruState, times: list[datetime], external_user_id: str | None
    ) -> pd.DataFrame:
        """Generated one-message sessions at ``times`` (slugs never reused within the guru)."""
        frame = synthetic.new_sessions(
            len(times),
            seed=g.seed,
            at=times,
            external_user_id=external_user_id,
            slug_counter_start=g.new_counter,
        )
        g.new_counter += len(times)
        return frame

    def delete(self, slug: str, ids: str | Iterable[str]) -> None:
        id_list = [ids] if isinstance(ids, str) else list(ids)
        with self.lock:
            g = self.guru(slug)
            for sid in id_list:
                g.delete(self.row_of(g, sid))

    def normalise(
        self,
        frame: pd.DataFrame | None,
        seed: int,
        g: GuruState | None,
        external_user_id: str | None = None,
    ) -> pd.DataFrame:
        """Fill the columns a served session needs; generated values where missing."""
        if frame is None:
            frame = pd.DataFrame(
                {
                    "id": pd.Series([], dtype="str"),
                    "last_used": micros_to_series(np.zeros(0, np.int64)),
                }
            )
        if "last_used" not in frame.columns:
            raise ConfigError("a sessions frame needs a tz-aware 'last_used' column")
        frame = frame.reset_index(drop=True)
        n = len(frame)
        last = frame["last_used"]
        if not isinstance(last.dtype, pd.DatetimeTZDtype):
            raise ConfigError(
                "'last_used' must be tz-aware (UTC): use pd.to_datetime(..., utc=True)"
            )
        missing = [c for c in synthetic.SESSION_COLUMNS if c not in frame.columns]
        filler: pd.DataFrame | None = None
        if set(missing) - {"date_created", "external_user_id"}:
            counter = 0
            if g is not None:
                counter, g.new_counter = g.new_counter, g.new_counter + n
            filler = synthetic.new_sessions(
                n,
                seed=seed,
                at=last,
                external_user_id=external_user_id,
                slug_counter_start=counter + 10**6 * (g is None),
            )
        out = pd.DataFrame(index=frame.index)
        for col in synthetic.SESSION_COLUMNS:
            if col in frame.columns:
                out[col] = frame[col]
            elif col == "date_created":
                out[col] = last
            elif col == "external_user_id":
                out[col] = pd.Series([external_user_id] * n, dtype="str")
            else:
                assert filler is not None
                out[col] = filler[col]
        if external_user_id is not None and "external_user_id" in frame.columns:
            out["external_user_id"] = out["external_user_id"].fillna(external_user_id)
        out["last_used"] = out["last_used"].dt.tz_convert("UTC")
        out["date_created"] = pd.to_datetime(out["date_created"], utc=True)
        if n and (out["date_created"] > out["last_used"]).any():
            raise ConfigError("date_created must not be after last_used")
        out["id"] = out["id"].astype(str)
        return out
