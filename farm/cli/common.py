"""What every `povfarm` command shares: exit codes, how a command is added to the parser, argument
types, the client and patience flags, and the client those flags name."""

from __future__ import annotations

import argparse
import textwrap
from typing import Callable

from farm.client import Client, client_for
from farm.config import Config
from farm.discovery import resolve_controller

EXIT_OK, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, 130

Run = Callable[[Config, argparse.Namespace], int]      # a command: its settings and flags in, exit code out


class Subcommands:
    """The parsers of `povfarm COMMAND`: each takes the common flags (before or after its name), runs
    the function given for it, and explains itself with a description and an example."""

    def __init__(self, parser: argparse.ArgumentParser, common: argparse.ArgumentParser):
        self._choices = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
        self._common = common
        self.parsers: dict[str, argparse.ArgumentParser] = {}

    def add(self, name: str, run: Run, *, help: str, example: str, description: str = "",
            epilog: str = "") -> argparse.ArgumentParser:
        parser = self._choices.add_parser(
            name, parents=[self._common], help=help,
            description=textwrap.fill(f"{help[0].upper()}{help[1:]}. {description}".strip(), 100),
            epilog=f"{epilog}example:\n  {example}", formatter_class=argparse.RawDescriptionHelpFormatter)
        parser.set_defaults(run=run)
        self.parsers[name] = parser
        return parser


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def add_client_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--controller", metavar="URL",
                        help="controller URL, or 'discover' (default: $POVFARM_CONTROLLER, else a controller on "
                             "this box at port 8642, else the one announcing itself on the LAN)")
    parser.add_argument("--token-file", metavar="FILE",
                        help="access token file: one token, or the controller's role file (default: $POVFARM_TOKEN)")
    parser.add_argument("--ca-file", metavar="FILE",
                        help="CA certificate to trust for an https:// controller (default: the system store)")


def add_patience_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--patience", type=float, metavar="SECONDS",
                        help="how long to ride out an unreachable controller (once it has answered), or a job "
                             "no live node can render, before giving up (default 900; 0: for ever; setting: "
                             "patience, $POVFARM_PATIENCE)")


def connect(config: Config, role: str = "submit") -> Client:
    """A client of the controller the flags, settings or discovery name, holding `role`'s token."""
    return client_for(resolve_controller(config, role), role)
