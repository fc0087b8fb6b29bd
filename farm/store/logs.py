"""POV-Ray's logs of a job's runs: one row per run that reached the controller, its text compressed, and
each job's total bytes of text (so the job's bound is checked without adding up its rows)."""

from __future__ import annotations

import json
import sqlite3
import zlib
from typing import Callable

from farm.records import Unit
from farm.store.db import Database
from farm.unitlog import KeptLog, UnitLog

_COLUMNS = ("id, job, idx, frame, frame_last, kind, attempt, node_name, outcome, command, started, seconds,"
            " exit_code, signal, timed_out, cut")

# (the log, the bytes the job's logs hold so far) -> (the text to keep, the scene's messages per frame, what
# was cut and why): the service's rule, run inside the write so two deliveries cannot both pass the bound.
Keeper = Callable[[UnitLog, int], "tuple[str, list[str], str]"]


class LogRecords:
    def __init__(self, db: Database):
        self._db = db

    def add(self, unit: Unit, node_id: str, outcome: str, run: UnitLog, keep: Keeper) -> None:
        with self._db.write() as db:
            row = db.execute("SELECT size FROM log_sizes WHERE job=?", (unit.job,)).fetchone()
            text, messages, cut = keep(run, row["size"] if row is not None else 0)
            data = text.encode("utf-8", "replace")
            name = db.execute("SELECT name FROM nodes WHERE id=?", (node_id,)).fetchone()
            db.execute(f"INSERT INTO unit_logs ({_COLUMNS.removeprefix('id, ')}, unit, text, size, messages)"
                       " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (unit.job, unit.index, unit.frame, unit.frame_last, unit.kind, unit.attempt,
                        name["name"] if name is not None else node_id, outcome, json.dumps(list(run.command)),
                        run.started, run.seconds, run.exit_code, run.signal, int(run.timed_out), cut, unit.id,
                        zlib.compress(data, 6), len(data), json.dumps(messages)))
            db.execute("INSERT INTO log_sizes VALUES (?, ?) ON CONFLICT (job) DO UPDATE SET size = size + ?",
                       (unit.job, len(data), len(data)))

    def of_job(self, job_id: int, after: int = 0, index: int | None = None, frame: int | None = None,
               limit: int = 100) -> list[tuple[KeptLog, str]]:
        """A job's logs kept after the cursor `after`, in the order they came, each with its text; of one
        unit (by index) or of the units covering one frame when asked."""
        query, values = f"SELECT {_COLUMNS}, text FROM unit_logs WHERE job=? AND id > ?", [job_id, after]
        if index is not None:
            query, values = query + " AND idx=?", [*values, index]
        if frame is not None:
            query, values = query + " AND frame <= ? AND frame_last >= ?", [*values, frame, frame]
        with self._db.read() as db:
            rows = db.execute(query + " ORDER BY id LIMIT ?", (*values, limit)).fetchall()
        return [(_kept(row), zlib.decompress(row["text"]).decode("utf-8", "replace")) for row in rows]

    def messages(self, job_id: int, kind: str, first: int = 0) -> list[tuple[int, int, str, list[str]]]:
        """(frame, frame_last, outcome, the scene's messages per frame) of the job's runs of units of
        `kind` that render frames from `first` on, those of units that were done first, then in the order
        they came."""
        with self._db.read() as db:
            rows = db.execute("SELECT frame, frame_last, outcome, messages FROM unit_logs WHERE job=? AND kind=?"
                              " AND frame_last >= ? ORDER BY outcome != 'done', id", (job_id, kind, first)).fetchall()
        return [(row["frame"], row["frame_last"], row["outcome"], json.loads(row["messages"])) for row in rows]

    def size(self, job_id: int) -> int:
        """Bytes of text the job's logs keep."""
        with self._db.read() as db:
            row = db.execute("SELECT size FROM log_sizes WHERE job=?", (job_id,)).fetchone()
        return row["size"] if row is not None else 0


def delete_logs_of(db: sqlite3.Connection, job_id: int) -> None:
    """Forget a job's logs, inside the write that deletes the job."""
    db.execute("DELETE FROM unit_logs WHERE job=?", (job_id,))
    db.execute("DELETE FROM log_sizes WHERE job=?", (job_id,))


def _kept(row: sqlite3.Row) -> KeptLog:
    run = UnitLog(text="", command=tuple(json.loads(row["command"])), started=row["started"],
                  seconds=row["seconds"], exit_code=row["exit_code"], signal=row["signal"],
                  timed_out=bool(row["timed_out"]))
    return KeptLog(id=row["id"], job=row["job"], index=row["idx"], frame=row["frame"], frame_last=row["frame_last"],
                   kind=row["kind"], attempt=row["attempt"], node=row["node_name"], outcome=row["outcome"],
                   run=run, cut=row["cut"])
