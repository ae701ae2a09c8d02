"""Small argument checks used everywhere: whole numbers and guru slugs, one wording each."""

from __future__ import annotations

import argparse
import numbers
from collections.abc import Callable
from typing import Any, Literal, overload

from .errors import ConfigError


@overload
def whole_number(
    value: object, name: str, *, minimum: int = 0, none_ok: Literal[False] = False
) -> int: ...
@overload
def whole_number(value: object, name: str, *, minimum: int = 0, none_ok: bool) -> int | None: ...
def whole_number(
    value: object, name: str, *, minimum: int = 0, none_ok: bool = False
) -> int | None:
    """``value`` as an int if it is a whole number >= ``minimum`` (``None`` passes with
    ``none_ok``); else ConfigError. Booleans are not numbers here; numpy integers are
    (``numbers.Integral``, so the CLI, which checks its arguments here, never loads numpy)."""
    if value is None and none_ok:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        extra = " or None" if none_ok else ""
        raise ConfigError(f"{name} must be a whole number >= {minimum}{extra}, got {value!r}")
    return int(value)


def guru_slug(value: Any, name: str = "guru slug") -> str:
    """The stripped slug, or ConfigError: a slug is non-empty text without spaces or slashes."""
    if isinstance(value, str):
        slug = value.strip()
        if slug and not any(ch.isspace() or ch == "/" for ch in slug):
            return slug
    raise ConfigError(
        f"{name} {value!r} is not valid: pass the slug from the guru's URL, e.g. 'my-guru'"
    )


def whole_number_arg(minimum: int = 0) -> Callable[[str], int]:
    """An argparse ``type`` for whole numbers >= ``minimum`` (the CLI's wording of the check)."""

    def parse(text: str) -> int:
        try:
            return whole_number(int(text), "the value", minimum=minimum)
        except (ValueError, ConfigError):
            raise argparse.ArgumentTypeError(
                f"expected a whole number >= {minimum}, got {text!r}"
            ) from None

    return parse
