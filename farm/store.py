"""The controller's durable state: jobs, frames, strips, nodes and bundles in SQLite.

Every public method is one transaction, durable before it returns, so
whatever the controller acknowledges over RPC survives a crash. WAL mode with
synchronous=FULL keeps commits durable across power loss too. States only
change through `farm.states.check_transition`.

Commits are grouped: each call's changes are a SAVEPOINT inside a shared
transaction, and the first caller to wait for durability commits for everyone
who wrote meanwhile, so a busy farm pays one fsync per batch instead of one per
call. No caller returns before the commit that holds its changes.

Strip pixel rows are stored as compressed blobs in the same transaction that
marks the strip done: a strip is either stored and done, or neither.
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
import sqlite3
import threading
from pathlib import Path
from typing import Any, Iterator, Sequence

from farm.faults import Code, FarmError
from farm.states import (FINISHED_JOB_STATES, FrameState, JobState, NodeState, StripState,
                         check_transition)
from farm.strips import PRETRACE, ROWS

log = logging.getLogger(__name__)

NODE_STRIKES = 3          # a node that fails this many strips of one job is kept off that job
SEEN_STEP = 1.0          # seconds: a node's last_seen is written at most this often
LEASE_CANDIDATES = 256    # queued strips examined per poll when some nodes must be kept off some strips

SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS bundles (
    digest TEXT PRIMARY KEY, size INTEGER NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL, state TEXT NOT NULL, priority INTEGER NOT NULL DEFAULT 0,
    bundle TEXT NOT NULL, scene TEXT NOT NULL,
    width INTEGER NOT NULL, height INTEGER NOT NULL, options TEXT NOT NULL,
    channels INTEGER NOT NULL, bits INTEGER NOT NULL,
    first_frame INTEGER NOT NULL, last_frame INTEGER NOT NULL,  -- the frames this job renders
    animation TEXT,  -- JSON: POV-Ray's animation settings (+KFI/+KFF/+KI/+KF/+KC); NULL for a still
    error TEXT, submitted REAL NOT NULL, started REAL, finished REAL,
    pretrace INTEGER NOT NULL DEFAULT 0);  -- 1: split frames wait for a shared radiosity pre-pass
CREATE TABLE IF NOT EXISTS frames (
    job INTEGER NOT NULL, number INTEGER NOT NULL, state TEXT NOT NULL, path TEXT,
    PRIMARY KEY (job, number));
CREATE TABLE IF NOT EXISTS strips (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    -- A strip is a unit of work: rows [row_start, row_end) of frames frame..frame_last, which one
    -- POV-Ray process renders; its data holds each frame's rows in turn.
    job INTEGER NOT NULL, frame INTEGER NOT NULL, frame_last INTEGER NOT NULL, idx INTEGER NOT NULL,
    row_start INTEGER NOT NULL, row_end INTEGER NOT NULL, state TEXT NOT NULL,
    attempt INTEGER NOT NULL DEFAULT 0, failures INTEGER NOT NULL DEFAULT 0,
    lease TEXT, node TEXT, lease_expires REAL, progress REAL NOT NULL DEFAULT 0,
    data BLOB, error TEXT, seconds REAL,
    done_seq INTEGER,   -- order in which strips were stored: the viewers' feed cursor
    kind TEXT NOT NULL DEFAULT 'rows');   -- 'rows', or 'pretrace': a frame's radiosity pre-pass (data: its cache)
CREATE INDEX IF NOT EXISTS strips_queued ON strips (job, state, idx);
CREATE INDEX IF NOT EXISTS strips_by_frame ON strips (job, frame_last, frame);
CREATE INDEX IF NOT EXISTS strips_by_lease ON strips (lease);
CREATE INDEX IF NOT EXISTS strips_by_done ON strips (job, done_seq);
CREATE TABLE IF NOT EXISTS failures (
    job INTEGER NOT NULL, strip INTEGER NOT NULL, node_name TEXT NOT NULL, error TEXT, at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS failures_by_job ON failures (job, node_name);
CREATE TABLE IF NOT EXISTS nodes (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, state TEXT NOT NULL, info TEXT NOT NULL,
    registered REAL NOT NULL, last_seen REAL NOT NULL,
    strips_done INTEGER NOT NULL DEFAULT 0, strips_failed INTEGER NOT NULL DEFAULT 0,
    error TEXT);
"""


_COVERS = "frame <= ? AND frame_last >= ?"   # a unit of work that includes a given frame


class Store:
    """All SQL lives here. Safe to share between the RPC server's threads."""

    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.RLock()              # the writing connection: one transaction at a time
        self._read_lock = threading.Lock()          # the reading connection
        self._durable = threading.Condition()       # group commit bookkeeping below
        self._batch = 1              # the batch that writes go into now
        self._committed = 0          # every batch up to this one is on disk
        self._failed: dict[int, str] = {}   # batches whose commit failed -> why
        self._committing = False
        self._dirty = False          # the shared transaction holds changes not committed yet
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA busy_timeout=5000")
            self._db.executescript(SCHEMA)
            self._add_missing_columns()
            # Reads use a connection of their own: they see only committed (durable) data and never
            # wait behind a batch's fsync on the writing connection.
            self._reader = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
            self._reader.row_factory = sqlite3.Row
            self._reader.execute("PRAGMA busy_timeout=5000")
        except (OSError, sqlite3.Error) as err:
            raise FarmError(Code.STORAGE, f"cannot open the database {path}: {err}") from None
        with self.tx() as db:
            db.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))

    # Columns added after the first release: a database made before them gets them on open.
    _LATER_COLUMNS = (("jobs", "pretrace", "INTEGER NOT NULL DEFAULT 0"),
                      ("strips", "kind", "TEXT NOT NULL DEFAULT 'rows'"))

    def _add_missing_columns(self) -> None:
        for table, column, declaration in self._LATER_COLUMNS:
            present = {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}
            if column not in present:
                self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")

    def close(self) -> None:
        with self._read_lock:
            self._reader.close()
        with self._lock:
            if self._db.in_transaction:
                self._db.execute("COMMIT")
            self._db.close()

    @contextlib.contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, durable when the block ends; storage errors become a STORAGE fault and
        undo only this block's changes."""
        with self._lock:
            try:
                if not self._db.in_transaction:
                    self._db.execute("BEGIN IMMEDIATE")
                self._db.execute("SAVEPOINT call")
            except sqlite3.Error as err:
                raise FarmError(Code.STORAGE, f"database unavailable: {err}") from None
            changes = self._db.total_changes
            try:
                yield self._db
                self._db.execute("RELEASE call")
            except BaseException as err:
                self._undo_call()
                if self._db.in_transaction and not self._dirty:
                    self._commit_now()
                if isinstance(err, sqlite3.Error):
                    raise FarmError(Code.STORAGE, f"database error: {err}") from None
                raise
            if self._db.total_changes != changes:
                self._dirty = True
            elif not self._dirty:
                self._commit_now()   # nothing written: end the transaction at once, no fsync
            batch = self._batch if self._dirty else 0
        self._wait_durable(batch)

    def _commit_now(self) -> None:
        try:
            self._db.execute("COMMIT")
        except sqlite3.Error as err:
            raise FarmError(Code.STORAGE, f"database error: {err}") from None

    def _undo_call(self) -> None:
        """Roll back this call's savepoint, or the whole batch when SQLite already ended it (disk full):
        then the batch's other callers, still waiting for their commit, learn it failed."""
        try:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK TO call")
                self._db.execute("RELEASE call")
                return
        except sqlite3.Error as err:
            log.error("rolling back a call failed, dropping its batch: %s", err)
            with contextlib.suppress(sqlite3.Error):   # the batch is reported failed either way
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
        self._end_batch(failure="the database rolled the batch back")

    @contextlib.contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        """The reading connection. It sees committed data only, so no client is ever shown a state that
        a crash could take back, and every write call has committed before it returns."""
        with self._read_lock:
            yield self._reader

    def _wait_durable(self, batch: int) -> None:
        """Return once `batch` is committed (0: nothing to wait for). The first waiter commits for all."""
        if not batch:
            return
        with self._durable:
            while self._committed < batch and self._committing:
                self._durable.wait()
            if self._committed < batch:
                self._committing = True
                leader = True
            else:
                leader = False
        if leader:
            self._commit_batch()
        failure = self._failed.get(batch)
        if failure is not None:
            raise FarmError(Code.STORAGE, f"database error: {failure}")

    def _commit_batch(self) -> None:
        failure = None
        with self._lock:
            try:
                if self._db.in_transaction:
                    self._db.execute("COMMIT")
            except sqlite3.Error as err:
                failure = str(err)
                with contextlib.suppress(sqlite3.Error):   # the failure above is what callers are told
                    if self._db.in_transaction:
                        self._db.execute("ROLLBACK")
            self._end_batch(failure)

    def _end_batch(self, failure: str | None = None) -> None:
        """Under the lock: the current batch is committed (or lost); later writes start the next."""
        with self._durable:
            if failure is not None:
                self._failed[self._batch] = failure
                for old in [b for b in self._failed if b < self._batch - 1000]:
                    del self._failed[old]
            self._committed = self._batch
            self._batch += 1
            self._committing = False
            self._dirty = False
            self._durable.notify_all()

    # -- state changes: the only way a state column is written --------------------------------

    def _set_job_state(self, db, job: sqlite3.Row | int, new: JobState, **columns: Any) -> None:
        row = self._job_row(db, job) if isinstance(job, int) else job
        check_transition(JobState(row["state"]), new)
        self._update(db, "jobs", "id", row["id"], state=new.value, **columns)

    def _set_frame_state(self, db, job_id: int, number: int, new: FrameState, **columns: Any) -> None:
        row = db.execute("SELECT state FROM frames WHERE job=? AND number=?", (job_id, number)).fetchone()
        check_transition(FrameState(row["state"]), new)
        sets = ", ".join(f"{name}=?" for name in ["state", *columns])
        db.execute(f"UPDATE frames SET {sets} WHERE job=? AND number=?",
                   (new.value, *columns.values(), job_id, number))

    def _set_strip_state(self, db, strip: sqlite3.Row, new: StripState, **columns: Any) -> None:
        check_transition(StripState(strip["state"]), new)
        self._update(db, "strips", "id", strip["id"], state=new.value, **columns)

    def _set_node_state(self, db, node: sqlite3.Row, new: NodeState, **columns: Any) -> None:
        check_transition(NodeState(node["state"]), new)
        if new.value == node["state"] and not columns:
            return   # idle polls and busy slots repeat their state: no write
        self._update(db, "nodes", "id", node["id"], state=new.value, **columns)

    @staticmethod
    def _update(db, table: str, key: str, key_value: Any, **columns: Any) -> None:
        sets = ", ".join(f"{name}=?" for name in columns)
        db.execute(f"UPDATE {table} SET {sets} WHERE {key}=?", (*columns.values(), key_value))

    # -- bundles ---------------------------------------------------------------------------

    def add_bundle(self, digest: str, size: int, now: float) -> None:
        with self.tx() as db:
            db.execute("INSERT OR IGNORE INTO bundles VALUES (?, ?, ?)", (digest, size, now))

    def has_bundle(self, digest: str) -> bool:
        with self._reading() as db:
            return db.execute("SELECT 1 FROM bundles WHERE digest=?", (digest,)).fetchone() is not None

    # -- jobs --------------------------------------------------------------------------------

    def create_job(self, spec: dict[str, Any], units: Sequence[tuple[int, int, int, int, str]], now: float) -> int:
        """Insert a job, a row per frame, and its units of work: (first frame, last frame, row start, row end,
        kind). Row units of a frame that has a radiosity pre-pass wait for it."""
        animation = spec.get("animation")
        pretraced = {first for first, _, _, _, kind in units if kind == PRETRACE}
        with self.tx() as db:
            cur = db.execute(
                "INSERT INTO jobs (name, state, priority, bundle, scene, width, height, options, channels,"
                " bits, first_frame, last_frame, animation, submitted, pretrace)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (spec["name"], JobState.QUEUED.value, spec["priority"], spec["bundle"], spec["scene"],
                 spec["width"], spec["height"], json.dumps(list(spec["options"])), spec["channels"],
                 spec["bits"], spec["first_frame"], spec["last_frame"],
                 json.dumps(animation) if animation else None, now, int(bool(pretraced))))
            job_id = cur.lastrowid
            db.executemany("INSERT INTO frames VALUES (?, ?, ?, NULL)",
                           [(job_id, frame, FrameState.QUEUED.value)
                            for frame in range(spec["first_frame"], spec["last_frame"] + 1)])
            db.executemany(
                "INSERT INTO strips (job, frame, frame_last, idx, row_start, row_end, state, kind)"
                " VALUES (?,?,?,?,?,?,?,?)",
                [(job_id, first, last, idx, start, end,
                  (StripState.WAITING if kind != PRETRACE and first in pretraced else StripState.QUEUED).value,
                  kind)
                 for idx, (first, last, start, end, kind) in enumerate(units)])
            return job_id

    def _job_row(self, db, job_id: int) -> sqlite3.Row:
        row = db.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
        if row is None:
            raise FarmError(Code.UNKNOWN_JOB, f"there is no job {job_id}")
        return row

    def job(self, job_id: int) -> sqlite3.Row:
        with self._reading() as db:
            return self._job_row(db, job_id)

    def jobs(self) -> list[sqlite3.Row]:
        with self._reading() as db:
            return db.execute("SELECT * FROM jobs ORDER BY id").fetchall()

    def strip_counts(self, job_id: int) -> dict[str, int]:
        with self._reading() as db:
            rows = db.execute("SELECT state, COUNT(*) AS n FROM strips WHERE job=? GROUP BY state",
                                    (job_id,)).fetchall()
        return {row["state"]: row["n"] for row in rows}

    def strip_summary(self, job_id: int) -> dict[str, tuple[int, float]]:
        """state -> (count, total progress) of a job's strips, without reading them all."""
        with self._reading() as db:
            rows = db.execute("SELECT state, COUNT(*) AS n, TOTAL(progress) AS p FROM strips WHERE job=?"
                                    " GROUP BY state", (job_id,)).fetchall()
        return {row["state"]: (row["n"], row["p"]) for row in rows}

    def strips_of(self, job_id: int) -> list[sqlite3.Row]:
        with self._reading() as db:
            return db.execute(
                "SELECT id, frame, frame_last, idx, row_start, row_end, state, attempt, failures, node, progress,"
                " error, kind FROM strips WHERE job=? ORDER BY idx", (job_id,)).fetchall()

    def strip_by_lease(self, lease: str) -> sqlite3.Row | None:
        with self._reading() as db:
            return db.execute("SELECT * FROM strips WHERE lease=?", (lease,)).fetchone()

    def strips_stored_after(self, job_id: int, cursor: int, limit: int, data: bool = True) -> list[sqlite3.Row]:
        """Stored strips of a job in the order they arrived, after the feed cursor (without their rows
        unless `data`)."""
        with self._reading() as db:
            return db.execute(
                f"SELECT frame, frame_last, idx, row_start, row_end, {'data, ' if data else ''}done_seq FROM strips"
                " WHERE job=? AND done_seq > ? ORDER BY done_seq LIMIT ?", (job_id, cursor, limit)).fetchall()

    def newest_stored_seq(self, job_id: int) -> int:
        """The feed cursor of the job's latest stored strip (0 when none is stored yet)."""
        with self._reading() as db:
            row = db.execute("SELECT MAX(done_seq) FROM strips WHERE job=?", (job_id,)).fetchone()
        return row[0] or 0

    def newest_job_id(self) -> int | None:
        with self._reading() as db:
            row = db.execute("SELECT MAX(id) FROM jobs").fetchone()
        return row[0]

    def frames_of(self, job_id: int) -> list[sqlite3.Row]:
        with self._reading() as db:
            return db.execute("SELECT * FROM frames WHERE job=? ORDER BY number", (job_id,)).fetchall()

    def cancel_job(self, job_id: int, now: float) -> None:
        with self.tx() as db:
            job = self._job_row(db, job_id)
            if JobState(job["state"]) in FINISHED_JOB_STATES:
                raise FarmError(Code.JOB_FINISHED, f"job {job_id} is already {job['state']}")
            self._set_job_state(db, job, JobState.CANCELED, finished=now)
            self._end_open_work(db, job_id, StripState.CANCELED, FrameState.CANCELED)

    def pause_job(self, job_id: int) -> None:
        with self.tx() as db:
            job = self._job_row(db, job_id)
            if JobState(job["state"]) in FINISHED_JOB_STATES:
                raise FarmError(Code.JOB_FINISHED, f"job {job_id} is already {job['state']}")
            self._set_job_state(db, job, JobState.PAUSED)

    def set_priority(self, job_id: int, priority: int) -> None:
        with self.tx() as db:
            job = self._job_row(db, job_id)
            if JobState(job["state"]) in FINISHED_JOB_STATES:
                raise FarmError(Code.JOB_FINISHED, f"job {job_id} is already {job['state']}")
            self._update(db, "jobs", "id", job_id, priority=priority)

    def resume_job(self, job_id: int) -> None:
        with self.tx() as db:
            job = self._job_row(db, job_id)
            if JobState(job["state"]) is not JobState.PAUSED:
                raise FarmError(Code.BAD_ARGUMENT, f"job {job_id} is {job['state']}, not paused")
            self._set_job_state(db, job, JobState.RENDERING if job["started"] else JobState.QUEUED)

    def _end_open_work(self, db, job_id: int, strip_state: StripState, frame_state: FrameState) -> None:
        for strip in db.execute("SELECT * FROM strips WHERE job=? AND state IN (?, ?, ?)",
                                (job_id, StripState.QUEUED.value, StripState.LEASED.value,
                                 StripState.WAITING.value)).fetchall():
            self._set_strip_state(db, strip, strip_state, lease_expires=None)
        for frame in db.execute("SELECT number FROM frames WHERE job=? AND state IN (?, ?)",
                                (job_id, FrameState.QUEUED.value, FrameState.RENDERING.value)).fetchall():
            self._set_frame_state(db, job_id, frame["number"], frame_state)

    def _fail_job(self, db, job_id: int, error: str, now: float) -> None:
        job = self._job_row(db, job_id)
        if JobState(job["state"]) in FINISHED_JOB_STATES:
            return
        self._set_job_state(db, job, JobState.FAILED, error=error, finished=now)
        self._end_open_work(db, job_id, StripState.CANCELED, FrameState.FAILED)

    # -- nodes -------------------------------------------------------------------------------

    def register_node(self, name: str, info: dict[str, Any], now: float) -> str:
        """A node (re)starts: a new id; leases of an earlier incarnation with the same name go back."""
        node_id = f"{name}-{secrets.token_hex(4)}"
        with self.tx() as db:
            for old in db.execute("SELECT * FROM nodes WHERE name=? AND state != ?",
                                  (name, NodeState.OFFLINE.value)).fetchall():
                self._requeue_leases_of(db, old["id"])
                self._set_node_state(db, old, NodeState.OFFLINE)
            broken = info.get("error")
            db.execute("INSERT INTO nodes (id, name, state, info, registered, last_seen, error)"
                       " VALUES (?,?,?,?,?,?,?)",
                       (node_id, name, (NodeState.BROKEN if broken else NodeState.IDLE).value,
                        json.dumps(info), now, now, broken or None))
        return node_id

    def _node_row(self, db, node_id: str) -> sqlite3.Row:
        row = db.execute("SELECT * FROM nodes WHERE id=?", (node_id,)).fetchone()
        if row is None:
            raise FarmError(Code.UNKNOWN_NODE, f"node {node_id!r} is not registered; register again")
        return row

    def _seen(self, db, node_id: str, now: float) -> sqlite3.Row:
        node = self._node_row(db, node_id)
        if NodeState(node["state"]) is NodeState.OFFLINE:
            # It was presumed dead and its leases went back; it must register again.
            raise FarmError(Code.UNKNOWN_NODE, f"node {node_id!r} timed out; register again")
        # Coarse on purpose: a busy node calls many times a second, and each write costs the batch a page.
        db.execute("UPDATE nodes SET last_seen=? WHERE id=? AND last_seen < ?", (now, node_id, now - SEEN_STEP))
        return node

    def nodes(self) -> list[sqlite3.Row]:
        with self._reading() as db:
            return db.execute(
                "SELECT n.*, (SELECT GROUP_CONCAT(s.job || '/' || s.frame || '/' || s.idx)"
                " FROM strips s WHERE s.node=n.id AND s.state='leased') AS current"
                " FROM nodes n ORDER BY n.name, n.registered").fetchall()

    def _requeue_leases_of(self, db, node_id: str) -> None:
        for strip in db.execute("SELECT * FROM strips WHERE node=? AND state=?",
                                (node_id, StripState.LEASED.value)).fetchall():
            log.info("strip %s of job %s goes back to the queue (node %s gone)", strip["idx"], strip["job"],
                     node_id)
            self._set_strip_state(db, strip, StripState.QUEUED, lease_expires=None, progress=0)

    # -- leases ------------------------------------------------------------------------------

    def lease_strip(self, node_id: str, now: float, lease_timeout: float) -> sqlite3.Row | None:
        """Give the node the next queued strip it may render (highest priority, oldest job, lowest
        frame and row), or None."""
        with self.tx() as db:
            node = self._seen(db, node_id, now)
            if NodeState(node["state"]) is NodeState.BROKEN:
                return None
            strip = self._next_strip_for(db, node["name"])
            if strip is None:
                self._set_node_state(db, node, NodeState.IDLE)
                return None
            lease = f"{strip['id']}.{strip['attempt'] + 1}.{secrets.token_hex(6)}"
            self._set_strip_state(db, strip, StripState.LEASED, lease=lease, node=node_id,
                                  attempt=strip["attempt"] + 1, lease_expires=now + lease_timeout, progress=0)
            job = self._job_row(db, strip["job"])
            if JobState(job["state"]) is JobState.QUEUED:
                self._set_job_state(db, job, JobState.RENDERING, started=now)
            for frame in db.execute("SELECT number FROM frames WHERE job=? AND number BETWEEN ? AND ? AND state=?",
                                    (strip["job"], strip["frame"], strip["frame_last"],
                                     FrameState.QUEUED.value)).fetchall():
                self._set_frame_state(db, strip["job"], frame["number"], FrameState.RENDERING)
            self._set_node_state(db, node, NodeState.BUSY)
            return db.execute("SELECT * FROM strips WHERE id=?", (strip["id"],)).fetchone()

    # Two indexed steps instead of one join that sorts every queued strip of every job on each poll:
    # the first job in line that has queued work, then its first queued strips.
    _JOBS_IN_LINE = ("SELECT id FROM jobs WHERE state IN (?, ?) AND EXISTS (SELECT 1 FROM strips q"
                     " WHERE q.job = jobs.id AND q.state = ?) ORDER BY priority DESC, id")
    _QUEUED_OF_JOB = "SELECT * FROM strips WHERE job=? AND state=? ORDER BY idx LIMIT ?"

    def _next_strip_for(self, db, node_name: str) -> sqlite3.Row | None:
        """A failed strip is retried on a different node, and a node that failed NODE_STRIKES strips of a
        job is kept off it, as long as some other live node may still take the work."""
        jobs = db.execute(self._JOBS_IN_LINE, (JobState.QUEUED.value, JobState.RENDERING.value,
                                               StripState.QUEUED.value))
        if db.execute("SELECT 1 FROM failures LIMIT 1").fetchone() is None:   # the common, fast case
            job = jobs.fetchone()
            return None if job is None else db.execute(
                self._QUEUED_OF_JOB, (job["id"], StripState.QUEUED.value, 1)).fetchone()
        live = {row["name"] for row in db.execute("SELECT DISTINCT name FROM nodes WHERE state IN (?, ?)",
                                                  (NodeState.IDLE.value, NodeState.BUSY.value))}
        live.add(node_name)
        for job in jobs.fetchall():
            for strip in db.execute(self._QUEUED_OF_JOB, (job["id"], StripState.QUEUED.value,
                                                          LEASE_CANDIDATES)).fetchall():
                if self._may_render(db, strip, node_name, live):
                    return strip
        return None

    @staticmethod
    def _may_render(db, strip: sqlite3.Row, node_name: str, live: set[str]) -> bool:
        strikes = {row["node_name"]: row["n"] for row in db.execute(
            "SELECT node_name, COUNT(*) AS n FROM failures WHERE job=? GROUP BY node_name", (strip["job"],))}
        struck = {name for name, count in strikes.items() if count >= NODE_STRIKES}
        failed_here = {row["node_name"] for row in db.execute(
            "SELECT node_name FROM failures WHERE strip=?", (strip["id"],))}
        avoid = struck | failed_here
        if node_name not in avoid:
            return True
        # Everyone alive is to be avoided: better this node tries again than the job stalls.
        return live <= avoid

    def heartbeat(self, node_id: str, progress: dict[str, float], now: float,
                  lease_timeout: float) -> tuple[list[str], set[int]]:
        """Renew the node's leases. Returns the leases it should stop working on, and the jobs renewed."""
        with self.tx() as db:
            self._seen(db, node_id, now)
            stale, jobs = [], set()
            for lease, fraction in progress.items():
                strip = db.execute("SELECT * FROM strips WHERE lease=?", (lease,)).fetchone()
                if strip is None or strip["node"] != node_id or strip["state"] != StripState.LEASED.value:
                    stale.append(lease)
                    continue
                db.execute("UPDATE strips SET lease_expires=?, progress=? WHERE id=?",
                           (now + lease_timeout, min(max(float(fraction), 0.0), 1.0), strip["id"]))
                jobs.add(strip["job"])
            return stale, jobs

    def _leased_strip(self, db, node_id: str, lease: str) -> sqlite3.Row:
        strip = db.execute("SELECT * FROM strips WHERE lease=?", (lease,)).fetchone()
        if strip is None or strip["node"] != node_id or strip["state"] != StripState.LEASED.value:
            raise FarmError(Code.STALE_LEASE, f"lease {lease} is no longer current; the result was discarded")
        return strip

    def complete_strip(self, node_id: str, lease: str, data: bytes, seconds: float,
                       now: float) -> tuple[int, list[int]]:
        """Store a strip's rows. Returns (job, frames now complete). Re-sending an accepted result is harmless."""
        with self.tx() as db:
            self._seen(db, node_id, now)
            done = db.execute("SELECT job FROM strips WHERE lease=? AND node=? AND state=?",
                              (lease, node_id, StripState.DONE.value)).fetchone()
            if done is not None:
                return done["job"], []
            strip = self._leased_strip(db, node_id, lease)
            if strip["kind"] == PRETRACE:
                self._store_pretrace(db, strip, data, seconds)
                db.execute("UPDATE nodes SET strips_done = strips_done + 1 WHERE id=?", (node_id,))
                return strip["job"], []
            seq = db.execute("SELECT COALESCE(MAX(done_seq), 0) + 1 FROM strips WHERE job=?",
                             (strip["job"],)).fetchone()[0]
            self._set_strip_state(db, strip, StripState.DONE, data=data, seconds=seconds, progress=1.0,
                                  lease_expires=None, error=None, done_seq=seq)
            db.execute("UPDATE nodes SET strips_done = strips_done + 1 WHERE id=?", (node_id,))
            complete = [frame for frame in range(strip["frame"], strip["frame_last"] + 1)
                        if not db.execute(f"SELECT 1 FROM strips WHERE job=? AND {_COVERS} AND state != ? LIMIT 1",
                                          (strip["job"], frame, frame, StripState.DONE.value)).fetchone()]
            return strip["job"], complete

    def _store_pretrace(self, db, strip: sqlite3.Row, cache: bytes, seconds: float) -> None:
        """A frame's radiosity pre-pass is in (its cache, or nothing when the scene turned out to use no
        radiosity): the frame's strips may go."""
        self._set_strip_state(db, strip, StripState.DONE, data=cache, seconds=seconds, progress=1.0,
                              lease_expires=None, error=None)
        for waiting in db.execute("SELECT * FROM strips WHERE job=? AND frame=? AND state=?",
                                  (strip["job"], strip["frame"], StripState.WAITING.value)).fetchall():
            self._set_strip_state(db, waiting, StripState.QUEUED)

    _FRAME_CACHE = "FROM strips WHERE job=? AND frame=? AND kind=? AND state=? AND length(data) > 0"

    def radiosity_cache(self, job_id: int, frame: int) -> bytes | None:
        """The compressed radiosity cache of a frame's pre-pass; None when there is none (no pre-pass,
        or the scene uses no radiosity)."""
        with self._reading() as db:
            row = db.execute(f"SELECT data {self._FRAME_CACHE}",
                             (job_id, frame, PRETRACE, StripState.DONE.value)).fetchone()
        return None if row is None else bytes(row["data"])

    def has_radiosity_cache(self, job_id: int, frame: int) -> bool:
        """Whether strips of the frame load a shared radiosity cache, without reading it."""
        with self._reading() as db:
            return db.execute(f"SELECT 1 {self._FRAME_CACHE}",
                              (job_id, frame, PRETRACE, StripState.DONE.value)).fetchone() is not None

    def fail_strip(self, node_id: str, lease: str, error: str, fatal: bool, now: float,
                   max_attempts: int) -> int:
        """A strip failed. A scene error (fatal) fails the job at once; others retry up to max_attempts."""
        with self.tx() as db:
            self._seen(db, node_id, now)
            strip = self._leased_strip(db, node_id, lease)
            node = self._node_row(db, node_id)
            db.execute("UPDATE nodes SET strips_failed = strips_failed + 1 WHERE id=?", (node_id,))
            db.execute("INSERT INTO failures VALUES (?, ?, ?, ?, ?)",
                       (strip["job"], strip["id"], node["name"], error[:500], now))
            failures = strip["failures"] + 1
            if fatal or failures >= max_attempts:
                self._set_strip_state(db, strip, StripState.FAILED, failures=failures, error=error,
                                      lease_expires=None)
                prefix = "" if fatal else f"strip {strip['idx']} failed {failures} times; last error: "
                self._fail_job(db, strip["job"], prefix + error, now)
            else:
                self._set_strip_state(db, strip, StripState.QUEUED, failures=failures, error=error,
                                      lease_expires=None, progress=0)
            return strip["job"]

    def release_strip(self, node_id: str, lease: str, now: float) -> None:
        """The node hands a lease back unfinished (it is shutting down): render it elsewhere."""
        with self.tx() as db:
            self._seen(db, node_id, now)
            strip = self._leased_strip(db, node_id, lease)
            self._set_strip_state(db, strip, StripState.QUEUED, lease_expires=None, progress=0)

    def expire(self, now: float, lease_timeout: float) -> int:
        """Requeue strips whose lease ran out and mark silent nodes offline. Returns strips requeued."""
        with self.tx() as db:
            expired = db.execute("SELECT * FROM strips WHERE state=? AND lease_expires < ?",
                                 (StripState.LEASED.value, now)).fetchall()
            for strip in expired:
                log.warning("lease %s on strip %s of job %s expired (node %s)", strip["lease"], strip["idx"],
                            strip["job"], strip["node"])
                self._set_strip_state(db, strip, StripState.QUEUED, lease_expires=None, progress=0)
            for node in db.execute("SELECT * FROM nodes WHERE state != ? AND last_seen < ?",
                                   (NodeState.OFFLINE.value, now - lease_timeout)).fetchall():
                log.warning("node %s went silent; marking it offline", node["id"])
                self._requeue_leases_of(db, node["id"])
                self._set_node_state(db, node, NodeState.OFFLINE)
            return len(expired)

    def extend_leases(self, until: float) -> None:
        """After a controller restart: give leases in flight time to be delivered."""
        with self.tx() as db:
            db.execute("UPDATE strips SET lease_expires=MAX(lease_expires, ?) WHERE state=?",
                       (until, StripState.LEASED.value))
            db.execute("UPDATE nodes SET last_seen=MAX(last_seen, ?) WHERE state != ?",
                       (until - 1e-3, NodeState.OFFLINE.value))

    # -- frames ------------------------------------------------------------------------------

    def complete_frames(self) -> list[tuple[int, int]]:
        """(job, frame) pairs whose strips are all done but whose image is not written yet."""
        with self._reading() as db:
            return [(r["job"], r["number"]) for r in db.execute(
                "SELECT f.job, f.number FROM frames f JOIN jobs j ON j.id=f.job"
                " WHERE f.state IN (?, ?) AND j.state=? AND NOT EXISTS (SELECT 1 FROM strips s"
                " WHERE s.job=f.job AND s.frame <= f.number AND s.frame_last >= f.number AND s.state != ?)",
                (FrameState.QUEUED.value, FrameState.RENDERING.value, JobState.RENDERING.value,
                 StripState.DONE.value)).fetchall()]

    def strip_pieces(self, job_id: int, frame: int) -> list[sqlite3.Row]:
        """The stored units that cover a frame: frame, frame_last, row_start, row_end, data."""
        with self._reading() as db:
            return db.execute(
                f"SELECT frame, frame_last, row_start, row_end, data FROM strips WHERE job=? AND {_COVERS}"
                " AND state=? AND kind=?", (job_id, frame, frame, StripState.DONE.value, ROWS)).fetchall()

    def finish_frame(self, job_id: int, frame: int, path: str, now: float) -> bool:
        """Record a written frame image; the job is done when its last frame is. Returns job done."""
        with self.tx() as db:
            job = self._job_row(db, job_id)
            if JobState(job["state"]) is not JobState.RENDERING:
                return False
            self._set_frame_state(db, job_id, frame, FrameState.DONE, path=path)
            left = db.execute("SELECT COUNT(*) FROM frames WHERE job=? AND state != ?",
                              (job_id, FrameState.DONE.value)).fetchone()[0]
            if left == 0:
                self._set_job_state(db, job, JobState.DONE, finished=now)
            return left == 0

    def fail_frame(self, job_id: int, error: str, now: float) -> None:
        with self.tx() as db:
            self._fail_job(db, job_id, error, now)
