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

from farm import __version__, bundle, strips
from farm.animation import Animation, parse_clock, parse_range
from farm.client import Client, client_for
from farm.config import Config, load_config
from farm.faults import Code, FarmError
from farm.options import IniSettings, read_ini

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


def _scale(text: str) -> str | float:
    if text == "fit":
        return text
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--scale takes 'fit' or a zoom factor such as 1 or 0.5, not {text!r}"
                                         ) from None
    if not 0.05 <= value <= 16:
        raise argparse.ArgumentTypeError("--scale must be from 0.05 to 16")
    return value


def _add_client_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--controller", metavar="URL",
                        help="controller URL (default: $POVFARM_CONTROLLER, else http://127.0.0.1:8642)")
    parser.add_argument("--token-file", metavar="FILE",
                        help="access token file: one token, or the controller's role file (default: $POVFARM_TOKEN)")
    parser.add_argument("--ca-file", metavar="FILE",
                        help="CA certificate to trust for an https:// controller (default: the system store)")


def _add_job_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("scene", type=Path, help="the .pov scene file")
    parser.add_argument("--width", type=_positive_int, help="image width in pixels (default: the --ini's, else 640)")
    parser.add_argument("--height", type=_positive_int, help="image height in pixels (default: the --ini's, else 480)")
    parser.add_argument("--strips", type=_strips, default="auto",
                        help="strips per frame: 'auto' (default) or a number; edges fall on 32-row blocks")
    parser.add_argument("--no-radiosity-prepass", action="store_false", dest="radiosity_prepass",
                        help="render the strips of a radiosity scene independently: no shared pretrace first, "
                             "faster but with seams at strip edges")
    parser.add_argument("--option", action="append", default=[], metavar="OPT", dest="options",
                        help="a POV-Ray rendering option, e.g. --option +A0.3 (repeatable)")
    parser.add_argument("--asset", action="append", default=[], type=Path, metavar="PATH", dest="assets",
                        help="an extra file or folder the scene needs (repeatable)")
    parser.add_argument("--bits", type=int, choices=(8, 16), default=8, help="bits per channel (default 8)")
    parser.add_argument("--priority", type=int, default=0,
                        help="higher runs first, first come first served within a priority (default 0)")
    parser.add_argument("--name", help="job name (default: the scene's file name)")
    parser.add_argument("--output", type=Path, metavar="FILE",
                        help="write the finished PNG here (for an animation: a folder for the numbered frames)")
    parser.add_argument("--frames", metavar="FIRST-LAST", help="render an animation: frames FIRST to LAST (+KFI/+KFF)")
    parser.add_argument("--clock", metavar="START,END", help="the clock from START to END (+KI/+KF; default 0,1)")
    parser.add_argument("--cyclic", action="store_true", default=None, help="cyclic animation (+KC)")
    parser.add_argument("--subset", metavar="A-B", help="render only frames A to B of the animation (+SF/+EF)")
    parser.add_argument("--ini", type=Path, metavar="FILE",
                        help="the scene's INI file: its animation and rendering settings (flags override it)")


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
    p.add_argument("--token-file", metavar="FILE",
                   help="role file with the submit/node/view tokens (default: DATA_DIR/tokens, made on first start;"
                        " $POVFARM_TOKEN sets one token for every role instead)")
    p.add_argument("--tls-cert", metavar="FILE", help="serve HTTPS with this certificate (chain) in PEM")
    p.add_argument("--tls-key", metavar="FILE", help="the TLS certificate's private key in PEM")
    p.add_argument("--max-connections", type=int, metavar="N", help="concurrent connections (default 512)")

    p = sub.add_parser("node", help="run a render node")
    _add_client_flags(p)
    p.add_argument("--name", help="node name (default: the host name)")
    p.add_argument("--povray", metavar="PATH", help="the povray program (default: povray on PATH)")
    p.add_argument("--threads", type=int, help="POV-Ray render threads (default: all cores)")
    p.add_argument("--slots", type=int, help="POV-Ray processes at once (default 2: one starts while another"
                                             " finishes)")
    p.add_argument("--work-dir", type=Path, metavar="DIR",
                   help="bundle cache and per-strip folders (default ~/.cache/povfarm-node)")
    p.add_argument("--strip-timeout", type=float, metavar="SECONDS", help="wall-clock limit per strip")
    p.add_argument("--keep-work", action="store_true", default=None, help="keep per-strip folders")
    p.add_argument("--sandbox", choices=("auto", "bwrap", "none"),
                   help="confine POV-Ray: 'auto' (default) uses bubblewrap when it works and warns when it "
                        "cannot, 'bwrap' refuses to start without it, 'none' is unsafe for untrusted scenes")
    p.add_argument("--max-memory-mb", type=int, metavar="MB", help="POV-Ray's address-space limit (default 8192)")
    p.add_argument("--max-output-mb", type=int, metavar="MB",
                   help="the largest file POV-Ray may write (default 1024)")

    p = sub.add_parser("submit", help="submit a scene; prints the job id")
    _add_client_flags(p)
    _add_job_flags(p)
    p.add_argument("--wait", action="store_true", help="wait for the job, showing progress")

    p = sub.add_parser("render", help="render on a local farm: embedded controller + N local nodes")
    _add_job_flags(p)
    p.add_argument("--nodes", type=_positive_int, default=2, help="local nodes to start (default 2)")
    p.add_argument("--povray", metavar="PATH", help="the povray program (default: povray on PATH)")
    p.add_argument("--threads", type=int, help="POV-Ray threads per process (default: all cores)")
    p.add_argument("--slots", type=int, help="POV-Ray processes per node at once (default 2)")

    p = sub.add_parser("status", help="show a job (default: the newest)")
    _add_client_flags(p)
    p.add_argument("job", type=int, nargs="?", help="job id")
    p.add_argument("--json", action="store_true", help="print JSON")

    for name, text in (("jobs", "list jobs"), ("nodes", "list nodes")):
        p = sub.add_parser(name, help=text)
        _add_client_flags(p)
        p.add_argument("--json", action="store_true", help="print JSON")

    p = sub.add_parser("fetch", help="write a finished job's PNG (or an animation's frames)")
    _add_client_flags(p)
    p.add_argument("job", type=int, help="job id")
    p.add_argument("--output", type=Path, metavar="PATH",
                   help="where to write the PNG; for an animation, a folder for the numbered frames")
    p.add_argument("--animation", type=Path, metavar="FILE", help="write an animation as one animated PNG")
    p.add_argument("--delay", type=int, default=100, metavar="MS", help="frame time in the animated PNG (100)")

    p = sub.add_parser("token", help="show the controller's access tokens (run on the controller's box)")
    p.add_argument("action", choices=("show",), help="show")
    p.add_argument("--role", choices=("submit", "node", "view"), help="print only this role's token")
    p.add_argument("--data-dir", type=Path, metavar="DIR", help="the controller's data directory")
    p.add_argument("--token-file", metavar="FILE", help="the controller's role file (default: DATA_DIR/tokens)")

    for name, text in (("cancel", "cancel a job"), ("pause", "stop leasing a job's strips"),
                       ("resume", "let a paused job render again")):
        p = sub.add_parser(name, help=text)
        _add_client_flags(p)
        p.add_argument("job", type=int, help="job id")

    p = sub.add_parser("viewer", help="watch a render live in a window (needs pygame)")
    _add_client_flags(p)
    p.add_argument("job", type=_positive_int, nargs="?", help="job id (default: follow the newest job)")
    p.add_argument("--snapshot", type=Path, metavar="FILE",
                   help="when the job ends, write its image (without the overlay) here as PNG")
    p.add_argument("--exit-when-done", action="store_true",
                   help="exit when the job ends: 0 if it is done, 1 if it failed or was canceled")
    p.add_argument("--scale", type=_scale, default="fit", metavar="fit|FACTOR",
                   help="'fit' the image to the window (default) or a zoom factor such as 1 or 0.5")
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


def _client(config: Config, role: str = "submit") -> Client:
    return client_for(config, role)


def submit_job(client: Client, args: argparse.Namespace) -> int:
    """Pack the scene, upload the bundle if the controller lacks it, queue the job. Returns the job id."""
    plan = bundle.plan_bundle(args.scene, args.assets)
    data = bundle.pack(plan)
    digest = bundle.bundle_hash(data)
    if not client.call("bundles.has", digest):
        client.call("bundles.upload", _binary(data))
    return client.call("jobs.submit", job_spec(args, digest, plan.scene))


def job_spec(args: argparse.Namespace, digest: str, scene: str) -> dict[str, Any]:
    """The jobs.submit struct from the flags, over the --ini file's settings."""
    ini = read_ini_file(args.ini) if args.ini else IniSettings(options=[], animation={})
    animation = dict(ini.animation)
    if args.frames:
        animation["first"], animation["last"] = parse_range(args.frames, "--frames")
    if args.clock:
        animation["initial_clock"], animation["final_clock"] = parse_clock(args.clock)
    if args.cyclic:
        animation["cyclic"] = True
    if args.subset:
        animation["subset_first"], animation["subset_last"] = parse_range(args.subset, "--subset")
    spec = {"bundle": digest, "scene": scene, "width": args.width or ini.width or 640,
            "height": args.height or ini.height or 480, "options": [*ini.options, *args.options],
            "strips": args.strips, "bits": args.bits, "priority": args.priority,
            "name": args.name or args.scene.stem, "radiosity_prepass": args.radiosity_prepass}
    if animation:
        spec["animation"] = Animation.from_spec(animation).to_spec()
    return spec


def read_ini_file(path: Path) -> IniSettings:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as err:
        raise FarmError(Code.BAD_ARGUMENT, f"cannot read the INI file {path}: {err.strerror or err}") from None
    return read_ini(text)


def _binary(data: bytes):
    import xmlrpc.client
    return xmlrpc.client.Binary(data)


def _progress_line(status: dict[str, Any]) -> str:
    return (f"job {status['id']} {status['state']}: {status['strips_done']}/{status['strips_total']} strips, "
            f"{status['progress'] * 100:.0f}%")


def wait_for_job(client: Client, job_id: int, interval: float = 1.0) -> dict[str, Any]:
    """Show progress on stderr until the job ends; return its final status. jobs.wait returns as soon as
    the job changes, so the end is seen at once."""
    tty = sys.stderr.isatty()
    last = ""
    while True:
        status = client.call("jobs.wait", job_id, interval)
        line = _progress_line(status)
        if line != last:
            sys.stderr.write(("\r" + line + "\033[K") if tty else line + "\n")
            sys.stderr.flush()
            last = line
        if status["state"] in FINISHED:
            if tty:
                sys.stderr.write("\n")
            return status


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
        written = write_output(client, status, output)
        sys.stderr.write(f"job {status['id']} done in {elapsed:.1f} s: wrote {written}\n")
    else:
        sys.stderr.write(f"job {status['id']} done in {elapsed:.1f} s; "
                         f"fetch it with: povfarm fetch {status['id']} --output FILE.png\n")
    return EXIT_OK


def write_output(client: Client, status: dict[str, Any], output: Path,
                 frames: dict[int, bytes] | None = None) -> str:
    """A still's PNG to `output`; an animation's frames into the folder `output`, named as POV-Ray names
    them (scene name + frame number padded to the width of the final frame number)."""
    frames = frames if frames is not None else fetch_frames(client, status)
    if not status["frame_digits"]:
        _write_file(output, frames[status["first_frame"]])
        return str(output)
    stem = Path(status["scene"]).stem
    for number, png in frames.items():
        _write_file(output / f"{stem}{number:0{status['frame_digits']}d}.png", png)
    return f"{len(frames)} frames into {output}"


def fetch_frames(client: Client, status: dict[str, Any]) -> dict[int, bytes]:
    """Every frame's PNG, fetched once."""
    return {number: client.call("jobs.fetch", status["id"], number).data
            for number in range(status["first_frame"], status["last_frame"] + 1)}


def write_animation(client: Client, status: dict[str, Any], output: Path, delay_ms: int,
                    frames: dict[int, bytes] | None = None) -> None:
    pngs = frames if frames is not None else fetch_frames(client, status)
    try:
        _write_file(output, strips.apng_from_pngs(list(pngs.values()), delay_ms))
    except ValueError as err:
        raise FarmError(Code.BAD_ARGUMENT, f"cannot make an animated PNG of job {status['id']}: {err}") from None


def _write_file(output: Path, data: bytes) -> None:
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
    config.token, config.token_file, config.tls_cert, config.tls_key = "", "", "", ""
    controller = Controller(config)
    try:
        controller.start_in_thread()
        nodes = [_start_local_node(controller.url, i, workspace, config) for i in range(args.nodes)]
        client = Client(controller.url, config.rpc_timeout, token=controller.tokens["submit"])
        _wait_for_local_nodes(client, nodes)
        job_id = submit_job(client, args)
        return finish_job(client, wait_for_job(client, job_id), args.output)
    finally:
        _terminate(nodes)            # the nodes wind down while the controller does (one SIGTERM:
        controller.shutdown()        # a second would tell them to abandon their strips)
        _wait_or_kill(nodes)
        shutil.rmtree(workspace, ignore_errors=True)


def _wait_for_local_nodes(client: Client, nodes: Sequence[subprocess.Popen], timeout: float = 20.0) -> None:
    """Let the local nodes register before the job is planned, so its work is split for all of them."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(node.poll() is not None for node in nodes):
            raise FarmError(Code.RENDER_FAILED, "a local node exited at start; its messages are above")
        if len(client.call("nodes.list")) >= len(nodes):
            return
        time.sleep(0.05)


def _start_local_node(url: str, index: int, workspace: Path, config: Config) -> subprocess.Popen:
    argv = [sys.executable, "-m", "farm", "--log-level", "WARNING", "node", "--controller", url,
            "--name", f"local-{index + 1}", "--work-dir", str(workspace / f"node-{index + 1}"),
            "--threads", str(config.threads), "--slots", str(config.slots), "--povray", config.povray,
            "--token-file", str(config.data_dir / "tokens")]
    env = {key: value for key, value in os.environ.items() if key != "POVFARM_TOKEN"}
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL, env=env)


def _terminate(processes: Sequence[subprocess.Popen]) -> None:
    for process in processes:
        if process.poll() is None:
            process.terminate()


def _stop_processes(processes: Sequence[subprocess.Popen]) -> None:
    _terminate(processes)
    _wait_or_kill(processes)


def _wait_or_kill(processes: Sequence[subprocess.Popen]) -> None:
    """Give terminated processes 10 s to exit (a node finishes its strip), then kill them."""
    deadline = time.monotonic() + 10
    for process in processes:
        try:
            process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def cmd_status(config: Config, args: argparse.Namespace) -> int:
    client = _client(config, "view")
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
    jobs = _client(config, "view").call("jobs.list")
    if args.json:
        print(json.dumps([_json_status(job) for job in jobs], indent=2))
        return EXIT_OK
    rows = [(str(j["id"]), j["state"], f"{j['progress'] * 100:.0f}%", f"{j['width']}x{j['height']}",
             f"{j['strips_done']}/{j['strips_total']}", j["name"]) for j in jobs]
    _print_table(("ID", "STATE", "DONE", "SIZE", "STRIPS", "NAME"), rows)
    return EXIT_OK


def cmd_nodes(config: Config, args: argparse.Namespace) -> int:
    nodes = _client(config, "view").call("nodes.list")
    if args.json:
        print(json.dumps(nodes, indent=2))
        return EXIT_OK
    now = time.time()
    rows = [(n["name"], n["state"], n["current"] or "-", str(n["strips_done"]), str(n["strips_failed"]),
             f"{max(0.0, now - n['last_seen']):.0f}s ago", n["sandbox"] if n["sandbox"] != "none" else "NONE (unsafe)",
             n["error"] or n["povray"]) for n in nodes]
    _print_table(("NAME", "STATE", "CURRENT", "DONE", "FAILED", "SEEN", "SANDBOX", "POV-RAY"), rows)
    return EXIT_OK


def _print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    for row in (header, *rows):
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip())


def cmd_fetch(config: Config, args: argparse.Namespace) -> int:
    if args.output is None and args.animation is None:
        raise FarmError(Code.BAD_ARGUMENT, "say where to write: --output PATH and/or --animation FILE")
    client = _client(config, "view")
    status = client.call("jobs.status", args.job)
    if status["state"] != "done":
        client.call("jobs.fetch", args.job)   # the controller's own sentence says why not
    frames = fetch_frames(client, status)
    if args.output is not None:
        sys.stderr.write(f"wrote {write_output(client, status, args.output, frames)}\n")
    if args.animation is not None:
        write_animation(client, status, args.animation, args.delay, frames)
        sys.stderr.write(f"wrote {args.animation}\n")
    return EXIT_OK


def cmd_job_control(config: Config, args: argparse.Namespace) -> int:
    """cancel, pause, resume: one call each, one line of confirmation."""
    _client(config).call(f"jobs.{args.command}", args.job)
    done = {"cancel": "canceled", "pause": "paused", "resume": "resumed"}[args.command]
    sys.stderr.write(f"job {args.job} {done}\n")
    return EXIT_OK


def cmd_viewer(config: Config, args: argparse.Namespace) -> int:
    import dataclasses

    from farm.viewer import run_viewer   # pygame is loaded there, and only if it is installed

    def make_client(timeout: float) -> Client:      # long polls need a longer timeout than other calls
        return _client(dataclasses.replace(config, rpc_timeout=timeout), "view")

    return run_viewer(config.controller, args.job or 0, snapshot=args.snapshot,
                      exit_when_done=args.exit_when_done, scale=args.scale, rpc_timeout=config.rpc_timeout,
                      make_client=make_client)


def cmd_token(config: Config, args: argparse.Namespace) -> int:
    """Print the controller's tokens, for the operator to hand to nodes, users and viewers."""
    from farm.auth import TOKEN_FILE_NAME, read_token_file

    path = Path(config.token_file) if config.token_file else config.data_dir / TOKEN_FILE_NAME
    if not path.exists():
        raise FarmError(Code.BAD_ARGUMENT, f"there is no token file at {path}; start the controller once "
                                           f"(or pass --data-dir / --token-file)")
    tokens = read_token_file(path)
    if "" in tokens:
        print(tokens[""])
    elif args.role:
        print(tokens[args.role])
    else:
        for role, token in tokens.items():
            print(f"{role}: {token}")
    return EXIT_OK


COMMANDS = {"controller": cmd_controller, "node": cmd_node, "submit": cmd_submit, "render": cmd_render,
            "status": cmd_status, "jobs": cmd_jobs, "nodes": cmd_nodes, "fetch": cmd_fetch, "cancel": cmd_job_control,
            "pause": cmd_job_control, "resume": cmd_job_control,
            "viewer": cmd_viewer, "token": cmd_token}


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
