"""`povfarm log`: POV-Ray's logs of a job's runs; and the scene's messages (its #debug text and warnings),
printed once per frame in frame order while `render` and `submit --wait` wait, as `povray` prints them."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any, Callable

from farm import povtext
from farm.cli.common import EXIT_FAILED, EXIT_OK, Subcommands, add_client_flags, connect
from farm.config import Config
from farm.faults import Code, FarmError
from farm.features import UNIT_LOGS, Features
from farm.states import ENDED

FOLLOW_WAIT = 10.0     # seconds a --follow waits for the job to change before asking again


def add_log(commands: Subcommands) -> None:
    p = commands.add("log", cmd_log, help="print POV-Ray's output of a job's units: messages, warnings, statistics",
                     example="povfarm log 12 --frame 3 --kind warning",
                     description="One block per run of a unit (a unit retried has one per attempt): the node, the "
                                 "command line, times and exit, then POV-Ray's output as it printed it. The "
                                 "controller keeps unit_log_kb of each run and job_log_mb of each job; a block "
                                 "says what was cut.")
    add_client_flags(p)
    p.add_argument("job", type=int, help="job id")
    p.add_argument("--frame", type=int, metavar="F", help="only the units that render frame F")
    p.add_argument("--unit", type=int, metavar="U", help="only unit U (its index, as `povfarm status` shows)")
    p.add_argument("--kind", action="append", choices=povtext.KINDS, metavar="KIND",
                   help="only lines of this stream (repeatable): " + ", ".join(povtext.KINDS)
                        + " (default: all but banner)")
    p.add_argument("--follow", action="store_true", help="keep printing logs as they come until the job ends")


def cmd_log(config: Config, args: argparse.Namespace) -> int:
    client = connect(config)
    if UNIT_LOGS not in Features.of_reply(client.call("api.version")):
        raise FarmError(Code.BAD_ARGUMENT, f"the controller at {client.url} keeps no logs: it is older than "
                                           "povfarm log; upgrade it")
    kinds = frozenset(args.kind or [kind for kind in povtext.KINDS if kind != povtext.BANNER])
    query: dict[str, Any] = {key: value for key, value in (("frame", args.frame), ("unit", args.unit))
                             if value is not None}
    cursor, printed = 0, 0
    while True:
        ended = client.call("jobs.status", args.job)["state"] in ENDED if args.follow else True
        while True:     # everything kept so far (a job's logs may take several replies)
            reply = client.call("jobs.log", args.job, {**query, "after": cursor})
            for entry in reply["logs"]:
                sys.stdout.write(log_block(entry, kinds))
                printed += 1
            sys.stdout.flush()
            cursor = reply["cursor"]
            if not reply["more"] or not reply["logs"]:
                break
        if ended:
            break
        client.call("jobs.wait", args.job, FOLLOW_WAIT)
    if not printed:
        sys.stderr.write(f"povfarm: job {args.job} has no logs" + (" for that unit or frame" if query else "")
                         + " yet\n")
        return EXIT_FAILED if not args.follow else EXIT_OK
    return EXIT_OK


def log_block(entry: dict[str, Any], kinds: frozenset[str]) -> str:
    """One run's log as `povfarm log` prints it: a header line, the command line, the chosen lines."""
    frames = f"frame {entry['frame']}" if entry["frame"] == entry["frame_last"] else \
        f"frames {entry['frame']}-{entry['frame_last']}"
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(entry["started"]))
    kind = "" if entry["kind"] == "rows" else f" ({entry['kind']})"
    head = (f"== unit {entry['unit']}{kind}, {frames}, attempt {entry['attempt']}, node {entry['node']}: "
            f"{entry['outcome']}, {entry['ending']}, {entry['seconds']:.2f} s, started {started}\n")
    lines = [f"{line}\n" for stream, line in entry["lines"] if stream in kinds]
    cut = f"[povfarm: {entry['cut']}]\n" if entry["cut"] else ""
    return head + "$ " + " ".join(entry["command"]) + "\n" + "".join(lines) + cut + "\n"


class SceneMessages:
    """The scene's messages of each frame, printed once, in frame order, as soon as the frame's first log
    reached the controller (every unit of a frame parses the scene: one run's messages stand for all).
    `write` prints text on the user's terminal (the progress line out of its way)."""

    def __init__(self, call: Callable[..., Any], job_id: int, write: Callable[[str], None]):
        self._call, self._job, self._write = call, job_id, write
        self._next: int | None = None       # the frame whose messages are printed next
        self._enabled: bool | None = None   # None: not asked yet whether the controller keeps logs
        self._seen = -1

    def update(self, status: dict[str, Any]) -> None:
        """After a job status: print what is new, in order (at the job's end, every frame's that is known)."""
        ended = status["state"] in ENDED
        if not ended and status.get("strips_done", 0) == self._seen:
            return
        self._seen = status.get("strips_done", 0)
        if self._enabled is None:
            self._enabled = UNIT_LOGS in Features.of_reply(self._call("api.version"))
        if not self._enabled:
            return
        if self._next is None:
            self._next = status.get("first_frame", 0)
        if self._next > status.get("last_frame", self._next):
            return      # every frame's messages are out
        found = {item["frame"]: item["text"] for item in self._call("jobs.messages", self._job, self._next)}
        for number in sorted(found):
            if number != self._next and not ended:
                break       # an earlier frame has no log yet: povray would not print this one before it
            if found[number]:
                self._write(found[number])
            self._next = number + 1
