"""GET /metrics: the farm for a Prometheus server, in its text format (farm.meter).

What the store knows is counted at each scrape (jobs, units in line, nodes, the queue's age, disk use);
what only the running controller knows comes from its `Meter` (units stored, bytes, failures by kind,
requests' latency). Every role's token may read it, and so may a `metrics` token, which may read nothing
else.
"""

from __future__ import annotations

from typing import Callable

from farm.auth import METRICS_READERS
from farm.meter import CONTENT_TYPE, Family, exposition
from farm.states import JobState, NodeState, UnitState

PATH = "/metrics"
_IN_LINE = (UnitState.WAITING, UnitState.QUEUED, UnitState.LEASED)


class MetricsPage:
    path, roles, content_type = PATH, METRICS_READERS, CONTENT_TYPE

    def __init__(self, services, connections: Callable[[], dict[str, int]]):
        self._services = services
        self._connections = connections

    def __call__(self) -> bytes:
        return exposition(self.families())

    def families(self) -> list[Family]:
        services = self._services
        census = services.store.census.count()
        now = services.clock()
        age = max(0.0, now - census.oldest_in_line) if census.oldest_in_line is not None else 0.0
        return [
            _by_state("jobs", "Jobs by state.", census.jobs, JobState),
            _by_state("units", "Units of unfinished jobs by state: waiting (for a radiosity pre-pass), "
                               "queued, leased.", census.units, _IN_LINE),
            Family("units_done_total", "counter", "Units rendered and stored, by every node ever.",
                   {(): census.units_done}),
            Family("units_failed_total", "counter", "Units that failed, on every node ever.",
                   {(): census.units_failed}),
            _by_state("nodes", "Nodes by state.", census.nodes, NodeState),
            Family("queue_age_seconds", "gauge", "Seconds since the oldest job with units in line was "
                                                 "submitted (0: nothing is in line).", {(): age}),
            Family("connections", "gauge", "Connections now: pending (no valid token yet), seated by role, "
                                           "and feed streams.",
                   {(("state", name),): count for name, count in self._connections().items()}),
            Family("disk_bytes", "gauge", "Bytes the controller keeps, by what (total: the four together), and "
                                          "the free and whole capacity of their file system.",
                   {(("what", name),): size for name, size in services.history.disk().items()}),
            *services.meter.families(),
        ]


def _by_state(name: str, help: str, counts: dict[str, int], states) -> Family:
    """A gauge by state, every state shown (at zero too), so a series never vanishes."""
    return Family(name, "gauge", help, {(("state", state.value),): counts.get(state.value, 0)
                                        for state in states})
