"""The ``guru-analytics`` command line: a thin layer over the library.

Each subcommand has a ``_add_<name>(subparsers)`` that declares its options (with help for
every switch) and a ``_cmd_<name>(args) -> int`` that calls the library. Errors from the
package (``GuruAnalyticsError``) print one line to stderr and exit non-zero, never a
traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from .errors import (
    AuthenticationError,
    ConfigError,
    ForbiddenError,
    GuruAnalyticsError,
    NotFoundError,
)

# Exit codes: 0 ok, 1 other package error, 2 usage/config, 3 auth/forbidden, 4 not found.
EXIT_CODES: dict[type[GuruAnalyticsError], int] = {
    ConfigError: 2,
    AuthenticationError: 3,
    ForbiddenError: 3,
    NotFoundError: 4,
}


def _exit_code(exc: GuruAnalyticsError) -> int:
    for cls, code in EXIT_CODES.items():
        if isinstance(exc, cls):
            return code
    return 1


# --- serve (local Gurubase-compatible server) -------------------------------------------
# (section owned by the server work)

# --- sync -------------------------------------------------------------------------------
# (section owned by the sync work)

# --- report / plot ----------------------------------------------------------------------
# (section owned by the analytics work)

# --- demo -------------------------------------------------------------------------------
# (section owned by the notebook/demo work)


# Each entry: (add_parser_function, command_function). Sections above register here.
COMMANDS: dict[str, tuple[Callable[..., None], Callable[[argparse.Namespace], int]]] = {}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="guru-analytics",
        description="Sync a Gurubase guru's sessions into DuckDB and report on them.",
    )
    parser.add_argument("--version", action="version", version="%(prog)s 0.1.0")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (add, _cmd) in COMMANDS.items():
        add(sub, name)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    _add, cmd = COMMANDS[args.command]
    try:
        return cmd(args)
    except GuruAnalyticsError as exc:
        print(f"guru-analytics: error: {exc}", file=sys.stderr)
        return _exit_code(exc)
    except KeyboardInterrupt:
        print("guru-analytics: interrupted; the cache keeps every page written so far", file=sys.stderr)
        return 130
