"""The farm's history from the command line: `povfarm purge --older-than 30d`, `povfarm status --farm`
(the controller's disk use), and the pages of `povfarm jobs --limit N --before ID`."""

from __future__ import annotations

import argparse
import json
from typing import Any

from farm.cli.common import EXIT_OK, Subcommands, add_client_flags, connect
from farm.client import Client
from farm.config import Config
from farm.durations import parse_age
from farm.faults import Code, FarmError
from farm.features import FARM_HISTORY, Features

_DISK = (("database", "database"), ("images", "images"), ("bundles", "bundles"), ("uploads", "uploads"),
         ("total", "in all"))


def add_purge(commands: Subcommands) -> None:
    p = commands.add("purge", cmd_purge, help="delete ended jobs older than an age, with their images",
                     example="povfarm purge --older-than 30d",
                     description="Deletes the jobs that ended (done, failed or canceled) longer ago than the "
                                 "age, with their images, strips and logs, and the scene bundles no job left "
                                 "uses. Jobs still queued, rendering or paused are never deleted. The setting "
                                 "purge_after does this every hour on the controller.")
    add_client_flags(p)
    p.add_argument("--older-than", type=_age, required=True, metavar="AGE",
                   help="how long ago a job must have ended: 30d, 12h, 90m, 45s, 2w, or seconds (0: every "
                        "ended job)")


def add_page_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--limit", type=int, metavar="N", help="list only the newest N jobs, newest first")
    parser.add_argument("--before", type=int, metavar="ID",
                        help="with --limit: the page of jobs older than job ID (the last one a page showed)")


def _age(text: str) -> float:
    try:
        return parse_age(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def require_history(client: Client, what: str) -> None:
    """An older controller has no pages, purge or disk use: say so instead of its fault."""
    if FARM_HISTORY not in Features.of_reply(client.call("api.version")):
        raise FarmError(Code.BAD_ARGUMENT, f"the controller at {getattr(client, 'url', '?')} is older than "
                                           f"{what}; upgrade it")


def list_jobs(client: Client, args: argparse.Namespace) -> list[dict[str, Any]]:
    """jobs.list: every job, or the page --limit/--before ask for."""
    limit, before = getattr(args, "limit", None), getattr(args, "before", None)
    if limit is None and before is None:
        return client.call("jobs.list")
    if not limit or limit < 1:
        raise FarmError(Code.BAD_ARGUMENT, "--before needs --limit N (at least 1): the size of a page")
    require_history(client, "--limit and --before")
    return client.call("jobs.list", limit, before or 0)


def newest_job(client: Client) -> int:
    """The newest job's id: one page of one job where the controller has pages, else the whole list."""
    if FARM_HISTORY in Features.of_reply(client.call("api.version")):
        jobs = client.call("jobs.list", 1)
    else:
        jobs = client.call("jobs.list")[-1:]
    if not jobs:
        raise FarmError(Code.UNKNOWN_JOB, "there are no jobs yet")
    return jobs[-1]["id"]


def cmd_purge(config: Config, args: argparse.Namespace) -> int:
    client = connect(config, "submit")
    require_history(client, "purge")
    purged = client.call("farm.purge", args.older_than)
    jobs = purged["jobs"]
    print(f"purged {len(jobs)} job(s){': ' + ','.join(map(str, jobs)) if jobs else ''}"
          f" and {purged['bundles']} bundle(s) no job uses")
    return EXIT_OK


def print_farm(config: Config, as_json: bool) -> int:
    """`status --farm`: the controller's disk use and history settings."""
    client = connect(config, "view")
    require_history(client, "status --farm")
    status = client.call("farm.status")
    if as_json:
        print(json.dumps(status, indent=2))
        return EXIT_OK
    disk = status["disk"]
    print(f"controller {getattr(client, 'url', '')}")
    print("  jobs:     " + (", ".join(f"{count} {state}" for state, count in sorted(status["jobs"].items()))
                            or "none"))
    print("  disk:     " + ", ".join(f"{size_text(disk[key])} {label}" for key, label in _DISK))
    print(f"  free:     {size_text(disk['free'])} of {size_text(disk['capacity'])}")
    print(f"  purge:    {'ended jobs older than ' + status['purge_after'] if status['purge_after'] else 'never'}"
          " (setting purge_after)")
    return EXIT_OK


def size_text(size: float) -> str:
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.3g} {unit}"
    return f"{size:.0f} B"
