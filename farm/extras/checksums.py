"""A kind of job added from outside the farm's core (docs/kinds.md's worked example, tested by
tests/test_kinds.py): the SHA-256 of each frame of a finished job, as a `sha256sum`-style list
(`sha256sum -c` checks a folder of the frames, named as the farm stores them, against it).

Loaded by the setting `kind_modules = farm.extras.checksums` on the controller and on the nodes that run it;
submitted with jobs.kind("checksums", {job, priority}). This module is the kind's declaration, its rules
(shared by both ends) and its node part; its controller part is in farm.extras.checksums_controller, so a
node never loads the controller's modules. Its units run no program: every node that loads it offers it.
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from farm.faults import Code, FarmError
from farm.jobkinds import Kind, register
from farm.rendering.task import RenderOutcome, Task

CHECKSUMS = "checksums"      # the kind, and its one unit's kind
MAX_FRAMES = 10_000
LINE_BYTES = 64 + 2 + len("frame-00000.png") + 1
_LINE = re.compile(rb"([0-9a-f]{64})  frame-(\d{5})\.png\n")
_OPTION = re.compile(r"(source|first|last)=(\d{1,9})")

KIND = register(Kind(CHECKSUMS, "", ".sha256", (CHECKSUMS,), "farm.extras.checksums_controller:PART",
                     "farm.extras.checksums:node_part"))


@dataclass(frozen=True)
class Frames:
    """Which frames a checksums job lists: first..last of job `source`."""
    source: int
    first: int
    last: int

    def __post_init__(self) -> None:
        if self.source < 1 or not 0 <= self.first <= self.last or self.last - self.first >= MAX_FRAMES:
            raise FarmError(Code.BAD_ARGUMENT, f"the checksums of job {self.source}'s frames {self.first}-"
                                               f"{self.last} cannot be (at most {MAX_FRAMES} frames)")

    @property
    def frames(self) -> range:
        return range(self.first, self.last + 1)

    def to_options(self) -> tuple[str, ...]:
        return (f"source={self.source}", f"first={self.first}", f"last={self.last}")

    @classmethod
    def from_options(cls, options: Iterable[str]) -> "Frames":
        """From a checksums job's options: exactly its own three; BAD_ARGUMENT for anything else."""
        values: dict[str, int] = {}
        for option in options:
            match = _OPTION.fullmatch(str(option))
            if match is None or match.group(1) in values:
                raise FarmError(Code.BAD_ARGUMENT, f"a checksums unit takes no option {str(option)[:60]!r}")
            values[match.group(1)] = int(match.group(2))
        if len(values) != 3:
            raise FarmError(Code.BAD_ARGUMENT, "a checksums unit needs source, first and last")
        return cls(values["source"], values["first"], values["last"])


def listing(sums: Iterable[tuple[int, bytes]]) -> bytes:
    """The list: for each (frame, its PNG) a line `<sha256>  frame-NNNNN.png`, as sha256sum writes it."""
    return b"".join(f"{hashlib.sha256(data).hexdigest()}  frame-{frame:05d}.png\n".encode() for frame, data in sums)


def check_listing(data: bytes, frames: Frames) -> None:
    """ValueError unless `data` is the list of exactly `frames`, in order."""
    numbers = [int(match.group(2)) for match in _LINE.finditer(data)]
    if len(data) != len(numbers) * LINE_BYTES or numbers != list(frames.frames):
        raise ValueError(f"it is not the list of frames {frames.first}-{frames.last}")


class ChecksumRunner:
    """The node part's runner: each frame fetched (nodes.source_frame) and hashed, the lease renewed and the
    progress reported as it goes."""

    def __init__(self, node: Any):
        self.node = node

    def render(self, task: Task, folder: Path) -> RenderOutcome:
        try:
            wanted = Frames.from_options(task.options)
        except FarmError as err:
            return RenderOutcome("failed", error=str(err), scene_error=True)
        folder.mkdir(parents=True, exist_ok=True)
        started, done = time.monotonic(), [0]
        should_stop = self.node.lease_watch(task.lease, folder / "checksums.log",
                                            progress=lambda _: done[0] / len(wanted.frames))
        sums = []
        for number in wanted.frames:
            if should_stop():
                return RenderOutcome("release" if self.node.aborting.is_set() else "dropped")
            try:
                sums.append((number, self.node.client.call("nodes.source_frame", self.node.node_id, task.lease,
                                                           number).data))
            except FarmError as err:
                return RenderOutcome("failed", error=f"frame {number} cannot be fetched: {err}")
            done[0] += 1
        return RenderOutcome("done", rows=listing(sums), seconds=time.monotonic() - started)


def node_part(node: Any) -> ChecksumRunner:
    return ChecksumRunner(node)
