"""The leasing and retry rules (farm.policy): pure functions, checked with properties and a fake clock."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from hypothesis import given, settings
from hypothesis import strategies as st

from farm import policy
from farm.policy import Failures, JobInLine
from farm.records import Unit
from farm.states import UnitState


def unit(unit_id: int, job: int, index: int, retry_at: float = 0.0, failures: int = 0) -> Unit:
    return Unit(id=unit_id, job=job, frame=1, frame_last=1, index=index, row_start=index * 32,
                row_end=index * 32 + 32, state=UnitState.QUEUED, kind="rows", attempt=failures, failures=failures,
                lease="", node="", lease_expires=0.0, retry_at=retry_at, progress=0.0, error="", seconds=0.0,
                done_seq=0)


@dataclass
class FakeQueue:
    """The queue as the store would present it, from plain lists."""
    jobs: list[JobInLine]
    units: dict[int, list[Unit]]
    failed: dict[int, set[str]] = field(default_factory=dict)    # unit id -> node names
    live: frozenset[str] = frozenset()

    def jobs_with_queued_units(self):
        return [job for job in self.jobs if self.units.get(job.id)]

    def queued_units(self, job_id, limit):
        return self.units.get(job_id, [])[:limit]

    def any_failures(self):
        return any(self.failed.values())

    def failures(self, job_id):
        ids = {u.id for u in self.units.get(job_id, [])}
        if job_id == 1:   # failures of units no longer queued (done, or failed for good) count for job 1
            ids |= set(self.failed) - {u.id for us in self.units.values() for u in us}
        strikes: dict[str, int] = {}
        for unit_id, names in self.failed.items():
            if unit_id in ids:
                for name in names:
                    strikes[name] = strikes.get(name, 0) + 1
        return Failures(strikes, {u: frozenset(n) for u, n in self.failed.items() if u in ids})

    def live_node_names(self):
        return self.live


@st.composite
def queues(draw):
    job_count = draw(st.integers(1, 5))
    jobs = [JobInLine(job_id, draw(st.integers(-2, 2))) for job_id in range(1, job_count + 1)]
    units, next_id = {}, 1
    for job in jobs:
        count = draw(st.integers(0, 4))
        units[job.id] = [unit(next_id + i, job.id, i, retry_at=draw(st.sampled_from([0.0, 5.0, 50.0])))
                         for i in range(count)]
        next_id += count
    names = ["a", "b", "c"]
    failed = {u.id: set(draw(st.sets(st.sampled_from(names), max_size=3)))
              for us in units.values() for u in us}
    live = frozenset(draw(st.sets(st.sampled_from(names), min_size=1)))
    return FakeQueue(jobs, units, failed, live)


@given(queues(), st.sampled_from(["a", "b", "c"]), st.sampled_from([0.0, 10.0, 100.0]))
@settings(max_examples=300, deadline=None)
def test_the_chosen_unit_is_allowed_and_from_the_first_job_in_line_that_has_one(queue, node, now):
    chosen = policy.choose_unit(queue, node, now)
    live = queue.live | {node}
    allowed = [(job, u) for job in policy.in_line(queue.jobs_with_queued_units())
               for u in queue.units[job.id] if policy.may_render(u, node, live, queue.failures(job.id), now)]
    if not allowed:
        assert chosen is None
    else:
        assert chosen == allowed[0][1]


@given(queues(), st.sampled_from(["a", "b", "c"]))
@settings(max_examples=300, deadline=None)
def test_nothing_starves_once_retry_pauses_are_over(queue, node):
    """Whatever failed where, a node alone on the farm gets work as long as any is queued."""
    queue.live = frozenset({node})
    if any(queue.units.values()):
        assert policy.choose_unit(queue, node, now=1000.0) is not None


def test_without_failures_jobs_go_by_priority_then_age_and_units_in_plan_order():
    queue = FakeQueue([JobInLine(1, 0), JobInLine(2, 5), JobInLine(3, 5)],
                      {1: [unit(1, 1, 0)], 2: [unit(2, 2, 0), unit(3, 2, 1)], 3: [unit(4, 3, 0)]})
    assert policy.choose_unit(queue, "a", 0.0).id == 2
    queue.units[2] = []
    assert policy.choose_unit(queue, "a", 0.0).id == 4


def test_a_failed_unit_goes_to_another_node_and_comes_back_to_its_node_only_after_a_pause():
    queue = FakeQueue([JobInLine(1, 0)], {1: [unit(1, 1, 0, retry_at=10.0, failures=1)]}, {1: {"a"}},
                      live=frozenset({"a", "b"}))
    assert policy.choose_unit(queue, "b", 0.0).id == 1          # another node: at once
    assert policy.choose_unit(queue, "a", 0.0) is None          # the node that failed it: held back...
    assert policy.choose_unit(queue, "a", 11.0) is None         # ...and kept off while b may take it
    queue.live = frozenset({"a"})
    assert policy.choose_unit(queue, "a", 5.0) is None          # alone: still the pause
    assert policy.choose_unit(queue, "a", 11.0).id == 1         # alone, pause over: try again


def test_a_node_struck_out_of_a_job_is_kept_off_it_while_others_may_render():
    units = [unit(i, 1, i - 1) for i in range(1, 5)]
    queue = FakeQueue([JobInLine(1, 0)], {1: units[3:]}, {1: {"a"}, 2: {"a"}, 3: {"a"}}, live=frozenset({"a", "b"}))
    assert policy.choose_unit(queue, "a", 100.0) is None
    assert policy.choose_unit(queue, "b", 100.0).id == 4


@given(st.integers(0, 20), st.integers(1, 5), st.sets(st.sampled_from("abc"), min_size=1),
       st.sets(st.sampled_from("abc"), min_size=1), st.booleans())
def test_failure_verdicts(failures, max_attempts, failed_on, live, scene_error):
    failed_on, live = frozenset(failed_on), frozenset(live)
    verdict = policy.after_failure(unit(1, 1, 0, failures=failures), "boom", scene_error, max_attempts, failed_on,
                                   live, now=100.0)
    total = failures + 1
    if scene_error:
        assert verdict.fail_job and verdict.job_error == "boom"
    elif total >= max_attempts * policy.HARD_LIMIT_FACTOR:
        assert verdict.fail_job
    elif total < max_attempts or not live <= failed_on:
        assert not verdict.fail_job and verdict.retry_at >= 100.0 + policy.RETRY_PAUSE
    else:
        assert verdict.fail_job and f"failed {total} times" in verdict.job_error and "boom" in verdict.job_error


def test_retry_pauses_grow_and_are_capped():
    pauses = [policy.retry_pause(n) for n in range(1, 12)]
    assert pauses == sorted(pauses) and pauses[0] == policy.RETRY_PAUSE and pauses[-1] == policy.MAX_RETRY_PAUSE


def test_a_lone_broken_node_does_not_fail_a_job_before_a_healthy_node_can_join():
    """Step a farm of one failing node with a fake clock: the attempts are spread over the retry pauses,
    and a node that joins in the meantime gets the unit."""
    now, current = 0.0, unit(1, 1, 0)
    queue = FakeQueue([JobInLine(1, 0)], {1: [current]}, {}, live=frozenset({"broken"}))
    while True:
        chosen = policy.choose_unit(queue, "broken", now)
        if chosen is None:
            now += 0.1
            continue
        queue.failed.setdefault(1, set()).add("broken")
        verdict = policy.after_failure(chosen, "crash", False, 3, frozenset(queue.failed[1]), queue.live, now)
        if verdict.fail_job:
            break
        current = replace(chosen, failures=chosen.failures + 1, retry_at=verdict.retry_at)
        queue.units[1] = [current]
    assert now >= policy.retry_pause(1) + policy.retry_pause(2)     # not within a second
    # The same farm, where a healthy node registers during the first pause: it gets the unit.
    queue = FakeQueue([JobInLine(1, 0)], {1: [unit(1, 1, 0, retry_at=policy.retry_pause(1), failures=1)]},
                      {1: {"broken"}}, live=frozenset({"broken", "healthy"}))
    assert policy.choose_unit(queue, "broken", 0.5) is None
    assert policy.choose_unit(queue, "healthy", 0.5).id == 1
