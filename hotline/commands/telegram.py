"""``hotline telegram poll``: the whole service with the Telegram bot long-polling instead of a webhook.

For development, when no public HTTPS URL can reach this machine. Telegram refuses getUpdates while a
webhook is set, so polling first removes the webhook (set it again with the next ``hotline serve`` that has
``telegram.webhook_url``).
"""

from __future__ import annotations

import argparse
import sys

from hotline.commands.check import check_config
from hotline.commands.serve import add_server_args, explained_start, run, server_settings
from hotline.logs import setup_logging


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("telegram", help="Telegram bot tools")
    tsub = parser.add_subparsers(dest="telegram_command", metavar="SUBCOMMAND", required=True)
    poll = tsub.add_parser("poll", help="run the service with the bot long-polling Telegram (development)")
    add_server_args(poll)
    poll.set_defaults(handler=run_poll)


def run_poll(args: argparse.Namespace) -> int:
    settings = server_settings(args, telegram={"mode": "poll"})
    if not settings["telegram"]["token"]:
        print("hotline: telegram.token is empty (set HOTLINE_TELEGRAM__TOKEN or config); nothing to poll",
              file=sys.stderr)
        return 2
    setup_logging(settings["logging"]["level"])
    check_config(settings)
    with explained_start(settings):
        run(settings)
    return 0
