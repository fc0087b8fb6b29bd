"""The farm's history: purging ended jobs with everything kept for them, and bundles no job uses.

A purge deletes, in one transaction, the jobs that ended before a time with their rows in every per-job
table (`PER_JOB_TABLES`: the one place that lists them), never a job that has not ended, nor one an
unfinished job runs after. Bundles go when no job left uses them and they were uploaded before that time
too (one uploaded since may be about to be submitted). The files (images, bundles) are the caller's to
delete, after the commit.
"""

from __future__ import annotations

import dataclasses

from farm.store.db import Database
from farm.states import ENDED

# Every table holding rows of a job, by its `job` column. A table not made yet (an older database, or a
# feature this build lacks) is skipped.
PER_JOB_TABLES = ("frames", "units", "failures", "unit_logs", "log_sizes")
PURGE_BATCH = 100     # jobs deleted per transaction
_ENDED = ", ".join(f"'{state.value}'" for state in ENDED)
_OPEN = f"state NOT IN ({_ENDED})"


@dataclasses.dataclass(frozen=True)
class Purged:
    jobs: tuple[int, ...]
    bundles: tuple[str, ...]


class HistoryRecords:
    def __init__(self, db: Database):
        self._db = db

    def purge(self, before: float, limit: int = PURGE_BATCH) -> Purged:
        """Delete the oldest `limit` jobs that ended before `before`, and when fewer were left, the bundles
        no job uses that were uploaded before it. A caller purging everything calls again until fewer than
        `limit` jobs went: each call is one transaction, short enough not to hold nodes up for long."""
        with self._db.write() as db:
            jobs = tuple(row[0] for row in db.execute(
                f"SELECT id FROM jobs WHERE state IN ({_ENDED}) AND COALESCE(finished, submitted) < ?"
                f" AND id NOT IN (SELECT d.value FROM jobs o, json_each(o.run_after) d WHERE o.{_OPEN})"
                " ORDER BY id LIMIT ?", (before, limit)).fetchall())
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            marks = ", ".join("?" * len(jobs))
            for table in (name for name in PER_JOB_TABLES if name in tables):
                db.execute(f"DELETE FROM {table} WHERE job IN ({marks})", jobs)
            db.execute(f"DELETE FROM jobs WHERE id IN ({marks})", jobs)
            if len(jobs) == limit:
                return Purged(jobs, ())
            bundles = tuple(row[0] for row in db.execute(
                "SELECT digest FROM bundles WHERE created < ? AND digest NOT IN (SELECT bundle FROM jobs)",
                (before,)).fetchall())
            db.executemany("DELETE FROM bundles WHERE digest=?", [(digest,) for digest in bundles])
        return Purged(jobs, bundles)
