"""Units of work as the controller remembers them: queued, leased, stored.

Leasing and failing take the farm's rules as functions (`farm.policy`), so the
decision and the write happen in one transaction while the rules stay pure.
"""

from __future__ import annotations

import enum
import json
import secrets
import sqlite3
from dataclasses import dataclass, replace
from typing import Callable, Collection, Mapping, Protocol, Sequence

from farm.builds import build_of
from farm.store.db import Database
from farm.faults import Code, FarmError
from farm.kinds import PRETRACE
from farm.policy import Failures, JobInLine
from farm.radiosity import band_pieces
from farm.records import FailureVerdict, Lease, Node, StoredRows, Unit
from farm.rows import ZLIB
from farm.scheduler import Finished, Running
from farm.states import FrameState, JobState, NodeState, UnitState
from farm.store import schema
from farm.store.jobs import fail_job_in, job_in
from farm.store.nodes import touch

_COVERS = "frame <= ? AND frame_last >= ?"   # a unit that includes a given frame
_SELECT_UNIT = f"SELECT {schema.UNIT_COLUMNS} FROM units"
_ROW_TOTAL = "(row_end - row_start) * (frame_last - frame + 1)"   # a unit's rows, for every frame it renders
_FRAME_RESULTS = "FROM units WHERE job=? AND frame=? AND kind=? AND state=? AND length(data) > 0"

Chooser = Callable[["_Queue", str, float, tuple, str], "Unit | None"]   # queue, node name, now, its tags, build
Judge = Callable[[Unit, frozenset, frozenset], FailureVerdict]


class Worth(str, enum.Enum):
    """What becomes of a unit chosen to lease, as its kind says (farm.service.kindparts.ControllerPart.worth)."""
    LEASE = "lease"     # it is leased
    WAIT = "wait"       # not now: it waits, unleased, until a viewer watches its job (queue_set_aside)
    EMPTY = "empty"     # not needed: it is kept done with an empty result, as if delivered so
    DECLINE = "decline"  # not for this node now: it stays queued and the node gets nothing this time
    HOLD = "hold"       # not yet: it waits, unleased, until what its frame waits for is in flight again


@dataclass(frozen=True)
class Keeping:
    """How a unit's result is kept, as its kind says (farm.service.kindparts.ControllerPart.keeping)."""
    fed: bool = True                 # numbered in its job's feed of stored units, which viewers follow
    completes_frames: bool = False   # its frames are complete once every unit over them is stored...
    optional: str = ""               # ...but those of this kind of unit, canceled then unless begun
    releases_frame: bool = False     # its frame's waiting units go once every unit of its kind there is stored
    # ...or already once every one is stored or leased: a unit that needs them all may then start and wait
    # for the last (a strip that loads its frame's radiosity cache: its start-up and parse run while the
    # pre-pass's bands end).
    releases_early: bool = False


PLAIN = Keeping()    # a kind with no such things: fed to viewers, completing no frame of itself


class UnitKinds(Protocol):
    """What the store asks of a unit's kind as it leases the unit (the dispatcher answers, from the part)."""

    def worth(self, unit: Unit, queue: "_Queue", node_id: str) -> Worth: ...

    def cut(self, unit: Unit, queue: "_Queue", node_id: str) -> int | None: ...

    def binds_frames(self, unit: Unit) -> bool: ...

    def keeping(self, unit: Unit) -> Keeping: ...

    @property
    def unbound_units(self) -> Collection[str]:
        """The kinds of unit that bind no build (`binds_frames` is False for theirs): the queue's view of a
        frame's build (`frames_of_other_builds`) leaves them out."""
        ...


class AsIs:
    """A kind with none of those things: every unit leased whole, binding its frames' build, kept plainly."""
    unbound_units: Collection[str] = ()

    def worth(self, unit: Unit, queue: "_Queue", node_id: str) -> Worth:
        return Worth.LEASE

    def cut(self, unit: Unit, queue: "_Queue", node_id: str) -> int | None:
        return unit.row_end

    def binds_frames(self, unit: Unit) -> bool:
        return True

    def keeping(self, unit: Unit) -> Keeping:
        return PLAIN


@dataclass(frozen=True)
class UnitCounts:
    units: int
    rows: int                # frame rows of its row units, for every frame they cover
    rows_rendered: float     # those rows times each unit's progress


@dataclass(frozen=True)
class Completion:
    unit: Unit
    complete_frames: tuple[int, ...]   # frames of its job whose every unit is now stored
    duplicate: bool                    # the same result was accepted before: nothing changed


class UnitRecords:
    def __init__(self, db: Database):
        self._db = db

    # -- reads -------------------------------------------------------------------------------

    def of_job(self, job_id: int, state: UnitState | None = None) -> list[Unit]:
        query, args = f"{_SELECT_UNIT} WHERE job=?", [job_id]
        if state is not None:
            query, args = query + " AND state=?", [job_id, state.value]
        with self._db.read() as db:
            return [schema.unit(row) for row in db.execute(query + " ORDER BY idx", args).fetchall()]

    def by_lease(self, token: str) -> Unit | None:
        with self._db.read() as db:
            row = db.execute(f"{_SELECT_UNIT} WHERE lease=?", (token,)).fetchone()
        return None if row is None else schema.unit(row)

    def summary(self, job_id: int, rows_of: str = "", left_out: str = "") -> dict[UnitState, UnitCounts]:
        """state -> counts of a job's units (those of kind `left_out` left out; the rows of those of kind
        `rows_of`: its kind's, ControllerPart.progress_unit), without reading them all."""
        with self._db.read() as db:
            rows = db.execute(
                f"SELECT state, COUNT(*) AS n, TOTAL(CASE WHEN kind=? THEN {_ROW_TOTAL} END) AS r,"
                f" TOTAL(CASE WHEN kind=? THEN {_ROW_TOTAL} * progress END) AS p"
                " FROM units WHERE job=? AND kind != ? GROUP BY state", (rows_of, rows_of, job_id, left_out)).fetchall()
        return {UnitState(row["state"]): UnitCounts(row["n"], int(row["r"]), row["p"]) for row in rows}

    def queue_set_aside(self, job_id: int, kind: str) -> bool:
        """Queue again the job's units of `kind` set aside while no viewer watched (Worth.WAIT; those of done
        frames were canceled); whether there was one."""
        with self._db.write() as db:
            rows = db.execute(f"{_SELECT_UNIT} WHERE job=? AND kind=? AND state=?",
                              (job_id, kind, UnitState.WAITING.value)).fetchall()
            for row in rows:
                schema.set_state(db, schema.unit(row), UnitState.QUEUED)
        return bool(rows)

    def state_of_kind(self, job_id: int, kind: str) -> UnitState | None:
        """The state of the job's unit of `kind` (its first: POV-Ray's preview, ControllerPart.preview_unit),
        None when it has none."""
        with self._db.read() as db:
            row = db.execute("SELECT state FROM units WHERE job=? AND kind=? LIMIT 1", (job_id, kind)).fetchone()
        return None if row is None else UnitState(row["state"])

    def stored_after(self, job_id: int, cursor: int, limit: int) -> list[StoredRows]:
        """Stored units of a job in the order they arrived, after the feed cursor."""
        with self._db.read() as db:
            return [schema.stored_rows(row) for row in db.execute(
                "SELECT frame, frame_last, row_start, row_end, data, done_seq, kind, encoding FROM units"
                " WHERE job=? AND done_seq > ? ORDER BY done_seq LIMIT ?", (job_id, cursor, limit)).fetchall()]

    def stored_for_frame(self, job_id: int, frame: int, kind: str) -> list[StoredRows]:
        """The stored units of `kind` that cover a frame."""
        with self._db.read() as db:
            return [schema.stored_rows(row) for row in db.execute(
                "SELECT frame, frame_last, row_start, row_end, data, done_seq, kind, encoding FROM units"
                f" WHERE job=? AND {_COVERS}"
                " AND state=? AND kind=?", (job_id, frame, frame, UnitState.DONE.value, kind)).fetchall()]

    def frame_results(self, job_id: int, frame: int, kind: str) -> list[bytes]:
        """The results left by a frame's stored units of `kind` (the radiosity caches of its pre-pass, a
        band's each), top band first; none when they left none."""
        with self._db.read() as db:
            return [bytes(row["data"]) for row in db.execute(
                f"SELECT data {_FRAME_RESULTS} ORDER BY row_start", (job_id, frame, kind, UnitState.DONE.value))]

    def has_frame_result(self, job_id: int, frame: int, kind: str) -> bool:
        """Whether a frame's stored units of `kind` left a result, without reading it."""
        with self._db.read() as db:
            return db.execute(f"SELECT 1 {_FRAME_RESULTS}",
                              (job_id, frame, kind, UnitState.DONE.value)).fetchone() is not None

    def frame_kind_queued(self, job_id: int, frame: int, kind: str) -> bool:
        """Whether a unit of `kind` in the frame waits in the queue for a node (a band of its radiosity
        pre-pass whose node died or handed it back)."""
        with self._db.read() as db:
            return _frame_kind_queued(db, job_id, frame, kind)

    def frame_kind_open(self, job_id: int, frame: int, kind: str) -> bool:
        """Whether a unit of `kind` in the frame is not stored yet (a part of its radiosity pre-pass)."""
        with self._db.read() as db:
            return _frame_kind_open(db, job_id, frame, kind, UnitState.DONE, UnitState.CANCELED)

    def open_count(self, uncounted: Collection[str] = ()) -> int:
        """Units of unfinished jobs still to be rendered: queued, waiting or leased (those of the kinds
        `uncounted` aside, no part of their job's work: ControllerPart.uncounted_unit, POV-Ray's preview)."""
        with self._db.read() as db:
            return db.execute(f"SELECT COUNT(*) FROM units WHERE {schema.OPEN_JOBS}"
                              f" AND state IN (?, ?, ?) AND {schema.not_of(uncounted)}",
                              (UnitState.QUEUED.value, UnitState.WAITING.value, UnitState.LEASED.value,
                               *uncounted)).fetchone()[0]

    def frame_costs(self, job_id: int, frame: int, kind: str) -> list[Finished]:
        """The frame's finished units of `kind` cut from its remainder, as the cost model reads them."""
        with self._db.read() as db:
            return _Queue(db).frame_units(job_id, frame, kind)[0]

    def last_frame_costs(self, scene: str, width: int, height: int, kind: str, jobs: int = 8) -> list[Finished]:
        """The units of `kind` of the newest frame that finished them all, among the `jobs` newest jobs of
        `scene` at this size (a scene re-rendered, or edited, mostly costs where it did): empty when none did.
        Each with the costs of its rows its node measured (`parts`), where it did. One query per job over
        the units' job index. A band of a folded pre-pass names its pieces of rows (radiosity.band_pieces)."""
        with self._db.read() as db:
            for job_id, fold in db.execute("SELECT id, fold FROM jobs WHERE scene=? AND width=? AND height=?"
                                           " ORDER BY id DESC LIMIT ?", (scene, width, height, jobs)).fetchall():
                frames: dict[int, list[sqlite3.Row]] = {}
                for row in db.execute("SELECT frame, node, state, row_start, row_end, seconds, costs FROM units"
                                      " WHERE job=? AND kind=?", (job_id, kind)):
                    frames.setdefault(row["frame"], []).append(row)
                for frame in sorted(frames, reverse=True):
                    units = frames[frame]
                    if all(row["state"] == UnitState.DONE.value and (row["seconds"] or 0) > 0 for row in units):
                        folded = bool(fold) and kind == PRETRACE    # as PovrayPart.unit_rows has it
                        return [Finished(row["node"] or "", row["row_start"], row["row_end"], row["seconds"],
                                         _parts(row["costs"]), _folded_pieces(height, row, folded)) for row in units]
        return []

    def cost_samples(self, job_id: int, kind: str, recent: int = 256) -> list[Finished]:
        """The job's `recent` last finished units of `kind` (its kind's rows: ControllerPart.progress_unit)
        as the cost model reads them (what is left costs about what was done last; a long job is not read
        whole); a unit of several frames counts its rows once per frame."""
        with self._db.read() as db:
            return [Finished(row["node"] or "", row["row_start"], row["row_start"] + row["rows"], row["seconds"] or 0.0)
                    for row in db.execute(f"SELECT node, row_start, {_ROW_TOTAL} AS rows, seconds FROM units"
                                          " WHERE job=? AND state=? AND kind=? ORDER BY done_seq DESC LIMIT ?",
                                          (job_id, UnitState.DONE.value, kind, recent))]

    def retry_due(self, after: float, until: float) -> bool:
        """Whether a queued unit's retry pause ended in (after, until]: nodes waiting for work may take it."""
        with self._db.read() as db:
            return db.execute("SELECT 1 FROM units WHERE retry_at > 0"     # spelled out: the condition of its index
                              " AND retry_at > ? AND retry_at <= ? AND state=? LIMIT 1",
                              (after, until, UnitState.QUEUED.value)).fetchone() is not None

    # -- leases ------------------------------------------------------------------------------

    def lease_next(self, node_id: str, now: float, lease_timeout: float, choose: Chooser,
                   kinds: UnitKinds = AsIs()) -> Lease | None:
        """Lease the node the unit `choose` picks from the queue, or None. Its kind (`kinds`) says whether
        it is still worth leasing: if not, it waits for a viewer or is kept done with an empty result
        (Worth), and the next unit is chosen. When it is a frame's remainder, its kind says where the unit
        to lease ends (the rest stays queued), or None when the node should leave it to faster ones."""
        with self._db.write() as db:
            node = touch(db, node_id, now)
            if node.state is NodeState.BROKEN:
                return None
            queue = _Queue(db, tuple(kinds.unbound_units))
            build = build_of(node.info)
            unit = choose(queue, node.name, now, node.offers, build)
            while unit is not None and (worth := kinds.worth(unit, queue, node_id)) is not Worth.LEASE:
                if worth is Worth.DECLINE:  # as a remainder's cut declines: the node asks again when it is free
                    unit = None
                    break
                if worth in (Worth.WAIT, Worth.HOLD):   # until a viewer comes (queue_set_aside), its frame is
                    schema.set_state(db, unit, UnitState.WAITING)   # done, or the units it waits for go (HOLD)
                else:
                    _keep(db, unit, b"", 0.0, ZLIB, kinds.keeping(unit))
                unit = choose(queue, node.name, now, node.offers, build)
            if unit is not None and unit.remainder:
                end = kinds.cut(unit, queue, node_id)
                unit = None if end is None else _cut(db, unit, end)
            if unit is None:
                if node.state is not NodeState.BUSY or not _holds_any(db, node.id):   # one asking ahead is busy
                    schema.set_state(db, node, NodeState.IDLE)
                return None
            lease = self._lease(db, node, unit, now, now + lease_timeout, kinds.binds_frames(unit))
            keeping = kinds.keeping(unit)
            if keeping.releases_frame and keeping.releases_early:   # its frame's last part in flight
                _release_frame(db, unit, early=True)
            return lease

    @staticmethod
    def _lease(db: sqlite3.Connection, node: Node, unit: Unit, now: float, expires: float, binds: bool) -> Lease:
        token = f"{unit.id}.{unit.attempt + 1}.{secrets.token_hex(6)}"
        schema.set_state(db, unit, UnitState.LEASED, lease=token, node=node.id, attempt=unit.attempt + 1,
                         lease_expires=expires, progress=0)
        job = job_in(db, unit.job)
        if job.state is JobState.QUEUED:
            schema.set_state(db, job, JobState.RENDERING, started=now)
        for row in db.execute("SELECT number FROM frames WHERE job=? AND number BETWEEN ? AND ? AND state=?",
                              (unit.job, unit.frame, unit.frame_last, FrameState.QUEUED.value)).fetchall():
            schema.set_frame_state(db, unit.job, row["number"], FrameState.RENDERING)
        schema.set_state(db, node, NodeState.BUSY)
        if binds and build_of(node.info):   # the frames render on this build from now on
            db.execute("UPDATE frames SET povray=? WHERE job=? AND number BETWEEN ? AND ? AND"
                       " povray IS NOT ?", (build_of(node.info), unit.job, unit.frame, unit.frame_last,
                                            build_of(node.info)))
        leased = schema.unit(db.execute(f"{_SELECT_UNIT} WHERE id=?", (unit.id,)).fetchone())
        return Lease(token=token, node=node.id, expires=expires, unit=leased)

    def heartbeat(self, node_id: str, progress: Mapping[str, float], now: float,
                  lease_timeout: float, upload_bps: float | None = None) -> tuple[list[str], set[int]]:
        """Renew the node's leases (and note its upload rate, when it reports one). Returns the leases it
        should stop working on, and the jobs renewed."""
        with self._db.write() as db:
            touch(db, node_id, now)
            if upload_bps is not None:
                db.execute("UPDATE nodes SET upload_bps=? WHERE id=?", (upload_bps, node_id))
            stale, jobs = [], set()
            for token, fraction in progress.items():
                unit = _held(db, node_id, token)
                if unit is None:
                    stale.append(token)
                    continue
                db.execute("UPDATE units SET lease_expires=?, progress=? WHERE id=?",
                           (now + lease_timeout, min(max(float(fraction), 0.0), 1.0), unit.id))
                jobs.add(unit.job)
            return stale, jobs

    def complete(self, node_id: str, token: str, data: bytes, seconds: float, now: float,
                 encoding: str = ZLIB, keeping: Keeping = PLAIN,
                 costs: Sequence[tuple[int, int, float]] = ()) -> Completion:
        """Store a unit's result, kept as its kind says (with `costs`: where its seconds went, by rows).
        Re-sending an accepted result is harmless (duplicate=True)."""
        with self._db.write() as db:
            touch(db, node_id, now)
            unit = _by_lease(db, token)
            if unit is not None and unit.node == node_id and unit.state is UnitState.DONE:
                return Completion(unit, (), duplicate=True)
            unit = _current(unit, node_id, token)
            complete = _keep(db, unit, data, seconds, encoding, keeping)
            if costs:
                db.execute("UPDATE units SET costs=? WHERE id=?", (json.dumps([list(cost) for cost in costs]), unit.id))
            db.execute("UPDATE nodes SET units_done = units_done + 1 WHERE id=?", (node_id,))
            return Completion(unit, complete, duplicate=False)

    def fail(self, node_id: str, token: str, error: str, now: float, judge: Judge) -> tuple[Unit, FailureVerdict]:
        """A unit failed on the node; `judge(unit, failed_on, live)` says what that means."""
        with self._db.write() as db:
            node = touch(db, node_id, now)
            unit = _current(_by_lease(db, token), node_id, token)
            db.execute("UPDATE nodes SET units_failed = units_failed + 1 WHERE id=?", (node_id,))
            db.execute("INSERT INTO failures VALUES (?, ?, ?, ?, ?)", (unit.job, unit.id, node.name, error[:500], now))
            queue = _Queue(db)
            verdict = judge(unit, queue.failures(unit.job).failed_on.get(unit.id, frozenset()),
                            queue.live_node_names() | {node.name})
            if verdict.fail_job or verdict.drop_unit:   # dropped: a preview the job can do without
                schema.set_state(db, unit, UnitState.FAILED, failures=unit.failures + 1, error=error,
                                 lease_expires=None)
                if verdict.fail_job:
                    fail_job_in(db, unit.job, verdict.job_error, now)
            else:
                schema.set_state(db, unit, UnitState.QUEUED, failures=unit.failures + 1, error=error,
                                 lease_expires=None, progress=0, retry_at=verdict.retry_at)
            return unit, verdict

    def release(self, node_id: str, token: str, now: float) -> Unit:
        """The node hands a lease back unfinished (it is shutting down): render it elsewhere."""
        with self._db.write() as db:
            touch(db, node_id, now)
            unit = _current(_by_lease(db, token), node_id, token)
            schema.set_state(db, unit, UnitState.QUEUED, lease_expires=None, progress=0)
            return unit

    def expire(self, now: float) -> list[Unit]:
        """Requeue units whose lease ran out. Returns them."""
        with self._db.write() as db:
            expired = [schema.unit(row) for row in db.execute(
                f"{_SELECT_UNIT} WHERE state=? AND lease_expires < ?", (UnitState.LEASED.value, now)).fetchall()]
            for unit in expired:
                schema.set_state(db, unit, UnitState.QUEUED, lease_expires=None, progress=0)
            return expired

    def extend_leases(self, until: float) -> None:
        """After a controller restart: give leases in flight, and their nodes, time to deliver."""
        with self._db.write() as db:
            db.execute("UPDATE units SET lease_expires=MAX(lease_expires, ?) WHERE state=?",
                       (until, UnitState.LEASED.value))
            db.execute("UPDATE nodes SET last_seen=MAX(last_seen, ?) WHERE state != ?",
                       (until - 1e-3, NodeState.OFFLINE.value))


def _by_lease(db: sqlite3.Connection, token: str) -> Unit | None:
    row = db.execute(f"{_SELECT_UNIT} WHERE lease=?", (token,)).fetchone()
    return None if row is None else schema.unit(row)


def _holds_any(db: sqlite3.Connection, node_id: str) -> bool:
    """Whether the node holds a lease on a unit of an open job (the jobs' state index finds them)."""
    return db.execute(f"SELECT 1 FROM units WHERE {schema.OPEN_JOBS} AND state=? AND node=? LIMIT 1",
                      (UnitState.LEASED.value, node_id)).fetchone() is not None


def _held(db: sqlite3.Connection, node_id: str, token: str) -> Unit | None:
    """The unit the lease is for, if the node holds that lease now."""
    unit = _by_lease(db, token)
    return unit if unit is not None and unit.node == node_id and unit.state is UnitState.LEASED else None


def _current(unit: Unit | None, node_id: str, token: str) -> Unit:
    if unit is None or unit.node != node_id or unit.state is not UnitState.LEASED:
        raise FarmError(Code.STALE_LEASE, f"lease {token} is no longer current; the result was discarded")
    return unit


def _cut(db: sqlite3.Connection, remainder: Unit, end: int) -> Unit:
    """The unit of rows [remainder.row_start, end) cut off a remainder, queued; the remainder keeps the rows
    below it. Cutting it all makes the remainder an ordinary unit."""
    if not remainder.row_start < end <= remainder.row_end:
        raise FarmError(Code.INTERNAL, f"cannot cut rows {remainder.row_start}-{end} off rows "
                                       f"{remainder.row_start}-{remainder.row_end}")
    if end == remainder.row_end:
        schema.update(db, "units", "id", remainder.id, remainder=0)
        return replace(remainder, remainder=False)
    index = db.execute("SELECT MAX(idx) + 1 FROM units WHERE job=?", (remainder.job,)).fetchone()[0]
    cur = db.execute("INSERT INTO units (job, frame, frame_last, idx, row_start, row_end, state, kind)"
                     " VALUES (?,?,?,?,?,?,?,?)", (remainder.job, remainder.frame, remainder.frame_last, index,
                                                   remainder.row_start, end, UnitState.QUEUED.value, remainder.kind))
    schema.update(db, "units", "id", remainder.id, row_start=end)
    return schema.unit(db.execute(f"{_SELECT_UNIT} WHERE id=?", (cur.lastrowid,)).fetchone())


def _keep(db: sqlite3.Connection, unit: Unit, data: bytes, seconds: float, encoding: str,
          keeping: Keeping) -> tuple[int, ...]:
    """The unit done with its result, kept as its kind says; the frames it completes."""
    fed = {}    # a unit fed to viewers takes the job's next number in their feed, and its encoding
    if keeping.fed:
        fed = {"done_seq": db.execute("SELECT COALESCE(MAX(done_seq), 0) + 1 FROM units WHERE job=?",
                                      (unit.job,)).fetchone()[0], "encoding": encoding}
    schema.set_state(db, unit, UnitState.DONE, data=data, seconds=seconds, progress=1.0, lease_expires=None,
                     error=None, **fed)
    if keeping.releases_frame:
        _release_frame(db, unit, keeping.releases_early)
    return _complete_frames(db, unit, keeping.optional) if keeping.completes_frames else ()


def _complete_frames(db: sqlite3.Connection, unit: Unit, optional: str) -> tuple[int, ...]:
    """The unit's frames whose every unit (but those of kind `optional`) is now stored. Their optional
    units, if not begun, are not needed any more: one never holds a frame back."""
    complete = tuple(frame for frame in unit.frames if not db.execute(
        f"SELECT 1 FROM units WHERE job=? AND {_COVERS} AND state != ? AND kind != ? LIMIT 1",
        (unit.job, frame, frame, UnitState.DONE.value, optional)).fetchone())
    for frame in complete:
        for row in db.execute(f"{_SELECT_UNIT} WHERE job=? AND frame=? AND kind=? AND state IN (?, ?)",
                              (unit.job, frame, optional, UnitState.QUEUED.value, UnitState.WAITING.value)).fetchall():
            schema.set_state(db, schema.unit(row), UnitState.CANCELED)
    return complete


def _release_frame(db: sqlite3.Connection, unit: Unit, early: bool) -> None:
    """Once every unit of the unit's kind in its frame is stored (every part of a frame's radiosity pre-pass,
    with its cache or none), the frame's units that waited for them may go; `early`: once every one is
    stored or leased (`Keeping.releases_early`)."""
    past = (UnitState.DONE, UnitState.LEASED) if early else (UnitState.DONE,)
    if _frame_kind_open(db, unit.job, unit.frame, unit.kind, *past):
        return
    for row in db.execute(f"{_SELECT_UNIT} WHERE job=? AND frame=? AND state=?",
                          (unit.job, unit.frame, UnitState.WAITING.value)).fetchall():
        schema.set_state(db, schema.unit(row), UnitState.QUEUED)


def _parts(stored: str | None) -> tuple[tuple[int, int, float], ...]:
    """A unit's costs by rows, as `complete` stored them."""
    if not stored:
        return ()
    return tuple((int(start), int(end), float(seconds)) for start, end, seconds in json.loads(stored))


def _folded_pieces(height: int, row: sqlite3.Row, folded: bool) -> tuple[tuple[int, int], ...]:
    """A finished band's pieces of rows when it was a band of a folded pre-pass (radiosity.band_pieces), else
    none (its rows say it)."""
    return tuple(band_pieces(height, row["row_start"], row["row_end"], True)) if folded else ()


def _frame_kind_queued(db: sqlite3.Connection, job_id: int, frame: int, kind: str) -> bool:
    return db.execute("SELECT 1 FROM units WHERE job=? AND frame=? AND kind=? AND state=? LIMIT 1",
                      (job_id, frame, kind, UnitState.QUEUED.value)).fetchone() is not None


def _frame_kind_open(db: sqlite3.Connection, job_id: int, frame: int, kind: str, *past: UnitState) -> bool:
    """Whether a unit of `kind` in the frame is in none of the states `past`."""
    marks = ", ".join("?" * len(past))
    return db.execute(f"SELECT 1 FROM units WHERE job=? AND frame=? AND kind=? AND state NOT IN ({marks}) LIMIT 1",
                      (job_id, frame, kind, *(state.value for state in past))).fetchone() is not None


class _Queue:
    """The queue as `farm.policy` reads it, inside the leasing transaction."""

    # A job that runs after others waits until they are all done (farm.dependencies: Verdict.GO); the
    # maintenance tick ends it when one of them failed or was canceled.
    _JOBS_IN_LINE = ("SELECT id, priority, require, prefer, povray, kind, shear FROM jobs WHERE state IN (?, ?) AND EXISTS (SELECT 1"
                     " FROM units q WHERE q.job = jobs.id AND q.state = ?) AND (run_after = '[]' OR NOT EXISTS"
                     " (SELECT 1 FROM json_each(jobs.run_after) d JOIN jobs p ON p.id = d.value"
                     f" WHERE p.state != '{JobState.DONE.value}'))")

    def __init__(self, db: sqlite3.Connection, unbound: tuple[str, ...] = ()):
        self._db = db
        self._unbound = unbound    # kinds of unit that bind no build (UnitKinds.unbound_units)

    def jobs_with_queued_units(self) -> Sequence[JobInLine]:
        return [JobInLine(row["id"], row["priority"], tuple(json.loads(row["require"])),
                          tuple(json.loads(row["prefer"])), row["povray"], row["kind"], bool(row["shear"]))
                for row in self._db.execute(
            self._JOBS_IN_LINE, (JobState.QUEUED.value, JobState.RENDERING.value, UnitState.QUEUED.value))]

    def queued_units(self, job_id: int, limit: int) -> Sequence[Unit]:
        """In the order they go: by frame, then from the top (a frame's preview and pre-pass first, then
        units handed back, then what remains of the frame)."""
        return [schema.unit(row) for row in self._db.execute(
            f"{_SELECT_UNIT} WHERE job=? AND state=? ORDER BY frame, row_start, idx LIMIT ?",
            (job_id, UnitState.QUEUED.value, limit)).fetchall()]

    def live_nodes(self) -> list[Node]:
        return [schema.node(row) for row in self._db.execute(
            "SELECT * FROM nodes WHERE state IN (?, ?)", (NodeState.IDLE.value, NodeState.BUSY.value))]

    def frames_of_other_builds(self, job_id: int, build: str) -> frozenset[int]:
        """The job's frames unfinished whose units render on a build other than `build`: a unit of theirs
        that binds its build is kept or in flight (a frame whose only unit on its build was handed back may
        change build)."""
        return frozenset(row[0] for row in self._db.execute(
            "SELECT f.number FROM frames f WHERE f.job=? AND f.state IN (?, ?) AND f.povray IS NOT NULL"
            " AND f.povray != ? AND EXISTS (SELECT 1 FROM units u WHERE u.job=f.job AND u.frame_last >= f.number"
            f" AND u.frame <= f.number AND {schema.not_of(self._unbound, 'u.kind')} AND u.state IN (?, ?))",
            (job_id, FrameState.QUEUED.value, FrameState.RENDERING.value, build, *self._unbound,
             UnitState.DONE.value, UnitState.LEASED.value)))

    def frame_kind_queued(self, job_id: int, frame: int, kind: str) -> bool:
        """Whether a unit of `kind` in the frame waits in the queue (UnitRecords.frame_kind_queued)."""
        return _frame_kind_queued(self._db, job_id, frame, kind)

    def frame_kind_open(self, job_id: int, frame: int, kind: str) -> bool:
        """Whether a unit of `kind` in the frame is not stored yet (UnitRecords.frame_kind_open)."""
        return _frame_kind_open(self._db, job_id, frame, kind, UnitState.DONE, UnitState.CANCELED)

    def whole_frame_waits(self, job_id: int, frame: int, kind: str, awaited: str) -> bool:
        """Whether the frame's units of `kind` are still one remainder, uncut, waiting for its units of kind
        `awaited` (POV-Ray's rows, for its radiosity pre-pass), and none of those has begun (once one has,
        what it leaves is the frame's: the others must follow)."""
        rows = self._db.execute("SELECT remainder, row_start, state FROM units WHERE job=? AND frame=? AND"
                                " frame_last=? AND kind=?", (job_id, frame, frame, kind)).fetchall()
        begun = self._db.execute("SELECT 1 FROM units WHERE job=? AND frame=? AND kind=? AND (state=? OR (state=?"
                                 " AND length(data) > 0)) LIMIT 1", (job_id, frame, awaited, UnitState.LEASED.value,
                                                                    UnitState.DONE.value)).fetchone()
        return (len(rows) == 1 and rows[0]["remainder"] and rows[0]["row_start"] == 0
                and rows[0]["state"] == UnitState.WAITING.value and begun is None)

    def frame_units(self, job_id: int, frame: int, kind: str) -> tuple[list[Finished], list[Running]]:
        """The frame's finished and leased units of `kind` (those cut from its remainder: one frame each),
        as the cost model reads them."""
        finished, running = [], []
        for row in self._db.execute(
                "SELECT node, row_start, row_end, state, seconds, progress FROM units WHERE job=? AND frame=?"
                " AND frame_last=? AND kind=? AND state IN (?, ?)",
                (job_id, frame, frame, kind, UnitState.DONE.value, UnitState.LEASED.value)):
            if row["state"] == UnitState.DONE.value:
                finished.append(Finished(row["node"] or "", row["row_start"], row["row_end"], row["seconds"] or 0.0))
            else:
                running.append(Running(row["node"] or "", row["row_end"] - row["row_start"], row["progress"] or 0.0))
        return finished, running

    def any_failures(self) -> bool:
        return self._db.execute("SELECT 1 FROM failures LIMIT 1").fetchone() is not None

    def failures(self, job_id: int) -> Failures:
        strikes = {row["node_name"]: row["n"] for row in self._db.execute(
            "SELECT node_name, COUNT(*) AS n FROM failures WHERE job=? GROUP BY node_name", (job_id,))}
        failed_on: dict[int, set[str]] = {}
        for row in self._db.execute("SELECT unit, node_name FROM failures WHERE job=?", (job_id,)):
            failed_on.setdefault(row["unit"], set()).add(row["node_name"])
        return Failures(strikes, {unit: frozenset(names) for unit, names in failed_on.items()})

    def live_node_names(self) -> frozenset[str]:
        return frozenset(row["name"] for row in self._db.execute(
            "SELECT DISTINCT name FROM nodes WHERE state IN (?, ?)", (NodeState.IDLE.value, NodeState.BUSY.value)))
