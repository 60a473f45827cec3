"""``hotline nlp …``: train, evaluate and try the text models."""

from __future__ import annotations

import argparse
import importlib

# Modules adding ``hotline nlp`` sub-commands, each with ``register(nlp_subparsers)``.
NLP_COMMAND_MODULES: list[str] = [
    "hotline.commands.nlp_dedup",
    "hotline.commands.nlp_heads",
]


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("nlp", help="train, evaluate and try the text models")
    nlp_sub = parser.add_subparsers(dest="nlp_command", metavar="NLP_COMMAND")
    for name in NLP_COMMAND_MODULES:
        importlib.import_module(name).register(nlp_sub)
    parser.set_defaults(handler=lambda _args: parser.print_help() or 2)
