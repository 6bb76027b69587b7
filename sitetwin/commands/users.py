"""``sitetwin users add|list|disable|enable|set-role|reset-password|token ...``: accounts.

Passwords are read from the terminal (asked twice) or, for scripts, one line of
stdin with ``--password-stdin``; never from an argument, where ``ps`` and shell
history would keep them.  A token is printed once and only its hash is stored.
Every change is in the audit log under ``cli:<OS user>``.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys

from sitetwin.config import Settings
from sitetwin.errors import UserError
from sitetwin.output import emit
from twin.accounts import ROLES


def register(commands: argparse._SubParsersAction, reports: argparse._SubParsersAction) -> None:
    p = commands.add_parser("users", help="web and API accounts, roles and API tokens")
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    add = sub.add_parser("add", help="create an account")
    add.add_argument("username")
    add.add_argument("--role", choices=ROLES, required=True)
    add.add_argument("--name", help="display name")
    add.add_argument("--lang", choices=("en", "zh-CN"),
                     help="language of the pages (default: the browser's)")
    add.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    add.set_defaults(handler=run_add)
    ls = sub.add_parser("list", help="accounts and their roles")
    ls.set_defaults(handler=run_list)
    for verb, disabled in (("disable", True), ("enable", False)):
        d = sub.add_parser(verb, help=f"{verb} an account"
                           + (" (ends its sessions)" if disabled else ""))
        d.add_argument("username")
        d.set_defaults(handler=run_disable, disabled=disabled)
    sr = sub.add_parser("set-role", help="change an account's role")
    sr.add_argument("username")
    sr.add_argument("role", choices=ROLES)
    sr.set_defaults(handler=run_set_role)
    rp = sub.add_parser("reset-password", help="set a new password (ends the account's sessions)")
    rp.add_argument("username")
    rp.add_argument("--password-stdin", action="store_true")
    rp.set_defaults(handler=run_reset)
    tok = sub.add_parser("token", help="API tokens for machines")
    tsub = tok.add_subparsers(dest="token_action", metavar="ACTION", required=True)
    tc = tsub.add_parser("create", help="create a token for an account (printed once)")
    tc.add_argument("username")
    tc.add_argument("--name", required=True, help="what the token is for")
    tc.set_defaults(handler=run_token_create)
    tr = tsub.add_parser("revoke", help="revoke a token by id")
    tr.add_argument("token_id", type=int)
    tr.set_defaults(handler=run_token_revoke)
    tl = tsub.add_parser("list", help="tokens (never their values)")
    tl.add_argument("--user")
    tl.set_defaults(handler=run_token_list)


def _actor() -> str:
    try:
        return "cli:" + getpass.getuser()
    except (OSError, KeyError):  # no user name in this environment
        return "cli:" + os.environ.get("USER", "unknown")


def _password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        line = sys.stdin.readline()
        return line.rstrip("\r\n")
    if not sys.stdin.isatty():
        raise UserError("no terminal to ask for the password: use --password-stdin")
    first = getpass.getpass("password: ")
    if getpass.getpass("again: ") != first:
        raise UserError("the two passwords differ")
    return first


def _with_session(settings: Settings, fn):
    from twin.store import open_store

    store = open_store(settings.twin_url)
    try:
        with store.session() as s:
            return fn(s)
    finally:
        store.close()


def _user_line(u: dict) -> str:
    return (f"{u['username']:<20} {u['role']:<10} {'disabled' if u['disabled'] else 'active':<9}"
            f" {u['lang'] or '-':<6} {u['display_name'] or ''}").rstrip()


def run_add(args: argparse.Namespace, settings: Settings) -> int:
    from twin.accounts import add_user

    password = _password(args)
    user = _with_session(settings, lambda s: add_user(
        s, args.username, args.role, password, actor=_actor(), display_name=args.name,
        lang=args.lang))
    emit(args, user, f"user {user['username']} added with role {user['role']}")
    return 0


def run_list(args: argparse.Namespace, settings: Settings) -> int:
    from twin.accounts import list_users

    users = _with_session(settings, list_users)
    emit(args, users, lambda us: "\n".join(_user_line(u) for u in us) or "no users")
    return 0


def run_disable(args: argparse.Namespace, settings: Settings) -> int:
    from twin.accounts import set_disabled

    user = _with_session(settings, lambda s: set_disabled(s, args.username, args.disabled,
                                                          actor=_actor()))
    emit(args, user, _user_line(user))
    return 0


def run_set_role(args: argparse.Namespace, settings: Settings) -> int:
    from twin.accounts import set_role

    user = _with_session(settings, lambda s: set_role(s, args.username, args.role, actor=_actor()))
    emit(args, user, _user_line(user))
    return 0


def run_reset(args: argparse.Namespace, settings: Settings) -> int:
    from twin.accounts import reset_password

    password = _password(args)
    user = _with_session(settings, lambda s: reset_password(s, args.username, password,
                                                            actor=_actor()))
    emit(args, user, f"password of {user['username']} reset; its web sessions ended")
    return 0


def run_token_create(args: argparse.Namespace, settings: Settings) -> int:
    from twin.accounts import create_token

    token, info = _with_session(settings, lambda s: create_token(s, args.username, args.name,
                                                                 actor=_actor()))
    emit(args, {**info, "token": token},
         f"token {info['id']} for {info['username']} ({info['name']}):\n{token}\n"
         "it is shown only now; send it as 'Authorization: Bearer <token>'")
    return 0


def run_token_revoke(args: argparse.Namespace, settings: Settings) -> int:
    from twin.accounts import revoke_token

    info = _with_session(settings, lambda s: revoke_token(s, args.token_id, actor=_actor()))
    emit(args, info, f"token {info['id']} of {info['username']} revoked")
    return 0


def run_token_list(args: argparse.Namespace, settings: Settings) -> int:
    from twin.accounts import list_tokens

    tokens = _with_session(settings, lambda s: list_tokens(s, args.user))
    emit(args, tokens, lambda ts: "\n".join(
        f"{t['id']:>4} {t['username']:<20} {t['prefix']}…  {t['name']}"
        f"{'  (revoked)' if t['revoked_at'] else ''}" for t in ts) or "no tokens")
    return 0
