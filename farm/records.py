"""The farm's domain records: what the store returns and the rest of the controller works with.

Every record is a frozen dataclass with enum states; nobody outside `farm.store`
sees an SQL row. One name per thing:
- a **job** is one submitted scene at one size with its options and frames;
- a **frame** is one image of a job;
- a **unit** is the work one POV-Ray process does: rows [row_start, row_end) of
  frames frame..frame_last (a strip of a still, a run of whole frames of an
  animation, or a frame's radiosity pre-pass). The API calls units "strips";
- a **lease** is one node's right to render one unit until it expires;
- a **task** is a leased unit as the node receives it (the `nodes.poll` reply; `farm.rendering.task.Task`);
- a **node** is one running `povfarm node` process.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Mapping

from farm import strips
from farm.animation import Animation
from farm.images.raster import row_size
from farm import jobkinds
from farm.jobkinds import POVRAY
from farm.kinds import PREVIEW, ROWS, PreviewMode, preview_size
from farm.rows import ZLIB, decode_rows
from farm.states import ENDED, FrameState, JobState, NodeState, UnitState
from farm.shear import NODE_TAG, Shear, needed_tags


@dataclass(frozen=True)
class JobSpec:
    """A submission that passed every check: what `Store.create_job` records."""
    bundle: str
    scene: str
    width: int
    height: int
    options: tuple[str, ...]
    channels: int
    bits: int
    priority: int
    name: str
    animation: Animation | None
    block: int                   # POV-Ray's render block size: unit edges fall on its multiples
    pretrace: bool               # split frames share one radiosity pre-pass
    preview: PreviewMode = PreviewMode.NEVER   # when the first frame gets a preview
    require: tuple[str, ...] = ()   # tags a node must all have to render it (farm.tags)
    prefer: tuple[str, ...] = ()    # tags of the nodes it goes to first when several wait
    after: tuple[int, ...] = ()     # jobs it runs after (farm.dependencies)
    povray: str = ""                # the POV-Ray version it is pinned to (farm.builds); "": any
    kind: str = POVRAY              # its kind of work (farm.jobkinds)
    shear: int = 0                  # its frames' rows are sheared at this step (farm.shear); 0: not
    fold: bool = False              # its radiosity pre-pass bands are folded (farm.radiosity.folded_bands)

    @property
    def first_frame(self) -> int:
        return self.animation.rendered_first if self.animation else 1

    @property
    def last_frame(self) -> int:
        return self.animation.rendered_last if self.animation else 1


@dataclass(frozen=True)
class Job:
    id: int
    name: str
    state: JobState
    priority: int
    bundle: str
    scene: str
    width: int
    height: int
    options: tuple[str, ...]
    channels: int
    bits: int
    first_frame: int
    last_frame: int
    animation: Animation | None
    error: str
    submitted: float
    started: float
    finished: float
    pretrace: bool
    block: int = strips.DEFAULT_BLOCK
    preview: PreviewMode = PreviewMode.ALWAYS   # of a job that has a preview unit
    require: tuple[str, ...] = ()
    prefer: tuple[str, ...] = ()
    after: tuple[int, ...] = ()
    povray: str = ""
    kind: str = POVRAY       # farm.jobkinds
    shear: int = 0           # its frames' rows are those of their sheared images at this step (farm.shear)
    fold: bool = False       # its pre-pass bands are folded: each holds its mirror rows (farm.radiosity.band_pieces)

    @property
    def ended(self) -> bool:
        return self.state in ENDED

    @property
    def row_bytes(self) -> int:
        return row_size(self.width, self.channels, self.bits)

    @property
    def needs(self) -> tuple[str, ...]:
        """The tags a node must have to render it, besides its kind's: those it requires, and the tag of a
        node that renders sheared units when it is sheared."""
        return needed_tags(self.require, self.shear)

    @property
    def layout(self) -> Shear:
        """How its frames' rows lie in the image (farm.shear)."""
        return Shear(self.width, self.height, self.block, self.shear)

    @functools.cached_property
    def animation_options(self) -> tuple[str, ...]:
        """POV-Ray's animation switches for the job's units (() for a still)."""
        return tuple(self.animation.povray_options()) if self.animation else ()

    @property
    def frame_digits(self) -> int:
        return self.animation.digits if self.animation else 0


@dataclass(frozen=True)
class Frame:
    job: int
    number: int
    state: FrameState
    path: str
    povray: str = ""     # the POV-Ray build its units render on, once its first one was leased


@dataclass(frozen=True)
class Unit:
    id: int
    job: int
    frame: int          # the first frame it renders
    frame_last: int     # the last frame it renders
    index: int          # its place in the job's plan; the API's "strip" number
    row_start: int      # 0-based, end exclusive
    row_end: int
    state: UnitState
    kind: str           # farm.kinds.ROWS, PRETRACE, PREVIEW or VIDEO
    attempt: int        # leases handed out so far
    failures: int
    lease: str
    node: str           # the node id holding or last holding its lease
    lease_expires: float
    retry_at: float     # a node that failed it may not take it again before this
    progress: float
    error: str
    seconds: float
    done_seq: int       # the order in which the job's units were stored: the viewers' feed cursor
    remainder: bool = False   # rows of a frame not cut yet: each lease cuts its unit off this one

    @property
    def frames(self) -> range:
        return range(self.frame, self.frame_last + 1)

    def raw_bytes(self, job: Job) -> int:
        """Bytes of raw rows the unit delivers: its rows, for each of its frames (a preview's rows are
        those of the preview's smaller image)."""
        return len(self.frames) * (self.row_end - self.row_start) * self.row_bytes(job)

    def row_bytes(self, job: Job) -> int:
        return preview_row_bytes(job) if self.kind == PREVIEW else job.row_bytes

    def scanline_bytes(self, job: Job) -> int:
        """Bytes of the unit's rows in the larger of the encodings: each row led by its PNG filter type."""
        return len(self.frames) * (self.row_end - self.row_start) * (self.row_bytes(job) + 1)

    def decode(self, job: Job, data: bytes, encoding: str) -> bytes:
        """The unit's raw rows out of delivered `data` in `encoding` (a ValueError when they do not fit)."""
        return decode_rows(data, encoding, self.raw_bytes(job), self.row_bytes(job),
                           job.channels * job.bits // 8, len(self.frames))


def preview_row_bytes(job: Job) -> int:
    return row_size(preview_size(job.width, job.height)[0], job.channels, job.bits)


@dataclass(frozen=True)
class StoredRows:
    """A stored unit's delivered rows: each frame's rows in turn, one zlib stream in `encoding`
    (farm.rows.ZLIB: raw rows, FILTERED: PNG scanlines)."""
    frame: int
    frame_last: int
    row_start: int
    row_end: int
    data: bytes
    done_seq: int
    kind: str = ROWS
    encoding: str = ZLIB

    def raw(self, job: Job) -> bytes:
        """The unit's raw rows, every frame's in turn."""
        row_bytes = preview_row_bytes(job) if self.kind == PREVIEW else job.row_bytes
        frames = self.frame_last - self.frame + 1
        return decode_rows(self.data, self.encoding, frames * (self.row_end - self.row_start) * row_bytes,
                           row_bytes, job.channels * job.bits // 8, frames)

    def frame_rows(self, raw: bytes, frame: int) -> bytes:
        """One frame's rows out of the unit's decompressed data."""
        size = len(raw) // (self.frame_last - self.frame + 1)
        offset = (frame - self.frame) * size
        return raw[offset:offset + size]


@dataclass(frozen=True)
class Lease:
    token: str
    node: str
    expires: float
    unit: Unit


@dataclass(frozen=True)
class Node:
    id: str
    name: str
    state: NodeState
    info: Mapping[str, Any] = field(hash=False)
    registered: float
    last_seen: float
    units_done: int
    units_failed: int
    error: str
    current: str        # job/frame/index of the units it holds, "" if none
    upload_bps: float = 0.0   # the node's measured upload rate, bytes per second (0: not reported yet)
    tags: tuple[str, ...] = ()   # its tags: the controller's override (`povfarm node-tags`), else its own
    tags_overridden: bool = False

    @property
    def offers(self) -> tuple[str, ...]:
        """Its tags and the capability tag of each kind it offers, POV-Ray's too (farm.jobkinds): what a
        job's kind and the tags it requires are matched against."""
        interleaves = (NODE_TAG,) if self.says("interleave") else ()
        return tuple(dict.fromkeys(self.tags + jobkinds.kind_tags(dict(self.info)) + interleaves))

    def says(self, ability: str) -> bool:
        """Whether it said, as it registered, that it can do `ability` (true under that name in its info)."""
        return self.info.get(ability) is True

    @property
    def live(self) -> bool:
        return self.state in (NodeState.IDLE, NodeState.BUSY)

    @property
    def slots(self) -> int:
        try:
            return max(1, int(self.info.get("slots", 1)))
        except (TypeError, ValueError):
            return 1


@dataclass(frozen=True)
class FailureVerdict:
    """What a failed unit means, decided by `farm.policy.after_failure`."""
    fail_job: bool
    job_error: str       # the job's error text when it fails
    retry_at: float      # the failing node may take the unit again from this time on
    drop_unit: bool = False   # give the unit up without failing the job (a preview)
