"""The small argument checks every module shares (one wording each)."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

from guru_analytics.checks import guru_slug, whole_number, whole_number_arg
from guru_analytics.errors import ConfigError


def test_whole_number() -> None:
    assert whole_number(0, "n") == 0 and whole_number(np.int64(3), "n", minimum=1) == 3
    assert whole_number(None, "n", none_ok=True) is None
    for bad in (-1, 1.5, True, "3", None):
        with pytest.raises(ConfigError, match=r"n must be a whole number >= 0, got"):
            whole_number(bad, "n")
    with pytest.raises(ConfigError, match=">= 1 or None"):
        whole_number(0, "n", minimum=1, none_ok=True)


def test_whole_number_arg_for_argparse() -> None:
    parse = whole_number_arg(1)
    assert parse("7") == 7
    for bad in ("0", "x", "1.5"):
        with pytest.raises(argparse.ArgumentTypeError, match="whole number >= 1"):
            parse(bad)


def test_guru_slug() -> None:
    assert guru_slug(" my-guru ") == "my-guru"
    for bad in ("", "  ", "a b", "a/b", None, 3):
        with pytest.raises(ConfigError, match="pass the slug from the guru's URL"):
            guru_slug(bad)
