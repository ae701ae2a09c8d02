"""stub"""
from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from ._exchange import Response, msg_response
from ._state import GuruState


def export_answer(g: GuruState, body: Mapping[str, Any], now: datetime, scheme: str) -> Response:
    return msg_response(500, "Internal server error")
EXPORT_SCHEMES = {"code": ("questions", "unable_to_answer", "references"), "docs": ("questions", "out_of_context", "referenced_sources")}
