"""What clients are shown: job status, the node list, and the viewers' feed of stored rows.

Plain structs of plain values, in the API's field names; the API layer wraps bytes
for the wire. The public API calls units "strips" (its version 1 names).
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Iterable

from farm import builds, dependencies, scheduler, tags
from farm.faults import Code, FarmError
from farm import jobkinds
from farm.kinds import PRETRACE
from farm.records import Job, Node, StoredRows
from farm.service import kindparts
from farm.service.changes import Changes
from farm.states import FrameState, JobState, NodeState, UnitState
from farm.store import Store

FEED_BATCH = 64      # stored units per viewer.watch reply
LISTED_FRESH = 1.0   # seconds a running job's counts in jobs.list may lag (pages refresh every 2 s);
                     # a change of its state or priority shows at once
ETA_REFIT = 2.0      # seconds a job's fitted cost model serves its ETA: the model moves slowly, and
                     # fitting it is most of what a status costs (built several times a second when watched)


WAITING_STATES = frozenset({JobState.QUEUED, JobState.RENDERING})   # jobs that need a node now
Presence = tuple[list[Node], float]   # the nodes not presumed dead; when a node (or the controller) was last seen


def blocked_reason(nodes: list[Node], last_seen: float, now: float, grace: float,
                   require: tuple[str, ...] = (), povray: str = "", kind: str = "") -> str:
    """Why no live node can take a waiting job, in a sentence ("" when one can, or may soon): no live node
    offers its `kind` or has the tags it requires (those missing, node by node), every node there is broken
    (their own reasons, each said once), or there has been none for `grace` seconds since `last_seen` (a
    node, the controller's start or the job's submission), or none has the POV-Ray version it is pinned to.
    `nodes`: those not offline."""
    live = [node for node in nodes if node.live]
    needed = jobkinds.needs(kind, require) if kind else require
    fit = [node for node in live if tags.fits(needed, node.offers)]
    if fit and povray and not any(builds.pinned_to(povray, builds.build_of(node.info)) for node in fit):
        found = "; ".join(sorted({builds.build_of(node.info) or "unknown" for node in fit}))
        return f"no live node has POV-Ray {povray}, which the job is pinned to (they have: {found})"
    if fit:
        return ""
    if live:
        # The kind's own tag is said when a live node lacks it (a job names it in `require` or not).
        implicit = needed[len(require):]
        shown = needed if implicit and not all(tags.fits(implicit, node.offers) for node in live) else require
        lacking = "; ".join(f"{node.name} lacks {','.join(tags.missing(shown, node.offers))}"
                            for node in sorted(live, key=lambda node: node.name))
        return f"{jobkinds.lacking_kinds(shown)}no live node has the tags it requires ({','.join(shown)}): {lacking}"
    reasons: dict[str, list[str]] = {}
    for node in nodes:
        if node.state is NodeState.BROKEN:
            reasons.setdefault(node.error or "it cannot render", []).append(node.name)
    if reasons:
        groups = sorted((sorted(names), error) for error, names in reasons.items())
        return "no node can render it: " + "; ".join(f"{', '.join(names)}: {error}" for names, error in groups)
    if now - last_seen < grace:
        return ""
    return "no node is connected to the controller"


class Views:
    def __init__(self, store: Store, changes: Changes, clock: Callable[[], float] = time.monotonic,
                 grace: float = 30.0):
        """`grace`: seconds without any node before a waiting job is said to be blocked (the lease timeout:
        nodes reconnecting after a restart of the controller come back within it)."""
        self._store, self._changes, self._clock, self._grace = store, changes, clock, grace
        self._started = clock()
        self._cached: dict[int, tuple[tuple[int, int], dict, list]] = {}   # job -> (version, status, in flight)
        self._listed: dict[int, tuple[int, dict, float]] = {}  # job -> (its own version, status, built at)
        self._listing: list[dict] = []      # what jobs() returned last
        self._models: dict[int, tuple[float, scheduler.Model]] = {}   # job -> (fitted at, its cost model)
        self._lock = threading.Lock()

    def job_status(self, job: Job, detail: bool, presence: Presence | None = None) -> dict[str, Any]:
        """`presence`: the nodes as `_presence` gives them, when the caller has them already."""
        # Which of its units count, and whose rows measure its progress, as its kind says (if loaded here).
        part = kindparts.of_job(job.kind) if job.kind in jobkinds.KINDS else kindparts.ControllerPart()
        summary = self._store.units.summary(job.id, part.progress_unit, part.uncounted_unit)
        total = sum(counts.units for counts in summary.values())
        done = summary[UnitState.DONE].units if UnitState.DONE in summary else 0
        leased = summary[UnitState.LEASED].units if UnitState.LEASED in summary else 0
        rows = sum(counts.rows for counts in summary.values())
        # A job canceled or failed keeps the progress it had: its units cut short were canceled with theirs.
        counted = (UnitState.DONE, UnitState.LEASED) + ((UnitState.CANCELED,) if job.ended else ())
        rendered = sum(summary[state].rows_rendered for state in counted if state in summary)
        progress = 1.0 if job.state is JobState.DONE else (rendered / rows if rows else 0.0)
        if presence is None and not job.ended:
            presence = self._presence()
        eta = None if job.ended else self._seconds_left(job.id, part.progress_unit, rows - rendered, presence[0])
        frames = self._store.jobs.frames(job.id)
        preview = self._store.units.state_of_kind(job.id, part.preview_unit) if part.preview_unit else None
        status = {
            "id": job.id, "name": job.name, "scene": job.scene, "state": job.state.value,
            "progress": round(progress, 4), "width": job.width, "height": job.height,
            "strips_total": total, "strips_done": done, "strips_leased": leased,
            "frames_total": len(frames), "frames_done": sum(1 for f in frames if f.state is FrameState.DONE),
            "priority": job.priority, "error": job.error, "channels": job.channels, "bits": job.bits,
            "first_frame": job.first_frame, "last_frame": job.last_frame, "frame_digits": job.frame_digits,
            "submitted": job.submitted, "started": job.started, "finished": job.finished,
            "preview": preview.value if preview is not None else "",
            "blocked": self._blocked(job.state, job.submitted, presence, job.needs, job.povray, job.kind),
            "povray_version": job.povray, "require": list(job.require), "prefer": list(job.prefer),
            "after": list(job.after), "kind": job.kind, "block": job.block, "shear": job.shear,
            "waiting_for": self._waiting_for(job),
        }
        if eta is not None:
            status["eta"] = round(eta, 1)
        if detail:
            status["frames"] = [{"number": f.number, "state": f.state.value, "povray": f.povray} for f in frames]
            status["strips"] = [{"frame": u.frame, "frame_last": u.frame_last, "index": u.index,
                                 "row_start": u.row_start, "row_end": u.row_end, "state": u.state.value,
                                 "node": u.node, "progress": u.progress, "attempts": u.attempt, "kind": u.kind,
                                 "seconds": u.seconds}
                                for u in self._store.units.of_job(job.id)]
        return status

    def _waiting_for(self, job: Job) -> list[int]:
        """The jobs it runs after that are not done, while it has not started."""
        if not job.after or job.state not in (JobState.QUEUED, JobState.PAUSED):
            return []
        return dependencies.waiting_for({other: (self._store.jobs.get(other).state, "") for other in job.after})

    def _presence(self) -> Presence:
        nodes, last_seen = self._store.nodes.present()
        return nodes, max(last_seen, self._started)

    def _blocked(self, state: JobState, submitted: float, presence: Presence | None,
                 require: tuple[str, ...] = (), povray: str = "", kind: str = "") -> str:
        if presence is None or state not in WAITING_STATES:
            return ""
        return blocked_reason(presence[0], max(presence[1], submitted), self._clock(), self._grace, require, povray,
                              kind)

    def _seconds_left(self, job_id: int, unit_kind: str, rows_left: float, nodes: list[Node]) -> float | None:
        """The time the job's rows still to render take on the live slots at the cost the scheduler
        measured from its units of `unit_kind` (None while nothing is measured)."""
        slots = {node.id: node.slots for node in nodes if node.live}
        return scheduler.time_left(round(rows_left), self._cost_model(job_id, unit_kind), slots)

    def _cost_model(self, job_id: int, unit_kind: str) -> scheduler.Model | None:
        """The job's cost model, fitted again once it is ETA_REFIT seconds old (at once while there is none)."""
        now = self._clock()
        with self._lock:
            fitted = self._models.get(job_id)
        if fitted is not None and 0 <= now - fitted[0] < ETA_REFIT:
            return fitted[1]
        model = scheduler.overall_model(self._store.units.cost_samples(job_id, unit_kind))
        with self._lock:
            if model is not None:
                self._models[job_id] = (now, model)
            for stale in [job for job, (at, _) in self._models.items() if not 0 <= now - at < 60 * ETA_REFIT]:
                del self._models[stale]         # jobs that ended (an ended job has no ETA)
        return model

    def jobs(self, limit: int = 0, before: int = 0) -> list[dict[str, Any]]:
        """Every job's status (with `limit`, a page of them, newest first: `JobRecords.headlines`), however
        many pages ask every few seconds: an ended job's computed once, a running job's (which changes with
        every stored strip) at most once per LISTED_FRESH seconds. While no status changed, the very list
        returned before (jobs.list is a shared RPC method)."""
        statuses, now = [], self._clock()
        presence: Presence | None = None
        for job_id, state, priority in self._store.jobs.headlines(limit, before):
            # The job's own changes only: a farm-wide one (a job submitted, a node gone) leaves every other
            # job's status as it was, and a farm with hundreds of ended jobs must not list them all anew.
            version = self._changes.version(job_id)[1]
            with self._lock:
                cached = self._listed.get(job_id)
            if state in WAITING_STATES and presence is None:
                presence = self._presence()      # once per listing, for every job that waits for nodes
            if cached is None or not _still_listed(cached, state, priority, version, now):
                try:
                    cached = (version, self.job_status(self._store.jobs.get(job_id), False, presence), now)
                except FarmError as err:     # purged since the headlines were read
                    if err.code is not Code.UNKNOWN_JOB:
                        raise
                    continue
            else:
                # Nodes coming, going or breaking change no job's version: the reason is checked afresh.
                blocked = self._blocked(state, cached[1]["submitted"], presence, tuple(cached[1]["require"]),
                                        cached[1]["povray_version"], cached[1]["kind"])
                if blocked != cached[1]["blocked"]:
                    cached = (cached[0], {**cached[1], "blocked": blocked}, cached[2])
            with self._lock:
                self._listed[job_id] = cached
            statuses.append(cached[1])
        if limit:
            return statuses
        with self._lock:
            if len(statuses) == len(self._listing) and all(a is b for a, b in zip(statuses, self._listing)):
                return self._listing
            self._listing = statuses
        return statuses

    def forget(self, job_ids: Iterable[int]) -> None:
        """Purged jobs: their statuses and models are kept no longer."""
        with self._lock:
            for job_id in job_ids:
                for cache in (self._cached, self._listed, self._models):
                    cache.pop(job_id, None)

    def nodes(self) -> list[dict[str, Any]]:
        return [_node_view(node) for node in self._store.nodes.all()]

    def feed(self, job_id: int, cursor: int) -> dict[str, Any]:
        """Stored units of the job after `cursor` (pieces with zlib `rows` bytes), its status and what is
        in flight."""
        if not job_id:
            return {"job": {}, "cursor": cursor, "strips": [], "in_flight": []}
        job = self._store.jobs.get(job_id)
        status, in_flight = self.live_view(job)
        stored = self._store.units.stored_after(job_id, cursor, limit=FEED_BATCH)
        return {
            "job": status,
            "cursor": stored[-1].done_seq if stored else cursor,
            "strips": [piece for unit in stored for piece in feed_pieces(unit, job)],
            "in_flight": in_flight,
        }

    def live_view(self, job: Job) -> tuple[dict, list]:
        """The job's status and units in flight, computed once per change however many viewers ask."""
        version = self._changes.version(job.id)
        with self._lock:
            cached = self._cached.get(job.id)
        if cached is not None and cached[0] == version:
            return cached[1], cached[2]
        names = {node.id: node.name for node in self._store.nodes.all()}
        in_flight = [{"frame": u.frame, "row_start": u.row_start, "row_end": u.row_end,
                      "node": names.get(u.node, u.node), "progress": u.progress, "kind": u.kind,
                      # a radiosity pre-pass band's rows, the frame's own (a folded band's at top and bottom)
                      **({"pieces": kindparts.of_unit(u.kind).unit_rows(job, u)} if u.kind == PRETRACE else {})}
                     for u in self._store.units.of_job(job.id, UnitState.LEASED)]
        status = self.job_status(job, detail=False)
        with self._lock:
            self._cached[job.id] = (version, status, in_flight)
        return status, in_flight


def _still_listed(cached: tuple[int, dict, float], state: JobState, priority: int, version: int, now: float) -> bool:
    """Whether a job's listed status may be shown again: nothing changed, or only its counts did, and
    not long ago."""
    seen, status, built = cached
    return seen == version or (0 <= now - built < LISTED_FRESH and status["state"] == state.value
                               and status["priority"] == priority)


def feed_pieces(unit: StoredRows, job: Job) -> list[dict[str, Any]]:
    """A stored unit as the feed sends it, as its kind says (farm.service.kindparts): POV-Ray's rows one
    piece per frame; a kind whose result is a file, none."""
    return kindparts.of_unit(unit.kind).feed_pieces(unit, job)


def _node_view(node: Node) -> dict[str, Any]:
    info = node.info
    return {
        "id": node.id, "name": node.name, "state": node.state.value,
        "host": str(info.get("host", "")), "povray": str(info.get("povray", "")),
        "povray_flavour": str(info.get("povray_flavour", "console")),
        "threads": _int(info.get("threads", 0)), "slots": node.slots,
        "platform": str(info.get("platform", "")), "sandbox": str(info.get("sandbox", "unknown")),
        "sandbox_warning": str(info.get("sandbox_warning", "")),
        "last_seen": node.last_seen, "current": node.current,
        "strips_done": node.units_done, "strips_failed": node.units_failed, "error": node.error,
        "upload_bps": node.upload_bps, "tags": list(jobkinds.own_tags(node.tags)),
        "tags_overridden": node.tags_overridden, "kinds": list(jobkinds.offered_by(info)),
    }


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0
