"""The ``hotline`` command."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from hotline import __version__
from hotline.commands.serve import CannotStart
from hotline.settings import SettingsError

# Each module adds its own sub-commands; the list order is the order shown in --help.
COMMAND_MODULES = [
    "hotline.commands.serve",
    "hotline.commands.nlp",
    "hotline.commands.telegram",
    "hotline.commands.kb",
    "hotline.commands.voice",
    "hotline.commands.users",
    "hotline.commands.dispatch",
    "hotline.commands.cases",
    "hotline.commands.check",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hotline", description="一号通 citizen hotline front end")
    parser.add_argument("--version", action="version", version=f"hotline {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    try:
        return int(handler(args) or 0)
    except SettingsError as exc:
        print(f"hotline: configuration error: {exc}", file=sys.stderr)
        return 2
    except CannotStart as exc:
        print(f"hotline: cannot start: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
