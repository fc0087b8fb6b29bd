"""Jobs and their frames as the controller remembers them."""

from __future__ import annotations

import json
import sqlite3
from typing import Collection, Mapping, Sequence

from farm.store.db import Database
from farm.faults import Code, FarmError
from farm.planning import UnitPlan
from farm.records import Frame, Job, JobSpec
from farm.states import FrameState, JobState, UnitState
from farm.store import schema


def job_in(db: sqlite3.Connection, job_id: int) -> Job:
    row = db.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
    if row is None:
        raise FarmError(Code.UNKNOWN_JOB, f"there is no job {job_id}")
    return schema.job(row)


def end_open_work(db: sqlite3.Connection, job_id: int, unit_state: UnitState, frame_state: FrameState) -> None:
    """A job ended early: its units not done yet and its frames not written yet end with it."""
    for row in db.execute(f"SELECT {schema.UNIT_COLUMNS} FROM units WHERE job=? AND state IN (?, ?, ?)",
                          (job_id, UnitState.QUEUED.value, UnitState.LEASED.value,
                           UnitState.WAITING.value)).fetchall():
        schema.set_state(db, schema.unit(row), unit_state, lease_expires=None)
    for row in db.execute("SELECT number FROM frames WHERE job=? AND state IN (?, ?)",
                          (job_id, FrameState.QUEUED.value, FrameState.RENDERING.value)).fetchall():
        schema.set_frame_state(db, job_id, row["number"], frame_state)


def fail_job_in(db: sqlite3.Connection, job_id: int, error: str, now: float) -> None:
    job = job_in(db, job_id)
    if job.ended:
        return
    schema.set_state(db, job, JobState.FAILED, error=error, finished=now)
    end_open_work(db, job_id, UnitState.CANCELED, FrameState.FAILED)


class JobRecords:
    def __init__(self, db: Database):
        self._db = db

    def create(self, spec: JobSpec, plans: Sequence[UnitPlan], now: float,
               waits_for: Mapping[str, str] | None = None) -> int:
        """Insert a job, a row per frame, and its units. A unit of kind K whose frame has units of kind
        `waits_for[K]` waits for them (its kind's part says: POV-Ray's rows wait for their frame's radiosity
        pre-pass, `UnitRecords.complete` letting them go, Keeping.releases_frame)."""
        planned = {(plan.first_frame, plan.kind) for plan in plans}
        waits = waits_for or {}
        with self._db.write() as db:
            cur = db.execute(
                "INSERT INTO jobs (name, state, priority, bundle, scene, width, height, options, channels,"
                " bits, first_frame, last_frame, animation, submitted, pretrace, block, preview,"
                " require, prefer, run_after, povray, kind, shear, fold) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (spec.name, JobState.QUEUED.value, spec.priority, spec.bundle, spec.scene, spec.width,
                 spec.height, json.dumps(list(spec.options)), spec.channels, spec.bits, spec.first_frame,
                 spec.last_frame, json.dumps(spec.animation.to_spec()) if spec.animation else None, now,
                 int(spec.pretrace), spec.block, spec.preview.value, json.dumps(list(spec.require)),
                 json.dumps(list(spec.prefer)), json.dumps(list(spec.after)), spec.povray, spec.kind, spec.shear,
                 int(spec.fold)))
            job_id = cur.lastrowid
            db.executemany("INSERT INTO frames (job, number, state) VALUES (?, ?, ?)",
                           [(job_id, frame, FrameState.QUEUED.value)
                            for frame in range(spec.first_frame, spec.last_frame + 1)])
            db.executemany(
                "INSERT INTO units (job, frame, frame_last, idx, row_start, row_end, state, kind, remainder)"
                " VALUES (?,?,?,?,?,?,?,?,?)",
                [(job_id, plan.first_frame, plan.last_frame, index, plan.row_start, plan.row_end,
                  _first_state(plan, planned, waits).value, plan.kind, int(plan.remainder))
                 for index, plan in enumerate(plans)])
            return job_id

    def get(self, job_id: int) -> Job:
        with self._db.read() as db:
            return job_in(db, job_id)

    def headlines(self, limit: int = 0, before: int = 0) -> list[tuple[int, JobState, int]]:
        """(id, state, priority) of every job, oldest first: what tells a listing which statuses changed,
        without decoding each job's whole record. With `limit`, a page: the newest `limit` jobs (with
        `before`, of those older than that job), newest first."""
        with self._db.read() as db:
            if not limit:
                rows = db.execute("SELECT id, state, priority FROM jobs ORDER BY id").fetchall()
            else:
                rows = db.execute("SELECT id, state, priority FROM jobs WHERE id < ? ORDER BY id DESC LIMIT ?",
                                  (before or (1 << 62), limit)).fetchall()
            return [(row[0], JobState(row[1]), row[2]) for row in rows]

    def newest_id(self) -> int:
        """The newest job's id, 0 when there is none."""
        with self._db.read() as db:
            return db.execute("SELECT COALESCE(MAX(id), 0) FROM jobs").fetchone()[0]

    def cancel(self, job_id: int, now: float, reason: str = "") -> None:
        with self._db.write() as db:
            job = _open_job(db, job_id)
            schema.set_state(db, job, JobState.CANCELED, finished=now, error=reason or None)
            end_open_work(db, job_id, UnitState.CANCELED, FrameState.CANCELED)

    def pause(self, job_id: int) -> None:
        with self._db.write() as db:
            schema.set_state(db, _open_job(db, job_id), JobState.PAUSED)

    def resume(self, job_id: int) -> None:
        with self._db.write() as db:
            job = job_in(db, job_id)
            if job.state is not JobState.PAUSED:
                raise FarmError(Code.BAD_ARGUMENT, f"job {job_id} is {job.state.value}, not paused")
            schema.set_state(db, job, JobState.RENDERING if job.started else JobState.QUEUED)

    def set_priority(self, job_id: int, priority: int) -> None:
        with self._db.write() as db:
            _open_job(db, job_id)
            db.execute("UPDATE jobs SET priority=? WHERE id=?", (priority, job_id))

    def exists(self, job_id: int) -> bool:
        with self._db.read() as db:
            return db.execute("SELECT 1 FROM jobs WHERE id=?", (job_id,)).fetchone() is not None

    def waiting_on_others(self) -> dict[int, dict[int, tuple[JobState, str]]]:
        """The jobs that run after others and have not started (queued or paused), each with the state and
        error of every job it runs after: what `farm.dependencies.verdict` reads."""
        found: dict[int, dict[int, tuple[JobState, str]]] = {}
        with self._db.read() as db:
            for row in db.execute(
                    "SELECT j.id AS job, p.id AS other, p.state, p.error FROM jobs j, json_each(j.run_after) d"
                    " JOIN jobs p ON p.id = d.value WHERE j.state IN (?, ?) AND j.run_after != '[]'",
                    (JobState.QUEUED.value, JobState.PAUSED.value)):
                found.setdefault(row["job"], {})[row["other"]] = (JobState(row["state"]), row["error"] or "")
        return found

    def fail(self, job_id: int, error: str, now: float) -> None:
        with self._db.write() as db:
            fail_job_in(db, job_id, error, now)

    # -- frames ------------------------------------------------------------------------------

    def frames(self, job_id: int) -> list[Frame]:
        with self._db.read() as db:
            return [schema.frame(row) for row in db.execute(
                "SELECT * FROM frames WHERE job=? ORDER BY number", (job_id,)).fetchall()]

    def frame(self, job_id: int, number: int) -> Frame | None:
        with self._db.read() as db:
            row = db.execute("SELECT * FROM frames WHERE job=? AND number=?", (job_id, number)).fetchone()
        return None if row is None else schema.frame(row)

    def complete_frames(self, uncounted: Collection[str] = ()) -> list[tuple[int, int]]:
        """(job, frame) pairs whose units are all done, but those of the kinds `uncounted` (which never hold
        a frame back: ControllerPart.uncounted_unit, POV-Ray's preview), and whose image is not written yet."""
        with self._db.read() as db:
            return [(row["job"], row["number"]) for row in db.execute(
                "SELECT f.job, f.number FROM frames f JOIN jobs j ON j.id=f.job"
                " WHERE f.state IN (?, ?) AND j.state=? AND NOT EXISTS (SELECT 1 FROM units u"
                " WHERE u.job=f.job AND u.frame <= f.number AND u.frame_last >= f.number AND u.state != ?"
                f" AND {schema.not_of(uncounted, 'u.kind')}) ORDER BY f.job, f.number",
                (FrameState.QUEUED.value, FrameState.RENDERING.value, JobState.RENDERING.value,
                 UnitState.DONE.value, *uncounted)).fetchall()]

    def finish_frame(self, job_id: int, frame: int, path: str, now: float) -> bool:
        """Record a written frame image; the job is done when its last frame is. Returns job done."""
        with self._db.write() as db:
            job = job_in(db, job_id)
            if job.state is not JobState.RENDERING:
                return False
            schema.set_frame_state(db, job_id, frame, FrameState.DONE, path=path)
            left = db.execute("SELECT COUNT(*) FROM frames WHERE job=? AND state != ?",
                              (job_id, FrameState.DONE.value)).fetchone()[0]
            if left == 0:
                schema.set_state(db, job, JobState.DONE, finished=now)
                end_open_work(db, job_id, UnitState.CANCELED, FrameState.CANCELED)   # a preview still in flight
            return left == 0


def _open_job(db: sqlite3.Connection, job_id: int) -> Job:
    job = job_in(db, job_id)
    if job.ended:
        raise FarmError(Code.JOB_FINISHED, f"job {job_id} is already {job.state.value}")
    return job


def _first_state(plan: UnitPlan, planned: set[tuple[int, str]], waits_for: Mapping[str, str]) -> UnitState:
    awaited = waits_for.get(plan.kind)
    return UnitState.WAITING if awaited and (plan.first_frame, awaited) in planned else UnitState.QUEUED
