"""Typed rows of the API's answers and their JSON parsers: one responsibility, JSON in,
checked frozen rows out.

Get Session's conversation becomes ``Conversation``/``Message`` rows and Export Analytics'
file ``QuestionExport`` rows; ``FieldReader`` checks each field's JSON type with messages
that name it (``conversation[3].trust_score``), and ``repair_text`` replaces lone UTF-16
surrogates the server may send. The export lists every question of an interval in one request; this module turns its JSON
into frozen rows, checked field by field, so a changed server fails loudly (a typed
``UnexpectedResponseError`` naming the row) instead of feeding bad rows to the cache. It
accepts both top-level key schemes: the docs' ``questions`` / ``out_of_context`` /
``referenced_sources`` and the running code's ``questions`` / ``unable_to_answer`` /
``references``. The row's only link to a session is the session id in its ``url``.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from .errors import ConfigError, UnexpectedResponseError
from .timestamps import parse_api_timestamp

EXPORT_INTERVALS: tuple[str, ...] = ("today", "yesterday", "7d", "30d", "3m", "6m", "12m")
"""The intervals Export Analytics accepts, shortest first (``12m`` = 365 days)."""

EXPORT_FILTERS: dict[str, tuple[str, ...]] = {
    "questions": ("all", "widget", "user", "api", "discord", "slack", "github"),
    "out_of_context": ("all", "widget", "user", "api", "discord", "slack", "github"),
    "referenced_sources": ("all", "github_repo", "website", "youtube", "pdf"),
}
"""Filter names and their values (``filters=`` of ``GurubaseClient.export_questions``)."""

_INTERVAL_DAYS = {"7d": 7, "30d": 30, "3m": 90, "6m": 180, "12m": 365}
_US = timedelta(microseconds=1)


def export_range(interval: str, now: datetime) -> tuple[datetime, datetime]:
    """The inclusive UTC range an interval asked at ``now`` covers, as the contract says.

    ``today``: 00:00 to the end of the current hour; ``yesterday``: the previous UTC day
    (it ends at the last midnight, so it never covers today's questions); ``7d``..``12m``:
    now minus N days truncated to 00:00, to today 23:59:59.999999. (The local server computes
    the same from its own copy of the contract: a shared bug would hide on both sides.)
    """
    if interval not in EXPORT_INTERVALS:
        raise ConfigError(
            f"interval {interval!r} is not valid: use one of {', '.join(EXPORT_INTERVALS)}"
        )
    now = now.astimezone(UTC)
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if interval == "yesterday":
        return midnight - timedelta(days=1), midnight - _US
    if interval == "today":
        hour = now.replace(minute=0, second=0, microsecond=0)
        return midnight, hour + timedelta(hours=1) - _US
    start = (now - timedelta(days=_INTERVAL_DAYS[interval])).replace(
        hour=0, minute=0, second=0, microsecond=0
    )
    return start, midnight + timedelta(days=1) - _US


_SCHEMES = {
    "code": ("questions", "unable_to_answer", "references"),
    "docs": ("questions", "out_of_context", "referenced_sources"),
}
_QUESTION_FIELDS = ("datetime", "source", "question", "trust_score", "follow_up", "url")
_UNANSWERED_FIELDS = ("datetime", "source", "question")
INCOMPATIBLE = "the server is not Gurubase-compatible or changed its API"


@dataclass(frozen=True)
class ExportedQuestion:
    """One answered question of the export.

    ``asked_at`` is tz-aware UTC at minute resolution (the file has no seconds);
    ``trust_score`` is 0-1 (Get Session's integer / 100); ``session_id`` and
    ``question_slug`` come from ``url``: a question in a session links
    ``.../binge/{session_id}?question_slug={slug}``; any other (a web/widget/API session's
    first question, a question outside any session) has ``session_id`` None and its page's
    slug as ``question_slug``.
    """

    asked_at: datetime
    source: str
    question: str
    trust_score: float | None
    follow_up: bool
    url: str
    session_id: str | None
    question_slug: str | None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class UnansweredQuestion:
    """A question the guru could not answer (no link to any session)."""

    asked_at: datetime
    source: str
    question: str
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class QuestionExport:
    """One Export Analytics answer. ``scheme`` is ``"code"``, ``"docs"`` or ``"empty"`` (the
    server said the interval holds nothing); ``references`` are kept as the server sent them."""

    guru: str
    interval: str
    questions: list[ExportedQuestion]
    unanswered: list[UnansweredQuestion]
    references: list[dict[str, Any]]
    scheme: str
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def empty(cls, guru: str, interval: str) -> QuestionExport:
        return cls(guru, interval, [], [], [], "empty")


def parse_export(
    data: Mapping[str, Any],
    *,
    guru: str,
    interval: str,
    label: str,
    endpoint: str,
    clean: Callable[[str, int], str] = lambda text, limit: text[:limit],
) -> QuestionExport:
    """Check and type an export file; raises ``UnexpectedResponseError`` naming the row.

    ``clean`` shortens and masks text quoted in messages (the client passes its own).
    """
    reader = FieldReader(label, endpoint, clean)
    scheme = "docs" if "out_of_context" in data or "referenced_sources" in data else "code"
    if scheme == "docs" and ("unable_to_answer" in data or "references" in data):
        raise reader.error("(top level)", "mixes the docs and the code key schemes")
    q_key, u_key, r_key = _SCHEMES[scheme]
    raw_q = reader.list_of(data, q_key)
    raw_u = reader.list_of(data, u_key) if u_key in data else []
    raw_r = reader.list_of(data, r_key) if r_key in data else []
    questions = [reader.question(item, f"{q_key}[{i}]") for i, item in enumerate(raw_q)]
    unanswered = [reader.unanswered(item, f"{u_key}[{i}]") for i, item in enumerate(raw_u)]
    references = []
    for i, item in enumerate(raw_r):
        if not isinstance(item, dict):
            raise reader.error(f"{r_key}[{i}]", f"is {json_type(item)}, expected object")
        references.append(dict(item))
    extra = {k: v for k, v in data.items() if k not in _SCHEMES[scheme]}
    return QuestionExport(guru, interval, questions, unanswered, references, scheme, extra)


def link_of(url: str) -> tuple[str | None, str | None]:
    """(session id, question slug) of a question's page URL (see ``ExportedQuestion``)."""
    parts = urlsplit(url)
    segments = [unquote(s) for s in parts.path.split("/") if s]
    if "binge" in segments:
        i = segments.index("binge")
        session = segments[i + 1] if i + 1 < len(segments) and segments[i + 1] else None
        slugs = parse_qs(parts.query).get("question_slug")
        return session, (slugs[0] if slugs else None)
    if len(segments) >= 3 and segments[0] == "g":
        return None, segments[-1]
    return None, None


class FieldReader:
    """Field checks with messages that name the row: ``questions[3].trust_score``."""

    def __init__(self, label: str, endpoint: str, clean: Callable[[str, int], str]) -> None:
        self.label = label
        self.endpoint = endpoint
        self.clean = clean

    def error(self, where: str, problem: str) -> UnexpectedResponseError:
        return UnexpectedResponseError(
            f"{self.label}: field '{where}' {problem}; {INCOMPATIBLE}",
            status=200,
            endpoint=self.endpoint,
        )

    def get(
        self,
        obj: Mapping[str, Any],
        name: str,
        where: str,
        kinds: tuple[type, ...],
        *,
        required: bool,
    ) -> Any:
        """Read one field and check its type (None allowed only when not required)."""
        if name not in obj:
            if required:
                raise self.error(where, "missing")
            return None
        value = obj[name]
        if value is None and not required:
            return None
        if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
            expected = " or ".join(k.__name__ for k in kinds)
            raise self.error(where, f"is {json_type(value)}, expected {expected}")
        return value

    def timestamp(
        self, obj: Mapping[str, Any], name: str, where: str, *, required: bool
    ) -> datetime | None:
        """An ISO 8601 UTC field as a tz-aware instant (None allowed only when not required)."""
        raw = self.get(obj, name, where, (str,), required=required)
        if raw is None:
            return None
        try:
            return parse_api_timestamp(raw)
        except ValueError as exc:
            problem = (
                "is outside the years 1-9999"
                if "outside the years" in str(exc)
                else ("is not an ISO 8601 UTC timestamp")
            )
            raise self.error(where, f"{problem} ({self.clean(raw, 40)!r})") from None

    def list_of(self, data: Mapping[str, Any], key: str) -> list[Any]:
        if key not in data:
            raise self.error(key, "missing")
        value = data[key]
        if not isinstance(value, list):
            raise self.error(key, f"is {json_type(value)}, expected a list")
        return value

    def _object(self, item: Any, where: str) -> Mapping[str, Any]:
        if not isinstance(item, dict):
            raise self.error(where, f"is {json_type(item)}, expected object")
        return item

    def _text(self, item: Mapping[str, Any], name: str, where: str) -> str:
        if name not in item:
            raise self.error(f"{where}.{name}", "missing")
        value = item[name]
        if value is None:
            return ""
        if not isinstance(value, str):
            raise self.error(f"{where}.{name}", f"is {json_type(value)}, expected a string")
        return value

    def _minute(self, item: Mapping[str, Any], where: str) -> datetime:
        raw = self._text(item, "datetime", where)
        for fmt in ("%Y-%m-%d %H:%M", "%Y-%m-%d %H:%M:%S"):
            try:
                return datetime.strptime(raw, fmt).replace(tzinfo=UTC)
            except ValueError:
                continue
        try:
            parsed = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        except ValueError:
            raise self.error(
                f"{where}.datetime",
                f"is not a 'YYYY-MM-DD HH:MM' UTC time ({self.clean(raw, 40)!r})",
            ) from None
        return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)

    def question(self, item: Any, where: str) -> ExportedQuestion:
        obj = self._object(item, where)
        score = obj.get("trust_score")
        if score is not None:
            if isinstance(score, bool) or not isinstance(score, int | float):
                raise self.error(
                    f"{where}.trust_score", f"is {json_type(score)}, expected a number"
                )
            if not 0.0 <= score <= 1.0:
                raise self.error(f"{where}.trust_score", f"is {score!r}, expected 0 to 1")
            score = float(score)
        if "follow_up" not in obj:
            raise self.error(f"{where}.follow_up", "missing")
        follow = obj["follow_up"]
        if not isinstance(follow, bool):
            raise self.error(f"{where}.follow_up", f"is {json_type(follow)}, expected a boolean")
        url = self._text(obj, "url", where)
        session_id, slug = link_of(url)
        return ExportedQuestion(
            asked_at=self._minute(obj, where),
            source=self._text(obj, "source", where),
            question=self._text(obj, "question", where),
            trust_score=score,
            follow_up=follow,
            url=url,
            session_id=session_id,
            question_slug=slug,
            extra={k: v for k, v in obj.items() if k not in _QUESTION_FIELDS},
        )

    def unanswered(self, item: Any, where: str) -> UnansweredQuestion:
        obj = self._object(item, where)
        return UnansweredQuestion(
            asked_at=self._minute(obj, where),
            source=self._text(obj, "source", where),
            question=self._text(obj, "question", where),
            extra={k: v for k, v in obj.items() if k not in _UNANSWERED_FIELDS},
        )


def json_type(value: object) -> str:
    """The JSON name of a decoded value's type, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


# --- Get Session: a session's conversation ---------------------------------------------------

_MESSAGE_FIELDS = (
    "id",
    "slug",
    "user_question",
    "question",
    "answer",
    "date_created",
    "date_updated",
    "references",
    "trust_score",
    "parent_slug",
    "source",
    "user_vote",
)
_MESSAGE_TEXT = (
    "slug",
    "user_question",
    "question",
    "answer",
    "source",
    "user_vote",
    "parent_slug",
)
_CONVERSATION_FIELDS = (
    "binge_id",
    "root_question_slug",
    "date_created",
    "last_used",
    "conversation",
)


@dataclass(frozen=True)
class Message:
    """One question/answer of a session (Get Session ``conversation`` item)."""

    id: str
    slug: str | None
    user_question: str | None
    question: str | None
    answer: str | None
    date_created: datetime
    date_updated: datetime | None
    source: str | None
    trust_score: int | None
    user_vote: str | None
    parent_slug: str | None
    n_references: int | None
    extra: dict[str, Any] = field(default_factory=dict)
    # Fields whose text held lone UTF-16 surrogates (undecodable), stored with U+FFFD.
    repaired: tuple[str, ...] = ()


@dataclass(frozen=True)
class Conversation:
    """A session's messages, oldest first, as Get Session returns them."""

    session_id: str
    root_question_slug: str | None
    date_created: datetime
    last_used: datetime
    messages: list[Message]
    extra: dict[str, Any] = field(default_factory=dict)


def parse_conversation(
    data: dict[str, Any], session_id: str, reader: FieldReader, log: logging.Logger
) -> Conversation:
    """Get Session's JSON object as a ``Conversation``, checked field by field (``session_id``
    is the one asked for, used when the answer has no ``binge_id``)."""
    get, when = reader.get, reader.timestamp
    # repair the top-level fields here; each message is repaired (and noted) below
    has_messages, messages_field = "conversation" in data, data.get("conversation")
    data, _ = repair_text({k: v for k, v in data.items() if k != "conversation"})
    if has_messages:
        data["conversation"] = messages_field
    binge_id = get(data, "binge_id", "binge_id", (str,), required=False)
    items = get(data, "conversation", "conversation", (list,), required=True)
    messages: list[Message] = []
    for i, item in enumerate(items):
        where = f"conversation[{i}]"
        if not isinstance(item, dict):
            raise reader.error(where, f"is {json_type(item)}, expected object")
        item, repaired = repair_text(item)
        mid = get(item, "id", f"{where}.id", (str, int), required=True)
        refs = get(item, "references", f"{where}.references", (list,), required=False)
        score = get(item, "trust_score", f"{where}.trust_score", (int, float), required=False)
        if isinstance(score, float):
            if not score.is_integer():
                raise reader.error(f"{where}.trust_score", f"is {score!r}, expected a whole number")
            score = int(score)
        if score is not None and not 0 <= score <= 100:
            # out of the documented 0-100 (10**30 would not even fit a column): keep the
            # message without it rather than block this session's messages for ever
            log.warning(
                "%s: %s.trust_score %s is outside 0-100; stored as missing",
                reader.label, where, reader.clean(str(score), 40),
            )  # fmt: skip
            score, repaired = None, (*repaired, "trust_score")
        strings = {
            name: get(item, name, f"{where}.{name}", (str,), required=False)
            for name in _MESSAGE_TEXT
        }
        messages.append(
            Message(
                id=str(mid),
                date_created=when(item, "date_created", f"{where}.date_created", required=True),  # type: ignore[arg-type]  # required=True
                date_updated=when(item, "date_updated", f"{where}.date_updated", required=False),
                trust_score=score,
                n_references=len(refs) if refs is not None else None,
                extra={k: v for k, v in item.items() if k not in _MESSAGE_FIELDS},
                repaired=repaired,
                **strings,
            )
        )
    return Conversation(
        session_id=binge_id or session_id,
        root_question_slug=get(
            data, "root_question_slug", "root_question_slug", (str,), required=False
        ),
        date_created=when(data, "date_created", "date_created", required=True),  # type: ignore[arg-type]
        last_used=when(data, "last_used", "last_used", required=True),  # type: ignore[arg-type]
        messages=messages,
        extra={k: v for k, v in data.items() if k not in _CONVERSATION_FIELDS},
    )


# --- text the server sent that cannot be stored -----------------------------------------------

_SURROGATE = re.compile("[\ud800-\udfff]")
_REPLACEMENT = "\ufffd"


def repair_text(item: dict[str, Any]) -> tuple[dict[str, Any], tuple[str, ...]]:
    """``item`` with lone UTF-16 surrogates (JSON ``"\\ud800"``: no character, cannot be
    stored or encoded) replaced by U+FFFD, and the names of the fields that had them. The
    server's data cannot be fixed by the user; one bad title must not block every sync."""
    repaired = tuple(k for k, v in item.items() if _has_surrogate(v))
    if not repaired:
        return item, ()
    return {k: replace_surrogates(v) if k in repaired else v for k, v in item.items()}, repaired


def _has_surrogate(value: Any) -> bool:
    """Whether any string in ``value`` (keys included) holds a lone surrogate. A loop, not
    recursion: a field nested as deep as JSON allows must not overflow the stack here."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            if not v.isascii() and _SURROGATE.search(v) is not None:
                return True
        elif isinstance(v, dict):
            stack.extend(v)
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    return False


def replace_surrogates(value: Any) -> Any:
    """``value`` with every lone surrogate (in any nested string) replaced by U+FFFD."""
    if isinstance(value, str):
        return _SURROGATE.sub(_REPLACEMENT, value)
    # nested: through JSON text, whose C codec handles any depth the decoder accepted
    text = json.dumps(value, ensure_ascii=False)
    return json.loads(_SURROGATE.sub(_REPLACEMENT, text))
