"""The controller: takes jobs, leases strips to nodes, stores and stitches results.

`Farm` holds the API as plain methods over a `Store`; `Controller` puts it on
an XML-RPC server and runs the maintenance loop (expired leases, silent nodes,
frames whose strips are all in). The clock is injected so a test can step the
farm without sleeping.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import xmlrpc.client
from pathlib import Path
from typing import Any, Callable

from farm import __version__, bundle, strips
from farm.animation import Animation
from farm.config import Config
from farm.faults import Code, FarmError
from farm.feedcache import FeedCache, Premarshalled
from farm.options import validate_options
from farm.auth import controller_tokens
from farm.rpc import Limits, RPCServer
from farm.states import JobState, StripState
from farm.store import Store

log = logging.getLogger(__name__)

API_VERSION = 1
MAX_CACHED_SPECS = 256
MAX_RADIOSITY_CACHE = 256 * 1024 * 1024   # bytes of a frame's radiosity cache file, uncompressed
MAX_SIDE = 16384
MAX_PIXELS = 64 * 1024 * 1024
MAX_STRIPS = 1024
MAX_ERROR_TEXT = 8192
FEED_BATCH = 64   # stored strips per viewer.watch reply


def _require_int(name: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise FarmError(Code.BAD_ARGUMENT, f"{name} must be a whole number from {low} to {high}, not {value!r}")
    return value


def _job_id(value: Any) -> int:
    return _require_int("job", value, 1, 2**31 - 1)


def _require_seconds(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise FarmError(Code.BAD_ARGUMENT, f"{name} must be a number of seconds, not {value!r}")
    return float(value)


def _require_str(name: str, value: Any, max_len: int = 255) -> str:
    if not isinstance(value, str) or not value or len(value) > max_len:
        raise FarmError(Code.BAD_ARGUMENT, f"{name} must be a non-empty text of at most {max_len} characters")
    return value


def _require_binary(name: str, value: Any) -> bytes:
    if not isinstance(value, xmlrpc.client.Binary):
        raise FarmError(Code.BAD_ARGUMENT, f"{name} must be binary (base64) data")
    return value.data


def _write_atomically(path: Path, data: bytes) -> None:
    """Write, fsync, rename: a reader or a crash never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as err:
        raise FarmError(Code.STORAGE, f"cannot write {path}: {err.strerror or err}") from None


class Farm:
    """The controller's API and rules, independent of the network."""

    def __init__(self, config: Config, store: Store, clock: Callable[[], float] = time.time):
        self.config = config
        self.store = store
        self.clock = clock
        self.bundle_dir = config.data_dir / "bundles"
        self.image_dir = config.data_dir / "jobs"
        self._stitch_lock = threading.Lock()
        self.changes = _Changes()
        self.work = _Changes()   # long-polling nodes wait on its farm-wide version for queued strips
        self._views: dict[int, tuple[tuple[int, int], dict, list]] = {}   # job -> (version, status, in flight)
        self._views_lock = threading.Lock()
        self._specs: dict[int, tuple[Any, list[str]]] = {}   # job -> what never changes after submit
        self.feed = FeedCache()   # strips encoded once for every viewer, replies shared per slot

    # -- api -------------------------------------------------------------------------------

    def api_version(self) -> dict:
        """api.version() -> {api: int, server: str}: the API version and the server's version."""
        return {"api": API_VERSION, "server": f"povfarm {__version__}"}

    def bundles_has(self, digest: str) -> bool:
        """bundles.has(digest: str) -> bool: whether the controller already stores this bundle."""
        return self.store.has_bundle(_require_str("digest", digest, 100))

    def bundles_upload(self, data: xmlrpc.client.Binary) -> str:
        """bundles.upload(data: base64) -> str: store a scene bundle (zip); returns its digest."""
        payload = _require_binary("data", data)
        if len(payload) > self.config.max_bundle_bytes:
            raise FarmError(Code.BUNDLE_TOO_LARGE,
                            f"the bundle is {len(payload)} bytes; the limit is {self.config.max_bundle_bytes}")
        bundle.check_archive(payload, max_total=self.config.max_bundle_bytes)
        digest = bundle.bundle_hash(payload)
        if not self.store.has_bundle(digest):
            _write_atomically(self._bundle_path(digest), payload)
            self.store.add_bundle(digest, len(payload), self.clock())
            log.info("stored bundle %s (%d bytes)", digest, len(payload))
        return digest

    def bundles_fetch(self, digest: str) -> xmlrpc.client.Binary:
        """bundles.fetch(digest: str) -> base64: the bundle's bytes, for nodes."""
        if not self.store.has_bundle(_require_str("digest", digest, 100)):
            raise FarmError(Code.UNKNOWN_BUNDLE, f"there is no bundle {digest}")
        try:
            return xmlrpc.client.Binary(self._bundle_path(digest).read_bytes())
        except OSError as err:
            raise FarmError(Code.STORAGE, f"cannot read bundle {digest}: {err.strerror}") from None

    def _bundle_path(self, digest: str) -> Path:
        return self.bundle_dir / (digest.split(":", 1)[-1] + ".zip")

    def jobs_submit(self, spec: dict) -> int:
        """jobs.submit(spec: struct) -> int: queue a job; returns its id.

        spec: bundle (str digest), scene (str, path inside the bundle), width, height (int),
        options ([str] POV-Ray options), strips ("auto" or int per frame), bits (8 or 16, default 8),
        priority (int, default 0), name (str, default the scene's file name), animation (struct, for
        animations: first, last (int frames, +KFI/+KFF), initial_clock, final_clock (float, +KI/+KF),
        cyclic (bool, +KC), subset_first, subset_last (int, +SF/+EF; 0 = all)), radiosity_prepass (bool,
        default true: when the scene mentions radiosity, each frame cut into strips first gets one
        radiosity pretrace whose cache all its strips load, so they match a single render)."""
        job = self._checked_spec(spec)
        block = job.pop("block")
        count = spec.get("strips", "auto")
        if count != "auto":
            count = _require_int("strips", count, 1, MAX_STRIPS)
        pretrace = job.pop("mentions_radiosity") and bool(spec.get("radiosity_prepass", True))
        units = strips.with_pretrace(
            strips.plan_units(job["height"], job["first_frame"], job["last_frame"], self._live_slots(), count,
                              block), job["height"], pretrace)
        job_id = self.store.create_job(job, units, self.clock())
        self.changes.bump()
        self.work.bump()
        log.info("job %s queued: %s %dx%d, frames %d-%d, in %d units", job_id, job["scene"], job["width"],
                 job["height"], job["first_frame"], job["last_frame"], len(units))
        return job_id

    def _checked_spec(self, spec: Any) -> dict[str, Any]:
        if not isinstance(spec, dict):
            raise FarmError(Code.BAD_ARGUMENT, "the job spec must be a struct")
        digest = _require_str("bundle", spec.get("bundle"), 100)
        if not self.store.has_bundle(digest):
            raise FarmError(Code.UNKNOWN_BUNDLE, f"there is no bundle {digest}; upload it first")
        scene = _require_str("scene", spec.get("scene"), 1000)
        data = self._bundle_path(digest).read_bytes()
        names = bundle.check_archive(data, max_total=self.config.max_bundle_bytes)
        if scene not in names:
            raise FarmError(Code.BAD_ARGUMENT, f"the bundle has no file {scene!r}")
        width = _require_int("width", spec.get("width"), 1, MAX_SIDE)
        height = _require_int("height", spec.get("height"), 1, MAX_SIDE)
        if width * height > MAX_PIXELS:
            raise FarmError(Code.BAD_ARGUMENT, f"{width}x{height} is more than {MAX_PIXELS} pixels")
        options = spec.get("options", [])
        if not isinstance(options, list):
            raise FarmError(Code.BAD_ARGUMENT, "options must be a list of POV-Ray options")
        checked = validate_options(options)
        bits = spec.get("bits", 8)
        if bits not in (8, 16) or isinstance(bits, bool):
            raise FarmError(Code.BAD_ARGUMENT, f"bits must be 8 or 16, not {bits!r}")
        animation = Animation.from_spec(spec["animation"]) if spec.get("animation") else None
        first, last = (animation.rendered_first, animation.rendered_last) if animation else (1, 1)
        return {
            "bundle": digest, "scene": scene, "width": width, "height": height,
            "options": list(checked.options), "channels": 4 if checked.alpha else 3, "bits": bits,
            "priority": _require_int("priority", spec.get("priority", 0), -1000, 1000),
            "name": _require_str("name", spec.get("name", Path(scene).stem), 200),
            "first_frame": first, "last_frame": last, "block": checked.block,
            "animation": animation.to_spec() if animation else None,
            # A scene that may use radiosity gets a shared pre-pass per split frame; the node running it
            # finds out whether radiosity is really on.
            "mentions_radiosity": bundle.mentions(data, b"radiosity", scene),
        }

    def _live_slots(self) -> int:
        """How many POV-Ray processes the live nodes run at once, all told."""
        return sum(max(1, int(json.loads(node["info"]).get("slots", 1)))
                   for node in self.store.nodes() if node["state"] in ("idle", "busy"))

    def jobs_status(self, job_id: int) -> dict:
        """jobs.status(job: int) -> struct: id, name, scene, state, progress (0..1), width, height,
        strips_total, strips_done, strips_leased, frames_total, frames_done, priority, error ("" if none),
        submitted, started, finished (Unix times, 0 if not yet), strips ([struct] with row ranges, state,
        node and progress)."""
        job = self.store.job(_job_id(job_id))
        return self._describe(job, detail=True)

    def jobs_wait(self, job_id: int, timeout: float) -> dict:
        """jobs.wait(job: int, timeout: float) -> struct: the job's status (as jobs.list) as soon as anything
        about it changes or it has ended, else after `timeout` seconds (at most 30). For progress displays."""
        job_id = _job_id(job_id)
        timeout = _require_seconds("timeout", timeout)
        seen = self.changes.version(job_id)
        status = self._describe(self.store.job(job_id), detail=False)
        if status["state"] in ("done", "failed", "canceled"):
            return status
        self.changes.wait(job_id, seen, min(timeout, 30.0))
        return self._describe(self.store.job(job_id), detail=False)

    def jobs_list(self) -> list:
        """jobs.list() -> [struct]: every job, as jobs.status without the per-strip detail."""
        return [self._describe(job, detail=False) for job in self.store.jobs()]

    def _describe(self, job, detail: bool) -> dict:
        summary = self.store.strip_summary(job["id"])
        total = sum(count for count, _ in summary.values())
        done = summary.get("done", (0, 0.0))[0]
        leased, leased_progress = summary.get("leased", (0, 0.0))
        progress = 1.0 if job["state"] == JobState.DONE.value else (
            (done + leased_progress) / total if total else 0.0)
        frames = self.store.frames_of(job["id"])
        info = {
            "id": job["id"], "name": job["name"], "scene": job["scene"], "state": job["state"],
            "progress": round(progress, 4), "width": job["width"], "height": job["height"],
            "strips_total": total, "strips_done": done, "strips_leased": leased,
            "frames_total": len(frames), "frames_done": sum(1 for f in frames if f["state"] == "done"),
            "priority": job["priority"], "error": job["error"] or "",
            "channels": job["channels"], "bits": job["bits"],
            "first_frame": job["first_frame"], "last_frame": job["last_frame"],
            "frame_digits": self._animation(job).digits if job["animation"] else 0,
            "submitted": job["submitted"], "started": job["started"] or 0.0, "finished": job["finished"] or 0.0,
        }
        if detail:
            rows = self.store.strips_of(job["id"])
            info["frames"] = [{"number": f["number"], "state": f["state"]} for f in frames]
            info["strips"] = [{"frame": r["frame"], "frame_last": r["frame_last"], "index": r["idx"],
                               "row_start": r["row_start"],
                               "row_end": r["row_end"], "state": r["state"], "node": r["node"] or "",
                               "progress": r["progress"], "attempts": r["attempt"], "kind": r["kind"]}
                              for r in rows]
        return info

    def _animation_options(self, job) -> list[str]:
        """POV-Ray's animation switches for a job's tasks ([] for a still)."""
        return list(self._fixed(job["id"])[1])

    @staticmethod
    def _animation(job) -> Animation:
        return Animation.from_spec(json.loads(job["animation"]))

    def jobs_cancel(self, job_id: int) -> bool:
        """jobs.cancel(job: int) -> bool: cancel a queued or rendering job; nodes stop its strips."""
        self.store.cancel_job(_job_id(job_id), self.clock())
        self.changes.bump(job_id)
        log.info("job %s canceled", job_id)
        return True

    def jobs_pause(self, job_id: int) -> bool:
        """jobs.pause(job: int) -> bool: lease no new strips of the job; strips in flight still finish."""
        self.store.pause_job(_job_id(job_id))
        log.info("job %s paused", job_id)
        self.changes.bump(job_id)
        return True

    def jobs_resume(self, job_id: int) -> bool:
        """jobs.resume(job: int) -> bool: let a paused job render again."""
        self.store.resume_job(_job_id(job_id))
        log.info("job %s resumed", job_id)
        self.changes.bump(job_id)
        self.work.bump()
        return True

    def jobs_set_priority(self, job_id: int, priority: int) -> bool:
        """jobs.set_priority(job: int, priority: int -1000..1000) -> bool: change a queued or rendering job's
        priority; strips not leased yet go in the new order (higher first)."""
        priority = _require_int("priority", priority, -1000, 1000)
        self.store.set_priority(_job_id(job_id), priority)
        log.info("job %s priority set to %s", job_id, priority)
        self.changes.bump(job_id)
        self.work.bump()
        return True

    def jobs_fetch(self, job_id: int, frame: int = 0) -> xmlrpc.client.Binary:
        """jobs.fetch(job: int[, frame: int]) -> base64: the finished PNG of a frame (default the first)."""
        job = self.store.job(_job_id(job_id))
        if job["state"] != JobState.DONE.value:
            why = f": {job['error']}" if job["error"] else ""
            raise FarmError(Code.JOB_NOT_DONE, f"job {job_id} is {job['state']}{why}")
        number = frame or job["first_frame"]
        rows = [f for f in self.store.frames_of(job_id) if f["number"] == number]
        if not rows:
            raise FarmError(Code.BAD_ARGUMENT, f"job {job_id} has no frame {number}")
        try:
            return xmlrpc.client.Binary(Path(rows[0]["path"]).read_bytes())
        except OSError as err:
            raise FarmError(Code.STORAGE, f"cannot read the image of job {job_id}: {err.strerror}") from None

    def nodes_register(self, name: str, info: dict) -> dict:
        """nodes.register(name: str, info: struct) -> struct: node_id (str), heartbeat_interval (float).
        info may carry povray (version text), threads (int), host (str), platform (str), error (str:
        the node cannot render, e.g. POV-Ray is missing)."""
        name = _require_str("name", name, 100)
        if not isinstance(info, dict):
            raise FarmError(Code.BAD_ARGUMENT, "info must be a struct")
        node_id = self.store.register_node(name, info, self.clock())
        self.work.bump()   # an earlier incarnation's leases may have gone back to the queue
        log.info("node %s registered (%s)", node_id, info.get("povray", "unknown POV-Ray"))
        return {"node_id": node_id, "heartbeat_interval": self.config.heartbeat_interval}

    def nodes_poll(self, node_id: str, wait: float = 0.0) -> dict:
        """nodes.poll(node_id: str[, wait: float]) -> struct: a task, or {} when there is no work.
        With wait > 0 it is a long poll: when nothing is queued it waits up to `wait` seconds (at most a
        third of the lease timeout) for work to appear, so idle nodes start at once and poll rarely.
        A task: lease (str), job, frame, frame_last (the unit renders frames frame..frame_last), strip,
        attempt, width, height, row_start, row_end (0-based, end exclusive) (int), bundle, scene (str),
        options ([str]), animation ([str] POV-Ray animation switches, [] for a still), channels (3 or 4),
        bits (8 or 16), time_limit (float seconds of wall clock for the strip, 0 for none), kind ("rows";
        or "pretrace": run the frame's radiosity pretrace and deliver its cache file), radiosity_cache
        (bool: load the frame's shared cache, from nodes.radiosity_cache)."""
        node_id = _require_str("node_id", node_id, 120)
        wait = _require_seconds("wait", wait)
        seen = self.work.version(0)
        strip = self.store.lease_strip(node_id, self.clock(), self.config.lease_timeout)
        if strip is None and wait > 0:
            self.work.wait(0, seen, min(wait, self.config.lease_timeout / 3, 20.0))
            strip = self.store.lease_strip(node_id, self.clock(), self.config.lease_timeout)
        return {} if strip is None else self._task(strip, node_id)

    def _task(self, strip, node_id: str) -> dict:
        """A leased strip as the node's task."""
        self.changes.bump(strip["job"])
        job = self._job_spec(strip["job"])
        # DEBUG: a busy farm leases hundreds of strips a second; "done" lines (INFO) name the node too.
        log.debug("job %s strip %s (rows %s-%s) leased to %s", job["id"], strip["idx"], strip["row_start"],
                  strip["row_end"], node_id)
        return {
            "lease": strip["lease"], "job": job["id"], "frame": strip["frame"],
            "frame_last": strip["frame_last"], "strip": strip["idx"],
            "animation": self._animation_options(job),
            "attempt": strip["attempt"], "width": job["width"], "height": job["height"],
            "row_start": strip["row_start"], "row_end": strip["row_end"], "bundle": job["bundle"],
            "scene": job["scene"], "options": json.loads(job["options"]), "channels": job["channels"],
            "bits": job["bits"], "time_limit": self.config.strip_timeout, "kind": strip["kind"],
            "radiosity_cache": bool(job["pretrace"]) and strip["kind"] == strips.ROWS
                               and self.store.has_radiosity_cache(job["id"], strip["frame"]),
        }

    def nodes_heartbeat(self, node_id: str, progress: dict) -> dict:
        """nodes.heartbeat(node_id: str, progress: struct lease -> float 0..1) -> struct:
        stop ([str]): leases the node must abandon (canceled, failed or expired)."""
        if not isinstance(progress, dict):
            raise FarmError(Code.BAD_ARGUMENT, "progress must be a struct of lease to fraction")
        stale, jobs = self.store.heartbeat(_require_str("node_id", node_id, 120), progress, self.clock(),
                                           self.config.lease_timeout)
        for job_id in jobs:
            self.changes.bump(job_id)
        return {"stop": stale}

    def nodes_complete(self, node_id: str, lease: str, rows: xmlrpc.client.Binary, seconds: float) -> bool:
        """nodes.complete(node_id: str, lease: str, rows: base64 zlib, seconds: float) -> bool:
        deliver a rendered strip's pixel rows (for a radiosity pre-pass: its zlib cache file, or empty
        bytes when the scene uses no radiosity). A lease that is no longer current gets STALE_LEASE."""
        data = _require_binary("rows", rows)
        strip, job = self._strip_and_job(lease)
        try:
            if strip["kind"] == strips.PRETRACE:
                if data:
                    strips.decompress_capped(data, MAX_RADIOSITY_CACHE)
            else:
                strips.decompress_rows(data, _unit_bytes(strip, job))
        except ValueError as err:
            raise FarmError(Code.BAD_ARGUMENT, f"strip rows rejected: {err}") from None
        job_id, complete = self.store.complete_strip(node_id, lease, data, float(seconds), self.clock())
        if strip["kind"] == strips.PRETRACE:
            self.work.bump()   # the frame's strips were waiting for this
            log.info("job %s frame %s radiosity pre-pass done by %s in %.2fs (%s)", job_id, strip["frame"],
                     node_id, float(seconds), "cache shared" if data else "the scene uses no radiosity")
            self.changes.bump(job_id)
            return True
        log.info("job %s strip %s done by %s in %.2fs", job_id, strip["idx"], node_id, float(seconds))
        self.changes.bump(job_id)
        try:
            self._finish_frames([(job_id, frame) for frame in complete])
        except FarmError as err:
            # The strip is stored; the maintenance loop writes the frames when it can.
            log.error("job %s frames %s not written yet: %s", job_id, complete, err)
        return True

    def nodes_complete_and_poll(self, node_id: str, lease: str, rows: xmlrpc.client.Binary, seconds: float) -> dict:
        """nodes.complete_and_poll(node_id: str, lease: str, rows: base64 zlib, seconds: float) -> struct:
        nodes.complete, then nodes.poll without waiting, in one round trip: the node's next task, or {}.
        Faults as nodes.complete; when it faults, nothing was leased."""
        self.nodes_complete(node_id, lease, rows, seconds)
        return self.nodes_poll(node_id)

    def nodes_radiosity_cache(self, node_id: str, lease: str) -> xmlrpc.client.Binary:
        """nodes.radiosity_cache(node_id: str, lease: str) -> base64 zlib: the radiosity cache shared by the
        strips of the leased strip's frame. STALE_LEASE unless the lease is the node's current one;
        BAD_ARGUMENT when the frame has none."""
        node_id = _require_str("node_id", node_id, 120)
        strip, _ = self._strip_and_job(lease)
        if strip["node"] != node_id or strip["state"] != StripState.LEASED.value:
            raise FarmError(Code.STALE_LEASE, f"lease {lease} is no longer current")
        cache = self.store.radiosity_cache(strip["job"], strip["frame"])
        if cache is None:
            raise FarmError(Code.BAD_ARGUMENT,
                            f"frame {strip['frame']} of job {strip['job']} has no radiosity cache")
        return xmlrpc.client.Binary(cache)

    def _strip_and_job(self, lease: Any):
        lease = _require_str("lease", lease, 120)
        strip = self.store.strip_by_lease(lease)
        if strip is None:
            raise FarmError(Code.STALE_LEASE, f"lease {lease} is unknown; the result was discarded")
        return strip, self._job_spec(strip["job"])

    def _job_spec(self, job_id: int):
        """A job's row for what was fixed at submit (size, scene, options, frames), never its state."""
        return self._fixed(job_id)[0]

    def _fixed(self, job_id: int) -> tuple[Any, list[str]]:
        """What never changes after submit, worked out once per job, not on every strip: its row and its
        POV-Ray animation switches."""
        fixed = self._specs.get(job_id)
        if fixed is None:
            if len(self._specs) >= MAX_CACHED_SPECS:
                self._specs.clear()
            row = self.store.job(job_id)
            fixed = self._specs[job_id] = (row, self._animation(row).povray_options() if row["animation"] else [])
        return fixed

    def nodes_fail(self, node_id: str, lease: str, error: str, scene_error: bool) -> bool:
        """nodes.fail(node_id: str, lease: str, error: str, scene_error: bool) -> bool: report a failed strip.
        scene_error true means the scene itself is broken (a parse error): the job fails at once;
        otherwise the strip is retried, up to max_attempts times."""
        text = str(error)[:MAX_ERROR_TEXT] or "POV-Ray failed without a message"
        job_id = self.store.fail_strip(_require_str("node_id", node_id, 120), _require_str("lease", lease, 120),
                                       text, bool(scene_error), self.clock(), self.config.max_attempts)
        self.changes.bump(job_id)
        self.work.bump()
        log.warning("node %s failed lease %s%s: %s", node_id, lease, " (scene error)" if scene_error else "",
                    text.splitlines()[0] if text else "")
        return True

    def nodes_release(self, node_id: str, lease: str) -> bool:
        """nodes.release(node_id: str, lease: str) -> bool: hand an unfinished lease back (node shutting down)."""
        self.store.release_strip(_require_str("node_id", node_id, 120), _require_str("lease", lease, 120),
                                 self.clock())
        self.work.bump()
        return True

    def nodes_list(self) -> list:
        """nodes.list() -> [struct]: id, name, state, host, povray, threads, slots, platform, sandbox ("bwrap",
        "none"), sandbox_warning (why it runs unconfined, "" when confined), last_seen (Unix time),
        current (str: job/frame/strip in flight, "" if none), strips_done, strips_failed, error."""
        result = []
        for node in self.store.nodes():
            info = json.loads(node["info"])
            result.append({
                "id": node["id"], "name": node["name"], "state": node["state"],
                "host": str(info.get("host", "")), "povray": str(info.get("povray", "")),
                "threads": int(info.get("threads", 0)), "slots": int(info.get("slots", 1)),
                "platform": str(info.get("platform", "")), "sandbox": str(info.get("sandbox", "unknown")),
                "sandbox_warning": str(info.get("sandbox_warning", "")),
                "last_seen": node["last_seen"], "current": node["current"] or "",
                "strips_done": node["strips_done"], "strips_failed": node["strips_failed"],
                "error": node["error"] or "",
            })
        return result

    def viewer_watch(self, job_id: int, cursor: int, timeout: float) -> dict:
        """viewer.watch(job: int, cursor: int, timeout: float) -> struct: the viewers' live feed.

        A long poll: returns at once when strips newer than `cursor` are stored (or the job has
        ended), else when anything about the job changes, else after `timeout` seconds (at most 30).
        When several viewers watch a job, they are answered together on ticks 0.1 s apart.
        job 0 means the newest job. cursor 0 gets every strip stored so far.
        Returns job (struct as jobs.list, plus channels and bits; {} when there is no job yet),
        cursor (int, pass it to the next call), strips ([struct] frame, row_start, row_end, rows:
        base64 zlib of the raw rows, oldest first), in_flight ([struct] frame, row_start, row_end,
        node (name), progress 0..1, kind ("rows", or "pretrace": a radiosity pre-pass over the frame))."""
        job_id = _require_int("job", job_id, 0, 2**31 - 1)
        cursor = _require_int("cursor", cursor, 0, 2**31 - 1)
        timeout = _require_seconds("timeout", timeout)
        target = job_id or self.store.newest_job_id() or 0
        seen = self.changes.version(target)
        new = len(self.store.strips_stored_after(target, cursor, FEED_BATCH, data=False)) if target else 0
        ended = bool(target) and self.store.job(target)["state"] in ("done", "failed", "canceled")
        if (ended and job_id) or (new and (cursor == 0 or new == FEED_BATCH)):
            return self._feed(target, cursor)   # a viewer starting or catching up gets its strips at once
        if not new:
            # Nothing new: wait for this job to change, or (following the newest job) for a new job.
            self.changes.wait(target, seen, min(timeout, 30.0))
        slot = self.feed.pace(target)   # the job's viewers are answered together (farm/feedcache.py)
        current = job_id or self.store.newest_job_id() or 0
        if current != target:
            return self._feed(current, 0)   # a new job starts at cursor 0
        return self.feed.shared(("reply", current, cursor), slot,
                                lambda: Premarshalled(self._feed(current, cursor, slot)))

    def _feed(self, job_id: int, cursor: int, slot: float | None = None) -> dict:
        if not job_id:
            return {"job": {}, "cursor": cursor, "strips": [], "in_flight": []}
        job = self.store.job(job_id)
        status, in_flight, head = (*self._job_view(job), 2**31 - 1) if slot is None else self.feed.shared(
            ("view", job_id), slot, lambda: (*self._job_view(job), self.store.newest_stored_seq(job_id)))
        # In a slot, every viewer gets strips up to the same one, so they share the next slot's reply.
        rows = [r for r in self.store.strips_stored_after(job_id, cursor, FEED_BATCH, data=False)
                if r["done_seq"] <= head]
        return {
            "job": status,
            "cursor": rows[-1]["done_seq"] if rows else cursor,
            "strips": [piece for row in rows for piece in self.feed.pieces(   # rows read only when first sent
                job_id, row["done_seq"], lambda seq=row["done_seq"]: self._feed_pieces(
                    self.store.strips_stored_after(job_id, seq - 1, 1)[0], job))],
            "in_flight": in_flight,
        }

    def _job_view(self, job) -> tuple[dict, list]:
        """The job's status and strips in flight, computed once per change however many viewers ask."""
        version = self.changes.version(job["id"])
        with self._views_lock:
            cached = self._views.get(job["id"])
        if cached is not None and cached[0] == version:
            return cached[1], cached[2]
        names = {node["id"]: node["name"] for node in self.store.nodes()}
        in_flight = [
            {"frame": s["frame"], "row_start": s["row_start"], "row_end": s["row_end"],
             "node": names.get(s["node"], s["node"] or ""), "progress": s["progress"], "kind": s["kind"]}
            for s in self.store.strips_of(job["id"]) if s["state"] == "leased"]
        status = self._describe(job, detail=False)
        with self._views_lock:
            self._views[job["id"]] = (version, status, in_flight)
        return status, in_flight

    @staticmethod
    def _feed_pieces(row, job) -> list[dict]:
        """A stored unit as the feed sends it: one entry per frame."""
        if row["frame"] == row["frame_last"]:
            return [{"frame": row["frame"], "row_start": row["row_start"], "row_end": row["row_end"],
                     "rows": xmlrpc.client.Binary(bytes(row["data"]))}]
        data = strips.decompress_rows(bytes(row["data"]), _unit_bytes(row, job))
        size = len(data) // (row["frame_last"] - row["frame"] + 1)
        return [{"frame": frame, "row_start": row["row_start"], "row_end": row["row_end"],
                 "rows": xmlrpc.client.Binary(strips.compress_rows(data[i * size:(i + 1) * size]))}
                for i, frame in enumerate(range(row["frame"], row["frame_last"] + 1))]

    # -- maintenance -------------------------------------------------------------------------

    def tick(self) -> None:
        """Expire leases, mark silent nodes, and write frames whose strips are all in."""
        if self.store.expire(self.clock(), self.config.lease_timeout):
            self.changes.bump()
            self.work.bump()
        self._finish_frames(self.store.complete_frames())

    def recover(self) -> None:
        """After a restart: leases in flight get a grace period so their nodes can still deliver."""
        self.store.extend_leases(self.clock() + self.config.lease_timeout)
        self.tick()

    def _finish_frames(self, frames: list[tuple[int, int]]) -> None:
        """Stitch and write these (job, frame)s, in order. A unit of several frames is decompressed
        once for all of them, not once per frame."""
        if not frames:
            return
        with self._stitch_lock:
            pending = set(self.store.complete_frames())   # another thread may have written some already
            unpacked = _LastUnit()
            for job_id, frame in frames:
                if (job_id, frame) in pending:
                    self._finish_frame(job_id, frame, unpacked)

    def _finish_frame(self, job_id: int, frame: int, unpacked: "_LastUnit") -> None:
        """Under the stitch lock: stitch one complete frame and record its image."""
        job = self.store.job(job_id)
        try:
            pieces = [unpacked.frame_rows(unit, job, frame)
                      for unit in self.store.strip_pieces(job_id, frame)]
            raster = strips.stitch(job["width"], job["height"], job["channels"], job["bits"], pieces)
        except ValueError as err:
            log.error("job %s frame %s cannot be stitched: %s", job_id, frame, err)
            self.store.fail_frame(job_id, f"frame {frame} cannot be stitched: {err}", self.clock())
            return
        path = self.image_dir / str(job_id) / f"frame-{frame:05d}.png"
        _write_atomically(path, strips.encode_png(raster))
        if self.store.finish_frame(job_id, frame, str(path), self.clock()):
            log.info("job %s done: %s", job_id, path)
        self.changes.bump(job_id)

    def methods(self) -> dict[str, tuple[Callable[..., Any], frozenset[str]]]:
        """The public RPC surface: name -> (function, roles that may call it)."""
        anyone, user, node, reader = (frozenset({"submit", "node", "view"}), frozenset({"submit"}),
                                      frozenset({"node"}), frozenset({"submit", "view"}))
        return {
            "api.version": (self.api_version, anyone),
            "bundles.has": (self.bundles_has, user), "bundles.upload": (self.bundles_upload, user),
            "bundles.fetch": (self.bundles_fetch, node),
            "jobs.submit": (self.jobs_submit, user), "jobs.cancel": (self.jobs_cancel, user),
            "jobs.pause": (self.jobs_pause, user), "jobs.resume": (self.jobs_resume, user),
            "jobs.set_priority": (self.jobs_set_priority, user),
            "jobs.status": (self.jobs_status, reader), "jobs.list": (self.jobs_list, reader),
            "jobs.wait": (self.jobs_wait, reader),
            "jobs.fetch": (self.jobs_fetch, reader), "nodes.list": (self.nodes_list, reader),
            "viewer.watch": (self.viewer_watch, reader),
            "nodes.register": (self.nodes_register, node), "nodes.poll": (self.nodes_poll, node),
            "nodes.heartbeat": (self.nodes_heartbeat, node), "nodes.complete": (self.nodes_complete, node),
            "nodes.complete_and_poll": (self.nodes_complete_and_poll, node),
            "nodes.radiosity_cache": (self.nodes_radiosity_cache, node),
            "nodes.fail": (self.nodes_fail, node), "nodes.release": (self.nodes_release, node),
        }


class _Changes:
    """What long polls wait on: a version per job, and one for farm-wide changes (a new job, expired
    leases). Viewers wait on their job's, so only those whose job (or the farm) changed wake up and
    query; nodes wait on the farm-wide one of their own instance for queued work."""

    def __init__(self):
        self._condition = threading.Condition()
        self._farm = 0
        self._jobs: dict[int, int] = {}

    def bump(self, job_id: int | None = None) -> None:
        with self._condition:
            if job_id is None:
                self._farm += 1
            else:
                self._jobs[job_id] = self._jobs.get(job_id, 0) + 1
            self._condition.notify_all()

    def version(self, job_id: int) -> tuple[int, int]:
        with self._condition:
            return self._farm, self._jobs.get(job_id, 0)

    def wait(self, job_id: int, seen: tuple[int, int], timeout: float) -> None:
        with self._condition:
            self._condition.wait_for(lambda: (self._farm, self._jobs.get(job_id, 0)) != seen, timeout)


def _unit_bytes(unit, job) -> int:
    """Bytes of raw rows a unit of work delivers: its rows, for each of its frames."""
    frames = unit["frame_last"] - unit["frame"] + 1
    rows = unit["row_end"] - unit["row_start"]
    return frames * rows * strips.row_size(job["width"], job["channels"], job["bits"])


class _LastUnit:
    """The last stored unit decompressed, kept while its frames are stitched one after another."""

    def __init__(self):
        self._key: tuple | None = None
        self._data = b""

    def frame_rows(self, unit, job, frame: int) -> tuple[int, int, bytes]:
        """(row_start, row_end, raw rows) of one frame out of a stored unit."""
        key = (job["id"], unit["frame"], unit["frame_last"], unit["row_start"])
        if key != self._key:
            self._key, self._data = key, strips.decompress_rows(bytes(unit["data"]), _unit_bytes(unit, job))
        size = len(self._data) // (unit["frame_last"] - unit["frame"] + 1)
        offset = (frame - unit["frame"]) * size
        return unit["row_start"], unit["row_end"], self._data[offset:offset + size]


def _is_loopback(address: str) -> bool:
    import ipaddress
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return address == "localhost"


def _tls_context(config: Config):
    """A server TLS context from --tls-cert/--tls-key, or None for plain HTTP."""
    if not config.tls_cert and not config.tls_key:
        return None
    if not (config.tls_cert and config.tls_key):
        raise FarmError(Code.BAD_ARGUMENT, "TLS needs both --tls-cert and --tls-key")
    import ssl
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(config.tls_cert, config.tls_key)
    except (OSError, ssl.SSLError) as err:
        raise FarmError(Code.BAD_ARGUMENT, f"cannot load the TLS certificate or key: {err}") from None
    return context


class Controller:
    """The farm on an XML-RPC server, with its maintenance loop."""

    def __init__(self, config: Config, clock: Callable[[], float] = time.time):
        self.config = config
        self.store = Store(config.data_dir / "povfarm.sqlite3")
        self.farm = Farm(config, self.store, clock)
        self.tokens = controller_tokens(config.data_dir, Path(config.token_file) if config.token_file else None,
                                        config.token or None)
        limits = Limits(max_body=config.max_bundle_bytes * 4 // 3 + (1 << 20),   # base64 plus the envelope
                        request_timeout=config.request_timeout, max_connections=config.max_connections)
        try:
            self.server = RPCServer((config.bind, config.port), self.tokens, _tls_context(config), limits)
        except OSError as err:
            self.store.close()
            raise FarmError(Code.BAD_ARGUMENT,
                            f"cannot listen on {config.bind}:{config.port}: {err.strerror or err}") from None
        for name, (method, roles) in self.farm.methods().items():
            self.server.register_function(method, name, roles)
        self._stop = threading.Event()
        self._maintenance = threading.Thread(target=self._maintain, name="maintenance", daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"{'https' if self.server.tls else 'http'}://{host}:{port}"

    def _maintain(self) -> None:
        interval = max(0.2, min(1.0, self.config.lease_timeout / 4))
        while not self._stop.wait(interval):
            try:
                self.farm.tick()
            except FarmError as err:
                log.error("maintenance: %s", err)

    def serve_forever(self) -> None:
        self.farm.recover()
        self._maintenance.start()
        log.info("controller listening on %s (data in %s)", self.url, self.config.data_dir)
        if self.server.tls is None and not _is_loopback(self.config.bind):
            log.warning("*" * 72)
            log.warning("listening on %s WITHOUT TLS: tokens and scenes cross the network in clear text.",
                        self.config.bind)
            log.warning("Use --tls-cert/--tls-key unless every host that can reach this port is trusted.")
            log.warning("*" * 72)
        try:
            self.server.serve_forever(poll_interval=0.05)   # shutdown() waits for this loop to notice
        finally:
            self._stop.set()

    def start_in_thread(self) -> threading.Thread:
        thread = threading.Thread(target=self.serve_forever, name="controller", daemon=True)
        thread.start()
        return thread

    def shutdown(self) -> None:
        self._stop.set()
        self.server.shutdown()
        self.server.server_close()
        self.store.close()
