"""An animation's video from the command line: `render/submit ... --video FILE` after the frames, and
`povfarm video JOB --output FILE` for an animation already done (farm.video)."""

from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path

from farm.cli.common import EXIT_OK, Subcommands, add_client_flags, add_patience_flag, connect
from farm.cli.kinds import fetch_result
from farm.cli.waiting import Progress, StopRequest, patient_client
from farm.client import Client
from farm.config import Config


def add_video_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--video", type=Path, metavar="FILE.mp4",
                        help="after the animation's frames, encode them into this MP4 (H.264) on a node that has "
                             "ffmpeg")
    _encoding_flags(parser)


def _encoding_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--video-fps", type=float, metavar="FPS",
                        help="the video's frames a second (setting: video_fps, default 25)")
    parser.add_argument("--video-crf", type=int, metavar="CRF",
                        help="the video's quality, x264's crf: 0 lossless .. 51 worst (setting: video_crf, default 23)")


def add_video(commands: Subcommands) -> None:
    p = commands.add("video", cmd_video, help="encode a finished animation's frames into an MP4 video on the farm",
                     example="povfarm video 12 --output anim.mp4",
                     description="A node that has ffmpeg encodes the frames with H.264 (yuv420p); the job runs "
                                 "once the animation is done.")
    add_client_flags(p)
    p.add_argument("job", type=int, help="the animation's job id")
    p.add_argument("--output", type=Path, metavar="FILE.mp4", required=True, help="where to write the video")
    _encoding_flags(p)
    p.add_argument("--priority", type=int, default=0, help="higher runs first (default 0)")
    add_patience_flag(p)


def cmd_video(config: Config, args: argparse.Namespace) -> int:
    progress = Progress()
    with StopRequest() as stop:
        client = patient_client(connect(config), config.patience, progress.note, stop, reached=True)
        return make_video(client, config, args.job, args.output, stop, priority=args.priority, progress=progress)


def make_video(client, config: Config, job_id: int, output: Path, stop: threading.Event, priority: int = 0,
               local: bool = False, progress: Progress | None = None) -> int:
    """Queue the video of job `job_id`, wait for it, write it to `output`; the exit code."""
    video_id = client.call("jobs.video", {"job": job_id, "fps": float(config.video_fps), "crf": int(config.video_crf),
                                          "priority": priority})
    sys.stderr.write(f"povfarm: job {video_id} encodes job {job_id}'s frames into {output}\n")
    return fetch_result(client, video_id, output, stop, f"the video (job {video_id})", local, progress)


def video_after(client: Client, config: Config, args: argparse.Namespace, job_id: int, code: int,
                stop: threading.Event, local: bool = False) -> int:
    """After `render`/`submit` wrote an animation's frames (exit code `code`): its video, when --video asks."""
    if code != EXIT_OK or getattr(args, "video", None) is None:
        return code
    return make_video(client, config, job_id, args.video, stop, priority=args.priority, local=local)
