"""The video kind's own rules, shared by the controller and the node: its parameters (the only ones a
node accepts), checked, as a video job's options; and ffmpeg's argument list, built here and never by a
shell. A video job has one unit, which runs after its animation job is done: the node fetches the
animation's frames (nodes.source_frame), encodes them with H.264 into an MP4 and returns the file."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from farm.faults import Code, FarmError

DEFAULT_FPS = 25.0
DEFAULT_CRF = 23            # x264's own default: visually good, small
MAX_FPS = 240.0
MAX_CRF = 51                # x264's scale: 0 (lossless) .. 51
MAX_VIDEO_BYTES = 64 * 1024 * 1024    # the largest video a node may hand in (within max_result_bytes)
FRAME_NAME = "frame-%06d.png"          # the frames as the node stores them for ffmpeg
OUTPUT_NAME = "video.mp4"
PROGRESS_NAME = "progress.txt"         # ffmpeg's -progress lines as it encodes: frame=N, ...
_OPTION = re.compile(r"(source|first|last|fps|crf)=([0-9.]+)")


@dataclass(frozen=True)
class VideoParams:
    """What a video job encodes: frames first..last of job `source`, at `fps`, with x264's `crf`."""
    source: int
    first: int
    last: int
    fps: float = DEFAULT_FPS
    crf: int = DEFAULT_CRF

    def __post_init__(self) -> None:
        if not 0 < self.fps <= MAX_FPS:
            raise FarmError(Code.BAD_ARGUMENT, f"the video's frame rate must be above 0 and at most {MAX_FPS:g},"
                                               f" not {self.fps:g}")
        if not 0 <= self.crf <= MAX_CRF:
            raise FarmError(Code.BAD_ARGUMENT, f"the video's crf must be from 0 to {MAX_CRF}, not {self.crf}")
        if not 1 <= self.source or not 0 <= self.first <= self.last:
            raise FarmError(Code.BAD_ARGUMENT, f"a video of job {self.source}'s frames {self.first}-{self.last}"
                                               " cannot be")

    @property
    def frames(self) -> range:
        return range(self.first, self.last + 1)

    def to_options(self) -> tuple[str, ...]:
        """As a video job's options."""
        return (f"source={self.source}", f"first={self.first}", f"last={self.last}", f"fps={self.fps:g}",
                f"crf={self.crf}")

    @classmethod
    def from_options(cls, options: tuple[str, ...] | list[str]) -> "VideoParams":
        """From a video job's options: exactly its own five, each once; BAD_ARGUMENT for anything else."""
        values: dict[str, str] = {}
        for option in options:
            match = _OPTION.fullmatch(str(option))
            if match is None or match.group(1) in values:
                raise FarmError(Code.BAD_ARGUMENT, f"a video unit takes no option {str(option)[:60]!r}")
            values[match.group(1)] = match.group(2)
        if len(values) != 5:
            raise FarmError(Code.BAD_ARGUMENT, "a video unit needs source, first, last, fps and crf")
        try:
            return cls(int(values["source"]), int(values["first"]), int(values["last"]), float(values["fps"]),
                       int(values["crf"]))
        except ValueError:
            raise FarmError(Code.BAD_ARGUMENT, "a video unit's options are not numbers") from None


def ffmpeg_argv(ffmpeg: str, params: VideoParams, frames_dir: Path, output: Path, threads: int = 0,
                progress: Path | None = None) -> list[str]:
    """ffmpeg's arguments: the frames (numbered from `params.first`) in, H.264 in yuv420p out at the
    video's frame rate, no audio, no metadata read
    from anywhere but the frames. Odd sizes are padded to even ones (yuv420p needs them). With `progress`,
    ffmpeg writes its progress there as it goes (`encoded_fraction` reads it)."""
    return [ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
            *(["-progress", str(progress)] if progress is not None else []),
            "-framerate", f"{params.fps:g}", "-start_number", str(params.first),
            "-i", str(frames_dir / FRAME_NAME), "-frames:v", str(len(params.frames)),
            "-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2", "-c:v", "libx264", "-preset", "medium",
            "-crf", str(params.crf), "-pix_fmt", "yuv420p", "-threads", str(max(0, threads)),
            "-an", "-movflags", "+faststart", str(output)]


_PROGRESS_FRAME = re.compile(rb"^frame=(\d+)$", re.MULTILINE)
PROGRESS_TAIL = 4096     # bytes of ffmpeg's progress file read: its last block is well within them


def encoded_fraction(path: Path, frames: int) -> float | None:
    """How far ffmpeg is, from the last `frame=N` of its -progress file, as a fraction of `frames`
    (None before it wrote one)."""
    try:
        with open(path, "rb") as handle:
            size = handle.seek(0, 2)
            handle.seek(max(0, size - PROGRESS_TAIL))
            tail = handle.read()
    except OSError:
        return None
    found = _PROGRESS_FRAME.findall(tail)
    return min(1.0, int(found[-1]) / frames) if found and frames > 0 else None
