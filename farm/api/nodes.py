"""nodes.*: the node protocol (see docs/protocol.md), and the node list for people."""

from __future__ import annotations


from farm.api import args, rpc
from farm import scenefiles
from farm import tags as tagging
from farm.auth import NODE, READERS, SUBMIT
from farm.faults import Code, FarmError
from farm.features import FEATURES
from farm.rows import ENCODINGS, ZLIB, deflate_bound
from farm.server.bodies import FileReply
from farm.server.departures import departure_watch
from farm.service import kindparts
from farm.service.inline import InlineBundles
from farm.service.submission import MAX_SIDE
from farm.kinds import PRETRACE, ROWS
from farm.unitlog import UnitLog
from farm.wire import Binary

MAX_ERROR_TEXT = 8192
MAX_ID_TEXT = 120
MAX_LIVE_BLOCKS = 256      # blocks per nodes.live call
MAX_COSTS = 1024           # entries of a result's `costs`


class NodesAPI:
    namespace = "nodes"

    def __init__(self, services):
        self._services = services
        self._dispatch = services.dispatcher
        self._config = services.config
        self._inline = InlineBundles(services.files.bundle)

    @rpc(NODE)
    def register(self, name: str, info: dict) -> dict:
        """A node starts (or starts again: units its earlier incarnation of the same name held go back).

        @param name: str, the node's name (unique per box)
        @param info: struct: povray (version text), threads (int), slots (int: POV-Ray processes it runs at
            once), cores (int), machine (str: which box's cores it shares; "" unknown), host, platform (str),
            povray_flavour ("console": a povray that exits non-zero on error; "pvengine": POV-Ray for Windows'
            GUI engine), sandbox ("bwrap" or "none"), sandbox_warning (str), povfarm (version), error (str: the
            node cannot render, e.g. POV-Ray is missing), tags ([str]: its own tags, `povfarm node --tags`;
            tags set with nodes.set_tags win over them), kinds ([str]: the kinds of job it runs, farm.jobkinds;
            a job is leased only to a node offering its kind; absent: ["povray"]), interleave (bool: it renders
            sheared units, farm/shear.py; a sheared job goes only to such nodes, and a job is sheared only while
            every live node is one), cache_later (bool: it can start a strip before its frame's radiosity
            cache is complete, see nodes.poll's cache_pending), folded_bands (bool: it pretraces a band of a
            folded pre-pass as such, see nodes.poll's fold; a pre-pass is folded only while every live node
            does)
        @return: struct: node_id (str), heartbeat_interval (float seconds: how often to renew leases and
            report progress), lease_timeout (float seconds: a lease not renewed this long goes to another node),
            features ([str]: what this controller can do: "complete_and_poll" (nodes.complete_and_poll),
            "bundle_ranges" (bundles.fetch_range), "filtered_rows" (nodes.complete's encoding "filtered"),
            "heartbeat_stats" (nodes.heartbeat's stats), "feed_stream" (GET /feed); a controller from before
            the list sends none and has none of them)
        """
        info = args.plain_struct("info", info)
        if not isinstance(info.get("error", ""), str):
            raise FarmError(Code.BAD_ARGUMENT, "info.error must be a text")
        if not isinstance(info.get("tags", []), list):
            raise FarmError(Code.BAD_ARGUMENT, "info.tags must be a list of tags")
        info["tags"] = list(tagging.parse(info.get("tags", []), "info.tags"))
        node_id = self._dispatch.register(args.text("name", name, 100), info)
        return {"node_id": node_id, "heartbeat_interval": self._config.heartbeat_interval,
                "lease_timeout": self._config.lease_timeout, "features": list(FEATURES)}

    @rpc(NODE)
    def poll(self, node_id: str, wait: float = 0.0, inline: bool = False) -> dict:
        """The node's next task, or {} when there is no work.

        With wait > 0 it is a long poll: when nothing is queued it waits up to `wait` seconds (at most a
        third of the lease timeout, and 30 s) for work to appear, so idle nodes start at once and poll rarely.
        @param node_id: str
        @param wait: float seconds (default 0)
        @param inline: bool (default false): the node takes a small bundle with the task (bundle_data)
        @return: struct, {} or a task: lease (str), job, frame, frame_last (the unit renders frames
            frame..frame_last), strip (its index), attempt, width, height, row_start, row_end (0-based, end
            exclusive) (int), bundle, scene (str), options ([str]), animation ([str] POV-Ray animation
            switches, [] for a still), channels (3 or 4), bits (8 or 16), time_limit (float seconds of wall
            clock, 0 for none), kind ("rows"; "pretrace": run the frame's radiosity pretrace over the unit's
            rows (the whole frame, or a band of it) and deliver its cache file; "preview": a quick
            low-resolution render of the frame, for viewers: width, height and options are the preview's
            own, so it renders as ordinary rows; another kind's unit: "video", or a kind's from kind_modules),
            radiosity_cache (bool: load the frame's shared cache,
            from nodes.radiosity_cache), cache_pending (bool: a part of the frame's pre-pass is still
            rendering: the cache is NOT_READY until it is in; sent only to a node that registered with
            cache_later true),
            live (bool: a viewer watches the job: send finished blocks with nodes.live),
            shear (int: the rows are those of the frame's sheared image at this step, farm.shear: render
            their blocks alone and deliver them in its order; 0: the frame's own rows),
            fold (bool: a band of a folded pre-pass: pretrace rows [height - row_end, height - row_start) as
            well, after the band's own, farm.radiosity.band_pieces; sent only to a node that registered with
            folded_bands true),
            bundle_data (base64, only with inline: the bundle itself, when it is at most 256 KiB and this
            node id has not been sent it yet)
        """
        node_id, wait = args.text("node_id", node_id, MAX_ID_TEXT), args.seconds("wait", wait)
        if wait > 0:
            with departure_watch(self._services.work.wake) as gone:
                leased = self._dispatch.poll(node_id, wait, gone)
        else:
            leased = self._dispatch.poll(node_id, wait)
        if leased is None:
            return {}
        task = self._task(*leased)
        data = self._inline.take(node_id, task["bundle"]) if args.flag("inline", inline) else None
        return task if data is None else {**task, "bundle_data": Binary(data)}

    def _task(self, lease, job) -> dict:
        unit = lease.unit
        width, height, options = kindparts.of_unit(unit.kind).task_image(unit, job)
        return {
            "lease": lease.token, "job": job.id, "frame": unit.frame, "frame_last": unit.frame_last,
            "strip": unit.index, "animation": list(job.animation_options), "attempt": unit.attempt,
            "width": width, "height": height, "row_start": unit.row_start, "row_end": unit.row_end,
            "bundle": job.bundle, "scene": job.scene, "options": list(options), "channels": job.channels,
            "bits": job.bits, "time_limit": self._config.strip_timeout, "kind": unit.kind,
            "radiosity_cache": self._dispatch.loads_frame_cache(job, unit),
            "cache_pending": self._dispatch.frame_cache_pending(job, unit),
            "live": self._dispatch.live_blocks(unit),
            "shear": job.shear if unit.kind == ROWS else 0,
            "fold": job.fold and unit.kind == PRETRACE,
        }

    @rpc(NODE)
    def heartbeat(self, node_id: str, progress: dict, stats: dict | None = None) -> dict:
        """Renew the node's leases and report progress (and, optionally, how the node is doing).

        @param node_id: str
        @param progress: struct, lease (str) -> fraction done (float 0..1); a finished unit whose result is
            still on its way is reported at 1.0
        @param stats: struct (optional): upload_bps (float, bytes per second the node's large requests
            reached the controller at, lately; shown by nodes.list for schedulers and people)
        @return: struct: stop ([str], leases the node must abandon: canceled, failed, expired, or not its own),
            live ([str], the leases rendering rows of a job a viewer watches now: send their finished blocks
            with nodes.live, from the first, when the task said it was not watched)
        """
        progress = args.struct("progress", progress)
        checked = {args.text("lease", lease, MAX_ID_TEXT): args.number("progress", fraction, 0.0, 1.0)
                   for lease, fraction in progress.items()}
        stats = args.struct("stats", stats if stats is not None else {})
        upload = args.number("stats.upload_bps", stats["upload_bps"], 0.0, 1e12) if "upload_bps" in stats else None
        node_id = args.text("node_id", node_id, MAX_ID_TEXT)
        stop = self._dispatch.heartbeat(node_id, checked, upload)
        renewed = [lease for lease in checked if lease not in stop]
        return {"stop": stop, "live": self._dispatch.watched_leases(node_id, renewed)}

    def _rows_limit(self, before: tuple) -> int:
        """The most bytes a result's rows may hold, from the node_id and lease before them: its unit's,
        compressed at worst (STALE_LEASE for a lease that is not current)."""
        if len(before) != 2:
            raise FarmError(Code.BAD_ARGUMENT, "rows must come third, after node_id and lease")
        args.text("node_id", before[0], MAX_ID_TEXT)
        return self._dispatch.result_limit(args.text("lease", before[1], MAX_ID_TEXT))

    @rpc(NODE, value_limit="_rows_limit")
    def complete(self, node_id: str, lease: str, rows: Binary, seconds: float, encoding: str = ZLIB,
                 log: dict | None = None, overhead: float | None = None, costs: list | None = None) -> bool:
        """Deliver a rendered unit: its pixel rows (see docs/protocol.md for the layout), or for a radiosity
        pre-pass its zlib cache file (empty when the scene uses no radiosity). Re-sending an accepted result
        is harmless; a lease that is no longer current gets STALE_LEASE.

        @param node_id: str
        @param lease: str
        @param rows: base64, zlib of the raw rows, or of their PNG scanlines, or bz2 of those (see encoding)
        @param seconds: float, how long the render took
        @param encoding: str (optional, default "zlib"): "zlib" (the raw rows), "filtered" (each row led by
            its PNG filter type and filtered by it; each frame's first row filtered against zeros) or, feature
            bz2_rows, "filtered-bz2" (those scanlines in one bz2 stream; kept and relayed as "filtered")
        @param log: struct (optional, feature "unit_logs"): POV-Ray's run: text (base64, zlib of its output
            as UTF-8, progress lines dropped, bounded by the node), command ([str] the command line), started
            (float Unix time), seconds (float), exit_code (int, -1 for none), signal (int, 0 for none),
            timed_out (bool), cut (int, bytes of the output the node left out)
            An empty struct: no log (a node that sends `overhead` but has no log).
        @param overhead: float (optional, feature unit_overhead): seconds of the unit's render spent other than
            tracing and shooting photons (POV-Ray's start-up, the parse, loading caches); the controller sizes
            the node's next units of the job by it (0 from a node that sends `costs` for a pre-pass)
        @param costs: [[int, int, float]] (optional, feature unit_costs): for a radiosity pre-pass, seconds its
            pretrace spent on each few of its rows ([row_start, row_end, seconds], 0-based, end exclusive,
            within the unit's rows); the next pre-pass of the scene at that size is cut by them
        @return: bool, true
        """
        self._dispatch.complete(args.text("node_id", node_id, MAX_ID_TEXT), args.text("lease", lease, MAX_ID_TEXT),
                                args.binary("rows", rows), args.seconds("seconds", seconds),
                                args.choice("encoding", encoding, ENCODINGS), self._run_log(log),
                                None if overhead is None else args.seconds("overhead", overhead),
                                () if costs is None else args.row_costs("costs", costs, MAX_COSTS, MAX_SIDE))
        self._services.live.drop(lease)     # the final rows replace the live blocks
        return True

    @rpc(NODE, value_limit="_rows_limit")
    def complete_and_poll(self, node_id: str, lease: str, rows: Binary, seconds: float, encoding: str = ZLIB,
                          log: dict | None = None, overhead: float | None = None, costs: list | None = None) -> dict:
        """nodes.complete, then nodes.poll without waiting, in one round trip. Faults as nodes.complete;
        when it faults, nothing was leased.

        @param node_id: str
        @param lease: str
        @param rows: base64
        @param seconds: float
        @param encoding: str (optional), as nodes.complete
        @param log: struct (optional), as nodes.complete
        @param overhead: float (optional), as nodes.complete
        @param costs: [[int, int, float]] (optional), as nodes.complete
        @return: struct, the node's next task, or {}
        """
        self.complete(node_id, lease, rows, seconds, encoding, log, overhead, costs)
        return self.poll(node_id)

    def _files_limit(self, before: tuple) -> int:
        if len(before) != 2:
            raise FarmError(Code.BAD_ARGUMENT, "files must come third, after node_id and lease")
        return scenefiles.MAX_ZIP

    @rpc(NODE, value_limit="_files_limit")
    def scene_files(self, node_id: str, lease: str, files: Binary) -> bool:
        """The files the scene wrote (#fopen) while the node rendered its current lease's unit, sent before
        its rows: kept for the job, of each name the version of the unit POV-Ray would have written last
        (jobs.scene_files). BAD_ARGUMENT when a name is not a safe relative path or the files exceed the
        bounds (32 files, 4 MiB); STALE_LEASE when the lease is not current.

        @param node_id: str
        @param lease: str
        @param files: base64, a zip (farm/scenefiles.py): each member a file by its path relative to the
            scene's folder, its comment "FRAME,ROW" (the unit's last frame and first row)
        @return: bool, true
        """
        job_id = self._dispatch.live_job(args.text("node_id", node_id, MAX_ID_TEXT),
                                         args.text("lease", lease, MAX_ID_TEXT))
        self._services.written.add(job_id, args.binary("files", files))
        return True
    def _run_log(self, log) -> UnitLog | None:
        return UnitLog.from_wire(log, self._config.unit_log_kb * 1024) if log else None   # {}: no log

    @rpc(NODE)
    def live(self, node_id: str, lease: str, blocks: list) -> dict:
        """Finished render blocks of a unit still rendering, for the job's viewers only (never stored as the
        image: the unit's final rows replace them). A node sends them while the controller says the job is
        watched (the task's `live`, this reply's `live`). STALE_LEASE when the lease is not current.

        @param node_id: str
        @param lease: str
        @param blocks: [struct] frame, left, top, right, bottom (int: the block's rectangle, inclusive, in image
            coordinates), rows (base64: zlib of its 8-bit RGB rows, top first); at most 256
        @return: struct: live (bool: the job is still watched; when false, send no more for this lease)
        """
        node_id, lease = args.text("node_id", node_id, MAX_ID_TEXT), args.text("lease", lease, MAX_ID_TEXT)
        job_id = self._dispatch.live_job(node_id, lease)
        job = self._dispatch.job(job_id)
        checked = [_live_block(block, job.width, job.height) for block in _live_list(blocks)]
        if checked:
            self._services.live.add(job_id, lease, checked)
            self._services.changes.bump(job_id)
        return {"live": self._services.watched(job_id)}

    @rpc(NODE)
    def radiosity_cache(self, node_id: str, lease: str, wait: float = 0.0) -> Binary:
        """The radiosity cache shared by the units of the leased unit's frame (when its pre-pass was cut
        into bands, their caches joined). A task with cache_pending was leased while a part of the pre-pass
        still rendered: NOT_READY until it is in, unless it comes within `wait` seconds (at most 30).
        STALE_LEASE unless the lease is the node's current one; BAD_ARGUMENT when the frame has none (or a
        joined cache over 256 MiB).

        @param node_id: str
        @param lease: str
        @param wait: float seconds (default 0): how long to wait for a cache not complete yet
        @return: base64, zlib of the cache file
        """
        node_id, lease = args.text("node_id", node_id, MAX_ID_TEXT), args.text("lease", lease, MAX_ID_TEXT)
        wait = args.seconds("wait", wait)
        if wait > 0:
            with departure_watch(self._services.changes.wake) as gone:
                return Binary(self._dispatch.frame_cache(node_id, lease, wait, gone))
        return Binary(self._dispatch.frame_cache(node_id, lease))

    @rpc(NODE)
    def source_frame(self, node_id: str, lease: str, frame: int) -> FileReply:
        """For a leased unit of a kind that reads another job's frames (a video, farm.jobkinds): a frame it
        reads, as jobs.fetch gives it. STALE_LEASE unless the lease is the node's current one; BAD_ARGUMENT
        for a unit whose kind reads none, or a frame it does not read.

        @param node_id: str
        @param lease: str
        @param frame: int, the frame number
        @return: base64, the frame's PNG
        """
        job = self._dispatch.job(self._dispatch.live_job(args.text("node_id", node_id, MAX_ID_TEXT),
                                                         args.text("lease", lease, MAX_ID_TEXT)))
        path = kindparts.of_job(job.kind).source_frame(self._services, job, args.whole("frame", frame, 0, 10**6))
        return FileReply.open(path, f"frame {frame} of the animation")

    @rpc(NODE)
    def fail(self, node_id: str, lease: str, error: str, scene_error: bool, log: dict | None = None) -> bool:
        """Report a failed unit. scene_error true means the scene itself is broken (a parse error): the job
        fails at once; otherwise the unit is retried, on another node when there is one.

        @param node_id: str
        @param lease: str
        @param error: str, POV-Ray's message
        @param scene_error: bool
        @param log: struct (optional, feature "unit_logs"): POV-Ray's run, as nodes.complete
        @return: bool, true
        """
        text = error[:MAX_ERROR_TEXT] if isinstance(error, str) and error else "POV-Ray failed without a message"
        self._dispatch.fail(args.text("node_id", node_id, MAX_ID_TEXT), args.text("lease", lease, MAX_ID_TEXT),
                            text, bool(scene_error), self._run_log(log))
        self._services.live.drop(lease)
        return True

    @rpc(NODE)
    def release(self, node_id: str, lease: str) -> bool:
        """Hand an unfinished lease back (the node is shutting down): it is rendered elsewhere.

        @param node_id: str
        @param lease: str
        @return: bool, true
        """
        self._dispatch.release(args.text("node_id", node_id, MAX_ID_TEXT), args.text("lease", lease, MAX_ID_TEXT))
        self._services.live.drop(lease)
        return True

    @rpc(*READERS)
    def list(self) -> list:
        """Every node.

        @return: [struct]: id, name, state, host, povray, povray_flavour ("console", "pvengine"), threads, slots,
            platform, sandbox ("bwrap", "none"),
            sandbox_warning (why it runs unconfined, "" when confined), last_seen (Unix time), current (str:
            job/frame/strip in flight, "" if none), strips_done, strips_failed, error, upload_bps (float, the
            node's measured upload rate in bytes per second; 0 until it reports one), tags ([str] its tags
            now), tags_overridden (bool: they were set with nodes.set_tags, not by the node)
        """
        return self._services.views.nodes()

    @rpc(SUBMIT)
    def set_tags(self, name: str, tags: list, clear: bool = False) -> list:
        """Set the tags of the node called `name` from the controller, at once and without restarting it:
        they win over the tags the node registers with, also when it registers again, until cleared.
        UNKNOWN_NODE when no node of that name ever registered.

        @param name: str, the node's name (as `nodes.list` shows it)
        @param tags: [str], its tags from now on ([] for none)
        @param clear: bool (default false): forget the controller's tags; the node has its own again
        @return: [str], the node's tags now
        """
        chosen = None if args.flag("clear", clear) else _tag_list(tags)
        return list(self._services.set_node_tags(args.text("name", name, 100), chosen))


def _tag_list(value) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise FarmError(Code.BAD_ARGUMENT, "tags must be a list of node tags")
    return tagging.parse(value)


def _live_list(blocks) -> list:
    if not isinstance(blocks, list) or len(blocks) > MAX_LIVE_BLOCKS:
        raise FarmError(Code.BAD_ARGUMENT, f"blocks must be an array of at most {MAX_LIVE_BLOCKS} structs")
    return blocks


def _live_block(block, width: int, height: int) -> dict:
    """A live block checked: its rectangle inside the image, its rows binary (not inflated here: the
    viewers do, and a block is at most its own size compressed: checked against the deflate bound)."""
    block = args.struct("block", block)
    left, right = (args.whole(name, block.get(name), 0, width - 1) for name in ("left", "right"))
    top, bottom = (args.whole(name, block.get(name), 0, height - 1) for name in ("top", "bottom"))
    if right < left or bottom < top:
        raise FarmError(Code.BAD_ARGUMENT, "a live block's right and bottom must not be before its left and top")
    rows = args.binary("rows", block.get("rows"))
    if len(rows) > deflate_bound((right - left + 1) * (bottom - top + 1) * 3):
        raise FarmError(Code.BAD_ARGUMENT, "a live block's rows are larger than its rectangle")
    return {"frame": args.whole("frame", block.get("frame"), 0, args.MAX_ID), "left": left, "top": top,
            "right": right, "bottom": bottom, "rows": rows}
