"""Taking work in: scene bundles and job submissions, checked and planned.

A bundle is checked once, when it is uploaded: its file names and whether a
source mentions radiosity are recorded with it, so a submission needs neither
to read nor to scan it again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Mapping

from farm import limits, policy
from farm.bundle import checking, rules
from farm.animation import Animation
from farm.config import Config
from farm.faults import Code, FarmError
from farm.jobkinds import POVRAY
from farm.kinds import PRETRACE, PREVIEW, PreviewMode
from farm.options import check_libraries, validate_options
from farm import dependencies
from farm.planning import plan_units, with_pretrace, with_preview
from farm.radiosity import AUTO, NODE_FOLDS_BANDS, band_costs, bands_by_cost, folded_bands, pretrace_parts
from farm.records import JobSpec
from farm.strips import block_count, plan_strips
from farm.shear import NODE_TAG, Shear, fine_block, fine_block_option, pretrace_options
from farm.service import kindparts
from farm.service.changes import Changes
from farm.service.files import Files, write_atomically
from farm.store import BundleInfo, Store

log = logging.getLogger(__name__)

MAX_SIDE = 16384
MAX_PIXELS = 64 * 1024 * 1024
MAX_STRIPS = 1024


@dataclass(frozen=True)
class Submission:
    """A job as asked for, its values already of the right types (the API checks those)."""
    bundle: str
    scene: str
    width: int
    height: int
    options: tuple[str, ...] = ()
    bits: int = 8
    priority: int = 0
    name: str = ""
    animation: Animation | None = None
    strips: int | str = "auto"         # units per frame, or "auto"
    radiosity_prepass: bool = True
    interleave: bool = True            # frames cut as nodes ask are cut in their sheared image (farm.shear)
    preview: PreviewMode = PreviewMode.WATCHED   # when the first frame gets a quick low-resolution render
    require: tuple[str, ...] = ()      # node tags (farm.tags), checked
    after: tuple[int, ...] = ()        # jobs it runs after (farm.dependencies), not checked yet
    prefer: tuple[str, ...] = ()
    povray: str = ""                   # the POV-Ray version it is pinned to (farm.builds), checked


class Bundles:
    def __init__(self, config: Config, store: Store, files: Files, clock: Callable[[], float]):
        self._config, self._store, self._files, self._clock = config, store, files, clock

    def has(self, digest: str) -> bool:
        return self._store.bundles.has(digest)

    def upload(self, payload: bytes) -> str:
        """Check and store a bundle held in memory; returns its digest. Storing one twice is harmless."""
        self._check_size(len(payload))
        members = checking.check_archive(payload, max_total=self._config.max_bundle_bytes)
        digest = rules.bundle_hash(payload)
        if not self._store.bundles.has(digest):
            write_atomically(self._files.bundle(digest), payload, "the bundle")
            self._record(digest, len(payload), members, _sources_mention_radiosity(payload))
        return digest

    def upload_file(self, path: Path, size: int, sha256: str, keep_as: Callable[[Path], None]) -> str:
        """Check and store a bundle the transport already streamed to disk (and hashed on the way);
        `keep_as` moves that file into place. Returns its digest."""
        self._check_size(size)
        try:
            with open(path, "rb") as handle:
                members = checking.check_archive(handle, max_total=self._config.max_bundle_bytes)
                radiosity = _sources_mention_radiosity(handle)
        except OSError as err:
            raise FarmError(Code.STORAGE, f"the controller cannot read the upload back: {err.strerror}") from None
        digest = rules.HASH_PREFIX + sha256
        if not self._store.bundles.has(digest):
            try:
                keep_as(self._files.bundle(digest))
            except OSError as err:
                raise FarmError(Code.STORAGE, f"the controller cannot write the bundle: {err.strerror}") from None
            self._record(digest, size, members, radiosity)
        return digest

    def _check_size(self, size: int) -> None:
        if size > self._config.max_bundle_bytes:
            raise FarmError(Code.BUNDLE_TOO_LARGE,
                            f"the bundle is {size} bytes; the limit is {self._config.max_bundle_bytes}")

    def _record(self, digest: str, size: int, members: list[str], radiosity: bool) -> None:
        self._store.bundles.add(BundleInfo(digest, size, tuple(members), radiosity), self._clock())
        log.info("stored bundle %s (%d bytes, %d files)", digest, size, len(members))

    def path(self, digest: str) -> Path:
        """Where a stored bundle is, for sending it."""
        if not self._store.bundles.has(digest):
            raise FarmError(Code.UNKNOWN_BUNDLE, f"there is no bundle {digest}")
        return self._files.bundle(digest)

    def info(self, digest: str) -> BundleInfo:
        """What was learnt of the bundle at upload (worked out now for one stored before that was kept)."""
        info = self._store.bundles.get(digest)
        if info is None:
            raise FarmError(Code.UNKNOWN_BUNDLE, f"there is no bundle {digest}; upload it first")
        if info.members is None or info.mentions_radiosity is None:
            with self._files.map_bundle(digest) as data:
                members = checking.check_archive(data, max_total=self._config.max_bundle_bytes)
                info = BundleInfo(digest, info.size, tuple(members), _sources_mention_radiosity(data))
            self._store.bundles.add(info, self._clock())
        return info

    def mentions(self, digest: str, word: bytes, scene: str) -> bool:
        with self._files.map_bundle(digest) as data:
            return checking.mentions(data, word, scene)


def _sources_mention_radiosity(data) -> bool:
    """Whether a POV-Ray source file (.pov, .inc, ...) of a checked bundle mentions radiosity."""
    return checking.mentions(data, b"radiosity", scene="")


class Submissions:
    def __init__(self, store: Store, bundles: Bundles, changes: Changes, work: Changes,
                 live_slots: Callable[[], int], clock: Callable[[], float], pretrace_bands: int = AUTO,
                 machine: str = ""):
        self._store, self._bundles, self._clock = store, bundles, clock
        self._changes, self._work, self._live_slots = changes, work, live_slots
        self._pretrace_bands = pretrace_bands   # farm.config: bands of a radiosity frame's pre-pass
        self._machine = machine                 # the box the controller runs on (policy.lone_box_runs)

    def submit(self, request: Submission, waits_for: Mapping[str, str]) -> int:
        """Check a submission against the bundle and the farm's limits, plan its units and queue it (a unit
        of kind K waiting for its frame's units of kind `waits_for[K]`: POV-Ray's part says which)."""
        spec = self.check(request)
        count = request.strips
        if count != "auto" and not 1 <= int(count) <= MAX_STRIPS:
            raise FarmError(Code.BAD_ARGUMENT, f"strips must be a whole number from 1 to {MAX_STRIPS}, not {count!r}")
        limits.check_plan(spec, count)
        plans, fold = self._plans(spec, count)
        pretrace = any(plan.kind == PRETRACE for plan in plans)
        interleave = self._interleaves(request, spec, plans)
        options = validate_options(spec.options)
        block = (fine_block(spec.width, spec.height, spec.block, options.antialias, options.block_given)
                 if interleave and not (pretrace and self._goes_out_whole()) else spec.block)
        if block != spec.block:     # farm.shear.FINE_BLOCK: POV-Ray renders the frame in smaller blocks
            spec = replace(spec, options=(*spec.options, fine_block_option(block)), block=block)
            plans, fold = self._plans(spec, count)
        # A preview is one small extra render for viewers, not part of the job's work.
        limits.check_units(spec, sum(plan.kind != PREVIEW for plan in plans),
                           self._store.units.open_count(kindparts.uncounted_units()))
        # Its frames cut into strips share a radiosity pre-pass: only when one was planned. Frames cut as nodes
        # ask are cut in their sheared image, every strip a little of the whole frame (farm.shear).
        spec = replace(spec, pretrace=pretrace, fold=pretrace and fold,
                       shear=Shear.of_frame(spec.width, spec.height, spec.block).step if interleave else 0)
        job_id = self._store.jobs.create(spec, plans, self._clock(), waits_for)
        self._changes.bump()
        self._work.bump()
        log.info("job %s queued: %s %dx%d, frames %d-%d, in %d units", job_id, spec.scene, spec.width, spec.height,
                 spec.first_frame, spec.last_frame, len(plans))
        return job_id

    def _plans(self, spec: JobSpec, count: int | str) -> tuple[list, bool]:
        """The job's units: its frames' rows (a remainder each, cut as nodes ask, or `count` strips), a
        radiosity pre-pass per split frame of a scene that may use radiosity, and a preview; and whether the
        pre-pass bands are folded."""
        bands, fold = self._pretrace_bands_of(spec) if spec.pretrace else ([], False)
        return with_preview(with_pretrace(
            plan_units(spec.height, spec.first_frame, spec.last_frame, self._live_slots(), count, spec.block),
            spec.height, spec.pretrace, bands=bands),
            spec.width, spec.height, spec.preview is not PreviewMode.NEVER), fold

    def _pretrace_bands_of(self, spec: JobSpec) -> tuple[list[tuple[int, int]], bool]:
        """The rows of each band of a frame's radiosity pre-pass, and whether they are folded: one band per
        live node, cut so that they cost alike by what an earlier pre-pass of the scene at this size took, by
        rows where its nodes timed their pretrace (farm.radiosity.bands_by_cost, sweep_costs); without one,
        one folded band per node, each as much of the frame's top as of its bottom (radiosity.folded_bands),
        where every live node pretraces such bands; else `pretrace_bands` bands of equal rows (two per node by
        default: a box whose band was cheap takes another). They pretrace in the frame's own blocks, not a
        sheared job's fine ones."""
        block = validate_options(pretrace_options(spec.options)).block
        nodes = self._store.nodes.live()
        parts = pretrace_parts(len(nodes), self._pretrace_bands, block_count(spec.height, block))
        one_per_node = pretrace_parts(len(nodes), len(nodes), block_count(spec.height, block))
        measured = (self._store.units.last_frame_costs(spec.scene, spec.width, spec.height, PRETRACE)
                    if parts > 1 else [])
        if len(measured) >= 2:      # one band's time says nothing of where in the frame it went
            parts = one_per_node if self._pretrace_bands == AUTO else parts
            return bands_by_cost(spec.height, block, parts, band_costs(measured), fixed=0.0), False
        folded = (folded_bands(spec.height, block, one_per_node) if self._pretrace_bands == AUTO
                  and all(node.says(NODE_FOLDS_BANDS) for node in nodes) else None)
        return (folded, True) if folded else (plan_strips(spec.height, parts, block), False)

    def _goes_out_whole(self) -> bool:
        """Whether a frame cut as nodes ask goes out whole while nobody watches: every live node is on the
        controller's box (policy.lone_box_runs). A radiosity frame then pretraces itself in one render, which
        keeps the frame's own blocks: its jitter follows them (farm.shear.fine_block)."""
        return policy.lone_box_runs(self._store.nodes.live(), self._machine) != 0

    def _interleaves(self, request: Submission, spec: JobSpec, plans: list) -> bool:
        """Whether the job's frames are sheared: a POV-Ray job asking for it whose frames are cut as nodes ask,
        while every live node renders sheared units (a farm of older nodes keeps bands of rows)."""
        return (request.interleave and spec.kind == POVRAY and any(plan.remainder for plan in plans)
                and all(NODE_TAG in node.offers for node in self._store.nodes.live()))

    def check(self, request: Submission) -> JobSpec:
        info = self._bundles.info(request.bundle)
        if request.scene not in (info.members or ()):
            raise FarmError(Code.BAD_ARGUMENT, f"the bundle has no file {request.scene!r}")
        if request.width * request.height > MAX_PIXELS:
            raise FarmError(Code.BAD_ARGUMENT, f"{request.width}x{request.height} is more than {MAX_PIXELS} pixels")
        if request.bits not in (8, 16):
            raise FarmError(Code.BAD_ARGUMENT, f"bits must be 8 or 16, not {request.bits!r}")
        checked = validate_options(request.options)
        check_libraries(checked.options, request.scene)
        return JobSpec(
            bundle=request.bundle, scene=request.scene, width=request.width, height=request.height,
            options=checked.options, channels=4 if checked.alpha else 3, bits=request.bits,
            priority=request.priority, name=request.name or request.scene.rsplit("/", 1)[-1].rsplit(".", 1)[0],
            animation=request.animation, block=checked.block,
            # A scene that may use radiosity gets a shared pre-pass per split frame; the node running it
            # finds out whether radiosity is really on.
            pretrace=request.radiosity_prepass and self._mentions_radiosity(info, request.scene),
            preview=request.preview, require=request.require, prefer=request.prefer, povray=request.povray,
            after=dependencies.check_after(request.after, self._store.jobs.newest_id(), self._store.jobs.exists))

    def _mentions_radiosity(self, info: BundleInfo, scene: str) -> bool:
        if info.mentions_radiosity or rules.is_source(scene):
            return bool(info.mentions_radiosity)
        # A scene file named unlike a source (scene.txt) was not scanned at upload.
        return self._bundles.mentions(info.digest, b"radiosity", scene)
