"""``hotline cases``: the case records themselves.

- ``hotline cases purge-personal --older-than-days N [--dry-run] [--json]``
  remove citizens' personal data from closed cases created more than N days ago (hotline/retention.py)
"""

from __future__ import annotations

import argparse
import asyncio
import json

from hotline.attachments import AttachmentStore
from hotline.commands.common import add_settings_args, open_store, settings_from_args
from hotline.retention import Retention


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("cases", help="case records: retention of personal data")
    csub = parser.add_subparsers(dest="cases_command", metavar="SUBCOMMAND", required=True)
    purge = csub.add_parser("purge-personal",
                            help="remove phone, name, sender, photos and recordings from old closed cases")
    purge.add_argument("--older-than-days", type=float, required=True,
                       help="closed cases created more than this many days ago")
    purge.add_argument("--dry-run", action="store_true", help="count what would be purged, change nothing")
    purge.add_argument("--json", action="store_true", help="print one JSON object")
    add_settings_args(purge)
    purge.set_defaults(handler=run_purge)


async def _purge(args: argparse.Namespace) -> int:
    if not 0 <= args.older_than_days <= 36500:
        print("hotline: --older-than-days must be between 0 and 36500")
        return 2
    settings = settings_from_args(args)
    files = AttachmentStore(settings.data_dir / "attachments")
    async with open_store(settings) as store:
        result = await Retention(store, settings.data_dir, files).purge(args.older_than_days * 86400,
                                                                         dry_run=args.dry_run)
    out = {**result.to_dict(), "dry_run": args.dry_run, "older_than_days": args.older_than_days}
    if args.json:
        print(json.dumps(out))
    else:
        verb = "would purge" if args.dry_run else "purged"
        print(f"{verb} {out['purged']} of {out['scanned']} cases; files removed {out['files_removed']}, "
              f"failed {out['files_failed']}")
    return 1 if result.files_failed else 0


def run_purge(args: argparse.Namespace) -> int:
    return asyncio.run(_purge(args))
