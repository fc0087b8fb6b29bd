"""jobs.*: submitting, watching, controlling and fetching jobs."""

from __future__ import annotations

from farm import jobkinds
from farm.api import args, rpc
from farm.auth import READERS, SUBMIT
from farm.faults import Code, FarmError
from farm.server.bodies import FileReply
from farm.server.departures import departure_watch
from farm.service import kindparts
from farm.states import JobState
from farm.wire import LONG_POLL_CAP, Binary

MAX_PAGE = 1000     # jobs in one page of jobs.list

class JobsAPI:
    namespace = "jobs"

    def __init__(self, services):
        self._services = services
        self._store = services.store
        self._views = services.views

    @rpc(SUBMIT)
    def submit(self, spec: dict) -> int:
        """Queue a job.

        @param spec: struct: bundle (str digest), scene (str, path inside the bundle), width, height (int),
            options ([str] POV-Ray options), strips ("auto" or int per frame), bits (8 or 16, default 8),
            priority (int, default 0), name (str, default the scene's file name), animation (struct, for
            animations: first, last (int frames, +KFI/+KFF), initial_clock, final_clock (float, +KI/+KF),
            cyclic (bool, +KC), subset_first, subset_last (int, +SF/+EF; 0 = all)), radiosity_prepass (bool,
            default true: when the scene mentions radiosity, each frame cut into strips first gets one
            radiosity pretrace whose cache all its strips load, so they match a single render), interleave
            (bool, default true: a frame cut into strips as nodes ask is cut in its sheared image, every
            strip a little of the whole frame in render blocks, farm/shear.py; false: bands of rows), preview
            (str "auto" (the default): the first frame first gets a quick low-resolution render for viewers,
            never part of the image, when a viewer watches the job as that frame starts; "always" (or true):
            whoever watches; "never" (or false)), require ([str] node tags: only a node with all of them
            renders the job), prefer ([str] node tags: when several nodes wait, one with them gets the job),
            after ([int] jobs submitted before: this one stays queued until they are all done, and fails (is
            canceled) when one of them fails (is canceled); UNKNOWN_JOB for a job that does not exist),
            povray_version (str, e.g. "3.7.0.10": only nodes whose POV-Ray is that version render the job;
            default "": any. Whatever it is, each frame renders on one POV-Ray build: that of the node
            leasing its first unit)
        @return: int, the job's id
        """
        return kindparts.of_job(jobkinds.POVRAY).submit(self._services, args.struct("the job spec", spec))

    @rpc(*READERS)
    def status(self, job: int) -> dict:
        """One job in detail.

        @param job: int
        @return: struct: id, name, scene, state, progress (0..1, by rows; a canceled or failed job keeps
            what it had), width, height, strips_total
            (the strips cut so far, plus one for what remains of each frame still to be cut), strips_done,
            strips_leased, frames_total, frames_done, priority, error ("" if none), channels, bits,
            first_frame, last_frame, frame_digits, submitted, started, finished (Unix times, 0 if not yet),
            eta (float seconds left at the cost the scheduler measured; absent while nothing is measured
            or once the job has ended),
            preview (the state of the job's preview, "" when it has none: it is not counted in strips_*;
            "waiting" while set aside until a viewer watches the job),
            blocked (why no live node can take the queued or rendering job, with the nodes' own reasons, e.g.
            "no node can render it: n1: POV-Ray was not found ...", "no live node has the tags it requires
            (windows): n1 lacks windows" or "no node is connected to the controller" after a lease timeout
            with none; "" when one can), require, prefer ([str] the node tags the job requires, prefers),
            after ([int] the jobs it runs after), waiting_for ([int] those of them not done yet, while it has
            not started), povray_version (the POV-Ray version it is pinned to, "" for any), kind ("povray", or
            "video": an animation's video, jobs.video), block (POV-Ray's render block size), shear (int: the
            rows of its units and pieces are those of each frame's sheared image at this step, which lays
            its blocks out otherwise (farm/shear.py: column of blocks c rotated up by c * shear block rows);
            0: the frame's own rows),
            frames ([struct] number, state, povray (the POV-Ray build its units render on, e.g. "3.7.0.10
            (console)"; "" until its first unit is leased)),
            strips ([struct] frame, frame_last, index, row_start, row_end,
            state, node, progress, attempts, kind ("rows", "pretrace", "preview" or "video"), seconds (POV-Ray's
            time for it as its node reported it, 0 until done))
        """
        return self._views.job_status(self._store.jobs.get(args.job_id(job)), detail=True)

    @rpc(*READERS)
    def wait(self, job: int, timeout: float) -> dict:
        """The job's status as soon as anything about it changes or it has ended, else after `timeout`
        seconds (at most 30). For progress displays.

        @param job: int
        @param timeout: float seconds
        @return: struct, as jobs.list gives each job
        """
        job_id = args.job_id(job)
        timeout = args.seconds("timeout", timeout)
        changes = self._services.changes
        seen = changes.version(job_id)
        current = self._store.jobs.get(job_id)
        if not current.ended:
            with departure_watch(changes.wake) as gone:
                changes.wait(job_id, seen, min(timeout, LONG_POLL_CAP), gone)
            current = self._store.jobs.get(job_id)
        return self._views.job_status(current, detail=False)

    @rpc(*READERS, shared=True)
    def list(self, limit: int = 0, before: int = 0) -> list:
        """Jobs without the per-strip detail: without arguments every job, oldest first (as before pages
        existed); with `limit`, a page of the newest jobs, newest first, and with `before` the page of those
        older than that job id (the last id of a page gives the next page).

        @param limit: int (optional, default 0: every job), at most 1000
        @param before: int (optional, default 0: the newest): list only jobs with a smaller id
        @return: [struct], as jobs.status without frames and strips
        """
        limit, before = args.whole("limit", limit, 0, MAX_PAGE), args.whole("before", before, 0, args.MAX_ID)
        if before and not limit:
            raise FarmError(Code.BAD_ARGUMENT, "jobs.list: before needs a limit (the size of a page)")
        return self._views.jobs(limit, before)

    @rpc(SUBMIT)
    def cancel(self, job: int) -> bool:
        """Cancel a queued or rendering job; nodes stop its strips at their next heartbeat.

        @param job: int
        @return: bool, true
        """
        self._services.cancel(args.job_id(job))
        return True

    @rpc(SUBMIT)
    def pause(self, job: int) -> bool:
        """Lease no new strips of the job; strips in flight still finish.

        @param job: int
        @return: bool, true
        """
        self._services.pause(args.job_id(job))
        return True

    @rpc(SUBMIT)
    def resume(self, job: int) -> bool:
        """Let a paused job render again.

        @param job: int
        @return: bool, true
        """
        self._services.resume(args.job_id(job))
        return True

    @rpc(SUBMIT)
    def set_priority(self, job: int, priority: int) -> bool:
        """Change a job's priority: higher runs first; its strips already leased are not taken back.

        @param job: int
        @param priority: int from -1000 to 1000
        @return: bool, true
        """
        self._services.set_priority(args.job_id(job), args.whole("priority", priority, -1000, 1000))
        return True

    @rpc(*READERS)
    def scene_files(self, job: int) -> Binary:
        """The files the job's scene wrote (#fopen), as its nodes sent them: of each name the version from
        the unit POV-Ray would have written last (the latest frame, then the strip lowest in the image).

        @param job: int
        @return: base64, a zip of them (farm/scenefiles.py; empty when the scene wrote none)
        """
        job_id = args.job_id(job)
        self._store.jobs.get(job_id)          # UNKNOWN_JOB for a job that is not there
        return Binary(self._services.written.get(job_id))

    @rpc(*READERS)
    def fetch(self, job: int, frame: int = 0) -> FileReply:
        """The finished PNG of a frame: of a done job, or a frame already written of an animation still
        rendering (or stopped), as `jobs.status` lists it done. JOB_NOT_DONE for a frame not written yet.

        @param job: int
        @param frame: int, the frame number (default 0: the job's first frame)
        @return: base64, the PNG
        """
        job_id = args.job_id(job)
        record = self._store.jobs.get(job_id)
        number = args.whole("frame", frame, 0, 10**6) or record.first_frame
        stored = self._store.jobs.frame(job_id, number)
        finished = stored is not None and bool(stored.path)
        if record.state is not JobState.DONE and not finished:
            why = f": {record.error}" if record.error else ""
            raise FarmError(Code.JOB_NOT_DONE, f"job {job_id} is {record.state.value}{why}")
        if not finished:
            raise FarmError(Code.BAD_ARGUMENT, f"job {job_id} has no frame {number}")
        return FileReply.open(self._services.files.frame_image(job_id, number, jobkinds.result_suffix(record.kind)),
                              f"the image of job {job_id}")

    @rpc(SUBMIT)
    def video(self, spec: dict) -> int:
        """Queue a video of an animation job's frames: a job of kind "video" that runs after that job is
        done, on a node offering the kind (it has ffmpeg), and encodes the frames with H.264 (yuv420p) into
        an MP4 that jobs.fetch returns (frame 1). BAD_ARGUMENT for a job that failed, was canceled or is
        itself a video.

        @param spec: struct: job (int, the animation job), fps (float, frames a second, default 25), crf
            (int, x264's quality: 0 lossless .. 51 worst, default 23), priority (int, default 0)
        @return: int, the video job's id
        """
        return kindparts.of_job(jobkinds.VIDEO).submit(self._services, args.struct("the video spec", spec))

    @rpc(SUBMIT)
    def kind(self, kind: str, params: dict) -> int:
        """Queue a job of any kind the controller has loaded (farm.jobkinds, docs/kinds.md), its parameters
        checked by the kind (feature "job_kinds"). "povray" takes jobs.submit's spec, "video" jobs.video's;
        a kind from the setting kind_modules its own. BAD_ARGUMENT for a kind not loaded, naming those that are.

        @param kind: str, the kind's name
        @param params: struct, the kind's parameters
        @return: int, the job's id
        """
        return kindparts.of_job(args.text("kind", kind, 40)).submit(self._services, args.struct("params", params))

