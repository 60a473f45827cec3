"""``hotline users …``: staff accounts of the consoles (add, list, set a password, disable, enable).

Passwords are read from the terminal without echo, or from stdin when it is not a terminal
(``printf '%s\\n' "$PW" | hotline users add wang --role call_taker``), never from the command line.
Names are case-insensitive (``passwd WANG`` sets wang's password). A new password ends every session of the
account, as disabling it does.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys

from hotline.access import ROLE_LABELS_ZH, ROLES
from hotline.commands.common import add_settings_args, open_store, settings_from_args
from hotline.store.users import UserError, Users, check_password, hash_password, valid_name


def read_password(confirm: bool = True) -> str:
    if not sys.stdin.isatty():
        line = sys.stdin.readline()
        return line.rstrip("\r\n")
    first = getpass.getpass("密码: ")
    if confirm and getpass.getpass("再次输入密码: ") != first:
        raise UserError("两次输入的密码不一致。")
    return first


async def _add(args: argparse.Namespace) -> int:
    if not valid_name(args.name):
        raise UserError("用户名只能包含字母、数字、汉字和 _ . -，最长 32 个字符。")
    password = read_password()
    check_password(password)
    pw_hash = await asyncio.to_thread(hash_password, password)
    async with open_store(settings_from_args(args)) as store:
        user = await Users(store).add(args.name, args.role, pw_hash, display_name=args.display_name or "",
                                      replace=args.replace)
    print(f"added {user.name} ({user.role})")
    return 0


async def _list(args: argparse.Namespace) -> int:
    async with open_store(settings_from_args(args)) as store:
        users = await Users(store).all()
    for u in users:
        state = "disabled" if u.disabled else "active"
        print(f"{u.name}\t{u.role}\t{ROLE_LABELS_ZH[u.role]}\t{state}\t{u.display_name}")
    return 0


async def _passwd(args: argparse.Namespace) -> int:
    password = read_password()
    check_password(password)
    pw_hash = await asyncio.to_thread(hash_password, password)
    async with open_store(settings_from_args(args)) as store:
        name = await Users(store).set_password(args.name, pw_hash)
    print(f"password of {name} changed; its sessions were ended")
    return 0


async def _enable(args: argparse.Namespace, disabled: bool) -> int:
    async with open_store(settings_from_args(args)) as store:
        name = await Users(store).set_disabled(args.name, disabled)
    print(f"{name} {'disabled' if disabled else 'enabled'}")
    return 0


def _run(coro_fn):  # type: ignore[no-untyped-def]
    def handler(args: argparse.Namespace) -> int:
        try:
            return asyncio.run(coro_fn(args))
        except UserError as exc:
            print(f"hotline users: {exc}", file=sys.stderr)
            return 1
    return handler


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("users", help="staff accounts of the consoles")
    users_sub = parser.add_subparsers(dest="users_command", metavar="USERS_COMMAND")

    add = users_sub.add_parser("add", help="add a staff account (password prompted, or one line on stdin)")
    add.add_argument("name")
    add.add_argument("--role", required=True, choices=ROLES,
                     help="call_taker 接线员, follow_up 回访员, supervisor 班长/管理员")
    add.add_argument("--display-name", help="name shown in the console")
    add.add_argument("--replace", action="store_true",
                     help="overwrite an existing account (its sessions end)")
    add_settings_args(add)
    add.set_defaults(handler=_run(_add))

    ls = users_sub.add_parser("list", help="list staff accounts")
    add_settings_args(ls)
    ls.set_defaults(handler=_run(_list))

    pw = users_sub.add_parser("passwd", help="set a new password (prompted, or one line on stdin) and end the "
                                             "account's sessions")
    pw.add_argument("name")
    add_settings_args(pw)
    pw.set_defaults(handler=_run(_passwd))

    for name, disabled in (("disable", True), ("enable", False)):
        p = users_sub.add_parser(name, help=f"{name} a staff account")
        p.add_argument("name")
        add_settings_args(p)
        p.set_defaults(handler=_run(lambda a, d=disabled: _enable(a, d)))

    parser.set_defaults(handler=lambda _args: parser.print_help() or 2)
