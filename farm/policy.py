"""Who renders what: the farm's leasing and retry rules, as pure functions.

No SQL, no sockets, no clock of its own: the store hands these functions what it
knows (through a `Queue`), and they decide. Tested with property tests and plain
values.

- Jobs go in order of priority (higher first), then of submission.
- A node renders only the jobs of a kind it offers (`farm.jobkinds`) whose required tags it all has
  (`farm.tags`). A job that prefers tags
  goes to a node without them only when no idle live node with them (and its required ones) waits.
- A frame renders on one POV-Ray build (version and flavour, `farm.builds`): the first unit leased of it
  that binds its frames (its kind says: POV-Ray's preview does not) gives it its node's; a job may be
  pinned to a version.
- Within a job, units go by frame, then from the top of the frame: its preview
  and radiosity pre-pass first, then units handed back, then what remains.
- A unit that failed on a node is retried on another node when another live node
  may take it; the node that failed it gets it back only after a growing pause, so
  a lone broken node does not burn every attempt before a healthy node registers.
- A node that failed NODE_STRIKES units of a job is kept off that job while
  another live node may take its work.
- A job fails when a unit's scene is broken (a parse error: at once), or when a
  unit has failed max_attempts times and on every live node (or, whatever the
  nodes, HARD_LIMIT_FACTOR times that). A unit whose kind does not retry it
  (POV-Ray's preview) that fails for any other reason is given up: the job goes
  on without it.

What a kind of unit says (whether it binds its frames' build, whether it is retried) comes in as an
argument: the controller asks the kind's part (farm.service.kindparts); by default, a unit does both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Protocol, Sequence

from farm import builds, jobkinds, scheduler, shear, tags as tagging
from farm.records import FailureVerdict, Node, Unit
from farm.states import NodeState

NODE_STRIKES = 3            # a node that fails this many units of one job is kept off that job
LEASE_CANDIDATES = 256      # queued units examined per job when some nodes must be kept off some units
RETRY_PAUSE = 1.0           # seconds before a node may retry a unit it failed; doubles per failure
MAX_RETRY_PAUSE = 30.0
HARD_LIMIT_FACTOR = 3       # a unit never fails more than max_attempts times this, whatever the nodes
# How a POV-Ray run failed, as the controller counts failures (farm.meter): a broken scene, out of memory,
# killed by its time limit, by another signal, an exit code of its own, or anything else (no output...).
FAILURE_KINDS = ("scene", "memory", "time_limit", "signal", "exit", "other")


@dataclass(frozen=True)
class JobInLine:
    id: int
    priority: int
    require: tuple[str, ...] = ()
    prefer: tuple[str, ...] = ()
    povray: str = ""      # the POV-Ray version the job is pinned to ("": any)
    kind: str = ""        # its kind (farm.jobkinds): only a node offering it takes it ("": any node)
    shear: bool = False   # its frames are sheared (farm.shear): only a node that renders them takes it


@dataclass(frozen=True)
class Failures:
    """What the farm remembers of a job's failures."""
    strikes: Mapping[str, int]                 # node name -> units of the job it failed
    failed_on: Mapping[int, frozenset[str]]    # unit id -> names of the nodes that failed it


class Queue(Protocol):
    """The store's view of queued work, read inside the leasing transaction."""

    def jobs_with_queued_units(self) -> Sequence[JobInLine]: ...

    def queued_units(self, job_id: int, limit: int) -> Sequence[Unit]: ...

    def any_failures(self) -> bool: ...

    def failures(self, job_id: int) -> Failures: ...

    def live_node_names(self) -> frozenset[str]: ...

    def live_nodes(self) -> Sequence[Node]: ...

    def frames_of_other_builds(self, job_id: int, build: str) -> frozenset[int]: ...

    def whole_frame_waits(self, job_id: int, frame: int, kind: str, awaited: str) -> bool: ...

    def frame_kind_open(self, job_id: int, frame: int, kind: str) -> bool: ...

    def frame_kind_queued(self, job_id: int, frame: int, kind: str) -> bool: ...

    def frame_units(self, job_id: int, frame: int,
                    kind: str) -> tuple[Sequence[scheduler.Finished], Sequence[scheduler.Running]]: ...


def cut_remainder(queue: Queue, unit: Unit, node_id: str, block: int, watched: bool = True,
                  here: str = "", overhead: float = 0.0, least_blocks: int = 1, even: bool = False,
                  known: Mapping[str, float] | None = None, idle_slot: bool = False) -> int | None:
    """Where the unit `node_id` leases off a frame's remainder ends (`farm.scheduler`), from the frame's
    measured units and the live slots; None when faster slots should have those rows. `watched`: a
    viewer watches the job, so it is worth cutting finer for steady painting. `here`: the controller's
    own machine (see `lone_box_runs`). `overhead`: the node's fixed seconds per unit of the job, as measured.
    `least_blocks`: the fewest blocks of rows a unit may have. `even`: its rows cost alike (farm.shear).
    `known`: node name -> the speed of one of its runs, remembered from earlier frames (farm.scheduler).
    `idle_slot`: an idle slot of the node asks, not one asking ahead of its unit's end."""
    finished, running = queue.frame_units(unit.job, unit.frame, unit.kind)   # the units cut off it
    nodes = queue.live_nodes()
    slots = {node.id: busy_runs(node) if even else node.slots for node in nodes}
    runs = 0 if watched else lone_box_runs(nodes, here)
    known = known or {}
    speeds = {node.id: known[node.name] for node in nodes if node.name in known}
    return scheduler.next_cut(node_id, unit.row_start, unit.row_end, block, slots, finished, running, runs,
                              overhead, least_blocks, even, speeds, idle_slot)


def pretrace_worth_it(queue: Queue, unit: Unit, strips: str, watched: bool, here: str = "") -> bool:
    """A frame's radiosity pre-pass (`unit`) is shared by its strips (units of kind `strips`) so they match
    a single render. When the frame will go out whole instead (one box keeps busy with one POV-Ray, nobody
    watches, and the frame is still one uncut remainder), that one render makes its own radiosity: the
    pre-pass would be waste."""
    return (watched or lone_box_runs(queue.live_nodes(), here) != 1
            or not queue.whole_frame_waits(unit.job, unit.frame, strips, unit.kind))


def band_waits(queue: Queue, unit: Unit, node_id: str) -> bool:
    """Whether a band of a frame's radiosity pre-pass (`unit`) is not for the node now: its box already runs
    as many of the frame's bands as keep it busy (`busy_runs`). A second band beside the first would share
    its cores while another box idles (balcony in two bands: one box took both, the pre-pass took 7 s for
    3.5); the node takes the band when its own ends, or another box takes it first."""
    node = next((node for node in queue.live_nodes() if node.id == node_id), None)
    if node is None:
        return False
    running = queue.frame_units(unit.job, unit.frame, unit.kind)[1]
    return sum(band.node == node_id for band in running) >= busy_runs(node)


def busy_runs(node: Node) -> int:
    """How many POV-Ray processes keep the node's box busy (`scheduler.runs_to_keep_busy`): one when POV-Ray
    uses all the cores it says it has; its slots when it does not say."""
    try:
        return scheduler.runs_to_keep_busy(int(node.info["cores"]), int(node.info["threads"]), node.slots)
    except (KeyError, TypeError, ValueError):
        return max(1, node.slots)


def lone_box_runs(nodes: Sequence[Node], here: str) -> int:
    """When every live node says it runs on `here`, the controller's own machine: how many POV-Ray
    processes keep that machine busy (`scheduler.runs_to_keep_busy`); else 0. Only there is a whole frame
    free to deliver: a node elsewhere would send it all after rendering it, on an uplink that may be slow,
    where units cut smaller send most of it while the rest renders. A node that does not say (an older
    node, or no boot id on its system) is taken to be on a machine of its own."""
    machines = {str(node.info.get("machine") or "") for node in nodes}
    if not here or machines != {here}:
        return 0
    try:
        cores = max(int(node.info.get("cores") or 1) for node in nodes)
        threads = min(int(node.info.get("threads") or cores) for node in nodes)
    except (TypeError, ValueError):
        return 0
    return scheduler.runs_to_keep_busy(cores, threads, sum(node.slots for node in nodes))


def in_line(jobs: Iterable[JobInLine]) -> list[JobInLine]:
    """Jobs in the order they get nodes: higher priority first, then first come first served."""
    return sorted(jobs, key=lambda job: (-job.priority, job.id))


def binds_all(unit: Unit) -> bool:
    """A kind whose every unit binds its frames' build (`fits_frames`)."""
    return True


def choose_unit(queue: Queue, node_name: str, now: float, tags: Sequence[str] = (), build: str = "",
                binds: Callable[[Unit], bool] = binds_all) -> Unit | None:
    """The next unit `node_name` (which has `tags`, and POV-Ray `build`, farm.builds) should render, or
    None. A unit of a frame that renders on another build is not for it (`fits_frames`; `binds`: whether
    a unit binds its frames' build, as its kind says)."""
    jobs = [job for job in in_line(queue.jobs_with_queued_units())
            if takes(job, node_name, tags, queue) and takes_build(job, build)]
    if not queue.any_failures():     # the common case: the first queued unit of the first job in line
        for job in jobs:
            elsewhere = queue.frames_of_other_builds(job.id, build) if build else frozenset()
            units = queue.queued_units(job.id, LEASE_CANDIDATES if elsewhere else 1)
            unit = next((unit for unit in units if fits_frames(unit, elsewhere, binds)), None)
            if unit is not None:
                return unit
        return None
    live = queue.live_node_names() | {node_name}
    for job in jobs:
        failures = queue.failures(job.id)
        elsewhere = queue.frames_of_other_builds(job.id, build) if build else frozenset()
        for unit in queue.queued_units(job.id, LEASE_CANDIDATES):
            if fits_frames(unit, elsewhere, binds) and may_render(unit, node_name, live, failures, now):
                return unit
    return None


def takes_build(job: JobInLine, build: str) -> bool:
    """Whether a node of POV-Ray `build` may render the job: any build, unless the job is pinned to a
    version (then only that version, whatever its flavour: `builds.pinned_to`)."""
    return not job.povray or builds.pinned_to(job.povray, build)


def fits_frames(unit: Unit, elsewhere: frozenset[int], binds: Callable[[Unit], bool] = binds_all) -> bool:
    """Whether the unit may go to a node whose build is not that of the frames in `elsewhere` (frames of
    the job with units rendered, or rendering, on another build). One POV-Ray per frame: a frame takes the
    build of the node that leases its first unit, and keeps it while any unit rendered on it is kept or in
    flight. A unit that binds no build (`binds`: POV-Ray's preview, never part of the image) goes anywhere."""
    return not any(unit.frame <= frame <= unit.frame_last for frame in elsewhere) or not binds(unit)


def takes(job: JobInLine, node_name: str, tags: Sequence[str], queue: Queue) -> bool:
    """Whether the node may take the job's work now: it offers the job's kind (carries its capability tag,
    farm.jobkinds) and has every tag the job requires, and it has the tags the job prefers or no other idle
    live node that has them (and may render the job) waits."""
    require = shear.needed_tags(job.require, job.shear)
    needed = jobkinds.needs(job.kind, require) if job.kind else require
    if not tagging.fits(needed, tags):
        return False
    if tagging.fits(job.prefer, tags):
        return True
    return not any(node.name != node_name and node.state is NodeState.IDLE
                   and tagging.fits(needed + job.prefer, node.offers) for node in queue.live_nodes())


def may_render(unit: Unit, node_name: str, live: frozenset[str], failures: Failures, now: float) -> bool:
    """Whether `node_name` may take `unit` now."""
    failed_here = failures.failed_on.get(unit.id, frozenset())
    if node_name in failed_here and now < unit.retry_at:
        return False
    struck = {name for name, count in failures.strikes.items() if count >= NODE_STRIKES}
    avoid = struck | failed_here
    if node_name not in avoid:
        return True
    # Every live node is to be avoided: better this node tries again than the job stalls.
    return live <= avoid


def retry_pause(failures: int) -> float:
    """How long the node that failed a unit waits before it may take that unit again."""
    return min(MAX_RETRY_PAUSE, RETRY_PAUSE * 2 ** max(0, failures - 1))


def after_failure(unit: Unit, error: str, scene_error: bool, max_attempts: int, failed_on: frozenset[str],
                  live: frozenset[str], now: float, retried: bool = True) -> FailureVerdict:
    """What a failed unit means for its job. `failed_on` includes the node that just failed it. `retried`:
    whether its kind tries such a unit again (POV-Ray's preview is not: its job goes on without it)."""
    failures = unit.failures + 1
    if scene_error:
        return FailureVerdict(fail_job=True, job_error=error, retry_at=0.0)
    if not retried:
        return FailureVerdict(fail_job=False, job_error="", retry_at=0.0, drop_unit=True)
    tried_everywhere = live <= failed_on
    if failures >= max_attempts and (tried_everywhere or failures >= max_attempts * HARD_LIMIT_FACTOR):
        return FailureVerdict(fail_job=True, retry_at=0.0,
                              job_error=f"strip {unit.index} failed {failures} times; last error: {error}")
    return FailureVerdict(fail_job=False, job_error="", retry_at=now + retry_pause(failures))


def failure_kind(error: str, scene_error: bool) -> str:
    """Which of FAILURE_KINDS a failed unit's report is, from the sentences a node writes
    (farm.rendering.render, ProcessResult.describe)."""
    if scene_error:
        return "scene"
    text = error.lower()
    for words, kind in (("out of memory", "memory"), ("time limit", "time_limit"), ("by signal", "signal"),
                        ("exited with code", "exit"), ("windows status", "exit")):
        if words in text:
            return kind
    return "other"
