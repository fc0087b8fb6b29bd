"""The commands on a controller's jobs: `submit` (and wait for the image), `status`, `jobs`, `nodes`,
`fetch`, and `cancel`, `pause`, `resume`."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from farm import atomic
from farm.cli import history
from farm.cli.chained import frames_read_back, plan_of
from farm.cli.common import (EXIT_INTERRUPTED, EXIT_OK, Subcommands, add_client_flags, add_patience_flag,
                             connect)
from farm.cli.images import fetch_frames, write_animation, write_output
from farm.cli.job_request import POVRAY_HELP, add_job_flags, prepare_job, submit_job
from farm.cli.videos import add_video_flags, video_after
from farm.cli.waiting import Progress, StopRequest, finish_job, patient_client, wait_for_job
from farm.config import Config
from farm.faults import Code, FarmError
from farm.jobkinds import POVRAY


def add_submit(commands: Subcommands) -> None:
    p = commands.add(
        "submit", cmd_submit, help="submit a scene to a controller; prints the job id",
        example="povfarm submit scene.pov +W640 +H480 +A0.3 --controller http://HOST:8642 --wait",
        description="With --wait it shows progress and writes the image as POV-Ray would (beside the scene, "
                    "or where +O/--output says); --output or +O imply --wait. Ctrl-C while waiting leaves "
                    "the job running.", epilog=POVRAY_HELP + "\n")
    add_client_flags(p)
    add_job_flags(p)
    add_video_flags(p)
    p.add_argument("--wait", action="store_true",
                   help="wait for the job, showing progress, then write the image (implied by --output and +O)")
    add_patience_flag(p)


def add_status(commands: Subcommands) -> None:
    p = commands.add("status", cmd_status, help="show one job (default: the newest), or the farm",
                     example="povfarm status 12 --json")
    add_client_flags(p)
    p.add_argument("job", type=int, nargs="?", help="job id")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--farm", action="store_true", help="show the farm: its jobs and the controller's disk use")


def add_listings(commands: Subcommands) -> None:
    for name, run, text, example in (
            ("jobs", cmd_jobs, "list every job with its state and progress", "povfarm jobs"),
            ("nodes", cmd_nodes, "list every node with its state, strips and sandbox", "povfarm nodes --json")):
        p = commands.add(name, run, help=text, example=example)
        add_client_flags(p)
        p.add_argument("--json", action="store_true", help="print JSON")
        if name == "jobs":
            history.add_page_flags(p)


def add_fetch(commands: Subcommands) -> None:
    p = commands.add("fetch", cmd_fetch, help="write a finished job's image (or an animation's frames)",
                     example="povfarm fetch 12 --output scene.png",
                     description="The file's extension picks the format: .png, .ppm, .tga or .jpg (Pillow).")
    add_client_flags(p)
    p.add_argument("job", type=int, help="job id")
    p.add_argument("--output", type=Path, metavar="PATH",
                   help="where to write the image; for an animation, a folder for the numbered PNG frames")
    p.add_argument("--animation", type=Path, metavar="FILE", help="write an animation as one animated PNG")
    p.add_argument("--delay", type=int, default=100, metavar="MS", help="frame time in the animated PNG (100)")
    add_patience_flag(p)


def add_job_control(commands: Subcommands) -> None:
    for name, text in (("cancel", "cancel a job: nodes stop its POV-Ray at their next heartbeat"),
                       ("pause", "stop leasing a job's strips (strips in flight finish)"),
                       ("resume", "let a paused job render again")):
        p = commands.add(name, cmd_job_control, help=text, example=f"povfarm {name} 12")
        add_client_flags(p)
        p.add_argument("job", type=int, help="job id")


def add_node_tags(commands: Subcommands) -> None:
    p = commands.add("node-tags", cmd_node_tags, help="set a node's tags from the controller, without restarting it",
                     example="povfarm node-tags box1 windows fast",
                     description="They win over the node's own --tags, also when it registers again, until "
                                 "--clear gives it its own back. No TAG: the node has no tags.")
    add_client_flags(p)
    p.add_argument("node", help="the node's name, as `povfarm nodes` shows it")
    p.add_argument("tags", nargs="*", metavar="TAG", help="its tags from now on")
    p.add_argument("--clear", action="store_true", help="forget the controller's tags: the node's own count again")


def cmd_node_tags(config: Config, args: argparse.Namespace) -> int:
    if args.clear and args.tags:
        raise FarmError(Code.BAD_ARGUMENT, "give tags or --clear, not both")
    now = connect(config).call("nodes.set_tags", args.node, list(args.tags), bool(args.clear))
    sys.stderr.write(f"node {args.node}: tags {','.join(now) or '(none)'}{' (its own)' if args.clear else ''}\n")
    return EXIT_OK


def cmd_submit(config: Config, args: argparse.Namespace) -> int:
    request = prepare_job(args)
    read_back = frames_read_back(request, plan_of(args, request))
    if read_back:       # a job's frames render side by side: only render can wait for each in turn
        names = ", ".join(request.targets[frame].name for frame in read_back[:4])
        sys.stderr.write(f"povfarm: warning: the scene reads the animation's own output ({names}), which a job "
                         f"renders side by side; `povfarm render` renders such frames in order\n")
    client = connect(config)
    job_id = submit_job(client, args, request)
    print(job_id, flush=True, file=sys.stderr if request.command.to_stdout else sys.stdout)   # +O-: the image's
    if not args.wait and not request.wants_image and args.video is None:
        return EXIT_OK
    progress = Progress()
    with StopRequest() as stop:
        patient = patient_client(client, config.patience, progress.note, stop, reached=True)
        status = wait_for_job(patient, job_id, stop=stop, progress=progress, streams=request.command.streams)
    if status is None:
        _say_job_goes_on(job_id, args)
        return EXIT_INTERRUPTED
    with StopRequest() as stop:
        return video_after(patient, config, args, job_id, finish_job(patient, status, request), stop)


def _say_job_goes_on(job_id: int, args: argparse.Namespace) -> None:
    where = f" --controller {args.controller}" if getattr(args, "controller", None) else ""
    sys.stderr.write(f"povfarm: stopped waiting; job {job_id} goes on rendering on the farm.\n"
                     f"  povfarm status {job_id}{where}     # how far it is\n"
                     f"  povfarm viewer {job_id}{where}     # watch it\n"
                     f"  povfarm fetch {job_id}{where} --output FILE   # the image, once it is done\n"
                     f"  povfarm cancel {job_id}{where}     # stop it\n")


def cmd_status(config: Config, args: argparse.Namespace) -> int:
    if args.farm:
        return history.print_farm(config, args.json)
    client = connect(config, "view")
    job_id = args.job
    if job_id is None:
        job_id = history.newest_job(client)
    status = client.call("jobs.status", job_id)
    if args.json:
        print(json.dumps(_json_status(status), indent=2))
        return EXIT_OK
    print(f"job {status['id']} ({status['name']}, {status['scene']}) {status['width']}x{status['height']}")
    print(f"  state:    {status['state']}")
    if status.get("blocked"):
        print(f"  blocked:  {status['blocked']}")
    for key in ("require", "prefer"):
        if status.get(key):
            print(f"  {key}:  {' ' if key == 'prefer' else ''}{','.join(status[key])}")
    for line in povray_lines(status):
        print(line)
    if status.get("after"):
        waiting = f" (waiting for {','.join(map(str, status['waiting_for']))})" if status.get("waiting_for") else ""
        print(f"  after:    {','.join(map(str, status['after']))}{waiting}")
    print(f"  progress: {status['progress'] * 100:.1f}%  ({status['strips_done']}/{status['strips_total']} strips,"
          f" {status['strips_leased']} rendering)")
    if status["error"]:
        print("  error:    " + status["error"].replace("\n", "\n            "))
    return EXIT_OK


def povray_lines(status: dict[str, Any]) -> list[str]:
    """`status`'s POV-Ray lines: the version the job is pinned to, and the build each frame renders on
    (frames on one build together: "3.7.0.10 (console): frames 1-3, 5")."""
    lines = [f"  pinned:   POV-Ray {status['povray_version']}"] if status.get("povray_version") else []
    frames: dict[str, list[int]] = {}
    for frame in status.get("frames", []):
        if frame.get("povray"):
            frames.setdefault(frame["povray"], []).append(frame["number"])
    if len(status.get("frames", [])) == 1 and frames:
        return [*lines, f"  povray:   {next(iter(frames))}"]
    return lines + [f"  povray:   {build}: frame{'s' if len(numbers) > 1 else ''} {_ranges(numbers)}"
                    for build, numbers in sorted(frames.items())]


def _ranges(numbers: list[int]) -> str:
    """1, 2, 3, 5 -> "1-3, 5"."""
    spans: list[list[int]] = []
    for number in sorted(numbers):
        if spans and number == spans[-1][1] + 1:
            spans[-1][1] = number
        else:
            spans.append([number, number])
    return ", ".join(f"{a}-{b}" if a != b else str(a) for a, b in spans)


def _json_status(status: dict[str, Any]) -> dict[str, Any]:
    status = dict(status)
    status["error"] = status["error"] or None
    status["blocked"] = status.get("blocked") or None
    for key in ("started", "finished"):
        status[key] = status[key] or None
    return status


def cmd_jobs(config: Config, args: argparse.Namespace) -> int:
    jobs = history.list_jobs(connect(config, "view"), args)
    if args.json:
        print(json.dumps([_json_status(job) for job in jobs], indent=2))
        return EXIT_OK
    rows = [(str(j["id"]), _state(j), f"{j['progress'] * 100:.0f}%",
             f"{j['width']}x{j['height']}", f"{j['strips_done']}/{j['strips_total']}", j["name"]) for j in jobs]
    _print_table(("ID", "STATE", "DONE", "SIZE", "STRIPS", "NAME"), rows)
    for job in jobs:
        if job.get("blocked"):
            print(f"job {job['id']} is blocked: {job['blocked']}")
    return EXIT_OK


def _state(job: dict[str, Any]) -> str:
    """A job's state in the list: with why it does not render yet."""
    if job.get("waiting_for"):
        return f"{job['state']} (after {','.join(map(str, job['waiting_for']))})"
    return job["state"] + (" (blocked)" if job.get("blocked") else "")


def cmd_nodes(config: Config, args: argparse.Namespace) -> int:
    nodes = connect(config, "view").call("nodes.list")
    if args.json:
        print(json.dumps(nodes, indent=2))
        return EXIT_OK
    now = time.time()
    rows = [(n["name"], n["state"], n["current"] or "-", str(n["strips_done"]), str(n["strips_failed"]),
             f"{max(0.0, now - n['last_seen']):.0f}s ago", _upload_rate(n.get("upload_bps", 0.0)),
             n["sandbox"] if n["sandbox"] != "none" else "NONE (unsafe)", _tags(n), ",".join(n.get("kinds") or ["-"]),
             n["error"] or (f"{n['povray']} ({n.get('povray_flavour', 'console')})" if n["povray"] else "-"))
            for n in nodes]
    _print_table(("NAME", "STATE", "CURRENT", "DONE", "FAILED", "SEEN", "UPLOAD", "SANDBOX", "TAGS", "KINDS",
                  "POV-RAY"), rows)
    return EXIT_OK


def _tags(node: dict[str, Any]) -> str:
    """A node's tags; those set from the controller marked with a '*'."""
    text = ",".join(node.get("tags") or []) or "-"
    return text + "*" if node.get("tags_overridden") else text


def _upload_rate(bytes_per_second: float) -> str:
    """A node's measured upload rate in bits per second, as links are sold; "-" until it reports one."""
    bits = float(bytes_per_second or 0.0) * 8
    if bits <= 0:
        return "-"
    for unit, scale in (("Gbit/s", 1e9), ("Mbit/s", 1e6), ("kbit/s", 1e3)):
        if bits >= scale:
            return f"{bits / scale:.3g} {unit}"
    return f"{bits:.0f} bit/s"


def _print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    for row in (header, *rows):
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip())


def cmd_fetch(config: Config, args: argparse.Namespace) -> int:
    if args.output is None and args.animation is None:
        raise FarmError(Code.BAD_ARGUMENT, "say where to write: --output PATH and/or --animation FILE")
    client = patient_client(connect(config, "view"), config.patience, Progress().note)
    status = client.call("jobs.status", args.job)
    if status["state"] != "done":
        client.call("jobs.fetch", args.job)   # the controller's own sentence says why not
    if status.get("kind", POVRAY) != POVRAY and args.output is not None:    # a file, as the node made it
        atomic.write(args.output, client.call("jobs.fetch", args.job, 1).data)
        sys.stderr.write(f"wrote {args.output}\n")
        return EXIT_OK
    frames = fetch_frames(client, status)
    if args.output is not None:
        sys.stderr.write(f"wrote {write_output(client, status, args.output, frames)}\n")
    if args.animation is not None:
        write_animation(client, status, args.animation, args.delay, frames)
        sys.stderr.write(f"wrote {args.animation}\n")
    return EXIT_OK


def cmd_job_control(config: Config, args: argparse.Namespace) -> int:
    """cancel, pause, resume: one call each, one line of confirmation."""
    connect(config).call(f"jobs.{args.command}", args.job)
    done = {"cancel": "canceled", "pause": "paused", "resume": "resumed"}[args.command]
    sys.stderr.write(f"job {args.job} {done}\n")
    return EXIT_OK
