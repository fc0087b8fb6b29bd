"""farm.*: the farm as a whole: what its controller keeps on disk, and purging its history."""

from __future__ import annotations

from farm.api import args, rpc
from farm.auth import READERS, SUBMIT
from farm.durations import age_text


class FarmAPI:
    namespace = "farm"

    def __init__(self, services):
        self._services = services

    @rpc(*READERS)
    def status(self) -> dict:
        """The controller's disk use and its history's settings.

        @return: struct: disk (struct of float bytes: database, images, bundles, uploads (being received),
            total (those four), free and capacity (of the file system holding the data directory)),
            purge_after (str: the age after which ended jobs are purged each hour, "" for never),
            jobs (struct: how many jobs it remembers, by state)
        """
        services = self._services
        after = services.history.purge_after
        return {"disk": {name: float(size) for name, size in services.history.disk().items()},
                "purge_after": age_text(after) if after else "", "jobs": services.store.census.count().jobs}

    @rpc(SUBMIT)
    def purge(self, older_than: float) -> dict:
        """Delete the jobs that ended (done, failed or canceled) more than `older_than` seconds ago, with
        their images, units and every row kept for them, and the bundles no remaining job uses that were
        uploaded as long ago. A job still queued, rendering or paused is never deleted, nor a job an
        unfinished job runs after.

        @param older_than: float seconds (0: every ended job)
        @return: struct: jobs ([int]: the ids purged), bundles (int: bundles deleted)
        """
        purged = self._services.history.purge(args.seconds("older_than", older_than))
        return {"jobs": list(purged.jobs), "bundles": len(purged.bundles)}
