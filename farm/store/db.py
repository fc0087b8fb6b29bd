"""SQLite with grouped commits: many writers, one fsync per batch, nobody told "done" too early.

A `Database` holds two connections to one WAL-mode file:
- the writing connection runs every `write()` block as a SAVEPOINT inside a shared
  transaction; the first caller that waits for durability commits for everyone who
  wrote meanwhile, so a busy farm pays one fsync per batch instead of one per call,
  and no caller returns before the commit that holds its changes;
- the reading connection sees committed data only, so a reader never waits behind
  a batch's fsync and is never shown a state that a crash could take back.

Storage errors (disk full, I/O) become a STORAGE `FarmError` and undo only the
failing block's changes; the database stays intact.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
from pathlib import Path
from typing import Callable, Iterator

from farm.faults import Code, FarmError

log = logging.getLogger(__name__)

FAILED_BATCHES_KEPT = 1000


class Database:
    """One SQLite file, safe to share between threads."""

    def __init__(self, path: Path, prepare: Callable[[sqlite3.Connection], None]):
        """Open (creating if need be) and let `prepare` create or migrate the schema."""
        self.path = path
        self._lock = threading.RLock()              # the writing connection: one block at a time
        self._read_lock = threading.Lock()          # the reading connection
        self._durable = threading.Condition()       # group-commit bookkeeping below
        self._batch = 1              # the batch that writes go into now
        self._committed = 0          # every batch up to this one is on disk
        self._failed: dict[int, str] = {}   # batches whose commit failed -> why
        self._committing = False
        self._dirty = False          # the shared transaction holds changes not committed yet
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = self._connect(path)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            prepare(self._db)
            self._reader = self._connect(path)
        except (OSError, sqlite3.Error) as err:
            raise FarmError(Code.STORAGE, f"cannot open the database: {err}") from None

    @staticmethod
    def _connect(path: Path) -> sqlite3.Connection:
        connection = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        connection.row_factory = sqlite3.Row
        connection.execute("PRAGMA busy_timeout=5000")
        return connection

    def close(self) -> None:
        with self._read_lock:
            self._reader.close()
        with self._lock:
            if self._db.in_transaction:
                self._db.execute("COMMIT")
            self._db.close()

    @contextlib.contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """The reading connection: committed data only."""
        with self._read_lock:
            try:
                yield self._reader
            except sqlite3.Error as err:
                raise FarmError(Code.STORAGE, f"database error: {err}") from None

    @contextlib.contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One write block, durable when the block ends."""
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
        """Roll back this block's savepoint, or the whole batch when SQLite already ended it (disk full):
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

    def _wait_durable(self, batch: int) -> None:
        """Return once `batch` is committed (0: nothing to wait for). The first waiter commits for all."""
        if not batch:
            return
        with self._durable:
            while self._committed < batch and self._committing:
                self._durable.wait()
            leader = self._committed < batch
            if leader:
                self._committing = True
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
                for old in [b for b in self._failed if b < self._batch - FAILED_BATCHES_KEPT]:
                    del self._failed[old]
            self._committed = self._batch
            self._batch += 1
            self._committing = False
            self._dirty = False
            self._durable.notify_all()
