"""How many of everything the controller remembers, for the metrics: one read, a few indexed counts.

Units are counted by state only for unfinished jobs (`schema.OPEN_JOBS`): their units are few however
long the farm's history. Units done and failed are the nodes' own counts, summed: they survive restarts
and purges, as a counter must.
"""

from __future__ import annotations

import dataclasses

from farm.store import schema
from farm.store.db import Database
from farm.states import JobState, UnitState


@dataclasses.dataclass(frozen=True)
class Census:
    jobs: dict[str, int]          # state -> jobs
    units: dict[str, int]         # state -> units of unfinished jobs (waiting, queued, leased)
    nodes: dict[str, int]         # state -> nodes
    units_done: int               # ever, by every node
    units_failed: int
    oldest_in_line: float | None  # when the oldest job with units in line was submitted (None: none is)


class CensusRecords:
    def __init__(self, db: Database):
        self._db = db

    def count(self) -> Census:
        with self._db.read() as db:
            jobs = dict(db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall())
            units = dict(db.execute(f"SELECT state, COUNT(*) FROM units WHERE {schema.OPEN_JOBS}"
                                    " GROUP BY state").fetchall())
            nodes = dict(db.execute("SELECT state, COUNT(*) FROM nodes GROUP BY state").fetchall())
            done, failed = db.execute("SELECT COALESCE(SUM(units_done), 0), COALESCE(SUM(units_failed), 0)"
                                      " FROM nodes").fetchone()
            oldest = db.execute(
                f"SELECT MIN(submitted) FROM jobs WHERE state IN (?, ?) AND id IN"
                f" (SELECT job FROM units WHERE {schema.OPEN_JOBS} AND state=?)",
                (JobState.QUEUED.value, JobState.RENDERING.value, UnitState.QUEUED.value)).fetchone()[0]
        return Census(jobs, units, nodes, done, failed, oldest)
