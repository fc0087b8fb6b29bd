"""The controller's rules, between the API (which speaks XML-RPC) and the store (which speaks SQL).

`Services` builds the pieces and holds what they share: the config, the clock,
the store, and the change counters long polls wait on. Its `tick` is the
maintenance step (expired leases, silent nodes, retry pauses that ended, frames
to write); a test steps it with a fake clock instead of sleeping.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

from farm import dependencies, jobkinds
from farm.config import Config
from farm.dependencies import Verdict
from farm.meter import Meter
from farm.service.changes import Changes
from farm.service.dispatch import Dispatcher
from farm.service.feed import FeedLog, Streams
from farm.service.files import Files
from farm.service.history import History
from farm.service.live import LiveBlocks
from farm.service.logs import Logs
from farm.service.stitcher import Stitcher
from farm.service.submission import Bundles, Submissions
from farm.service.views import Views
from farm.service.watchers import Watchers
from farm.service.written import WrittenFiles
from farm.hostos import HOST
from farm.store import Store

log = logging.getLogger(__name__)


class Services:
    def __init__(self, config: Config, store: Store, clock: Callable[[], float] = time.time):
        self.config, self.store, self.clock = config, store, clock
        jobkinds.load_modules(config.kind_modules)   # their kinds, before anything asks for one
        self.files = Files(config.data_dir)
        self.changes = Changes()   # per job and farm-wide: viewers and jobs.wait
        self.work = Changes()      # farm-wide only: nodes waiting for queued units
        self.stitcher = Stitcher(store, self.files, self.changes, clock)
        self.bundles = Bundles(config, store, self.files, clock)
        machine = config.machine or HOST.machine()    # the box the controller runs on
        self.submissions = Submissions(store, self.bundles, self.changes, self.work, self.live_slots, clock,
                                       config.pretrace_bands, machine)
        self.watchers = Watchers(clock)
        self.meter = Meter()       # what only this process counts (farm.meter): units stored, failures, requests
        self.logs = Logs(config, store)                # POV-Ray's logs of the units' runs
        self.dispatcher = Dispatcher(config, store, clock, self.changes, self.work, self.stitcher, self.watched,
                                     self.meter, self.logs.keep, machine)
        self.views = Views(store, self.changes, clock, grace=config.lease_timeout)
        self.live = LiveBlocks(config.lease_timeout)   # blocks of units in flight, for viewers only
        self.history = History(store, self.files, config.data_dir, config.purge_after, clock, self.views.forget)
        self.written = WrittenFiles(self.files)   # the files scenes write (#fopen), per job
        self.streams = Streams(store, self.changes, FeedLog(store, self.views, self.changes), live=self.live)
        self._last_tick = clock()
        self._waiting: dict[int, tuple[int, ...]] = {}   # job -> the jobs it runs after that are not done

    def watched(self, job_id: int) -> bool:
        """Whether a viewer watches the job now (by its id, or following the newest job)."""
        return self.watchers.watched(job_id, self.store.jobs.newest_id)

    def live_slots(self) -> int:
        """How many POV-Ray processes the live nodes run at once, all told."""
        return sum(node.slots for node in self.store.nodes.live())

    # -- job control -----------------------------------------------------------------------

    def cancel(self, job_id: int, reason: str = "") -> None:
        self.store.jobs.cancel(job_id, self.clock(), reason)
        self.changes.bump(job_id)
        log.info("job %s canceled%s", job_id, f": {reason}" if reason else "")

    def pause(self, job_id: int) -> None:
        self.store.jobs.pause(job_id)
        self.changes.bump(job_id)
        log.info("job %s paused", job_id)

    def resume(self, job_id: int) -> None:
        self.store.jobs.resume(job_id)
        self.changes.bump(job_id)
        self.work.bump()
        log.info("job %s resumed", job_id)

    def set_priority(self, job_id: int, priority: int) -> None:
        self.store.jobs.set_priority(job_id, priority)
        self.changes.bump(job_id)
        self.work.bump()
        log.info("job %s priority %s", job_id, priority)

    def set_node_tags(self, name: str, tags: tuple[str, ...] | None) -> tuple[str, ...]:
        """The controller's tags for the nodes called `name` (None: clear them, each has its own again)."""
        now_tags = self.store.nodes.set_tags(name, tags)
        self.work.bump()     # a waiting node may now take a job, or another may no longer
        log.info("node %s tags %s", name, ",".join(now_tags) if tags is not None else "cleared: its own again")
        return now_tags

    # -- maintenance -----------------------------------------------------------------------

    def tick(self) -> None:
        """Requeue expired leases, mark silent nodes offline, wake nodes for retries now due, and write
        frames whose units are all in."""
        now = self.clock()
        for unit in self.store.units.expire(now):
            log.warning("lease %s on unit %s of job %s expired (node %s)", unit.lease, unit.index, unit.job,
                        unit.node)
            self.changes.bump(unit.job)
            self.work.bump()
        gone, jobs = self.store.nodes.expire_silent(now, self.config.lease_timeout)
        for node_id in gone:
            log.warning("node %s went silent; marking it offline", node_id)
        for job_id in set(jobs):
            self.changes.bump(job_id)
        if gone or self.store.units.retry_due(self._last_tick, now):
            self.changes.bump()
            self.work.bump()
        self._last_tick = now
        self._settle_dependencies()
        self.stitcher.drain()
        self.history.tick()

    def _settle_dependencies(self) -> None:
        """Jobs that run after others: those whose jobs are all done now may go (nodes waiting are woken);
        those one of whose jobs failed or was canceled end the same way (farm.dependencies). A job whose
        list of jobs it waits for changed is bumped, so listings show it."""
        waiting: dict[int, tuple[int, ...]] = {}
        for job_id, after in self.store.jobs.waiting_on_others().items():
            verdict, reason = dependencies.verdict(after)
            if verdict is Verdict.FAIL:
                self.store.jobs.fail(job_id, reason, self.clock())
                self.changes.bump(job_id)
                log.warning("job %s failed: %s", job_id, reason)
            elif verdict is Verdict.CANCEL:
                self.cancel(job_id, reason)
            else:
                waiting[job_id] = tuple(dependencies.waiting_for(after))
        changed = [job_id for job_id, left in waiting.items() if self._waiting.get(job_id) != left]
        for job_id in changed:
            self.changes.bump(job_id)
        if any(not waiting[job_id] for job_id in changed):
            self.work.bump()
        self._waiting = waiting

    def recover(self) -> None:
        """After a restart: leases in flight get a grace period so their nodes can still deliver."""
        self.store.units.extend_leases(self.clock() + self.config.lease_timeout)
        self.tick()
