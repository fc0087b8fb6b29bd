"""Waiting for a job to end: its progress on stderr, a controller's outages ridden out, a Ctrl-C that
stops the waiting at a point of our choosing, and how the job ended, said once with its exit code."""

from __future__ import annotations

import random
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

from farm import povstreams, scenefiles
from farm.cli.common import EXIT_FAILED, EXIT_OK
from farm.cli.images import write_scene_files
from farm.cli.job_request import JobRequest, write_targets
from farm.cli.logs import SceneMessages
from farm.cli.streamfiles import write_stream_files
from farm.client import Client
from farm.faults import Code, FarmError
from farm.retry import Outage, Patience, Patient, duration
from farm.states import ENDED


class StopRequest:
    """SIGINT/SIGTERM set an event instead of raising inside a call: the main thread then stops at a
    point of its choosing, with no request half-sent and no traceback."""

    def __init__(self):
        self.event = threading.Event()
        self._previous = {}

    def __enter__(self) -> threading.Event:
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)
        return self.event

    def _handle(self, signum: int, frame: Any) -> None:
        self.event.set()

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def _progress_line(status: dict[str, Any]) -> str:
    return (f"job {status['id']} {status['state']}: {status['strips_done']}/{status['strips_total']} strips, "
            f"{status['progress'] * 100:.0f}%")


class Progress:
    """What a waiting client writes on stderr: its progress line (rewritten in place on a terminal) and
    notes between (an outage, a job no node can take), each on a line of its own."""

    def __init__(self):
        self.tty = sys.stderr.isatty()
        self._last = ""
        self._open = False       # a progress line waits on the terminal for its next rewrite

    def show(self, line: str) -> None:
        if line == self._last:
            return
        self._last = line
        sys.stderr.write(("\r" + line + "\033[K") if self.tty else line + "\n")
        sys.stderr.flush()
        self._open = self.tty

    def note(self, text: str) -> None:
        self.text(f"povfarm: {text}\n")

    def text(self, text: str) -> None:
        """Text of its own lines (a note, or the scene's messages), the progress line out of its way."""
        if self._open:
            self._last = ""      # the progress line is written again below the text
        self.end()
        sys.stderr.write(text)
        sys.stderr.flush()

    def end(self) -> None:
        if self._open:
            sys.stderr.write("\n")
            self._open = False


def patient_client(client: Client, limit: float, say: Callable[[str], None], stop: threading.Event | None = None,
                   reached: bool = False) -> Patient:
    """`client` riding out outages of its controller for up to `limit` seconds (the setting `patience`),
    saying so with `say`; a set `stop` ends the retrying. `reached`: the controller answered already."""
    patience = Patience(Outage(client.url, limit, say), sleep=stop.wait if stop is not None else time.sleep,
                        rng=random.random, reached=reached)
    return Patient(client, patience)


def wait_for_job(client: Client | Patient, job_id: int, interval: float = 1.0,
                 stop: threading.Event | None = None, progress: Progress | None = None,
                 local: bool = False, streams: povstreams.StreamSettings | None = None
                 ) -> dict[str, Any] | None:
    """Show progress on stderr until the job ends; return its final status (None when `stop` was set).
    jobs.wait returns as soon as the job changes, so the end is seen at once. A job that no live node can
    render is said at once: for `local` nodes (render's, which nothing will mend) it is an error; else
    it is waited for as long as the client's patience allows. The scene's messages are printed on the way,
    once per frame, but for the streams `streams` keeps off the console (-GD, Warning_Console=off)."""
    progress = progress or Progress()
    settings = streams or povstreams.StreamSettings()

    def show(text: str) -> None:
        shown = povstreams.console_text(settings, text)
        if shown:
            progress.text(shown)
    messages = SceneMessages(client.call, job_id, show)
    try:
        while stop is None or not stop.is_set():
            try:
                status = client.call("jobs.wait", job_id, interval)
            except FarmError:
                if stop is not None and stop.is_set():
                    return None
                raise
            _check_blocked(status, getattr(client, "patience", None), progress, local)
            messages.update(status)
            progress.show(_progress_line(status))
            if status["state"] in ENDED:
                return status
        return None
    finally:
        progress.end()


def _check_blocked(status: dict[str, Any], patience: Patience | None, progress: Progress, local: bool) -> None:
    job_id, reason = status["id"], status.get("blocked", "")    # an older controller never says
    if local and reason:
        raise FarmError(Code.RENDER_FAILED, f"job {job_id} is blocked: {reason}")
    if patience is None:
        return
    if patience.blocked(reason):
        limit = patience.outage.limit
        progress.note(f"job {job_id} is blocked: {reason}; waiting for one that can"
                      + (f" (up to {duration(limit)})" if limit else "") if reason
                      else f"job {job_id} is no longer blocked: a node can render it")
    if patience.blocked_too_long():
        raise FarmError(Code.RENDER_FAILED, f"job {job_id} was blocked for {duration(patience.outage.limit)} (the "
                                            f"setting patience): {reason}. It stays on the farm: "
                                            f"povfarm cancel {job_id} drops it")


def keep_finished_frames(client: Client, job_id: int, request: JobRequest) -> None:
    """An animation interrupted: the frames finished so far are written, as `povray` leaves those it
    finished (a still, or a frame cut short, leaves nothing)."""
    if request.animation is None or not request.command.to_file:
        return
    try:
        frames = client.call("jobs.status", job_id)["frames"]
        done = [frame["number"] for frame in frames
                if frame["state"] == "done" and frame["number"] in request.targets]
        if done:
            written = write_targets(client, job_id, request, done)
            sys.stderr.write(f"povfarm: kept the {len(done)} finished frame{'s' if len(done) > 1 else ''}: "
                             f"{written}\n")
    except FarmError as err:
        sys.stderr.write(f"povfarm: could not keep the finished frames: {err}\n")


def finish_job(client: Client, status: dict[str, Any], request: JobRequest | None, first: bool = True) -> int:
    """Report how a job ended and write its image and the stream files the command line names (added to
    them when not the `first` of several jobs); the exit code for `submit --wait` and `render`."""
    if status["state"] == "failed":
        sys.stderr.write(f"povfarm: job {status['id']} failed:\n{status['error'].rstrip()}\n")
        return EXIT_FAILED
    if status["state"] == "canceled":
        sys.stderr.write(f"povfarm: job {status['id']} was canceled\n")
        return EXIT_FAILED
    elapsed = status["finished"] - (status["started"] or status["submitted"])
    if request is not None:
        written = write_targets(client, status["id"], request)
        sys.stderr.write(f"job {status['id']} done in {elapsed:.1f} s: wrote {written}\n")
        scene_files = write_scene_files(client, status["id"], Path.cwd())
        if scene_files:
            sys.stderr.write(f"povfarm: the scene wrote {scenefiles.shown(scene_files)}\n")
        stream_files = write_stream_files(client, status["id"], request, append=not first)
        if stream_files:
            sys.stderr.write(f"povfarm: POV-Ray's streams written to {', '.join(str(p) for p in stream_files)}\n")
    else:
        sys.stderr.write(f"job {status['id']} done in {elapsed:.1f} s; "
                         f"fetch it with: povfarm fetch {status['id']} --output FILE.png\n")
    return EXIT_OK
