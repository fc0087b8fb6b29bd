"""A job's images as files: the controller's PNGs written in the format a file's name or POV-Ray's +F
switch asks for, an animation's frames under POV-Ray's numbered names, or one animated PNG."""

from __future__ import annotations

import importlib
import sysconfig
import time
from pathlib import Path
from typing import Any, Sequence

from farm import atomic, povcmd, scenefiles
from farm.client import Client
from farm.faults import Code, FarmError
from farm.features import SCENE_FILES, Features
from farm.images.png import apng_from_pngs, decode_png
from farm.images.ppm import encode_ppm
from farm.images.raster import Raster
from farm.images.stamp import Stamp, file_gamma, jpeg_comment, ppm_comments, stamp_png
from farm.images.tga import encode_tga

EXTENSION_FORMATS = {".png": "N", ".ppm": "P", ".tga": "T", ".jpg": "J", ".jpeg": "J"}


def require_pillow() -> None:
    try:
        importlib.import_module("PIL.Image")     # only to know it is there: the JPEG encoder imports it
    except ImportError:
        raise FarmError(Code.BAD_ARGUMENT, "JPEG output (+FJ) needs Pillow, which is not installed here: "
                                           "pip install pillow, or choose PNG (+FN), PPM (+FP) or Targa (+FT)"
                        ) from None


# POV-Ray 3.7 writes JPEG with no chroma subsampling (4:4:4) at the quality Compression= gives, 85 when it
# gives 0 or 1 or nothing; the number in +FJ<n> is never read (measured from Debian's povray's files: the
# quantization tables, sampling factors 1x1; and in its source, base/image/jpeg.cpp).
JPEG_QUALITY = 85


def jpeg_quality(compression: int) -> int:
    return JPEG_QUALITY if compression in (0, 1) else min(max(compression, 1), 100)


def encode_image(png: bytes, file_type: str, stamp: Stamp | None = None, quality: int = 0) -> bytes:
    """The controller's PNG as the file type POV-Ray was asked for (+FN +FP +FT +FC +FJ), with what POV-Ray
    writes beside the pixels when there is a `stamp`."""
    if file_type == "N":
        return png if stamp is None else stamp_png(png, stamp, _PNG_CHANNELS[png[25]], png[24])
    raster = decode_png(png)
    if file_type == "P":
        return encode_ppm(raster, ppm_comments(stamp) if stamp is not None else b"")
    if raster.bits != 8:
        raise FarmError(Code.BAD_ARGUMENT, f"the image has 16 bits per channel and {povcmd.FORMATS[file_type][0]} "
                                           f"files hold 8: write a .png or .ppm file")
    if file_type in "TC":
        return encode_tga(raster, rle=file_type == "C", stamp=stamp)
    return _encode_jpeg(raster, stamp, jpeg_quality(quality))


_PNG_CHANNELS = {2: 3, 6: 4}      # the farm's PNG colour types: RGB, RGBA


def _encode_jpeg(raster: Raster, stamp: Stamp | None, quality: int) -> bytes:
    import io

    from PIL import Image

    mode = "RGB" if raster.channels == 3 else "RGBA"
    image = Image.frombytes(mode, (raster.width, raster.height), raster.pixels).convert("RGB")
    buffer = io.BytesIO()
    extra = {"comment": jpeg_comment(stamp)} if stamp is not None else {}
    image.save(buffer, format="JPEG", quality=quality, subsampling=0, **extra)
    return buffer.getvalue()


def render_stamp(client: Client, options: Sequence[str]) -> Stamp:
    """The metadata of the files `render` and `submit` write: the nodes' POV-Ray version (the first
    node that names one), this box's platform, the job's file gamma, now."""
    versions = [node.get("povray", "") for node in client.call("nodes.list")]
    version = next((v for v in versions if v), "")
    return Stamp(software=f"POV-Ray {version}".strip(), platform=sysconfig.get_config_var("HOST_GNU_TYPE") or "",
                 gamma=file_gamma(options), when=time.time())


def write_output(client: Client, status: dict[str, Any], output: Path,
                 frames: dict[int, bytes] | None = None) -> str:
    """`fetch`: a still's PNG to `output`; an animation's frames into the folder `output`, named as POV-Ray
    names them (scene name + frame number padded to the width of the final frame number)."""
    frames = frames if frames is not None else fetch_frames(client, status)
    if not status["frame_digits"]:
        file_type = EXTENSION_FORMATS.get(output.suffix.lower(), "N")    # x.ppm is a PPM file, never a PNG
        if file_type == "J":
            require_pillow()
        write_file(output, encode_image(frames[status["first_frame"]], file_type))
        return str(output)
    stem = Path(status["scene"]).stem
    for number, png in frames.items():
        write_file(povcmd.output_path((output / stem, ".png"), number, status["frame_digits"]), png)
    return f"{len(frames)} frames into {output}"


def fetch_frames(client: Client, status: dict[str, Any]) -> dict[int, bytes]:
    """Every frame's PNG, fetched once."""
    return {number: client.call("jobs.fetch", status["id"], number).data
            for number in range(status["first_frame"], status["last_frame"] + 1)}


def write_animation(client: Client, status: dict[str, Any], output: Path, delay_ms: int,
                    frames: dict[int, bytes] | None = None) -> None:
    pngs = frames if frames is not None else fetch_frames(client, status)
    try:
        write_file(output, apng_from_pngs(list(pngs.values()), delay_ms))
    except ValueError as err:
        raise FarmError(Code.BAD_ARGUMENT, f"cannot make an animated PNG of job {status['id']}: {err}") from None


def write_file(output: Path, data: bytes) -> None:
    try:
        atomic.write(output, data)
    except OSError as err:
        raise FarmError(Code.BAD_ARGUMENT, f"cannot write {output}: {err.strerror or err}") from None


def write_scene_files(client: Client, job_id: int, folder: Path) -> list[str]:
    """The files the job's scene wrote (#fopen), written into `folder` as `povray` run there leaves them
    (names checked like a bundle's: never outside it); their names. None from a controller without them."""
    if SCENE_FILES not in Features.of_reply(client.call("api.version")):
        return []
    kept = scenefiles.unpack(client.call("jobs.scene_files", job_id).data)
    for name, (_, data) in sorted(kept.items()):
        write_file(folder / name, data)
    return sorted(kept)
