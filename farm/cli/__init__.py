"""The `povfarm` command line (also `python -m farm`).

Every subcommand builds one `Config` from defaults, config file, environment
and the flags given, then works through `Client`. Errors print one sentence
and exit non-zero; a traceback is a bug.

- `parser`: the root parser, each command's parser, POV-Ray's switches told apart from the farm's
- `common`: exit codes, how a command is added, the flags and client every command shares
- `jobs`: submit, status, jobs, nodes, fetch, cancel, pause, resume
- `local_farm`: render, on a controller and nodes of its own in this process
- `programs`: controller, node, viewer, token
- `job_request`: POV-Ray's command line into a job, and the files it asks for
- `waiting`: a job's progress until it ends; `images`: its images written as files
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Sequence

from farm.cli.common import EXIT_FAILED, EXIT_INTERRUPTED
from farm.cli.parser import build_command_line
from farm.config import load_config
from farm.faults import FarmError


def main(argv: Sequence[str] | None = None) -> int:
    args = build_command_line().parse(sys.argv[1:] if argv is None else argv)
    flags = {key: value for key, value in vars(args).items() if key != "config"}
    if args.command in ("submit", "render"):
        flags.pop("name", None)   # --name there names the job, not the node
    if args.command == "render" and "log_level" not in flags and "POVFARM_LOG_LEVEL" not in os.environ:
        flags["log_level"] = "WARNING"   # a one-shot local render shows progress, not the farm's chatter
    try:
        config = load_config(flags, config_file=getattr(args, "config", None))
        if "preview" in vars(args):
            args.preview = config.preview   # --preview/--no-preview, else the setting
        logging.basicConfig(level=config.log_level, stream=sys.stderr,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        return args.run(config, args)
    except FarmError as err:
        sys.stderr.write(f"povfarm: error: {err}\n")
        return EXIT_FAILED
    except KeyboardInterrupt:
        sys.stderr.write("povfarm: interrupted\n")
        return EXIT_INTERRUPTED
