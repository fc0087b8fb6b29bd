"""The `povfarm` command line (also `python -m farm`).

Every subcommand builds one `Config` from defaults, config file, environment
and the flags given, then works through `Client`. Errors print one sentence
and exit non-zero; a traceback is a bug.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

from farm import __version__, bundle
from farm.client import Client
from farm.config import Config, load_config
from farm.faults import Code, FarmError

log = logging.getLogger("farm.cli")

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
FINISHED = ("done", "failed", "canceled")


# -- parser --------------------------------------------------------------------------------------

def _strips(text: str) -> str | int:
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--strips takes 'auto' or a whole number, not {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("--strips must be at least 1")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def _add_client_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--controller", metavar="URL",
                        help="controller URL (default: $POVFARM_CONTROLLER, else http://127.0.0.1:8642)")


def _add_job_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("scene", type=Path, help="the .pov scene file")
    parser.add_argument("--width", type=_positive_int, default=640, help="image width in pixels (default 640)")
    parser.add_argument("--height", type=_positive_int, default=480, help="image height in pixels (default 480)")
    parser.add_argument("--strips", type=_strips, default="auto",
                        help="strips per frame: 'auto' (default) or a number; edges fall on 32-row blocks")
    parser.add_argument("--option", action="append", default=[], metavar="OPT", dest="options",
                        help="a POV-Ray rendering option, e.g. --option +A0.3 (repeatable)")
    parser.add_argument("--asset", action="append", default=[], type=Path, metavar="PATH", dest="assets",
                        help="an extra file or folder the scene needs (repeatable)")
    parser.add_argument("--bits", type=int, choices=(8, 16), default=8, help="bits per channel (default 8)")
    parser.add_argument("--priority", type=int, default=0,
                        help="higher runs first, first come first served within a priority (default 0)")
    parser.add_argument("--name", help="job name (default: the scene's file name)")
    parser.add_argument("--output", type=Path, metavar="FILE", help="write the finished PNG here")


def _common_flags() -> argparse.ArgumentParser:
    """Flags every subcommand takes, before or after its name (SUPPRESS: absent unless given)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, metavar="FILE", default=argparse.SUPPRESS,
                        help="config file ([povfarm] section; default ~/.config/povfarm/povfarm.ini)")
    common.add_argument("--log-level", choices=("DEBUG", "INFO", "WARNING", "ERROR"), default=argparse.SUPPRESS,
                        help="how much to log (default INFO)")
    return common


def build_parser() -> argparse.ArgumentParser:
    common = _common_flags()
    parser = argparse.ArgumentParser(prog="povfarm", description="A render farm for POV-Ray.", parents=[common])
    parser.add_argument("--version", action="version", version=f"povfarm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    original_add_parser = sub.add_parser

    def add_parser(name: str, **kwargs: Any) -> argparse.ArgumentParser:
        return original_add_parser(name, parents=[common], **kwargs)

    sub.add_parser = add_parser  # type: ignore[method-assign]

    p = sub.add_parser("controller", help="run the controller")
    p.add_argument("--bind", metavar="ADDR", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default 8642)")
    p.add_argument("--data-dir", type=Path, metavar="DIR",
                   help="where jobs, results and images live (default ~/.local/share/povfarm)")
    p.add_argument("--lease-timeout", type=float, metavar="SECONDS",
                   help="a node silent this long is presumed dead (default 30)")
    p.add_argument("--strip-timeout", type=float, metavar="SECONDS",
                   help="wall-clock limit for one strip on any node (default: none)")

    p = sub.add_parser("node", help="run a render node")
    _add_client_flags(p)
    p.add_argument("--name", help="node name (default: the host name)")
    p.add_argument("--povray", metavar="PATH", help="the povray program (default: povray on PATH)")
    p.add_argument("--threads", type=int, help="POV-Ray render threads (default: all cores)")
    p.add_argument("--work-dir", type=Path, metavar="DIR",
                   help="bundle cache and per-strip folders (default ~/.cache/povfarm-node)")
    p.add_argument("--strip-timeout", type=float, metavar="SECONDS", help="wall-clock limit per strip")
    p.add_argument("--keep-work", action="store_true", default=None, help="keep per-strip folders")

    p = sub.add_parser("submit", help="submit a scene; prints the job id")
    _add_client_flags(p)
    _add_job_flags(p)
    p.add_argument("--wait", action="store_true", help="wait for the job, showing progress")

    p = sub.add_parser("render", help="render on a local farm: embedded controller + N local nodes")
    _add_job_flags(p)
    p.add_argument("--nodes", type=_positive_int, default=2, help="local nodes to start (default 2)")
    p.add_argument("--povray", metavar="PATH", help="the povray program (default: povray on PATH)")
    p.add_argument("--threads", type=int, help="POV-Ray threads per node (default: cores / nodes)")

    p = sub.add_parser("status", help="show a job (default: the newest)")
    _add_client_flags(p)
    p.add_argument("job", type=int, nargs="?", help="job id")
    p.add_argument("--json", action="store_true", help="print JSON")

    for name, text in (("jobs", "list jobs"), ("nodes", "list nodes")):
        p = sub.add_parser(name, help=text)
        _add_client_flags(p)
        p.add_argument("--json", action="store_true", help="print JSON")

    p = sub.add_parser("fetch", help="write a finished job's PNG")
    _add_client_flags(p)
    p.add_argument("job", type=int, help="job id")
    p.add_argument("--output", type=Path, required=True, metavar="FILE", help="where to write the PNG")

    for name, text in (("cancel", "cancel a job"), ("pause", "stop leasing a job's strips"),
                       ("resume", "let a paused job render again")):
        p = sub.add_parser(name, help=text)
        _add_client_flags(p)
        p.add_argument("job", type=int, help="job id")
    return parser


# -- commands -------------------------------------------------------------------------------------

def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def cmd_controller(config: Config, args: argparse.Namespace) -> int:
    from farm.controller import Controller

    controller = Controller(config)
    signal.signal(signal.SIGTERM, _interrupt)   # a service manager's stop is a clean shutdown too
    try:
        controller.serve_forever()
    except KeyboardInterrupt:
        log.info("controller stopping")
    finally:
        controller.shutdown()
    return EXIT_OK


def cmd_node(config: Config, args: argparse.Namespace) -> int:
    from farm.node import run_node
    return run_node(config)


def _client(config: Config) -> Client:
    return Client(config.controller, config.rpc_timeout)


def submit_job(client: Client, args: argparse.Namespace) -> int:
    """Pack the scene, upload the bundle if the controller lacks it, queue the job. Returns the job id."""
    plan = bundle.plan_bundle(args.scene, args.assets)
    data = bundle.pack(plan)
    digest = bundle.bundle_hash(data)
    if not client.call("bundles.has", digest):
        client.call("bundles.upload", _binary(data))
    spec = {"bundle": digest, "scene": plan.scene, "width": args.width, "height": args.height,
            "options": list(args.options), "strips": args.strips, "bits": args.bits,
            "priority": args.priority, "name": args.name or args.scene.stem}
    return client.call("jobs.submit", spec)


def _binary(data: bytes):
    import xmlrpc.client
    return xmlrpc.client.Binary(data)


def _progress_line(status: dict[str, Any]) -> str:
    return (f"job {status['id']} {status['state']}: {status['strips_done']}/{status['strips_total']} strips, "
            f"{status['progress'] * 100:.0f}%")


def wait_for_job(client: Client, job_id: int, interval: float = 0.3) -> dict[str, Any]:
    """Show progress on stderr until the job ends; return its final status."""
    tty = sys.stderr.isatty()
    last = ""
    while True:
        status = client.call("jobs.status", job_id)
        line = _progress_line(status)
        if line != last:
            sys.stderr.write(("\r" + line + "\033[K") if tty else line + "\n")
            sys.stderr.flush()
            last = line
        if status["state"] in FINISHED:
            if tty:
                sys.stderr.write("\n")
            return status
        time.sleep(interval)


def finish_job(client: Client, status: dict[str, Any], output: Path | None) -> int:
    """Report how a job ended and write its image; the exit code for `submit --wait` and `render`."""
    if status["state"] == "failed":
        sys.stderr.write(f"povfarm: job {status['id']} failed:\n{status['error']}\n")
        return EXIT_FAILED
    if status["state"] == "canceled":
        sys.stderr.write(f"povfarm: job {status['id']} was canceled\n")
        return EXIT_FAILED
    elapsed = status["finished"] - (status["started"] or status["submitted"])
    if output is not None:
        _write_image(client, status["id"], output)
        sys.stderr.write(f"job {status['id']} done in {elapsed:.1f} s: wrote {output}\n")
    else:
        sys.stderr.write(f"job {status['id']} done in {elapsed:.1f} s; "
                         f"fetch it with: povfarm fetch {status['id']} --output FILE.png\n")
    return EXIT_OK


def _write_image(client: Client, job_id: int, output: Path) -> None:
    data = client.call("jobs.fetch", job_id).data
    try:
        if output.parent:
            output.parent.mkdir(parents=True, exist_ok=True)
        tmp = output.with_name(output.name + ".part")
        tmp.write_bytes(data)
        os.replace(tmp, output)
    except OSError as err:
        raise FarmError(Code.BAD_ARGUMENT, f"cannot write {output}: {err.strerror or err}") from None


def cmd_submit(config: Config, args: argparse.Namespace) -> int:
    client = _client(config)
    job_id = submit_job(client, args)
    print(job_id, flush=True)
    if not args.wait and args.output is None:
        return EXIT_OK
    return finish_job(client, wait_for_job(client, job_id), args.output)


def cmd_render(config: Config, args: argparse.Namespace) -> int:
    from farm.controller import Controller

    workspace = Path(tempfile.mkdtemp(prefix="povfarm-render-"))
    config.data_dir, config.bind, config.port = workspace / "controller", "127.0.0.1", 0
    nodes: list[subprocess.Popen] = []
    controller = Controller(config)
    try:
        controller.start_in_thread()
        threads = args.threads or max(1, (os.cpu_count() or 1) // args.nodes)
        nodes = [_start_local_node(controller.url, i, workspace, threads, config) for i in range(args.nodes)]
        client = Client(controller.url, config.rpc_timeout)
        job_id = submit_job(client, args)
        return finish_job(client, wait_for_job(client, job_id), args.output)
    finally:
        _stop_processes(nodes)
        controller.shutdown()
        shutil.rmtree(workspace, ignore_errors=True)


def _start_local_node(url: str, index: int, workspace: Path, threads: int, config: Config) -> subprocess.Popen:
    argv = [sys.executable, "-m", "farm", "--log-level", "WARNING", "node", "--controller", url,
            "--name", f"local-{index + 1}", "--work-dir", str(workspace / f"node-{index + 1}"),
            "--threads", str(threads), "--povray", config.povray]
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL)


def _stop_processes(processes: Sequence[subprocess.Popen]) -> None:
    for process in processes:
        if process.poll() is None:
            process.terminate()
    deadline = time.monotonic() + 10
    for process in processes:
        try:
            process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def cmd_status(config: Config, args: argparse.Namespace) -> int:
    client = _client(config)
    job_id = args.job
    if job_id is None:
        jobs = client.call("jobs.list")
        if not jobs:
            raise FarmError(Code.UNKNOWN_JOB, "there are no jobs yet")
        job_id = jobs[-1]["id"]
    status = client.call("jobs.status", job_id)
    if args.json:
        print(json.dumps(_json_status(status), indent=2))
        return EXIT_OK
    print(f"job {status['id']} ({status['name']}, {status['scene']}) {status['width']}x{status['height']}")
    print(f"  state:    {status['state']}")
    print(f"  progress: {status['progress'] * 100:.1f}%  ({status['strips_done']}/{status['strips_total']} strips,"
          f" {status['strips_leased']} rendering)")
    if status["error"]:
        print("  error:    " + status["error"].replace("\n", "\n            "))
    return EXIT_OK


def _json_status(status: dict[str, Any]) -> dict[str, Any]:
    status = dict(status)
    status["error"] = status["error"] or None
    for key in ("started", "finished"):
        status[key] = status[key] or None
    return status


def cmd_jobs(config: Config, args: argparse.Namespace) -> int:
    jobs = _client(config).call("jobs.list")
    if args.json:
        print(json.dumps([_json_status(job) for job in jobs], indent=2))
        return EXIT_OK
    rows = [(str(j["id"]), j["state"], f"{j['progress'] * 100:.0f}%", f"{j['width']}x{j['height']}",
             f"{j['strips_done']}/{j['strips_total']}", j["name"]) for j in jobs]
    _print_table(("ID", "STATE", "DONE", "SIZE", "STRIPS", "NAME"), rows)
    return EXIT_OK


def cmd_nodes(config: Config, args: argparse.Namespace) -> int:
    nodes = _client(config).call("nodes.list")
    if args.json:
        print(json.dumps(nodes, indent=2))
        return EXIT_OK
    now = time.time()
    rows = [(n["name"], n["state"], n["current"] or "-", str(n["strips_done"]), str(n["strips_failed"]),
             f"{max(0.0, now - n['last_seen']):.0f}s ago", n["error"] or n["povray"]) for n in nodes]
    _print_table(("NAME", "STATE", "CURRENT", "DONE", "FAILED", "SEEN", "POV-RAY"), rows)
    return EXIT_OK


def _print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    for row in (header, *rows):
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip())


def cmd_fetch(config: Config, args: argparse.Namespace) -> int:
    _write_image(_client(config), args.job, args.output)
    sys.stderr.write(f"wrote {args.output}\n")
    return EXIT_OK


def cmd_job_control(config: Config, args: argparse.Namespace) -> int:
    """cancel, pause, resume: one call each, one line of confirmation."""
    _client(config).call(f"jobs.{args.command}", args.job)
    done = {"cancel": "canceled", "pause": "paused", "resume": "resumed"}[args.command]
    sys.stderr.write(f"job {args.job} {done}\n")
    return EXIT_OK


COMMANDS = {"controller": cmd_controller, "node": cmd_node, "submit": cmd_submit, "render": cmd_render,
            "status": cmd_status, "jobs": cmd_jobs, "nodes": cmd_nodes, "fetch": cmd_fetch, "cancel": cmd_job_control,
            "pause": cmd_job_control, "resume": cmd_job_control}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    flags = {key: value for key, value in vars(args).items() if key != "config"}
    if args.command in ("submit", "render"):
        flags.pop("name", None)   # --name there names the job, not the node
    if args.command == "render" and "log_level" not in flags and "POVFARM_LOG_LEVEL" not in os.environ:
        flags["log_level"] = "WARNING"   # a one-shot local render shows progress, not the farm's chatter
    try:
        config = load_config(flags, config_file=getattr(args, "config", None))
        logging.basicConfig(level=config.log_level, stream=sys.stderr,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        return COMMANDS[args.command](config, args)
    except FarmError as err:
        sys.stderr.write(f"povfarm: error: {err}\n")
        return EXIT_FAILED
    except KeyboardInterrupt:
        sys.stderr.write("povfarm: interrupted\n")
        return EXIT_INTERRUPTED
