"""The controller's durable state: bundles, jobs, frames, units and nodes in one SQLite file.

Persistence only: every method is one transaction, durable before it returns
(`farm.store.db`), takes and returns records (`farm.records`), and decides nothing
beyond what the state machine (`farm.states`) allows. A unit's pixel rows are
stored in the same transaction that marks it done: it is either stored and
done, or neither.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from farm.store.db import Database
from farm.store import schema
from farm.store.census import CensusRecords
from farm.store.history import HistoryRecords
from farm.store.jobs import JobRecords
from farm.store.logs import LogRecords
from farm.store.nodes import NodeRecords
from farm.store.units import PLAIN, Completion, Keeping, UnitRecords, Worth

__all__ = ["Store", "BundleInfo", "Completion", "Keeping", "Worth", "PLAIN"]


@dataclass(frozen=True)
class BundleInfo:
    digest: str
    size: int
    members: tuple[str, ...] | None      # None: recorded before members were kept
    mentions_radiosity: bool | None


class BundleRecords:
    def __init__(self, db: Database):
        self._db = db

    def add(self, info: BundleInfo, now: float) -> None:
        with self._db.write() as db:
            db.execute("INSERT OR REPLACE INTO bundles VALUES (?, ?, ?, ?, ?)",
                       (info.digest, info.size, now, json.dumps(list(info.members or ())),
                        int(bool(info.mentions_radiosity))))

    def get(self, digest: str) -> BundleInfo | None:
        with self._db.read() as db:
            row = db.execute("SELECT * FROM bundles WHERE digest=?", (digest,)).fetchone()
        if row is None:
            return None
        return BundleInfo(row["digest"], row["size"],
                          tuple(json.loads(row["members"])) if row["members"] else None,
                          None if row["radiosity"] is None else bool(row["radiosity"]))

    def has(self, digest: str) -> bool:
        with self._db.read() as db:
            return db.execute("SELECT 1 FROM bundles WHERE digest=?", (digest,)).fetchone() is not None


class Store:
    """Every table, grouped by what it records. Safe to share between threads."""

    def __init__(self, path: Path):
        self.path = path
        self.db = Database(path, schema.prepare)
        self.bundles = BundleRecords(self.db)
        self.jobs = JobRecords(self.db)
        self.units = UnitRecords(self.db)
        self.nodes = NodeRecords(self.db)
        self.census = CensusRecords(self.db)
        self.history = HistoryRecords(self.db)
        self.logs = LogRecords(self.db)

    def close(self) -> None:
        self.db.close()
