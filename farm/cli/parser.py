"""The `povfarm` command line: the root parser with the flags every command takes, each command's
parser (added by the module that runs it), and POV-Ray's own switches told apart from the farm's."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from farm import __version__
from farm.cli import history, jobs, kinds, local_farm, logs, programs, videos
from farm.cli.common import Subcommands

# Flags every command takes before its name as well as after it.
_COMMON_FLAGS_WITH_VALUE = ("--config", "--log-level")


@dataclass(frozen=True)
class CommandLine:
    """The root parser and each command's parser, by name."""
    parser: argparse.ArgumentParser
    commands: dict[str, argparse.ArgumentParser]

    def parse(self, argv: Sequence[str]) -> argparse.Namespace:
        """The flags of `argv`; for submit and render, POV-Ray's own arguments too, as `povray_args`."""
        farm_args, povray_args = self.split_povray_args(argv)
        args = self.parser.parse_args(farm_args)
        if _takes_povray_args(self.commands[args.command]):
            args.povray_args = povray_args
        return args

    def split_povray_args(self, argv: Sequence[str]) -> tuple[list[str], list[str]]:
        """For submit and render: (the arguments for argparse, POV-Ray's own arguments in their order).
        POV-Ray's `-J` or `+W320` would confuse argparse, and their order matters, so they are taken out
        first; a farm flag's value is kept with it (`--option -J` becomes `--option=-J`)."""
        argv = list(argv)
        index = _command_index(argv)
        command = self.commands.get(argv[index]) if index is not None else None
        if command is None or not _takes_povray_args(command):
            return argv, []
        takes_value = {option: action.nargs != 0 for action in command._actions for option in action.option_strings}
        farm, povray = argv[:index + 1], []
        rest = iter(argv[index + 1:])
        for arg in rest:
            flag = arg.partition("=")[0]
            matches = [option for option in takes_value if option.startswith(flag)] if flag.startswith("--") else []
            full = flag if flag in takes_value else (matches[0] if len(matches) == 1 else None)
            if arg == "--":
                povray.extend(rest)
            elif arg in ("-h", "--help") or (flag.startswith("--") and full is None):
                farm.append(arg)                      # argparse says what is wrong with an unknown --flag
            elif full is not None and takes_value[full] and "=" not in arg:
                farm.append(f"{full}={next(rest, '')}")
            elif full is not None:
                farm.append(arg)
            else:
                povray.append(arg)
        return farm, povray


def build_command_line() -> CommandLine:
    common = _common_flags()
    parser = argparse.ArgumentParser(
        prog="povfarm", parents=[common], formatter_class=argparse.RawDescriptionHelpFormatter,
        description="A render farm for POV-Ray: one command renders a scene on every core you have, or on "
                    "every box.",
        epilog="examples:\n  povfarm render scene.pov +W640 +H480 +A0.3      # like povray, on a local farm\n"
               "  povfarm submit scene.pov +W640 +H480 --wait    # on a running controller\n"
               "  povfarm COMMAND --help                         # what each command does, with an example")
    parser.add_argument("--version", action="version", version=f"povfarm {__version__}")
    commands = Subcommands(parser, common)
    for add in (programs.add_controller, programs.add_node, jobs.add_submit, local_farm.add_render,
                jobs.add_status, jobs.add_listings, jobs.add_fetch, programs.add_token, jobs.add_job_control,
                jobs.add_node_tags, history.add_purge, logs.add_log, programs.add_viewer, videos.add_video,
                kinds.add_kind):
        add(commands)
    return CommandLine(parser, commands.parsers)


def _common_flags() -> argparse.ArgumentParser:
    """Flags every subcommand takes, before or after its name (SUPPRESS: absent unless given)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, metavar="FILE", default=argparse.SUPPRESS,
                        help="config file ([povfarm] section; default ~/.config/povfarm/povfarm.ini)")
    common.add_argument("--log-level", choices=("DEBUG", "INFO", "WARNING", "ERROR"), default=argparse.SUPPRESS,
                        help="how much to log (default INFO)")
    return common


def _takes_povray_args(command: argparse.ArgumentParser) -> bool:
    """Whether a command reads POV-Ray's command line (the job flags give it `povray_args`)."""
    return any(action.dest == "povray_args" for action in command._actions)


def _command_index(argv: Sequence[str]) -> int | None:
    """Where the subcommand is, past the common flags that may come before it."""
    index = 0
    while index < len(argv):
        arg = argv[index]
        if arg in _COMMON_FLAGS_WITH_VALUE:
            index += 2
        elif arg.startswith("-"):
            index += 1
        else:
            return index
    return None
