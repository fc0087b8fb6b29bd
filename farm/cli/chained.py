"""Animations whose frames read earlier frames' output, as POV-Ray's desk.ini does (each frame image_maps
the frame before it): POV-Ray renders frames in order and writes each before the next is parsed, so such
frames cannot render side by side. `render` finds them (the scene or a file it includes names one of the
animation's own output files) and renders one frame after another, each as a job of its own whose bundle
is packed after the frames before it were written beside the scene: every node that renders it has them.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import threading
from pathlib import Path
from typing import Any

from farm.bundle.packing import BundlePlan, plan_bundle, scan_strings
from farm.bundle.rules import is_source
from farm.cli.common import EXIT_INTERRUPTED, EXIT_OK
from farm.cli.job_request import JobRequest, submit_job
from farm.cli.waiting import finish_job, wait_for_job
from farm.client import Client

MAX_SOURCE_BYTES = 16 << 20      # a source file larger than this is not read for output names


def frames_read_back(request: JobRequest, plan: BundlePlan) -> list[int]:
    """The animation's frames whose output file some source of the bundle names (as `desk2.png`, or
    `desk2` with POV-Ray's implied extension), where POV-Ray would find it: beside the scene or in a
    library folder. Empty for a still, +O- or -F."""
    if request.animation is None or not request.command.to_file or len(request.targets) < 2:
        return []
    scene_dir = (plan.root / plan.scene).parent
    folders = {os.path.realpath(scene_dir), *(os.path.realpath(scene_dir / lib) for lib in plan.library_dirs)}
    names: dict[str, int] = {}
    for frame, path in request.targets.items():
        if path is not None and os.path.realpath(path.parent) in folders:
            names[path.name.lower()] = names[path.stem.lower()] = frame
    mentioned = set()
    for member in plan.files:
        if is_source(member):
            for text, _ in scan_strings(_source_text(plan.root / member)):
                frame = names.get(os.path.basename(text.replace("\\", "/")).lower())
                if frame is not None:
                    mentioned.add(frame)
    return sorted(mentioned)


def _source_text(path: Path) -> str:
    try:
        with open(path, "rb") as handle:
            return handle.read(MAX_SOURCE_BYTES).decode("utf-8", "replace")
    except OSError:
        return ""


def render_in_order(client: Client, args: argparse.Namespace, request: JobRequest, stop: threading.Event
                    ) -> int:
    """Each frame as a job of its own, in order, its image written before the next one is packed; the
    exit code of the first that fails, 130 when stopped (the frames written stay, as with povray)."""
    assert request.animation is not None
    for frame, path in request.targets.items():
        one = dataclasses.replace(request.animation, subset_first=frame, subset_last=frame)
        job = JobRequest(request.command, one, {frame: path}, request.wants_image)
        job_id = submit_job(client, args, job)
        status = wait_for_job(client, job_id, interval=0.1, stop=stop, local=True, streams=request.command.streams)
        if status is None:
            sys.stderr.write("povfarm: interrupted; stopping the local nodes\n")
            return EXIT_INTERRUPTED
        code = finish_job(client, status, job, first=frame == next(iter(request.targets)))
        if code != EXIT_OK:
            return code
    return EXIT_OK


def read_back_note(request: JobRequest, frames: list[Any]) -> str:
    shown = ", ".join(request.targets[frame].name for frame in frames[:4]) + (", ..." if len(frames) > 4 else "")
    return (f"the scene reads the animation's own output ({shown}): its frames render one after another, "
            f"each with the frames before it, as povray renders them")


def plan_of(args: argparse.Namespace, request: JobRequest) -> BundlePlan:
    assert request.command.scene is not None
    return plan_bundle(request.command.scene, args.assets, library_paths=request.command.library_paths)
