"""The controller's tables, their migrations, and rows turned into records.

This module and the rest of `farm.store` are the only code that sees SQL rows.
Every state column is written through `set_state`, which asks
`farm.states.check_transition` first.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any, Collection

from farm.animation import Animation
from farm.jobkinds import capability_tags
from farm.kinds import PreviewMode
from farm.records import Frame, Job, Node, StoredRows, Unit
from farm.rows import ZLIB
from farm.states import ENDED, FrameState, JobState, NodeState, UnitState, check_transition

SCHEMA_VERSION = 2

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS bundles (
    digest TEXT PRIMARY KEY, size INTEGER NOT NULL, created REAL NOT NULL,
    members TEXT,                 -- JSON list of the file names in the bundle
    radiosity INTEGER);           -- 1 when a file of the bundle mentions radiosity
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL, state TEXT NOT NULL, priority INTEGER NOT NULL DEFAULT 0,
    bundle TEXT NOT NULL, scene TEXT NOT NULL,
    width INTEGER NOT NULL, height INTEGER NOT NULL, options TEXT NOT NULL,
    channels INTEGER NOT NULL, bits INTEGER NOT NULL,
    first_frame INTEGER NOT NULL, last_frame INTEGER NOT NULL,  -- the frames this job renders
    animation TEXT,  -- JSON: POV-Ray's animation settings (+KFI/+KFF/+KI/+KF/+KC); NULL for a still
    error TEXT, submitted REAL NOT NULL, started REAL, finished REAL,
    pretrace INTEGER NOT NULL DEFAULT 0,   -- 1: split frames wait for a shared radiosity pre-pass
    block INTEGER NOT NULL DEFAULT 32,     -- POV-Ray's render block size: unit edges fall on its multiples
    preview TEXT NOT NULL DEFAULT 'always',   -- of a job with a preview unit: 'always' or 'watched' (farm.strips)
    require TEXT NOT NULL DEFAULT '[]' /* JSON: the tags a node must all have to render it (farm.tags) */,
    prefer TEXT NOT NULL DEFAULT '[]' /* JSON: the tags of the nodes it goes to first */,
    run_after TEXT NOT NULL DEFAULT '[]' /* JSON: the jobs it runs after (farm.dependencies) */,
    povray TEXT NOT NULL DEFAULT '' /* the POV-Ray version it is pinned to ('': any; farm.builds) */,
    kind TEXT NOT NULL DEFAULT 'povray' /* its kind of work (farm.jobkinds) */,
    shear INTEGER NOT NULL DEFAULT 0, /* its frames' rows are sheared at this step (farm.shear); 0: not */
    fold INTEGER NOT NULL DEFAULT 0 /* its pre-pass bands are folded (farm.radiosity.folded_bands) */);
CREATE TABLE IF NOT EXISTS frames (
    job INTEGER NOT NULL, number INTEGER NOT NULL, state TEXT NOT NULL, path TEXT,
    povray TEXT,   -- the POV-Ray build its units render on (farm.builds), from its first unit leased
    PRIMARY KEY (job, number));
CREATE TABLE IF NOT EXISTS units (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    -- A unit of work: rows [row_start, row_end) of frames frame..frame_last, which one POV-Ray
    -- process renders; its data holds each frame's rows in turn.
    job INTEGER NOT NULL, frame INTEGER NOT NULL, frame_last INTEGER NOT NULL, idx INTEGER NOT NULL,
    row_start INTEGER NOT NULL, row_end INTEGER NOT NULL, state TEXT NOT NULL,
    attempt INTEGER NOT NULL DEFAULT 0, failures INTEGER NOT NULL DEFAULT 0,
    lease TEXT, node TEXT, lease_expires REAL, progress REAL NOT NULL DEFAULT 0,
    data BLOB, error TEXT, seconds REAL,
    done_seq INTEGER,   -- order in which units were stored: the viewers' feed cursor
    kind TEXT NOT NULL DEFAULT 'rows',   -- 'rows'; 'pretrace': a frame's radiosity pre-pass (data: its cache);
                                         -- 'preview': a frame's low-resolution preview (rows of its own size)
    retry_at REAL NOT NULL DEFAULT 0,    -- a node that failed it may take it again from this time on
    encoding TEXT NOT NULL DEFAULT 'zlib',  -- of data: 'zlib' (raw rows) or 'filtered' (PNG scanlines)
    remainder INTEGER NOT NULL DEFAULT 0,  -- 1: rows of a frame not cut yet; each lease cuts a unit off it
    costs TEXT);   -- JSON [[row_start, row_end, seconds]...]: where a pre-pass band's time went, as its node saw
CREATE INDEX IF NOT EXISTS units_queued ON units (job, state, idx);
CREATE INDEX IF NOT EXISTS units_in_line ON units (job, state, frame, row_start, idx);
CREATE INDEX IF NOT EXISTS units_by_frame ON units (job, frame_last, frame);
CREATE INDEX IF NOT EXISTS units_by_lease ON units (lease);
CREATE INDEX IF NOT EXISTS units_by_done ON units (job, done_seq);
-- Units that ever failed (their retry pause): few, and written only when a unit fails, so the
-- scheduler's tick finds the pauses ending without reading every unit the farm ever rendered.
CREATE INDEX IF NOT EXISTS units_retrying ON units (retry_at) WHERE retry_at > 0;
CREATE TABLE IF NOT EXISTS failures (
    job INTEGER NOT NULL, unit INTEGER NOT NULL, node_name TEXT NOT NULL, error TEXT, at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS failures_by_job ON failures (job, node_name);
-- Jobs by state: the unfinished ones are few however long the farm's history (OPEN_JOBS below).
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state);
CREATE TABLE IF NOT EXISTS nodes (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, state TEXT NOT NULL, info TEXT NOT NULL,
    registered REAL NOT NULL, last_seen REAL NOT NULL,
    units_done INTEGER NOT NULL DEFAULT 0, units_failed INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    upload_bps REAL NOT NULL DEFAULT 0 /* its measured upload rate (bytes/s), from its heartbeats */,
    tags TEXT NOT NULL DEFAULT '[]' /* JSON: its tags now (the override below, else its own) */,
    tags_overridden INTEGER NOT NULL DEFAULT 0);
-- Tags set from the controller (povfarm node-tags), by node name: they win over the node's own and
-- outlive its registrations, until cleared.
CREATE TABLE IF NOT EXISTS node_tags (name TEXT PRIMARY KEY, tags TEXT NOT NULL);
-- POV-Ray's log of each run of a unit (farm/store/logs.py), and how many bytes of text a job's logs keep.
CREATE TABLE IF NOT EXISTS unit_logs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job INTEGER NOT NULL, unit INTEGER NOT NULL, idx INTEGER NOT NULL, frame INTEGER NOT NULL,
    frame_last INTEGER NOT NULL, kind TEXT NOT NULL, attempt INTEGER NOT NULL, node_name TEXT NOT NULL,
    outcome TEXT NOT NULL,          -- 'done' or 'failed'
    command TEXT NOT NULL,          -- JSON: the command line
    started REAL NOT NULL, seconds REAL NOT NULL, exit_code INTEGER, signal INTEGER,
    timed_out INTEGER NOT NULL,
    text BLOB NOT NULL,             -- zlib of POV-Ray's output as kept
    size INTEGER NOT NULL,          -- bytes of that output
    messages TEXT NOT NULL,         -- JSON: the scene's messages of each frame the run parsed (farm.povtext)
    cut TEXT NOT NULL DEFAULT '');  -- what of the output was not kept, and why
CREATE INDEX IF NOT EXISTS unit_logs_by_job ON unit_logs (job, idx, id);
CREATE TABLE IF NOT EXISTS log_sizes (job INTEGER PRIMARY KEY, size INTEGER NOT NULL);
"""

# The units of unfinished jobs, as a condition on `job`: with jobs_by_state and the units' (job, state)
# indexes, a query over the units in flight or in line reads those of the few open jobs, never the
# history. Ended jobs hold no such units: ending a job ends its open work (jobs.end_open_work).
OPEN_JOBS = ("job IN (SELECT id FROM jobs WHERE state IN (%s))"
             % ", ".join(f"'{state.value}'" for state in JobState if state not in ENDED))

# A database made by version 1 (table "strips", per-node "strips_done"...) is renamed in place.
_FROM_VERSION_1 = [
    "ALTER TABLE strips RENAME TO units",
    "DROP INDEX IF EXISTS strips_queued", "DROP INDEX IF EXISTS strips_by_frame",
    "DROP INDEX IF EXISTS strips_by_lease", "DROP INDEX IF EXISTS strips_by_done",
    "ALTER TABLE failures RENAME COLUMN strip TO unit",
    "ALTER TABLE nodes RENAME COLUMN strips_done TO units_done",
    "ALTER TABLE nodes RENAME COLUMN strips_failed TO units_failed",
]
# Columns added over time: a database made before them gets them on open.
_LATER_COLUMNS = (("jobs", "pretrace", "INTEGER NOT NULL DEFAULT 0"),
                  ("units", "kind", "TEXT NOT NULL DEFAULT 'rows'"),
                  ("units", "retry_at", "REAL NOT NULL DEFAULT 0"),
                  ("units", "encoding", "TEXT NOT NULL DEFAULT 'zlib'"),
                  ("units", "remainder", "INTEGER NOT NULL DEFAULT 0"),
                  ("jobs", "block", "INTEGER NOT NULL DEFAULT 32"),
                  ("bundles", "members", "TEXT"),
                  ("bundles", "radiosity", "INTEGER"),
                  ("nodes", "upload_bps", "REAL NOT NULL DEFAULT 0"),
                  ("jobs", "preview", "TEXT NOT NULL DEFAULT 'always'"),
                  ("jobs", "require", "TEXT NOT NULL DEFAULT '[]'"),
                  ("jobs", "prefer", "TEXT NOT NULL DEFAULT '[]'"),
                  ("jobs", "run_after", "TEXT NOT NULL DEFAULT '[]'"),
                  ("nodes", "tags", "TEXT NOT NULL DEFAULT '[]'"),
                  ("nodes", "tags_overridden", "INTEGER NOT NULL DEFAULT 0"),
                  ("jobs", "povray", "TEXT NOT NULL DEFAULT ''"),
                  ("frames", "povray", "TEXT"),
                  ("jobs", "kind", "TEXT NOT NULL DEFAULT 'povray'"),
                  ("jobs", "shear", "INTEGER NOT NULL DEFAULT 0"),
                  ("units", "costs", "TEXT"),
                  ("jobs", "fold", "INTEGER NOT NULL DEFAULT 0"))


def prepare(db: sqlite3.Connection) -> None:
    """Create the tables, or bring an older database up to this version."""
    if _has_table(db, "strips") and not _has_table(db, "units"):
        db.execute("BEGIN IMMEDIATE")
        for statement in _FROM_VERSION_1:
            db.execute(statement)
        db.execute("COMMIT")
    db.executescript(SCHEMA)
    for table, column, declaration in _LATER_COLUMNS:
        present = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
        if column not in present:
            db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")
    db.execute("INSERT OR REPLACE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))


def _has_table(db: sqlite3.Connection, name: str) -> bool:
    return db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (name,)).fetchone() is not None


# -- rows to records ---------------------------------------------------------------------------

def job(row: sqlite3.Row) -> Job:
    return Job(
        id=row["id"], name=row["name"], state=JobState(row["state"]), priority=row["priority"],
        bundle=row["bundle"], scene=row["scene"], width=row["width"], height=row["height"],
        options=tuple(json.loads(row["options"])), channels=row["channels"], bits=row["bits"],
        first_frame=row["first_frame"], last_frame=row["last_frame"],
        animation=Animation.from_spec(json.loads(row["animation"])) if row["animation"] else None,
        error=row["error"] or "", submitted=row["submitted"], started=row["started"] or 0.0,
        finished=row["finished"] or 0.0, pretrace=bool(row["pretrace"]), block=row["block"],
        preview=PreviewMode(row["preview"]), require=tuple(json.loads(row["require"])),
        prefer=tuple(json.loads(row["prefer"])), after=tuple(json.loads(row["run_after"])), povray=row["povray"],
        kind=row["kind"], shear=row["shear"], fold=bool(row["fold"]))


def frame(row: sqlite3.Row) -> Frame:
    return Frame(job=row["job"], number=row["number"], state=FrameState(row["state"]), path=row["path"] or "",
                 povray=row["povray"] or "")


def not_of(kinds: Collection[str], column: str = "kind") -> str:
    """SQL for a unit of none of the kinds of unit `kinds` (their values follow as its parameters)."""
    return f"{column} NOT IN ({', '.join('?' * len(kinds))})"


def unit(row: sqlite3.Row) -> Unit:
    return Unit(
        id=row["id"], job=row["job"], frame=row["frame"], frame_last=row["frame_last"], index=row["idx"],
        row_start=row["row_start"], row_end=row["row_end"], state=UnitState(row["state"]), kind=row["kind"],
        attempt=row["attempt"], failures=row["failures"], lease=row["lease"] or "", node=row["node"] or "",
        lease_expires=row["lease_expires"] or 0.0, retry_at=row["retry_at"] or 0.0,
        progress=row["progress"], error=row["error"] or "", seconds=row["seconds"] or 0.0,
        done_seq=row["done_seq"] or 0, remainder=bool(row["remainder"]))


UNIT_COLUMNS = ("id, job, frame, frame_last, idx, row_start, row_end, state, kind, attempt, failures, lease,"
                " node, lease_expires, retry_at, progress, error, seconds, done_seq, remainder")


def stored_rows(row: sqlite3.Row) -> StoredRows:
    return StoredRows(frame=row["frame"], frame_last=row["frame_last"], row_start=row["row_start"],
                      row_end=row["row_end"], data=bytes(row["data"]), done_seq=row["done_seq"] or 0,
                      kind=row["kind"],
                      encoding=row["encoding"] if "encoding" in row.keys() else ZLIB)


def node(row: sqlite3.Row) -> Node:
    info = json.loads(row["info"])
    return Node(id=row["id"], name=row["name"], state=NodeState(row["state"]), info=info,
                registered=row["registered"], last_seen=row["last_seen"], units_done=row["units_done"],
                units_failed=row["units_failed"], error=row["error"] or "",
                current=(row["current"] or "") if "current" in row.keys() else "",
                upload_bps=(row["upload_bps"] or 0.0) if "upload_bps" in row.keys() else 0.0,
                # its tags, and the capability tags of the kinds it offers (farm.jobkinds), matched alike
                tags=(tuple(json.loads(row["tags"])) if "tags" in row.keys() else ()) + capability_tags(info),
                tags_overridden=bool(row["tags_overridden"]) if "tags_overridden" in row.keys() else False)


# -- state changes: the only way a state column is written --------------------------------------

_TABLES = {JobState: ("jobs", "id"), UnitState: ("units", "id"), NodeState: ("nodes", "id")}


def set_state(db: sqlite3.Connection, record: Job | Unit | Node, new: Any, **columns: Any) -> None:
    """Move a job, unit or node to `new` (checked), writing `columns` with it."""
    check_transition(record.state, new)
    if new is record.state and not columns:
        return   # idle polls and busy slots repeat their state: no write
    table, key = _TABLES[type(new)]
    update(db, table, key, record.id, state=new.value, **columns)


def set_frame_state(db: sqlite3.Connection, job_id: int, number: int, new: FrameState, **columns: Any) -> None:
    row = db.execute("SELECT state FROM frames WHERE job=? AND number=?", (job_id, number)).fetchone()
    check_transition(FrameState(row["state"]), new)
    sets = ", ".join(f"{name}=?" for name in ["state", *columns])
    db.execute(f"UPDATE frames SET {sets} WHERE job=? AND number=?", (new.value, *columns.values(), job_id, number))


def update(db: sqlite3.Connection, table: str, key: str, key_value: Any, **columns: Any) -> None:
    sets = ", ".join(f"{name}=?" for name in columns)
    db.execute(f"UPDATE {table} SET {sets} WHERE {key}=?", (*columns.values(), key_value))
