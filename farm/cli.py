"""The `povfarm` command line (also `python -m farm`).

Every subcommand builds one `Config` from defaults, config file, environment
and the flags given, then works through `Client`. Errors print one sentence
and exit non-zero; a traceback is a bug.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import random
import shutil
import signal
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from farm import __version__, bundle, povcmd
from farm.animation import Animation, parse_clock, parse_range
from farm.client import Client, client_for
from farm.config import Config, load_config
from farm.discovery import resolve_controller
from farm.faults import Code, FarmError
from farm.images.png import apng_from_pngs, decode_png
from farm.images.ppm import encode_ppm
from farm.images.raster import Raster
from farm.images.tga import encode_tga
from farm.kinds import PreviewMode
from farm.retry import Outage, Patience, Patient, duration

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
                        help="controller URL, or 'discover' (default: $POVFARM_CONTROLLER, else a controller on "
                             "this box at port 8642, else the one announcing itself on the LAN)")
    parser.add_argument("--token-file", metavar="FILE",
                        help="access token file: one token, or the controller's role file (default: $POVFARM_TOKEN)")
    parser.add_argument("--ca-file", metavar="FILE",
                        help="CA certificate to trust for an https:// controller (default: the system store)")


def _add_patience_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--patience", type=float, metavar="SECONDS",
                        help="how long to ride out an unreachable controller (once it has answered), or a job "
                             "no live node can render, before giving up (default 900; 0: for ever; setting: "
                             "patience, $POVFARM_PATIENCE)")


_ALLOWED_HELP = ("+A[threshold] -A, +AM1..3, +AG<gamma>, +J[amount] -J, +R<depth>, +Q<0-11>, +UA (alpha), "
                 "+MB<n>, +MV<version>, +UL +UV +UR +UD, +BS<block size>, +K<clock>, Declare=NAME=NUMBER")
POVRAY_HELP = f"""\
POV-Ray's own command line works after the scene, as with `povray` (settings apply in order, the
last one wins; a farm flag such as --width overrides them):
  size            +W<width> +H<height>                       (Width=, Height=)
  output          +O<file> or +O<folder>/; without +O the image goes beside the scene, named after
                  it, as POV-Ray names it (animations: scene01.png ... padded to the last frame)
  format          +FN (PNG) +FN16 +UA (alpha), +FP +FP16 (PPM), +FT (Targa), +FC (Targa, RLE),
                  +FJ[quality] (JPEG, needs Pillow)
  animation       +KFI<first> +KFF<last> +KI<clock> +KF<clock> +KC +SF<frame> +EF<frame>
  library paths   +L<folder> (Library_Path=): local folders are shipped with the scene
  INI files       scene.ini, scene.ini[Section] and Key=Value settings, anywhere on the line
  rendering       {_ALLOWED_HELP}
  ignored         -D +P -V -X +SP/+EP +WT +WL and the +G... message streams (one note each)
  refused         +SR/+ER/+SC/+EC (the farm renders whole images), +RF (radiosity files), shell-out
                  settings such as Pre_Scene_Command (never run on nodes), and anything unknown
"""


def _add_job_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("povray_args", nargs="*", metavar="SCENE|INI|+SWITCH",
                        help="the .pov scene, INI files and POV-Ray switches, as `povray` takes them "
                             "(see below)")
    parser.add_argument("--width", type=_positive_int, help="image width in pixels (default: +W or the INI's, "
                                                            "else 640)")
    parser.add_argument("--height", type=_positive_int, help="image height in pixels (default: +H or the "
                                                             "INI's, else 480)")
    parser.add_argument("--strips", type=_strips, default="auto",
                        help="strips per frame: 'auto' (default) or a number; edges fall on 32-row blocks")
    parser.add_argument("--no-radiosity-prepass", action="store_false", dest="radiosity_prepass",
                        help="render the strips of a radiosity scene independently: no shared pretrace first, "
                             "faster but with seams at strip edges")
    parser.add_argument("--preview", action="store_const", const="always", dest="preview",
                        help="first a quick low-resolution render of the whole frame, for viewers, even when "
                             "none watches as the job starts (setting: preview = auto|always|never; by default "
                             "auto: only when a viewer watches, since it costs a few percent of the render time)")
    parser.add_argument("--no-preview", action="store_const", const="never", dest="preview",
                        help="no preview, whatever the setting says")
    parser.add_argument("--option", action="append", default=[], metavar="OPT", dest="options",
                        help=f"POV-Ray rendering switches, e.g. --option +A0.3 or --option='-J +R3' "
                             f"(repeatable). Allowed: {_ALLOWED_HELP}. Size, output, format, animation and "
                             f"library switches go after the scene instead")
    parser.add_argument("--asset", action="append", default=[], type=Path, metavar="PATH", dest="assets",
                        help="an extra file or folder the scene needs that povfarm cannot find by itself "
                             "(repeatable)")
    parser.add_argument("--bits", type=int, choices=(8, 16), help="bits per channel (default 8; +FN16 sets 16)")
    parser.add_argument("--priority", type=int, default=0,
                        help="higher runs first, first come first served within a priority (default 0)")
    parser.add_argument("--name", help="job name (default: the scene's file name)")
    parser.add_argument("--output", type=Path, metavar="PATH",
                        help="write the image here (its extension picks the format: .png .ppm .tga .jpg); for "
                             "an animation, a folder for the numbered frames. Overrides +O")
    parser.add_argument("--frames", metavar="FIRST-LAST", help="render an animation: frames FIRST to LAST (+KFI/+KFF)")
    parser.add_argument("--clock", metavar="START,END", help="the clock from START to END (+KI/+KF; default 0,1)")
    parser.add_argument("--cyclic", action="store_true", default=None, help="cyclic animation (+KC)")
    parser.add_argument("--subset", metavar="A-B", help="render only frames A to B of the animation (+SF/+EF)")
    parser.add_argument("--ini", type=Path, metavar="FILE",
                        help="an INI file read before everything else on the line (same as giving it first)")


def _common_flags() -> argparse.ArgumentParser:
    """Flags every subcommand takes, before or after its name (SUPPRESS: absent unless given)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, metavar="FILE", default=argparse.SUPPRESS,
                        help="config file ([povfarm] section; default ~/.config/povfarm/povfarm.ini)")
    common.add_argument("--log-level", choices=("DEBUG", "INFO", "WARNING", "ERROR"), default=argparse.SUPPRESS,
                        help="how much to log (default INFO)")
    return common


_JOB_PARSERS: dict[str, argparse.ArgumentParser] = {}


def build_parser() -> argparse.ArgumentParser:
    common = _common_flags()
    parser = argparse.ArgumentParser(
        prog="povfarm", parents=[common], formatter_class=argparse.RawDescriptionHelpFormatter,
        description="A render farm for POV-Ray: one command renders a scene on every core you have, or on "
                    "every box.",
        epilog="examples:\n  povfarm render scene.pov +W640 +H480 +A0.3      # like povray, on a local farm\n"
               "  povfarm submit scene.pov +W640 +H480 --wait    # on a running controller\n"
               "  povfarm COMMAND --help                         # what each command does, with an example")
    parser.add_argument("--version", action="version", version=f"povfarm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    original_add_parser = sub.add_parser

    def add_parser(name: str, help: str, example: str, description: str = "", **kwargs: Any
                   ) -> argparse.ArgumentParser:
        return original_add_parser(name, parents=[common], help=help,
                                   description=textwrap.fill(f"{help[0].upper()}{help[1:]}. {description}".strip(), 100),
                                   epilog=f"{kwargs.pop('epilog', '')}example:\n  {example}",
                                   formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)

    sub.add_parser = add_parser  # type: ignore[method-assign]
    for add_command in (_add_controller_command, _add_node_command, _add_submit_command, _add_render_command,
                        _add_status_command, _add_listings_command, _add_fetch_command, _add_token_command,
                        _add_job_control_command, _add_viewer_command):
        add_command(sub)
    return parser


def _add_controller_command(sub: Any) -> None:
    p = sub.add_parser("controller", help="run the controller that takes jobs and hands strips to nodes",
                       example="povfarm controller --bind 0.0.0.0 --tls-cert cert.pem --tls-key key.pem",
                       description="It listens on 127.0.0.1:8642 unless told otherwise; its tokens are in "
                                   "DATA_DIR/tokens (see 'povfarm token show').")
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
    p.add_argument("--max-connections", type=int, metavar="N",
                   help="connections holding a valid token, all roles (default 2048; view tokens at most 256, "
                        "submit tokens 128, 64 per address: settings max_view_connections, "
                        "max_submit_connections, max_peer_connections)")
    p.add_argument("--announce", action="store_const", const=True,
                   help="broadcast a signed announcement of this controller on the LAN (UDP port 8643), so "
                        "nodes and clients find it without --controller (setting: announce)")
    p.add_argument("--announce-url", metavar="URL",
                   help="the URL to announce (default: the address it listens on, or sends the broadcast from)")


def _add_node_command(sub: Any) -> None:
    p = sub.add_parser("node", help="run a render node: it takes strips from the controller and renders them",
                       example="povfarm node --controller http://HOST:8642 --token-file node.token",
                       description="It needs the controller's node token. Ctrl-C once lets the current strip "
                                   "finish; twice stops POV-Ray at once.")
    _add_client_flags(p)
    p.add_argument("--name", help="node name (default: the host name)")
    p.add_argument("--povray", metavar="PATH", help="the povray program (default: povray on PATH)")
    p.add_argument("--threads", type=int, help="POV-Ray render threads (default: all cores)")
    p.add_argument("--slots", type=int, help="POV-Ray processes at once (default 2: one starts while another"
                                             " finishes)")
    p.add_argument("--machine", metavar="NAME",
                   help="which box's cores this node shares: nodes of one machine, with nobody watching, get a "
                        "frame in as few strips as keep it busy (default: the running kernel, told by its boot id)")
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


def _add_submit_command(sub: Any) -> None:
    p = _JOB_PARSERS["submit"] = sub.add_parser(
        "submit", help="submit a scene to a controller; prints the job id",
        example="povfarm submit scene.pov +W640 +H480 +A0.3 --controller http://HOST:8642 --wait",
        description="With --wait it shows progress and writes the image as POV-Ray would (beside the scene, "
                    "or where +O/--output says); --output or +O imply --wait. Ctrl-C while waiting leaves "
                    "the job running.", epilog=POVRAY_HELP + "\n")
    _add_client_flags(p)
    _add_job_flags(p)
    p.add_argument("--wait", action="store_true",
                   help="wait for the job, showing progress, then write the image (implied by --output and +O)")
    _add_patience_flag(p)


def _add_render_command(sub: Any) -> None:
    p = _JOB_PARSERS["render"] = sub.add_parser(
        "render", help="render a scene on a local farm (an embedded controller and N local nodes), like povray",
        example="povfarm render scene.pov +W640 +H480 +A0.3      # writes scene.png beside scene.pov",
        description="Takes POV-Ray's command line and writes the image where povray would. Ctrl-C stops "
                    "everything.", epilog=POVRAY_HELP + "\n")
    _add_job_flags(p)
    p.add_argument("--nodes", type=_positive_int, default=2, help="local nodes to start (default 2)")
    p.add_argument("--povray", metavar="PATH", help="the povray program (default: povray on PATH)")
    p.add_argument("--threads", type=int, help="POV-Ray threads per process (default: all cores)")
    p.add_argument("--slots", type=int, help="POV-Ray processes per node at once (default 2)")


def _add_status_command(sub: Any) -> None:
    p = sub.add_parser("status", help="show one job (default: the newest)", example="povfarm status 12 --json")
    _add_client_flags(p)
    p.add_argument("job", type=int, nargs="?", help="job id")
    p.add_argument("--json", action="store_true", help="print JSON")


def _add_listings_command(sub: Any) -> None:
    for name, text, example in (("jobs", "list every job with its state and progress", "povfarm jobs"),
                                ("nodes", "list every node with its state, strips and sandbox", "povfarm nodes --json")):
        p = sub.add_parser(name, help=text, example=example)
        _add_client_flags(p)
        p.add_argument("--json", action="store_true", help="print JSON")


def _add_fetch_command(sub: Any) -> None:
    p = sub.add_parser("fetch", help="write a finished job's image (or an animation's frames)",
                       example="povfarm fetch 12 --output scene.png",
                       description="The file's extension picks the format: .png, .ppm, .tga or .jpg (Pillow).")
    _add_client_flags(p)
    p.add_argument("job", type=int, help="job id")
    p.add_argument("--output", type=Path, metavar="PATH",
                   help="where to write the image; for an animation, a folder for the numbered PNG frames")
    p.add_argument("--animation", type=Path, metavar="FILE", help="write an animation as one animated PNG")
    p.add_argument("--delay", type=int, default=100, metavar="MS", help="frame time in the animated PNG (100)")
    _add_patience_flag(p)


def _add_token_command(sub: Any) -> None:
    p = sub.add_parser("token", help="show the controller's access tokens (run it on the controller's box)",
                       example="povfarm token show --role node > node.token",
                       description="Give each node the node token, each user the submit token and each "
                                   "watcher the view token.")
    p.add_argument("action", choices=("show",), metavar="show", help="print the tokens (the only action)")
    p.add_argument("--role", choices=("submit", "node", "view"), help="print only this role's token")
    p.add_argument("--data-dir", type=Path, metavar="DIR", help="the controller's data directory")
    p.add_argument("--token-file", metavar="FILE", help="the controller's role file (default: DATA_DIR/tokens)")


def _add_job_control_command(sub: Any) -> None:
    for name, text in (("cancel", "cancel a job: nodes stop its POV-Ray at their next heartbeat"),
                       ("pause", "stop leasing a job's strips (strips in flight finish)"),
                       ("resume", "let a paused job render again")):
        p = sub.add_parser(name, help=text, example=f"povfarm {name} 12")
        _add_client_flags(p)
        p.add_argument("job", type=int, help="job id")


def _add_viewer_command(sub: Any) -> None:
    p = sub.add_parser("viewer", help="watch a render live in a window (needs pygame)",
                       example="povfarm viewer 12 --snapshot 12.png --exit-when-done")
    _add_client_flags(p)
    p.add_argument("job", type=_positive_int, nargs="?", help="job id (default: follow the newest job)")
    p.add_argument("--snapshot", type=Path, metavar="FILE",
                   help="when the job ends, write its image (without the overlay) here as PNG")
    p.add_argument("--exit-when-done", action="store_true",
                   help="exit when the job ends: 0 if it is done, 1 if it failed or was canceled")
    p.add_argument("--scale", type=_scale, default="fit", metavar="fit|FACTOR",
                   help="'fit' the image to the window (default) or a zoom factor such as 1 or 0.5")
    _add_patience_flag(p)


def split_povray_args(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """For submit and render: (the arguments for argparse, POV-Ray's own arguments in their order).
    POV-Ray's `-J` or `+W320` would confuse argparse, and their order matters, so they are taken out
    first; a farm flag's value is kept with it (`--option -J` becomes `--option=-J`)."""
    argv = list(argv)
    if not _JOB_PARSERS:
        build_parser()
    index = _command_index(argv)
    if index is None or argv[index] not in _JOB_PARSERS:
        return argv, []
    takes_value = {option: action.nargs != 0 for action in _JOB_PARSERS[argv[index]]._actions
                   for option in action.option_strings}
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


def _command_index(argv: Sequence[str]) -> int | None:
    """Where the subcommand is, past the common flags that may come before it."""
    index = 0
    while index < len(argv):
        arg = argv[index]
        if arg in ("--config", "--log-level"):
            index += 2
        elif arg.startswith("-"):
            index += 1
        else:
            return index
    return None


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
    return run_node(resolve_controller(config, "node"))


def _client(config: Config, role: str = "submit") -> Client:
    return client_for(resolve_controller(config, role), role)


# -- jobs: from POV-Ray's command line to a job and back to POV-Ray's files -----------------------

_EXTENSION_FORMATS = {".png": "N", ".ppm": "P", ".tga": "T", ".jpg": "J", ".jpeg": "J"}


@dataclasses.dataclass
class JobRequest:
    """What `submit`/`render` were asked: the POV-Ray command, the animation and the files to write
    (frame number -> path; frame 0 for a still)."""
    command: povcmd.PovCommand
    animation: Animation | None
    targets: dict[int, Path]
    wants_image: bool          # whether submit waits and writes (--wait, --output or +O)


def prepare_job(args: argparse.Namespace, cwd: Path | None = None) -> JobRequest:
    """Read the command line, decide the output files and check everything that can be checked before
    anything is uploaded or rendered (an INI error, a JPEG without Pillow, an unwritable folder)."""
    cwd = cwd or Path.cwd()
    command = povcmd.parse(args.povray_args, cwd, ini_files=[args.ini] if args.ini else [])
    if command.scene is None:
        raise FarmError(Code.BAD_ARGUMENT, "no scene given: povfarm render SCENE.pov [+W640 +H480 ...], or an INI "
                                           "file with Input_File_Name=")
    _apply_flags(command, args)
    animation = Animation.from_spec(command.animation) if command.animation else None
    if command.file_type == "J":
        _require_pillow()
    povcmd.rendering_options(args.options)          # a bad --option is said before anything else
    targets = _targets(command, animation, args.output, cwd)
    wants_image = args.output is not None or command.output is not None
    if args.command == "render" or args.wait or wants_image:
        for path in {target.parent for target in targets.values()}:
            _check_writable(path)
    for note in command.notes:
        sys.stderr.write(f"povfarm: {note}\n")
    return JobRequest(command, animation, targets, wants_image)


def _apply_flags(command: povcmd.PovCommand, args: argparse.Namespace) -> None:
    """The farm's own flags win over POV-Ray's switches."""
    command.width = args.width or command.width
    command.height = args.height or command.height
    if args.bits:
        command.bits = args.bits
    if args.frames:
        command.animation["first"], command.animation["last"] = parse_range(args.frames, "--frames")
    if args.clock:
        command.animation["initial_clock"], command.animation["final_clock"] = parse_clock(args.clock)
    if args.cyclic:
        command.animation["cyclic"] = True
    if args.subset:
        command.animation["subset_first"], command.animation["subset_last"] = parse_range(args.subset, "--subset")
    suffix = args.output.suffix.lower() if args.output is not None else ""
    if suffix in _EXTENSION_FORMATS:
        wanted = "C" if command.file_type == "C" and suffix == ".tga" else _EXTENSION_FORMATS[suffix]
        if command.file_type_given and wanted != command.file_type:
            raise FarmError(Code.BAD_ARGUMENT, f"--output {args.output} names a {povcmd.FORMATS[wanted][0]} file, "
                                               f"but +F{command.file_type} asks for "
                                               f"{povcmd.FORMATS[command.file_type][0]}")
        command.file_type = wanted
    povcmd.settle_format(command)


def _targets(command: povcmd.PovCommand, animation: Animation | None, output: Path | None,
             cwd: Path) -> dict[int, Path]:
    extension = command.extension()
    assert command.scene is not None
    numbered = animation is not None and povcmd.is_numbered(animation.first, animation.last)
    if animation is None:
        frames = [0]
    else:
        frames = list(range(animation.rendered_first, animation.rendered_last + 1))
    digits = animation.digits if animation is not None else 0
    if output is not None:       # --output: a file for a still, a folder for an animation's numbered frames
        if animation is None:
            return {frames[0]: output}
        return {n: povcmd.output_path((output / command.scene.stem, extension), n, digits) for n in frames}
    base = povcmd.output_base(command.scene, command.output, extension, cwd)
    if not numbered:
        return {frames[0]: povcmd.output_path(base)}
    return {n: povcmd.output_path(base, n, digits) for n in frames}


def _require_pillow() -> None:
    try:
        import PIL.Image  # noqa: F401
    except ImportError:
        raise FarmError(Code.BAD_ARGUMENT, "JPEG output (+FJ) needs Pillow, which is not installed here: "
                                           "pip install pillow, or choose PNG (+FN), PPM (+FP) or Targa (+FT)"
                        ) from None


def _check_writable(folder: Path) -> None:
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK):
        raise FarmError(Code.BAD_ARGUMENT, f"cannot write the image into {folder}: give +O<file> or --output "
                                           f"somewhere writable")


def submit_job(client: Client, args: argparse.Namespace, request: JobRequest) -> int:
    """Pack the scene, upload the bundle if the controller lacks it, queue the job. Returns the job id."""
    command = request.command
    plan = bundle.plan_bundle(command.scene, args.assets, library_paths=command.library_paths)
    data = bundle.pack(plan)
    digest = bundle.bundle_hash(data)
    if not client.call("bundles.has", digest):
        client.call("bundles.upload", _binary(data))
    return client.call("jobs.submit", job_spec(args, request, digest, plan))


def _preview_setting(value: Any) -> PreviewMode:
    try:
        return PreviewMode.parse(value)
    except ValueError as err:
        raise FarmError(Code.BAD_ARGUMENT, f"setting 'preview': {err}") from None


def job_spec(args: argparse.Namespace, request: JobRequest, digest: str, plan: bundle.BundlePlan
             ) -> dict[str, Any]:
    """The jobs.submit struct."""
    command = request.command
    library = [povcmd.library_option(folder) for folder in plan.library_dirs]
    spec = {"bundle": digest, "scene": plan.scene, "width": command.width or 640,
            "height": command.height or 480,
            "options": [*command.options, *library, *povcmd.rendering_options(args.options)],
            "strips": args.strips, "bits": command.bits or 8, "priority": args.priority,
            "name": args.name or command.scene.stem, "radiosity_prepass": args.radiosity_prepass,
            "preview": _preview_setting(getattr(args, "preview", "auto")).value}
    if request.animation is not None:
        spec["animation"] = request.animation.to_spec()
    return spec


def _binary(data: bytes):
    import xmlrpc.client
    return xmlrpc.client.Binary(data)


def _progress_line(status: dict[str, Any]) -> str:
    return (f"job {status['id']} {status['state']}: {status['strips_done']}/{status['strips_total']} strips, "
            f"{status['progress'] * 100:.0f}%")


class _Progress:
    """What a waiting client writes on stderr: its progress line (rewritten in place on a terminal) and
    notes between (an outage, a job no node can take), each on a line of its own."""

    def __init__(self):
        self.tty = sys.stderr.isatty()
        self._last = ""
        self._open = False       # a progress line waits on the terminal for its next rewrite

    def show(self, line: str) -> None:
        if line == self._last:
            return
        self._last = line
        sys.stderr.write(("\r" + line + "\033[K") if self.tty else line + "\n")
        sys.stderr.flush()
        self._open = self.tty

    def note(self, text: str) -> None:
        if self._open:
            self._last = ""      # the progress line is written again below the note
        self.end()
        sys.stderr.write(f"povfarm: {text}\n")
        sys.stderr.flush()

    def end(self) -> None:
        if self._open:
            sys.stderr.write("\n")
            self._open = False


def patient_client(client: Client, limit: float, say: Callable[[str], None], stop: threading.Event | None = None,
                   reached: bool = False) -> Patient:
    """`client` riding out outages of its controller for up to `limit` seconds (the setting `patience`),
    saying so with `say`; a set `stop` ends the retrying. `reached`: the controller answered already."""
    patience = Patience(Outage(client.url, limit, say), sleep=stop.wait if stop is not None else time.sleep,
                        rng=random.random, reached=reached)
    return Patient(client, patience)


def wait_for_job(client: Client | Patient, job_id: int, interval: float = 1.0,
                 stop: threading.Event | None = None, progress: _Progress | None = None,
                 local: bool = False) -> dict[str, Any] | None:
    """Show progress on stderr until the job ends; return its final status (None when `stop` was set).
    jobs.wait returns as soon as the job changes, so the end is seen at once. A job that no live node can
    render is said at once: for `local` nodes (render's, which nothing will mend) it is an error; else
    it is waited for as long as the client's patience allows."""
    progress = progress or _Progress()
    try:
        while stop is None or not stop.is_set():
            try:
                status = client.call("jobs.wait", job_id, interval)
            except FarmError:
                if stop is not None and stop.is_set():
                    return None
                raise
            _check_blocked(status, getattr(client, "patience", None), progress, local)
            progress.show(_progress_line(status))
            if status["state"] in FINISHED:
                return status
        return None
    finally:
        progress.end()


def _check_blocked(status: dict[str, Any], patience: Patience | None, progress: _Progress, local: bool) -> None:
    job_id, reason = status["id"], status.get("blocked", "")    # an older controller never says
    if local and reason:
        raise FarmError(Code.RENDER_FAILED, f"job {job_id} is blocked: {reason}")
    if patience is None:
        return
    if patience.blocked(reason):
        limit = patience.outage.limit
        progress.note(f"job {job_id} is blocked: {reason}; waiting for one that can"
                      + (f" (up to {duration(limit)})" if limit else "") if reason
                      else f"job {job_id} is no longer blocked: a node can render it")
    if patience.blocked_too_long():
        raise FarmError(Code.RENDER_FAILED, f"job {job_id} was blocked for {duration(patience.outage.limit)} (the "
                                            f"setting patience): {reason}. It stays on the farm: "
                                            f"povfarm cancel {job_id} drops it")


def finish_job(client: Client, status: dict[str, Any], request: JobRequest | None) -> int:
    """Report how a job ended and write its image; the exit code for `submit --wait` and `render`."""
    if status["state"] == "failed":
        sys.stderr.write(f"povfarm: job {status['id']} failed:\n{status['error'].rstrip()}\n")
        return EXIT_FAILED
    if status["state"] == "canceled":
        sys.stderr.write(f"povfarm: job {status['id']} was canceled\n")
        return EXIT_FAILED
    elapsed = status["finished"] - (status["started"] or status["submitted"])
    if request is not None:
        written = write_targets(client, status["id"], request)
        sys.stderr.write(f"job {status['id']} done in {elapsed:.1f} s: wrote {written}\n")
    else:
        sys.stderr.write(f"job {status['id']} done in {elapsed:.1f} s; "
                         f"fetch it with: povfarm fetch {status['id']} --output FILE.png\n")
    return EXIT_OK


def write_targets(client: Client, job_id: int, request: JobRequest) -> str:
    """Fetch each frame's PNG and write it in the asked format, under POV-Ray's names."""
    command = request.command
    for frame, path in request.targets.items():
        png = client.call("jobs.fetch", job_id, frame).data
        _write_file(path, encode_image(png, command.file_type, command.quality))
    paths = list(request.targets.values())
    return str(paths[0]) if len(paths) == 1 else f"{len(paths)} frames, {paths[0]} ... {paths[-1]}"


def encode_image(png: bytes, file_type: str, quality: int | None = None) -> bytes:
    """The controller's PNG as the file type POV-Ray was asked for (+FN +FP +FT +FC +FJ)."""
    if file_type == "N":
        return png
    raster = decode_png(png)
    if file_type == "P":
        return encode_ppm(raster)
    if raster.bits != 8:
        raise FarmError(Code.BAD_ARGUMENT, f"the image has 16 bits per channel and {povcmd.FORMATS[file_type][0]} "
                                           f"files hold 8: write a .png or .ppm file")
    if file_type in "TC":
        return encode_tga(raster, rle=file_type == "C")
    return _encode_jpeg(raster, quality)


def _encode_jpeg(raster: Raster, quality: int | None) -> bytes:
    import io

    from PIL import Image

    mode = "RGB" if raster.channels == 3 else "RGBA"
    image = Image.frombytes(mode, (raster.width, raster.height), raster.pixels).convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=min(max(quality or 95, 1), 100))
    return buffer.getvalue()


def write_output(client: Client, status: dict[str, Any], output: Path,
                 frames: dict[int, bytes] | None = None) -> str:
    """`fetch`: a still's PNG to `output`; an animation's frames into the folder `output`, named as POV-Ray
    names them (scene name + frame number padded to the width of the final frame number)."""
    frames = frames if frames is not None else fetch_frames(client, status)
    if not status["frame_digits"]:
        file_type = _EXTENSION_FORMATS.get(output.suffix.lower(), "N")    # x.ppm is a PPM file, never a PNG
        if file_type == "J":
            _require_pillow()
        _write_file(output, encode_image(frames[status["first_frame"]], file_type))
        return str(output)
    stem = Path(status["scene"]).stem
    for number, png in frames.items():
        _write_file(povcmd.output_path((output / stem, ".png"), number, status["frame_digits"]), png)
    return f"{len(frames)} frames into {output}"


def fetch_frames(client: Client, status: dict[str, Any]) -> dict[int, bytes]:
    """Every frame's PNG, fetched once."""
    return {number: client.call("jobs.fetch", status["id"], number).data
            for number in range(status["first_frame"], status["last_frame"] + 1)}


def write_animation(client: Client, status: dict[str, Any], output: Path, delay_ms: int,
                    frames: dict[int, bytes] | None = None) -> None:
    pngs = frames if frames is not None else fetch_frames(client, status)
    try:
        _write_file(output, apng_from_pngs(list(pngs.values()), delay_ms))
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


class _StopRequest:
    """SIGINT/SIGTERM set an event instead of raising inside a call: the main thread then stops at a
    point of its choosing, with no request half-sent and no traceback."""

    def __init__(self):
        self.event = threading.Event()
        self._previous = {}

    def __enter__(self) -> threading.Event:
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)
        return self.event

    def _handle(self, signum: int, frame: Any) -> None:
        self.event.set()

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def cmd_submit(config: Config, args: argparse.Namespace) -> int:
    request = prepare_job(args)
    client = _client(config)
    job_id = submit_job(client, args, request)
    print(job_id, flush=True)
    if not args.wait and not request.wants_image:
        return EXIT_OK
    progress = _Progress()
    with _StopRequest() as stop:
        patient = patient_client(client, config.patience, progress.note, stop, reached=True)
        status = wait_for_job(patient, job_id, stop=stop, progress=progress)
    if status is None:
        _say_job_goes_on(job_id, args)
        return EXIT_INTERRUPTED
    return finish_job(patient, status, request)


def _say_job_goes_on(job_id: int, args: argparse.Namespace) -> None:
    where = f" --controller {args.controller}" if getattr(args, "controller", None) else ""
    sys.stderr.write(f"povfarm: stopped waiting; job {job_id} goes on rendering on the farm.\n"
                     f"  povfarm status {job_id}{where}     # how far it is\n"
                     f"  povfarm viewer {job_id}{where}     # watch it\n"
                     f"  povfarm fetch {job_id}{where} --output FILE   # the image, once it is done\n"
                     f"  povfarm cancel {job_id}{where}     # stop it\n")


def cmd_render(config: Config, args: argparse.Namespace) -> int:
    request = prepare_job(args)
    workspace = Path(tempfile.mkdtemp(prefix="povfarm-render-"))
    config.data_dir, config.bind, config.port = workspace / "controller", "127.0.0.1", 0
    config.token, config.token_file, config.tls_cert, config.tls_key = "", "", "", ""
    config.announce = False            # a one-box farm is nobody else's business
    if logging.getLogger().getEffectiveLevel() >= logging.WARNING:    # unless more was asked for (INFO)
        _quiet_local_farm_logs()
    nodes: list[_LocalNode] = []
    with _StopRequest() as stop:
        controller, nodes = _start_local_farm(config, args.nodes, workspace)
        try:
            controller.start_in_thread()
            client = Client(controller.url, config.rpc_timeout, token=controller.tokens["submit"])
            _wait_for_local_nodes(nodes, stop)
            status = None
            if not stop.is_set():
                job_id = submit_job(client, args, request)
                status = wait_for_job(client, job_id, interval=0.1, stop=stop, local=True)
            if status is None:
                sys.stderr.write("povfarm: interrupted; stopping the local nodes\n")
                return EXIT_INTERRUPTED
            return finish_job(client, status, request)
        finally:
            _stop_local_farm(nodes, controller, abort=stop.is_set())
            shutil.rmtree(workspace, ignore_errors=True)


def _start_local_farm(config: Config, count: int, workspace: Path) -> tuple[Any, list["_LocalNode"]]:
    """The controller and its nodes, all in this process."""
    from farm.controller import Controller

    controller = Controller(config)
    nodes: list[_LocalNode] = []
    try:
        for index in range(count):
            nodes.append(_LocalNode(controller.url, controller.tokens["node"], index, workspace, config))
    except BaseException:
        _stop_local_farm(nodes, controller, abort=True)
        raise
    return controller, nodes


def _quiet_local_farm_logs() -> None:
    """The job's failure is printed once by `render`: the farm's own notes about strips and leases would
    repeat it, so only errors and the nodes' sandbox warning are shown."""
    from farm.node import BROKEN_NODE

    def worth_showing(record: logging.LogRecord) -> bool:
        if record.msg == BROKEN_NODE:
            return False       # render says once, for all its nodes, why none can render the job
        return record.levelno >= logging.ERROR or "UNCONFINED" in record.getMessage()

    for layer in ("farm.controller", "farm.api", "farm.service", "farm.store", "farm.db"):
        logging.getLogger(layer).setLevel(logging.ERROR)
    for layer in ("farm.node", "farm.probe", "farm.render", "farm.bundle", "farm.client", "farm.povray",
                  "farm.sandbox"):
        logging.getLogger(layer).addFilter(worth_showing)


def _stop_local_farm(nodes: Sequence["_LocalNode"], controller: Any, abort: bool) -> None:
    """On an interrupt, nodes first (they stop POV-Ray at once and hand their strips back while the
    controller still answers), then the controller, once nothing talks to it any more. After the job
    ended there is nothing to hand back, so both wind down at once."""
    for node in nodes:
        node.stop(abort)
    if not abort:
        controller.shutdown()    # the job is over and nothing is handed back: both wind down at once
    deadline = time.monotonic() + (1.0 if abort else 10)
    for node in nodes:
        node.wait(deadline)
    if abort:
        controller.shutdown()


def _wait_for_local_nodes(nodes: Sequence["_LocalNode"], stop: threading.Event, timeout: float = 20.0) -> None:
    """Let the local nodes register before the job is planned, so an animation's runs of frames are cut
    for all of them."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not stop.is_set():
        if any(node.ended for node in nodes):
            raise FarmError(Code.RENDER_FAILED, "a local node stopped at start; its messages are above")
        if all(node.registered for node in nodes):
            return
        stop.wait(0.01)


class _LocalNode:
    """A render node of `render`: the node's own code (`farm.node.Node`) on a thread of this process.
    In the process it needs no interpreter and imports of its own (a fifth of a second before it could
    take work), and it ends with `render` however that ends; POV-Ray runs as on any node, confined, in a
    session of its own (so a Ctrl-C at the terminal reaches only `render`, which stops the nodes in
    order), and dies with it."""

    def __init__(self, url: str, token: str, index: int, workspace: Path, config: Config):
        from farm.node import Node

        mine = dataclasses.replace(config, name=f"local-{index + 1}", work_dir=workspace / f"node-{index + 1}",
                                   controller=url, token=token, token_file="")
        self.node = Node(mine, Client(url, config.rpc_timeout, token=token))
        self._thread = threading.Thread(target=self._run, name=f"node-{index + 1}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self.node.run()
        except FarmError as err:     # a refused token or the like: said once, and `render` sees it ended
            log.error("local node %s: %s", self.node.config.name, err)

    @property
    def registered(self) -> bool:
        return self.node.node_id is not None

    @property
    def ended(self) -> bool:
        return not self._thread.is_alive()

    def stop(self, abort: bool) -> None:
        """Finish up and stop; on an interrupt, stop POV-Ray now and hand the strip back."""
        self.node.stop(now=abort)

    def wait(self, deadline: float) -> None:
        self._thread.join(max(0.05, deadline - time.monotonic()))


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
    if status.get("blocked"):
        print(f"  blocked:  {status['blocked']}")
    print(f"  progress: {status['progress'] * 100:.1f}%  ({status['strips_done']}/{status['strips_total']} strips,"
          f" {status['strips_leased']} rendering)")
    if status["error"]:
        print("  error:    " + status["error"].replace("\n", "\n            "))
    return EXIT_OK


def _json_status(status: dict[str, Any]) -> dict[str, Any]:
    status = dict(status)
    status["error"] = status["error"] or None
    status["blocked"] = status.get("blocked") or None
    for key in ("started", "finished"):
        status[key] = status[key] or None
    return status


def cmd_jobs(config: Config, args: argparse.Namespace) -> int:
    jobs = _client(config, "view").call("jobs.list")
    if args.json:
        print(json.dumps([_json_status(job) for job in jobs], indent=2))
        return EXIT_OK
    rows = [(str(j["id"]), j["state"] + (" (blocked)" if j.get("blocked") else ""), f"{j['progress'] * 100:.0f}%",
             f"{j['width']}x{j['height']}", f"{j['strips_done']}/{j['strips_total']}", j["name"]) for j in jobs]
    _print_table(("ID", "STATE", "DONE", "SIZE", "STRIPS", "NAME"), rows)
    for job in jobs:
        if job.get("blocked"):
            print(f"job {job['id']} is blocked: {job['blocked']}")
    return EXIT_OK


def cmd_nodes(config: Config, args: argparse.Namespace) -> int:
    nodes = _client(config, "view").call("nodes.list")
    if args.json:
        print(json.dumps(nodes, indent=2))
        return EXIT_OK
    now = time.time()
    rows = [(n["name"], n["state"], n["current"] or "-", str(n["strips_done"]), str(n["strips_failed"]),
             f"{max(0.0, now - n['last_seen']):.0f}s ago", _upload_rate(n.get("upload_bps", 0.0)),
             n["sandbox"] if n["sandbox"] != "none" else "NONE (unsafe)",
             n["error"] or f"{n['povray']} ({n.get('povray_flavour', 'console')})") for n in nodes]
    _print_table(("NAME", "STATE", "CURRENT", "DONE", "FAILED", "SEEN", "UPLOAD", "SANDBOX", "POV-RAY"), rows)
    return EXIT_OK


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
    client = patient_client(_client(config, "view"), config.patience, _Progress().note)
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

    config = resolve_controller(config, "view")

    def make_client(timeout: float) -> Client:      # long polls need a longer timeout than other calls
        return _client(dataclasses.replace(config, rpc_timeout=timeout), "view")

    return run_viewer(config.controller, args.job or 0, snapshot=args.snapshot,
                      exit_when_done=args.exit_when_done, scale=args.scale, rpc_timeout=config.rpc_timeout,
                      make_client=make_client, patience=config.patience)


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
    parser = build_parser()
    farm_args, povray_args = split_povray_args(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(farm_args)
    if args.command in _JOB_PARSERS:
        args.povray_args = povray_args
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
        return COMMANDS[args.command](config, args)
    except FarmError as err:
        sys.stderr.write(f"povfarm: error: {err}\n")
        return EXIT_FAILED
    except KeyboardInterrupt:
        sys.stderr.write("povfarm: interrupted\n")
        return EXIT_INTERRUPTED
