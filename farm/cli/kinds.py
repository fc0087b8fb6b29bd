"""A job of any kind the controller loaded, from the command line: `povfarm kind KIND --param NAME=VALUE...`
(farm.jobkinds, docs/kinds.md), its result written with --output; and the waiting and fetching that any kind
whose result is one file shares (the video's too)."""

from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path
from typing import Any

from farm import atomic
from farm.cli.common import EXIT_INTERRUPTED, EXIT_OK, Subcommands, add_client_flags, add_patience_flag, connect
from farm.cli.waiting import Progress, StopRequest, patient_client, wait_for_job
from farm.config import Config
from farm.faults import Code, FarmError
from farm.features import JOB_KINDS, Features


def add_kind(commands: Subcommands) -> None:
    p = commands.add("kind", cmd_kind, help="submit a job of another kind than POV-Ray's (jobs.kind)",
                     example="povfarm kind checksums --param job=12 --output frames.sha256",
                     description="The kind must be loaded by the controller (setting kind_modules) and offered "
                                 "by a node; the kind checks its parameters. Prints the job's id.")
    add_client_flags(p)
    p.add_argument("kind", help="the kind's name, e.g. checksums (farm.extras.checksums)")
    p.add_argument("--param", action="append", default=[], type=_param, metavar="NAME=VALUE",
                   help="one of the kind's parameters (repeatable); a whole number or a number is sent as one")
    p.add_argument("--output", type=Path, metavar="FILE",
                   help="wait for the job and write its result (the one file its node made) here")
    add_patience_flag(p)


def _param(text: str) -> tuple[str, Any]:
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"--param takes NAME=VALUE, not {text!r}")
    for kind in (int, float):
        try:
            return name.strip(), kind(value)
        except ValueError:
            pass
    return name.strip(), value


def cmd_kind(config: Config, args: argparse.Namespace) -> int:
    progress = Progress()
    with StopRequest() as stop:
        client = patient_client(connect(config), config.patience, progress.note, stop, reached=True)
        if JOB_KINDS not in Features.of_reply(client.call("api.version")):
            raise FarmError(Code.BAD_ARGUMENT, f"the controller at {getattr(client, 'url', '?')} is older than "
                                               "jobs of other kinds; upgrade it")
        job_id = client.call("jobs.kind", args.kind, dict(args.param))
        print(job_id)
        if args.output is None:
            return EXIT_OK
        return fetch_result(client, job_id, args.output, stop, f"the {args.kind} (job {job_id})", progress=progress)


def fetch_result(client, job_id: int, output: Path, stop: threading.Event, what: str, local: bool = False,
                 progress: Progress | None = None) -> int:
    """Wait for a job whose result is one file, and write it to `output`; the exit code."""
    status = wait_for_job(client, job_id, interval=0.1 if local else 1.0, stop=stop, progress=progress, local=local)
    if status is None:
        return EXIT_INTERRUPTED
    if status["state"] != "done":
        raise FarmError(Code.RENDER_FAILED, f"{what} {status['state']}: {status.get('error', '')}")
    atomic.write(output, client.call("jobs.fetch", job_id, 1).data)
    sys.stderr.write(f"wrote {output}\n")
    return EXIT_OK
