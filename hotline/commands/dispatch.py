"""``hotline dispatch``: dead letters of the dispatch outbox.

- ``hotline dispatch dead``             list orders that failed delivery max_attempts times
- ``hotline dispatch redrive ID``       put one dead letter back into the outbox (same order id)
- ``hotline dispatch redrive --all``    put every dead letter back
- ``hotline dispatch stats``            outbox, pending, retrying, dead and open orders
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import datetime
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from hotline.commands.common import add_settings_args, open_store, settings_from_args
from hotline.errors import ApiError
from hotline.notify import Notifications
from hotline.settings import Settings
from hotline.store import Store

if TYPE_CHECKING:
    from hotline.dispatch.service import Dispatcher


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("dispatch", help="dispatch outbox: dead letters, redrive, stats")
    dsub = parser.add_subparsers(dest="dispatch_command", metavar="SUBCOMMAND", required=True)
    dead = dsub.add_parser("dead", help="list dead letters (orders that could not be delivered)")
    dead.add_argument("--limit", type=int, default=100)
    dead.add_argument("--json", action="store_true", help="one JSON object per line")
    add_settings_args(dead)
    dead.set_defaults(handler=run_dead)
    redrive = dsub.add_parser("redrive", help="put dead letters back into the outbox")
    which = redrive.add_mutually_exclusive_group(required=True)
    which.add_argument("dead_id", nargs="?", help="id of one dead letter (from `hotline dispatch dead`)")
    which.add_argument("--all", action="store_true", help="every dead letter")
    add_settings_args(redrive)
    redrive.set_defaults(handler=run_redrive)
    stats = dsub.add_parser("stats", help="outbox counters as JSON")
    add_settings_args(stats)
    stats.set_defaults(handler=run_stats)


def _dispatcher(settings: Settings, store: Store) -> Dispatcher:
    from hotline.dispatch.feature import build_dispatcher

    return build_dispatcher(settings, store, Notifications(store))


async def _dead(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    async with open_store(settings) as store:
        letters = await _dispatcher(settings, store).outbox.dead_letters(args.limit)
    if not letters:
        # --json prints one object per letter: none is no line, and the notice goes where no parser reads.
        print("no dead letters", file=sys.stderr if args.json else sys.stdout)
        return 0
    zone = ZoneInfo(settings["intake"]["timezone"])
    for d in letters:
        if args.json:
            print(json.dumps(d.to_dict(), ensure_ascii=False))
        else:
            # The city's time with its offset, as the console shows it; the machine's own zone may be UTC.
            when = datetime.fromtimestamp(d.failed_at, zone).strftime("%Y-%m-%d %H:%M:%S %z")
            print(f"{d.dead_id}\t{d.key}\tcase {d.case_id}\t{d.attempts} attempts\t{when}\t{d.error[:120]}")
    return 0


async def _redrive(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    async with open_store(settings) as store:
        dispatcher = _dispatcher(settings, store)
        if args.all:
            done = await dispatcher.redrive_all("cli:redrive")
            for letter, entry in done:
                print(f"redriven {letter.dead_id} → outbox {entry} ({letter.key})")
            print(f"{len(done)} dead letter(s) redriven")
            return 0
        try:
            letter, entry = await dispatcher.redrive(args.dead_id, "cli:redrive")
        except ApiError as exc:
            print(f"hotline: {exc.message}", file=sys.stderr)
            return 1
        print(f"redriven {letter.dead_id} → outbox {entry} ({letter.key})")
        return 0


async def _stats(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    async with open_store(settings) as store:
        stats = await _dispatcher(settings, store).outbox.stats()
    print(json.dumps(stats))
    return 0


def run_dead(args: argparse.Namespace) -> int:
    if args.limit < 1:
        print("hotline: --limit must be at least 1", file=sys.stderr)
        return 2
    return asyncio.run(_dead(args))


def run_redrive(args: argparse.Namespace) -> int:
    return asyncio.run(_redrive(args))


def run_stats(args: argparse.Namespace) -> int:
    return asyncio.run(_stats(args))
