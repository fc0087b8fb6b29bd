"""A job from POV-Ray's command line: the flags `submit` and `render` share, read into a `JobRequest`
(the POV-Ray command, the animation, the files to write), checked before anything is uploaded, then
packed into a bundle and sent as a `jobs.submit` spec."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path
from typing import Any, Iterable

from farm import povcmd, povini, tags
from farm.animation import Animation, parse_clock, parse_range
from farm.bundle.packing import BundlePlan, check_scene, pack, plan_bundle
from farm.bundle.rules import bundle_hash
from farm.cli.common import positive_int
from farm.cli.images import EXTENSION_FORMATS, encode_image, render_stamp, require_pillow, write_file
from farm.client import Client, binary
from farm.faults import Code, FarmError
from farm.features import JOB_AFTER, NODE_TAGS, POVRAY_PIN, Features
from farm.kinds import PreviewMode


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


_ALLOWED_HELP = ("+A[threshold] -A, +AM1..3, +AG<gamma>, +J[amount] -J, +R<depth>, +Q<0-11>, +UA (alpha), "
                 "+MB<n>, +BM1|2, +MV<version>, +UL +UV +UR +UD +SU +HR +RVP, +BS<block size>, +K<clock>, "
                 "Declare=NAME=NUMBER, File_Gamma=<gamma|sRGB>")
POVRAY_HELP = f"""\
POV-Ray's own defaults come first, as with `povray`: the first of $POVINI, ./povray.ini,
~/.povray/3.7/povray.ini and /etc/povray/3.7/povray.ini that exists (Debian's sets 800x600 and the
library paths where res120.ini and quickres.ini are found); povfarm says which it read. The farm's own
size, 640x480, applies only when none sets one. --no-povray-ini skips them.
POV-Ray's own command line works after the scene, as with `povray` (settings apply in order, the
last one wins; a farm flag such as --width overrides them):
  size            +W<width> +H<height>                       (Width=, Height=)
  output          +O<file> or +O<folder>/; without +O the image goes beside the scene, named after
                  it, as POV-Ray names it (animations: scene01.png ... padded to the last frame);
                  +O- the image on standard output; -F (Output_To_File=Off) no image at all
  format          +FN (PNG) +FN16 +UA (alpha), +FP +FP16 (PPM), +FT (Targa), +FC (Targa, RLE),
                  +FJ (JPEG, quality 85 as POV-Ray's, needs Pillow)
  animation       +KFI<first> +KFF<last> +KI<clock> +KF<clock> +KC +SF<frame> +EF<frame>
  library paths   +L<folder> (Library_Path=): local folders are shipped with the scene
  INI files       scene.ini, scene.ini[Section] and Key=Value settings, anywhere on the line
  scene's files   what the scene writes (#fopen) comes back into the current folder, as povray
                  leaves it; frames that read earlier frames' images (desk.ini) render in order
  stream files    All_File=, Debug_File=, +GDfile ... (Append_File=on adds): written beside the image
                  after the job, as povray writes them; -GD, Debug_Console=off: not printed
  rendering       {_ALLOWED_HELP}
  ignored         -D +P -V -X +SP/+EP +WT +WL +B +MI +RS +RP +GP, Display_Gamma,
                  BSP_... (one note per reason)
  refused         +SR/+ER/+SC/+EC (the farm renders whole images), +RF (radiosity files), +TH +UF +UO
                  +STP +KLA +RTR +HI, +I-, shell-out settings such as Pre_Scene_Command (never run on nodes);
                  values that do nothing (Dither=off, End_Row=1, an empty command) pass. Every INI key of
                  POV-Ray 3.7 is known; a typo is "not a POV-Ray setting" with the closest key
"""


def add_job_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("povray_args", nargs="*", metavar="SCENE|INI|+SWITCH",
                        help="the .pov scene, INI files and POV-Ray switches, as `povray` takes them "
                             "(see below)")
    parser.add_argument("--width", type=positive_int, help="image width in pixels (default: +W or the INI's or "
                                                            "povray.ini's, else 640)")
    parser.add_argument("--height", type=positive_int, help="image height in pixels (default: +H or the "
                                                             "INI's or povray.ini's, else 480)")
    parser.add_argument("--strips", type=_strips, default="auto",
                        help="strips per frame: 'auto' (default) or a number; edges fall on 32-row blocks")
    parser.add_argument("--no-interleave", action="store_false", dest="interleave",
                        help="cut a frame into bands of rows; by default its strips are interleaved, each a "
                             "little of the whole frame in 32-pixel blocks, so their costs are alike")
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
    parser.add_argument("--require", action="append", default=[], metavar="TAG",
                        help="only nodes with this tag render the job (repeatable, or TAG,TAG: all are required)")
    parser.add_argument("--prefer", action="append", default=[], metavar="TAG",
                        help="when several nodes wait, those with this tag get the job first (repeatable)")
    parser.add_argument("--after", action="append", default=[], metavar="JOB[,JOB...]",
                        help="queue the job until these jobs are done; it fails (is canceled) when one of them "
                             "fails (is canceled) (repeatable)")
    parser.add_argument("--povray-version", metavar="VERSION",
                        help="only nodes with this POV-Ray version render the job, e.g. 3.7.0.10 (as "
                             "`povfarm nodes` shows it; default: any, but each frame on one build)")
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
    parser.add_argument("--no-povray-ini", action="store_false", dest="povray_ini",
                        help="do not read POV-Ray's own defaults (povray.ini, as `povray` finds it)")


@dataclasses.dataclass
class JobRequest:
    """What `submit`/`render` were asked: the POV-Ray command, the animation and the files to write
    (frame number -> path, frame 0 for a still; the path is None for +O-, the image on standard output,
    and no frame is written at all for -F)."""
    command: povcmd.PovCommand
    animation: Animation | None
    targets: dict[int, Path | None]
    wants_image: bool          # whether submit waits and writes (--wait, --output or +O)


def prepare_job(args: argparse.Namespace, cwd: Path | None = None) -> JobRequest:
    """Read the command line, decide the output files and check everything that can be checked before
    anything is uploaded or rendered (an INI error, a JPEG without Pillow, an unwritable folder)."""
    cwd = cwd or Path.cwd()
    defaults = povini.find_povray_ini(os.environ, cwd) if getattr(args, "povray_ini", True) else None
    command = povcmd.parse(args.povray_args, cwd, ini_files=[args.ini] if args.ini else [], defaults=defaults,
                           include=povini.include_path(os.environ))
    if command.scene is None:
        raise FarmError(Code.BAD_ARGUMENT, "no scene given: povfarm render SCENE.pov [+W640 +H480 ...], or an INI "
                                           "file with Input_File_Name=")
    check_scene(command.scene)       # before any note: a missing scene is said in one line
    _apply_flags(command, args)
    animation = Animation.from_spec(command.animation) if command.animation else None
    if command.file_type == "J":
        require_pillow()
    povcmd.rendering_options(args.options)          # a bad --option is said before anything else
    targets = _targets(command, animation, args.output, cwd)
    wants_image = args.output is not None or command.output is not None
    if (args.command == "render" or args.wait or wants_image) and command.to_file:
        for path in {target.parent for target in targets.values() if target is not None}:
            _check_writable(path)
    if defaults is not None:          # said once all is well: an error alone stays one line
        sys.stderr.write(f"povfarm: read POV-Ray's defaults from {defaults}\n")
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
    if args.output is not None:        # --output names a file: POV-Ray's +O- and -F give way to it
        command.output, command.to_file = None, True
    suffix = args.output.suffix.lower() if args.output is not None else ""
    if suffix in EXTENSION_FORMATS:
        wanted = "C" if command.file_type == "C" and suffix == ".tga" else EXTENSION_FORMATS[suffix]
        if command.file_type_given and wanted != command.file_type:
            raise FarmError(Code.BAD_ARGUMENT, f"--output {args.output} names a {povcmd.FORMATS[wanted][0]} file, "
                                               f"but +F{command.file_type} asks for "
                                               f"{povcmd.FORMATS[command.file_type][0]}")
        command.file_type = wanted
    povcmd.settle_format(command)


def _targets(command: povcmd.PovCommand, animation: Animation | None, output: Path | None,
             cwd: Path) -> dict[int, Path | None]:
    extension = command.extension()
    assert command.scene is not None
    numbered = animation is not None and povcmd.is_numbered(animation.first, animation.last)
    if animation is None:
        frames = [0]
    else:
        frames = list(range(animation.rendered_first, animation.rendered_last + 1))
    if command.to_stdout:
        return dict.fromkeys(frames)
    digits = animation.digits if animation is not None else 0
    if output is not None:       # --output: a file for a still, a folder for an animation's numbered frames
        if animation is None:
            return {frames[0]: output}
        return {n: povcmd.output_path((output / command.scene.stem, extension), n, digits) for n in frames}
    base = povcmd.output_base(command.scene, command.output, extension, cwd)
    if not numbered:
        return {frames[0]: povcmd.output_path(base)}
    return {n: povcmd.output_path(base, n, digits) for n in frames}


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
    plan = plan_bundle(command.scene, args.assets, library_paths=command.library_paths)
    data = pack(plan)
    digest = bundle_hash(data)
    spec = job_spec(args, request, digest, plan)
    _check_features(client, spec)
    if not client.call("bundles.has", digest):
        client.call("bundles.upload", binary(data))
    return client.call("jobs.submit", spec)


def _check_features(client: Client, spec: dict[str, Any]) -> None:
    """An older controller would ignore --require, --prefer and --after and render the job anywhere, at
    once: refused here instead."""
    needs = [(key, feature) for key, feature in (("require", NODE_TAGS), ("prefer", NODE_TAGS), ("after", JOB_AFTER),
                                                 ("povray_version", POVRAY_PIN))
             if key in spec]
    if needs:
        features = Features.of_reply(client.call("api.version"))
        for key, feature in needs:
            if feature not in features:
                where = getattr(client, "url", "?")
                raise FarmError(Code.BAD_ARGUMENT, f"the controller at {where} is older than "
                                                   f"--{key.replace('_', '-')}: it would "
                                                   "render the job without it; upgrade it")


def _preview_setting(value: Any) -> PreviewMode:
    try:
        return PreviewMode.parse(value)
    except ValueError as err:
        raise FarmError(Code.BAD_ARGUMENT, f"setting 'preview': {err}") from None


def job_spec(args: argparse.Namespace, request: JobRequest, digest: str, plan: BundlePlan
             ) -> dict[str, Any]:
    """The jobs.submit struct."""
    command = request.command
    library = [povcmd.library_option(folder) for folder in plan.library_dirs]
    spec = {"bundle": digest, "scene": plan.scene, "width": command.width or 640,
            "height": command.height or 480,
            "options": [*command.options, *library, *povcmd.rendering_options(args.options)],
            "strips": args.strips, "bits": command.bits or 8, "priority": args.priority,
            "name": args.name or command.scene.stem, "radiosity_prepass": args.radiosity_prepass,
            "interleave": getattr(args, "interleave", True),
            "preview": _preview_setting(getattr(args, "preview", "auto")).value}
    if request.animation is not None:
        spec["animation"] = request.animation.to_spec()
    after = _job_ids(getattr(args, "after", []))
    if after:
        spec["after"] = after
    if getattr(args, "povray_version", None):
        spec["povray_version"] = args.povray_version
    for key in ("require", "prefer"):
        chosen = tags.parse(getattr(args, key, []), f"--{key}")
        if chosen:
            spec[key] = list(chosen)
    return spec


def _job_ids(values: list[str]) -> list[int]:
    """--after's job ids, from "3,4" and repeated flags."""
    try:
        return [int(part) for value in values for part in value.split(",") if part.strip()]
    except ValueError:
        raise FarmError(Code.BAD_ARGUMENT, f"--after takes job ids, e.g. --after 3,4, not {values!r}") from None


def write_targets(client: Client, job_id: int, request: JobRequest, frames: Iterable[int] | None = None) -> str:
    """Fetch each frame's PNG (or those of `frames`) and write it in the asked format, under POV-Ray's
    names, or on standard output one after another (+O-), or nowhere (-F, Output_To_File=Off)."""
    command = request.command
    if not command.to_file:
        return "nothing (Output_To_File is off)"
    chosen = list(request.targets if frames is None else frames)
    stamp = render_stamp(client, command.options)
    for frame in chosen:
        png = client.call("jobs.fetch", job_id, frame).data
        data = encode_image(png, command.file_type, stamp, command.quality)
        path = request.targets[frame]
        if path is None:
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()
        else:
            write_file(path, data)
    paths = [request.targets[frame] for frame in chosen]
    if command.to_stdout:
        return f"{'the image' if len(paths) == 1 else f'{len(paths)} frames'} on standard output"
    return str(paths[0]) if len(paths) == 1 else f"{len(paths)} frames, {paths[0]} ... {paths[-1]}"
