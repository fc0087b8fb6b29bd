"""A video unit on the node (farm.video): the animation's frames fetched from the controller into the
unit's folder, ffmpeg run on them in the same sandbox and limits as POV-Ray (its own session, the unit's
time limit, its process group stopped and then killed), and the MP4 it made returned as the result."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any, Callable

from farm.config import Config
from farm.faults import FarmError
from farm.rendering import povray, sandbox as sandboxes
from farm.rendering.task import RenderOutcome, Task
from farm.video import (FRAME_NAME, MAX_VIDEO_BYTES, OUTPUT_NAME, PROGRESS_NAME, VideoParams, encoded_fraction,
                        ffmpeg_argv)

log = logging.getLogger(__name__)

LOG_TAIL = 2000    # bytes of ffmpeg's messages sent with a failure


class VideoEncoder:
    def __init__(self, config: Config, ffmpeg: str, sandbox: sandboxes.Sandbox,
                 runner: Callable[..., povray.ProcessResult], fetch_frame: Callable[[Task, int], bytes],
                 watch: Callable[[Task, Path], Callable[[], bool]], aborting: threading.Event):
        """`fetch_frame(task, n)`: frame n's PNG (nodes.source_frame); `watch(task, log_path)`: what the
        runner calls while ffmpeg works, True when it must stop (it renews the lease)."""
        self.config, self.ffmpeg, self.sandbox, self.runner = config, ffmpeg, sandbox, runner
        self.fetch_frame, self.watch, self.aborting = fetch_frame, watch, aborting

    def render(self, task: Task, strip_dir: Path) -> RenderOutcome:
        """Encode the task's video; "failed" with ffmpeg's words when it cannot, "release" when the frames
        cannot be had."""
        try:
            params = VideoParams.from_options(task.options)   # only its own parameters, checked
        except FarmError as err:
            return RenderOutcome("failed", error=str(err), scene_error=True)
        frames_dir, output, log_path = strip_dir / "frames", strip_dir / OUTPUT_NAME, strip_dir / "ffmpeg.log"
        frames_dir.mkdir(parents=True, exist_ok=True)
        should_stop = self.watch(task, log_path)   # renews the lease while the frames come, too
        try:
            for number in params.frames:
                if should_stop():
                    return RenderOutcome("release" if self.aborting.is_set() else "dropped")
                (frames_dir / (FRAME_NAME % number)).write_bytes(self.fetch_frame(task, number))
        except (FarmError, OSError) as err:
            log.warning("job %s: the animation's frames cannot be fetched: %s", task.job, err)
            return RenderOutcome("failed", error=f"the animation's frames cannot be fetched: {err}")
        threads = self.config.threads or os.cpu_count() or 1
        timeout = min([limit for limit in (self.config.strip_timeout, task.time_limit) if limit > 0], default=0.0)
        argv = ffmpeg_argv(self.ffmpeg, params, frames_dir, output, threads, strip_dir / PROGRESS_NAME)
        command = self.sandbox.command(argv, strip_dir, strip_dir, dict(os.environ), timeout, threads)
        result = self.runner(command.argv, cwd=strip_dir, env=command.env, log_path=log_path, timeout=timeout,
                             should_stop=should_stop, limits=command.limits)
        result = self.sandbox.outcome(result)
        if result.stopped:   # handed back when the node stops at once, else the controller said stop
            return RenderOutcome("release" if self.aborting.is_set() else "dropped", seconds=result.seconds)
        if result.returncode == 0 and output.is_file() and 0 < output.stat().st_size <= MAX_VIDEO_BYTES:
            log.info("job %s: %d frames encoded in %.2f s", task.job, len(params.frames), result.seconds)
            return RenderOutcome("done", rows=output.read_bytes(), seconds=result.seconds)
        said = _tail(log_path)
        how = result.describe().replace("POV-Ray", "ffmpeg")
        if result.returncode == 0:
            how = f"ffmpeg made no video, or one over {MAX_VIDEO_BYTES} bytes"
        return RenderOutcome("failed", error=f"{how}{': ' + said if said else ''}", seconds=result.seconds)


def node_part(node: Any) -> VideoEncoder:
    """The video kind's node part (farm.rendering.kindparts): ffmpeg (the node's setting `ffmpeg`) in the
    node's sandbox; the frames fetched with nodes.source_frame; the heartbeat's progress, the frames ffmpeg
    has encoded (its -progress file)."""
    def watch(task: Task, log_path: Path) -> Callable[[], bool]:
        frames = len(VideoParams.from_options(task.options).frames)
        progress = log_path.parent / PROGRESS_NAME
        return node.lease_watch(task.lease, log_path, progress=lambda _: encoded_fraction(progress, frames))

    return VideoEncoder(
        node.config, sandboxes.resolve_program(node.config.ffmpeg) or node.config.ffmpeg, node.sandbox, node.runner,
        fetch_frame=lambda task, number: node.client.call("nodes.source_frame", node.node_id, task.lease,
                                                          number).data,
        watch=watch, aborting=node.aborting)


def _tail(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError:
        return ""
    return data[-LOG_TAIL:].decode("utf-8", "replace").strip()
