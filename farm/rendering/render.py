"""Rendering one unit on a node: POV-Ray on the task's rows, and what the run amounts to.

`UnitRenderer` prepares the scene from its bundle, shares photon maps between the
node's strips of a frame and loads a frame's radiosity cache (their files: `farm/rendering/frame_caches.py`), builds POV-Ray's
command line, runs it under the sandbox, and reads the outcome: the rows to
deliver, a failure (with POV-Ray's message, or the signal and what it means), or
a lease to hand back. The node (`farm/node.py`) polls, heartbeats and delivers.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Callable

from farm import povtext, radiosity, strips
from farm.rendering import povray
from farm.bundle import cache as bundle
from farm.rendering import sandbox as sandboxes
from farm.config import Config
from farm.faults import Code, FarmError
from farm.rendering import cache_feed
from farm.rendering.cache_feed import CacheFeed
from farm.rendering.frame_caches import PhotonMaps, PhotonPublisher, RadiosityCaches
from farm.images.png import decode_png
from farm.images.ppm import decode_ppm
from farm.images.raster import row_size
from farm.kinds import PRETRACE, ROWS
from farm.options import check_libraries, validate_options, without_antialiasing
from farm.shear import pretrace_options
from farm.rows import FILTERED, ZLIB, compress_rows, encode_rows, recode_rows
from farm.rendering.live import FIRST_READ_EVERY, WATCH_EVERY
from farm.rendering import written
from farm.rendering.finished import STATE_SUFFIX, frame_files, unit_done
from farm.rendering.statefile import blocks_file, continue_file
from farm.strips import continue_fits
from farm.rendering.reaper import Reaper
from farm.rendering.task import RenderOutcome, Task
from farm.unitlog import UnitLog

log = logging.getLogger(__name__)

# Deflate level for a unit's rows: 9 costs the node about 80 ms of CPU more per 640x480 frame than 6 for
# 0.8% fewer bytes on its uplink (chess2). Worth it on a slow uplink; on a fast one those 80 ms come
# before the last unit of a frame is delivered, so they are the frame's own time.
SLOW_LINK_ROWS_LEVEL = 9
ROWS_LEVEL = 6

# Called while POV-Ray runs, with the task, its log file and a hook for when tracing starts: renews the
# lease and says when to stop.
WatchFactory = Callable[[Task, Path, "Callable[[Path], None] | None"], Callable[[], bool]]


class UnitRenderer:
    def __init__(self, config: Config, program: str, sandbox: sandboxes.Sandbox,
                 runner: Callable[..., povray.ProcessResult], fetch_bundle: Callable[[str], bytes],
                 fetch_radiosity_cache: Callable[[Task, float], bytes], watch: WatchFactory, aborting: threading.Event,
                 flavour: str = povray.CONSOLE, slow_link: Callable[[], bool] = lambda: False,
                 rows_encoding: Callable[[], str] = lambda: FILTERED, reaper: Reaper | None = None):
        self.config, self.povray, self.sandbox, self.runner = config, program, sandbox, runner
        self.reaper = reaper    # keeps a POV-Ray whose image is complete until it exits; None: wait for the exit
        self.flavour = flavour      # povray.CONSOLE or povray.PVENGINE (the Windows GUI, driven by INI file)
        self._fetch_bundle, self._fetch_radiosity_cache, self._watch = fetch_bundle, fetch_radiosity_cache, watch
        self.aborting = aborting
        self.rows_encoding = rows_encoding   # of the rows delivered: ZLIB for a controller that takes no other
        self.slow_link = slow_link           # the uplink is slow: every byte of the rows counts
        self.bundles = bundle.BundleCache(config.work_dir / "bundles")
        self.photon_maps = PhotonMaps(config.work_dir / "photons")
        self.radiosity_caches = RadiosityCaches(config.work_dir / "radiosity")

    def render(self, task: Task, strip_dir: Path) -> RenderOutcome:
        """Render one task in `strip_dir`: what it amounts to (rows, a failure, or a lease to give up)."""
        try:
            check_libraries(task.options, task.scene)   # as the controller does: an older one did not
        except FarmError as err:
            return _failed(f"node {self.config.name} refuses the job: {err}", True)
        try:
            bundle_dir = self.bundles.ensure(task.bundle, lambda: self._fetch_bundle(task.bundle))
            scene_dir = bundle.copy_for_render(bundle_dir, strip_dir / "scene")
        except FarmError as err:
            return _failed(f"the scene bundle could not be prepared on node {self.config.name}: {err}", False)
        except OSError as err:
            return _failed(f"node {self.config.name} could not prepare the scene: {err.strerror or err}", False)
        scene = scene_dir / task.scene
        if task.kind == PRETRACE:
            return self._run_pretrace(task, strip_dir, scene)
        target, extra, feed = scene, [], None
        if task.radiosity_cache:
            try:
                target, extra, feed = self._with_radiosity_cache(task, scene)
            except FarmError as err:
                if err.code is Code.UNREACHABLE:
                    return RenderOutcome("release")   # not the strip's fault: let it go elsewhere or later
                return _failed(f"node {self.config.name} could not get the frame's radiosity cache: {err}", False)
            except OSError as err:
                return _failed(f"node {self.config.name} could not store the frame's radiosity cache: "
                               f"{err.strerror or err}", False)
        area = self._sheared_blocks(task, strip_dir) if task.sheared_part else None
        try:
            if task.frame == task.frame_last:
                with self.photon_maps.shared(_photon_key(task), scene, publish=feed is None) as publisher:
                    return self._run_povray(task, strip_dir, target, publisher, extra, area=area, feed=feed)
            return self._run_povray(task, strip_dir, target, extra=extra, area=area, feed=feed)
        finally:
            if feed is not None:
                feed.close()

    def _with_radiosity_cache(self, task: Task, scene: Path) -> tuple[Path, list[str], CacheFeed | None]:
        """The wrapper scene and options that make a strip load its frame's shared radiosity cache, and the
        feed that writes it into a FIFO when it is not complete yet (farm/rendering/cache_feed.py)."""
        text = radiosity.wrapper_text(scene.name)
        if text is None:
            raise FarmError(Code.BAD_ARGUMENT, f"the scene name {scene.name!r} cannot be included")
        wrapper = scene.parent / radiosity.WRAPPER_SCENE
        wrapper.write_text(text, encoding="utf-8")
        options = [f"+RF{radiosity.CACHE_FILE}", "+RFI"]
        fetch = functools.partial(self.radiosity_caches.get, _frame_key(task))
        if task.cache_pending and cache_feed.available(self.flavour == povray.CONSOLE):
            def pending(ended: Callable[[], bool]) -> Path:
                stopped = lambda: ended() or self.aborting.is_set()
                return fetch(lambda: cache_feed.fetch_until_ready(
                    functools.partial(self._fetch_radiosity_cache, task), stopped))
            return wrapper, options, CacheFeed(scene.parent / radiosity.CACHE_FILE, pending,
                                               f"job {task.job} strip {task.strip}")
        cache = fetch(lambda: self._fetch_radiosity_cache(task, 0.0))
        shutil.copyfile(cache, scene.parent / radiosity.CACHE_FILE)
        return wrapper, options, None

    def _run_pretrace(self, task: Task, strip_dir: Path, scene: Path) -> RenderOutcome:
        """A frame's radiosity pre-pass, or a part of it: the task's rows with +RFO, stopped when the final
        pass begins. Delivers the cache, or nothing when those rows turn out to use no radiosity."""
        cache = scene.parent / radiosity.CACHE_FILE
        band = task.band_pieces != [(0, task.height)]
        watch = radiosity.PretraceWatch(strip_dir / "povray.log", cache, band=band)
        area = self._band_in_frame(task, strip_dir) if band else None
        # The frame's photon map, shot here, is the one the node's strips of the frame load (balcony: 0.24 s
        # a strip), and a second band of the frame on this node loads it too.
        with self.photon_maps.shared(_photon_key(task), scene) as publisher:
            outcome = self._run_povray(task, strip_dir, scene, publisher, [f"+RF{radiosity.CACHE_FILE}", "+RFO"],
                                       pretrace=watch, area=area)
        if outcome.kind != "done":
            return outcome
        try:
            data = radiosity.trim_cache(cache.read_bytes()) if watch.verdict != radiosity.NO_RADIOSITY else b""
        except OSError:
            data = b""     # POV-Ray made no cache file: no radiosity
        log.info("job %s frame %s radiosity pre-pass of rows %s: %s", task.job, task.frame,
                 ", ".join(f"{start + 1}-{end}" for start, end in task.band_pieces),
                 f"{len(data)} bytes of cache" if data else "no radiosity samples")
        costs = radiosity.sweep_costs(watch.samples, watch.ended, task.band_pieces, task.width,
                                      validate_options(task.options).block) if watch.ended is not None else []
        return RenderOutcome("done", rows=compress_rows(data) if data else b"", seconds=outcome.seconds,
                             log=outcome.log, costs=tuple(costs))

    def _band_in_frame(self, task: Task, strip_dir: Path) -> list[str]:
        """POV-Ray's area options for a band of a frame's pre-pass pretraced as in a whole-frame render: the
        frame's area (no +SR/+ER) and `+C`, beside a render state file that has POV-Ray skip every block
        outside the band (its pieces of rows, `Task.band_pieces`). The band's blocks keep their serials in the
        frame, which seed their pretrace's jitter: measured on balcony 640x480, four bands pretraced so differ
        from single renders as single renders differ from each other (1.00 times), where bands cut with
        +SR/+ER differ 1.12 times as much. For POV-Ray for Windows and for frames of too many blocks, the rows
        from the band's first to its last (+SR/+ER): a folded band's pieces and the rows between them."""
        block = validate_options(task.options).block
        pieces = task.band_pieces
        if self.flavour != povray.CONSOLE or not continue_fits(task.width, task.height, block):
            return strips.povray_row_options(min(start for start, _ in pieces), max(end for _, end in pieces),
                                             task.height)
        state = output_path(task, strip_dir).with_suffix(STATE_SUFFIX)
        state.write_bytes(continue_file(task.width, task.height, block, pieces))
        return ["+C"]

    def _sheared_blocks(self, task: Task, strip_dir: Path) -> list[str]:
        """POV-Ray's area options for a unit of a sheared frame (farm.shear): the frame's area and `+C`, beside
        a render state file that has POV-Ray skip every block the unit does not hold, so each of its blocks
        renders as in the whole frame. POV-Ray for Windows, and frames of too many blocks, render the whole
        frame instead: right, only slower."""
        layout = task.layout
        if self.flavour != povray.CONSOLE or not continue_fits(task.width, task.height, layout.block):
            return strips.povray_row_options(0, task.height, task.height)
        state = output_path(task, strip_dir).with_suffix(STATE_SUFFIX)
        state.write_bytes(blocks_file(task.width, task.height, layout.block,
                                      layout.serials(task.row_start, task.row_end)))
        return ["+C"]

    def _run_povray(self, task: Task, strip_dir: Path, scene: Path,
                    publisher: PhotonPublisher | None = None, extra: list[str] | None = None,
                    pretrace: radiosity.PretraceWatch | None = None,
                    area: list[str] | None = None, feed: CacheFeed | None = None) -> RenderOutcome:
        """Render the task's rows of `scene` (with `pretrace`: until the watch says stop; `area`: POV-Ray's
        render area options, the task's rows by default; `feed`: its radiosity cache fed as it comes)."""
        file_type = ("N" if task.alpha else "P") + ("16" if task.bits == 16 else "")
        output = output_path(task, strip_dir)
        log_path = strip_dir / "povray.log"
        frames = task.frames
        animation = list(task.animation)
        if animation:   # the whole animation, and the frames this unit renders (+SF/+EF)
            animation += [f"+SF{frames[0]}", f"+EF{frames[-1]}"]
        rows = strips.povray_row_options(task.row_start, task.row_end, task.height) if area is None else area
        argv = povray.render_command(
            self.povray, scene.name, task.width, task.height, rows,
            output, file_type, self.config.threads, scene.parent, [*task.options, *animation, *(extra or [])])
        if self.flavour == povray.PVENGINE:
            argv = povray.gui_command(argv, strip_dir / povray.GUI_INI)
            _drop_working_dir_ini(scene.parent)
        heartbeat = self._watch(task, log_path, publisher.when_tracing if publisher is not None else None)
        should_stop = heartbeat if pretrace is None else (lambda: pretrace() or heartbeat())
        if feed is not None:
            watched = should_stop
            should_stop = lambda: feed.failed() or watched()   # the cache could not be had: stop waiting for it
        before = written.snapshot(scene.parent) if pretrace is None and task.kind == ROWS else None
        limits = [limit for limit in (self.config.strip_timeout, task.time_limit) if limit > 0]
        timeout = min(limits, default=0.0)
        command = self.sandbox.command(argv, strip_dir, scene.parent, povray.povray_env(), timeout,
                                       self.config.threads or os.cpu_count() or 1)
        # A pre-pass is watched closely: every moment past the pretrace is a final pass nobody keeps; rows
        # as often as their render state file is read, for whenever a viewer watches.
        started = time.time()
        early = self._early_end(task, strip_dir, output, bool(animation), pretrace)
        result = self.runner(command.argv, cwd=scene.parent, env=command.env, log_path=log_path,
                             timeout=timeout, should_stop=should_stop, limits=command.limits,
                             check_every=0.1 if pretrace is not None else FIRST_READ_EVERY if task.live else WATCH_EVERY,
                             **({"early": early} if early is not None else {}))
        if result.early:
            log.info("job %s strip %s: POV-Ray's image is complete after %.2f s; the unit is rendered, the "
                     "process ends in the background", task.job, task.strip, result.seconds)
        result = self.sandbox.outcome(result)   # through bubblewrap too: the signal, not 128 + it
        if feed is not None:
            feed.close()
            if feed.error is not None:
                return _without_cache(feed.error, self.config.name)
            # The wait for the pre-pass's last band is no part of what the strip cost (its speed, its overhead).
            result = dataclasses.replace(result, seconds=max(0.0, result.seconds - feed.waited))
        if self.flavour == povray.PVENGINE:
            result = povray.gui_outcome(result, output.parent, log_path)   # it always exits 0: read its streams
        outcome = self._outcome(task, result, log_path, output, frames, bool(animation), pretrace)
        if feed is not None:
            outcome = dataclasses.replace(outcome, cache_wait=feed.waited)
        if before is not None and outcome.kind == "done":
            files = written.collect(scene.parent, before, (task.frame_last, task.row_start))
            outcome = dataclasses.replace(outcome, files=files) if files else outcome
        if outcome.kind not in ("done", "failed"):
            return outcome
        return dataclasses.replace(outcome, log=self._unit_log(argv, result, started, log_path, scene.parent))

    def _early_end(self, task: Task, strip_dir: Path, output: Path, animated: bool,
                   pretrace: radiosity.PretraceWatch | None) -> povray.EarlyEnd | None:
        """How the run may end when the unit's images and statistics are written, before POV-Ray exits
        (farm/rendering/finished.py): not for a radiosity pre-pass (its cache is written at the end) nor the
        Windows GUI engine (whose messages are read when it has exited)."""
        if self.reaper is None or pretrace is not None or self.flavour != povray.CONSOLE:
            return None
        done = functools.partial(unit_done, output, task.frames, animated, strip_dir / "povray.log")
        return povray.EarlyEnd(done, self.reaper, f"job {task.job} strip {task.strip}", strip_dir)

    def _unit_log(self, argv: list[str], result: povray.ProcessResult, started: float, log_path: Path,
                  scene_dir: Path) -> UnitLog:
        """The run's log for the controller: its text bounded (unit_log_kb), the node's folders unnamed."""
        limit = self.config.unit_log_kb * 1024
        text, skipped = _read_log(log_path, limit)
        return UnitLog.of_run(unnamed(text, scene_dir, self.config.work_dir),
                              [unnamed(arg, scene_dir, self.config.work_dir) for arg in argv], started,
                              result.seconds, result.returncode, result.signal, result.timed_out, limit, skipped)

    def _outcome(self, task: Task, result: povray.ProcessResult, log_path: Path, output: Path,
                 frames: range, animated: bool, pretrace: radiosity.PretraceWatch | None) -> RenderOutcome:
        """What POV-Ray's run amounts to: rows to deliver, a failure to report, or a lease to give up."""
        if pretrace is not None and pretrace.verdict is not None and result.stopped:
            return RenderOutcome("done", seconds=result.seconds)   # stopped on purpose: the cache is what counts
        if result.stopped:
            return RenderOutcome("release" if self.aborting.is_set() else "dropped")
        stderr = log_path.read_text("utf-8", "replace") if log_path.exists() else ""
        if result.returncode != 0 or result.timed_out:
            return _failed(*self._failure(result, stderr, frames if animated else None))
        if pretrace is not None:
            return RenderOutcome("done", seconds=result.seconds)   # it finished the whole frame: the cache is complete
        shared = povray.sharing_report(povray.render_statistics(stderr))
        if shared:
            log.info("job %s strip %s: %s", task.job, task.strip, shared)
        try:
            rows = b"".join(self._strip_rows(path, task) for path in frame_files(output, frames, animated))
        except FileNotFoundError:
            return _failed(f"POV-Ray reported no error but wrote no image on node {self.config.name}", False)
        except OSError as err:
            return _failed(f"POV-Ray's output on node {self.config.name} is unusable: {err.strerror or err}", False)
        except ValueError as err:
            return _failed(f"POV-Ray's output on node {self.config.name} is unusable: {err}", False)
        # PNG's row filters before deflate: a render's gradients shrink to about a PNG's size on the wire.
        row_bytes = row_size(task.width, task.channels, task.bits)
        bpp, encoding = task.channels * task.bits // 8, self.rows_encoding()
        level = SLOW_LINK_ROWS_LEVEL if self.slow_link() else ROWS_LEVEL
        encoded = encode_rows(rows, encoding, row_bytes, bpp, len(frames), level=level)
        as_zlib = None if encoding == ZLIB else functools.partial(
            recode_rows, encoded, encoding, ZLIB, len(rows), row_bytes, bpp, len(frames))
        return RenderOutcome("done", rows=encoded, seconds=result.seconds, encoding=encoding, as_zlib=as_zlib,
                             stages=povray.stage_seconds(stderr))

    def _failure(self, result: povray.ProcessResult, stderr: str, frames: range | None) -> tuple[str, bool]:
        """(error text, whether the scene itself is at fault) for a POV-Ray run that failed: the signal and
        what it means, POV-Ray's own error lines, and which frame of an animation broke."""
        killed = result.signal is not None or result.timed_out
        message, scene_error = povray.error_text(stderr, tail=not killed)
        index = povray.frame_index(stderr) if frames is not None else None
        if frames is not None and index is not None and 1 <= index <= len(frames):
            message = f"frame {frames[index - 1]}: {message}"   # say which frame of the animation broke
        if povray.out_of_memory(stderr):
            # Not the scene's fault as such: a node with more memory may render it.
            limit = f" (this node allows {self.config.max_memory_mb} MB: max_memory_mb)" \
                if self.config.max_memory_mb else ""
            return f"POV-Ray ran out of memory{limit} on node {self.config.name}: {message}", False
        if result.returncode == 1 and scene_error:
            return message, True
        detail = f": {message}" if message else ""
        return f"{result.describe()} on node {self.config.name}{detail}", False

    @staticmethod
    def _strip_rows(path: Path, task: Task) -> bytes:
        """The strip's rows out of POV-Ray's full-size output image (of its sheared image: farm.shear)."""
        data = path.read_bytes()
        raster = decode_png(data) if task.alpha else decode_ppm(data)
        if (raster.width, raster.height, raster.bits) != (task.width, task.height, task.bits):
            raise ValueError(f"POV-Ray wrote a {raster.width}x{raster.height} {raster.bits}-bit image")
        if task.shear:
            return task.layout.sheared_rows(raster.pixels, raster.row_bytes, raster.channels * raster.bits // 8,
                                            task.row_start, task.row_end)
        return strips.crop_rows(raster, task.row_start, task.row_end)


def _without_cache(err: FarmError, node: str) -> RenderOutcome:
    """A strip started before its radiosity cache was complete, stopped because it could not be had: handed
    back when the controller was out of reach or the pre-pass left no cache (the strip is leased again to
    render without one), dropped when the lease is gone, else failed."""
    if err.code in (Code.UNREACHABLE, Code.BAD_ARGUMENT):
        return RenderOutcome("release")
    if err.code is Code.STALE_LEASE:
        return RenderOutcome("dropped")
    return _failed(f"node {node} could not get the frame's radiosity cache: {err}", False)


def output_path(task: Task, strip_dir: Path) -> Path:
    """Where POV-Ray writes the unit's image (its render state file is beside it)."""
    return strip_dir / ("strip.png" if task.alpha else "strip.ppm")


def _drop_working_dir_ini(scene_dir: Path) -> None:
    """POV-Ray for Windows applies a POVRAY.INI in its working directory (the GUI reads no POVINI), so one
    shipped in a scene bundle is removed from the strip's copy: as on the console, only the node's own
    settings and the job's options apply."""
    for path in scene_dir.iterdir():
        if path.name.lower() == "povray.ini" and path.is_file():
            path.unlink()


def _read_log(path: Path, limit: int) -> tuple[str, int]:
    """POV-Ray's log file as text, only its head and tail when it is far larger than `limit` (a scene may
    print gigabytes): (the text, bytes left out). Progress lines shrink to one, so up to 4x is read whole."""
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size <= 4 * limit:
                return handle.read().decode("utf-8", "replace"), 0
            head = handle.read(2 * limit)
            handle.seek(size - 2 * limit)
            tail = handle.read(2 * limit)
    except OSError:
        return "", 0
    skipped = size - len(head) - len(tail)
    mark = "\n" + povtext.CUT_MARK.format(cut=f"{skipped} bytes") + "\n"
    return (head + mark.encode() + tail).decode("utf-8", "replace"), skipped


def unnamed(text: str, scene_dir: Path, work_dir: Path) -> str:
    """`text` with the node's own folders out of it: scene paths relative, the work folder unnamed."""
    return text.replace(f"{scene_dir}{os.sep}", "").replace(str(scene_dir), ".").replace(str(work_dir), "<work-dir>")


def _failed(error: str, scene_error: bool) -> RenderOutcome:
    return RenderOutcome("failed", error=error, scene_error=scene_error)


def _frame_key(task: Task) -> str:
    """One job's frame at its size: what a frame's radiosity cache belongs to."""
    return f"job{task.job}-{task.frame}-{task.width}x{task.height}-{_photon_key(task)[:16]}"


def _photon_key(task: Task) -> str:
    """What a frame's photon map depends on: the scene, its options and the frame (the clock). Not
    anti-aliasing, so a frame's preview (rendered without it) shoots the map its strips load; nor the fine
    block a sheared job's strips render in and its radiosity pre-pass does not (farm.shear)."""
    options = without_antialiasing(pretrace_options(task.options))
    parts = [task.bundle, task.scene, str(task.frame), *options, *task.animation]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:32]
