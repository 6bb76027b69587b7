"""The ``sitetwin`` command line.

Each command group lives in its own module under ``sitetwin/commands`` and
exposes ``register(commands, reports)``: it adds its subparsers and sets
``handler=fn`` where ``fn(args, settings) -> int | None``.  Conventions
(docs/contracts.md section 3): ``--config`` and ``--json`` on every command, exit 0
on success, 1 on a user error with one line on stderr, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from sitetwin import __version__
from sitetwin.config import Settings, load_settings
from sitetwin.errors import SitetwinError

__all__ = ["build_parser", "main"]

log = logging.getLogger("sitetwin")

# Command modules, in the order their commands appear in --help.
COMMAND_MODULES = (
    "sitetwin.commands.services",
    "sitetwin.commands.run",
    "sitetwin.commands.simulate",
    "sitetwin.commands.rejected",
    "sitetwin.commands.sites",
    "sitetwin.commands.rules",
    "sitetwin.commands.notify",
    "sitetwin.commands.dashboards",
    "sitetwin.commands.broker",
    "sitetwin.commands.adapters",
    "sitetwin.commands.users",
    "sitetwin.commands.serve",
    "sitetwin.commands.demo",
)


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="PATH", default=argparse.SUPPRESS,
                        help="TOML configuration file (default: $SITETWIN_CONFIG)")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print machine-readable JSON on stdout and nothing else there")
    common.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                        help="more log output (repeat for debug)")
    return common


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    parser = argparse.ArgumentParser(
        prog="sitetwin",
        description="5G site telemetry, digital twin, rules and dashboards.",
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"sitetwin {__version__}")
    # argparse calls parser_class(**kw); typeshed wants a class, a factory does the same.
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True,  # type: ignore[call-overload]
                                     parser_class=lambda **kw: argparse.ArgumentParser(
                                         parents=[common], **kw))
    report = commands.add_parser("report", help="write a report (.csv or .xlsx)")
    reports = report.add_subparsers(dest="report", metavar="REPORT", required=True,
                                    parser_class=lambda **kw: argparse.ArgumentParser(
                                        parents=[common], **kw))
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # a command group not written yet
                continue
            raise
        module.register(commands, reports)
    _add_common_everywhere(parser)
    return parser


def _add_common_everywhere(parser: argparse.ArgumentParser) -> None:
    """Give every nested subcommand ``--config``, ``--json`` and ``-v`` (wherever they are typed)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                if "--json" not in sub._option_string_actions:
                    for common in _common()._actions:
                        sub._add_action(common)
                _add_common_everywhere(sub)


def _configure_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    level_name = os.environ.get("SITETWIN_LOG_LEVEL")
    if level_name:
        level = getattr(logging, level_name.upper(), level)
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # exits 2 on usage errors
    args.json = getattr(args, "json", False)
    args.verbose = getattr(args, "verbose", 0) or 0
    default_verbosity = getattr(args, "default_verbosity", 0)
    _configure_logging(max(args.verbose, default_verbosity))
    try:
        settings: Settings = load_settings(getattr(args, "config", None))
        code = args.handler(args, settings)
        return int(code or 0)
    except SitetwinError as exc:
        print(f"sitetwin: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("sitetwin: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:  # an unexpected failure still gets one line, not a traceback
        log.debug("unexpected error", exc_info=True)
        print(f"sitetwin: error: internal error: {type(exc).__name__}: {exc}"
              " (run with -vv for the traceback)", file=sys.stderr)
        if args.verbose >= 2:
            import traceback

            traceback.print_exc()
        return 1
