"""Node tags (farm.tags): the pure rules, the policy's use of them (property-tested), the controller's
stepped rules, an old data dir's migration, and a real farm of two nodes with different tags."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from farm import policy, tags
from farm.faults import Code, FarmError
from farm.policy import JobInLine
from farm.records import Node
from farm.states import NodeState
from farm.store import Store
from harness import register_node, run_cli, submit, wait_ended, wait_until, write_scene
from test_policy import unit

TAGS = ["linux", "windows", "fast", "gpu"]


def node(name: str, node_tags=(), state=NodeState.IDLE) -> Node:
    return Node(id=f"{name}-1", name=name, state=state, info={}, registered=0.0, last_seen=0.0, units_done=0,
                units_failed=0, error="", current="", tags=tuple(node_tags))


@dataclass
class TaggedQueue:
    jobs: list[JobInLine]
    units: dict[int, list]
    nodes: list[Node] = field(default_factory=list)

    def jobs_with_queued_units(self):
        return [job for job in self.jobs if self.units.get(job.id)]

    def queued_units(self, job_id, limit):
        return self.units.get(job_id, [])[:limit]

    def any_failures(self):
        return False

    def live_nodes(self):
        return self.nodes

    def live_node_names(self):
        return frozenset(n.name for n in self.nodes)


@st.composite
def tagged_queues(draw):
    some_tags = st.lists(st.sampled_from(TAGS), max_size=2, unique=True).map(tuple)
    jobs = [JobInLine(job_id, draw(st.integers(-1, 1)), draw(some_tags), draw(some_tags))
            for job_id in range(1, draw(st.integers(1, 4)) + 1)]
    units = {job.id: [unit(job.id * 10 + i, job.id, i) for i in range(draw(st.integers(0, 2)))] for job in jobs}
    nodes = [node(name, draw(some_tags), draw(st.sampled_from([NodeState.IDLE, NodeState.BUSY])))
             for name in ("a", "b", "c")]
    return TaggedQueue(jobs, units, nodes)


@given(tagged_queues(), st.sampled_from(["a", "b", "c"]))
@settings(max_examples=400, deadline=None)
def test_never_a_unit_to_a_node_missing_a_required_tag(queue, name):
    me = next(n for n in queue.nodes if n.name == name)
    chosen = policy.choose_unit(queue, name, 0.0, me.tags)
    jobs = {job.id: job for job in queue.jobs}
    if chosen is not None:
        assert set(jobs[chosen.job].require) <= set(me.tags)
    else:   # nothing it could take, or every job it could take waits for an idle node it prefers
        for job in queue.jobs_with_queued_units():
            assert not set(job.require) <= set(me.tags) or not set(job.prefer) <= set(me.tags)


@given(tagged_queues())
@settings(max_examples=400, deadline=None)
def test_some_waiting_node_takes_a_job_that_one_of_them_may_render(queue):
    """Preferring never stalls a job: when an idle node could render it, some idle node gets work."""
    idle = [n for n in queue.nodes if n.state is NodeState.IDLE]
    could = any(set(job.require) <= set(n.tags) for job in queue.jobs_with_queued_units() for n in idle)
    chosen = [policy.choose_unit(queue, n.name, 0.0, n.tags) for n in idle]
    assert any(c is not None for c in chosen) == could


def test_a_job_goes_to_the_waiting_node_with_its_preferred_tags():
    queue = TaggedQueue([JobInLine(1, 0, (), ("fast",))], {1: [unit(1, 1, 0)]},
                        [node("slow"), node("quick", ["fast"])])
    assert policy.choose_unit(queue, "slow", 0.0, ()) is None
    assert policy.choose_unit(queue, "quick", 0.0, ("fast",)) is not None
    queue.nodes = [node("slow"), node("quick", ["fast"], NodeState.BUSY)]   # the fast one is busy: no waiting
    assert policy.choose_unit(queue, "slow", 0.0, ()) is not None


def test_tags_are_parsed_as_short_words():
    assert tags.parse("Windows, fast,,windows") == ("fast", "windows")
    assert tags.parse(["a,b", "c"]) == ("a", "b", "c")
    with pytest.raises(FarmError) as caught:
        tags.parse(["no spaces"], "--require")
    assert caught.value.code == Code.BAD_ARGUMENT and "--require: 'no spaces' is not a tag" in str(caught.value)
    assert tags.missing(("gpu", "fast"), ("fast",)) == ("gpu",)


def test_the_controller_leases_by_tags_says_what_is_missing_and_its_override_wins(stepped, scene):
    job = submit(stepped, scene, require=["windows"], prefer=["fast"])
    plain = stepped.call("nodes.register", "n1", {"povray": "3.7", "tags": ["linux"]})["node_id"]
    assert stepped.call("nodes.poll", plain) == {}
    status = stepped.call("jobs.status", job)
    assert status["require"] == ["windows"] and status["prefer"] == ["fast"]
    assert status["blocked"] == "no live node has the tags it requires (windows): n1 lacks windows"
    assert stepped.call("jobs.list")[0]["blocked"] == status["blocked"]

    assert stepped.call("nodes.set_tags", "n1", ["Windows"], False) == ["windows"]
    assert stepped.call("jobs.status", job)["blocked"] == ""
    assert stepped.call("nodes.poll", plain)["job"] == job
    listed = stepped.call("nodes.list")[0]
    assert listed["tags"] == ["windows"] and listed["tags_overridden"] is True

    again = stepped.call("nodes.register", "n1", {"povray": "3.7", "tags": ["linux"]})["node_id"]
    assert [n["tags"] for n in stepped.call("nodes.list") if n["id"] == again] == [["windows"]]   # it survives
    assert stepped.call("nodes.set_tags", "n1", [], True) == ["linux"]                           # cleared
    assert stepped.call("nodes.list")[-1]["tags_overridden"] is False
    with pytest.raises(FarmError) as caught:
        stepped.call("nodes.set_tags", "nobody", ["x"], False)
    assert caught.value.code == Code.UNKNOWN_NODE
    with pytest.raises(FarmError) as caught:
        submit(stepped, scene, require="windows")
    assert caught.value.code == Code.BAD_ARGUMENT


def test_a_job_without_requirements_is_not_blocked_by_tags(stepped, scene):
    job = submit(stepped, scene)
    node_id = register_node(stepped)
    assert stepped.call("jobs.status", job)["blocked"] == ""
    assert stepped.call("nodes.poll", node_id)["job"] == job


def test_an_old_data_dir_gains_the_tag_columns_and_keeps_its_jobs(tmp_path, scene):
    from harness import as_before, stepped_farm
    controller, store = stepped_farm(tmp_path / "data")
    job = submit(controller, scene)
    store.close()
    as_before(tmp_path / "data", *(f"ALTER TABLE {table} DROP COLUMN {column}" for table, column in (
        ("jobs", "prefer"), ("jobs", "require"), ("nodes", "tags_overridden"), ("nodes", "tags"))),
        "DROP TABLE node_tags")
    store = Store(tmp_path / "data" / "db.sqlite3")
    try:
        assert store.jobs.get(job).require == () and store.jobs.get(job).prefer == ()
        node_id, _ = store.nodes.register("n1", {"tags": ["linux"]}, 1.0)
        assert [n.tags for n in store.nodes.all()] == [("linux",)]
    finally:
        store.close()


def test_two_nodes_with_different_tags_render_only_the_jobs_they_may(farm, tmp_path):
    farm.start_controller()
    farm.start_node("lin", "--tags", "linux")
    farm.start_node("win", "--tags", "windows,fast")
    wait_until(lambda: len(farm.client.call("nodes.list")) == 2, what="both nodes")
    scene = write_scene(tmp_path / "scene")
    on_windows = submit(farm.client, scene, require=["windows"], strips=4)
    on_linux = submit(farm.client, scene, require=["linux"], strips=4)
    nowhere = submit(farm.client, scene, require=["gpu", "linux"])
    for job, name in ((on_windows, "win"), (on_linux, "lin")):
        assert wait_ended(farm.client, job)["state"] == "done"
        assert {s["node"].rsplit("-", 1)[0] for s in farm.client.call("jobs.status", job)["strips"]} == {name}
    status = run_cli("status", str(nowhere), "--controller", farm.url)
    assert "blocked:  no live node has the tags it requires (gpu,linux): lin lacks gpu; win lacks gpu,linux" \
        in status.stdout, status.stdout
    jobs = run_cli("jobs", "--controller", farm.url)
    assert f"job {nowhere} is blocked: no live node has the tags" in jobs.stdout, jobs.stdout
    nodes = run_cli("nodes", "--controller", farm.url)
    assert "fast,windows" in nodes.stdout and "linux" in nodes.stdout, nodes.stdout

    changed = run_cli("node-tags", "lin", "linux", "gpu", "--controller", farm.url)    # no restart
    assert changed.returncode == 0 and "tags gpu,linux" in changed.stderr, changed.stderr
    assert wait_ended(farm.client, nowhere)["state"] == "done"
    assert "gpu,linux*" in run_cli("nodes", "--controller", farm.url).stdout


def test_a_waiting_client_is_told_which_tags_no_node_has(tmp_path):
    scene = write_scene(tmp_path / "scene")
    result = run_cli("render", str(scene), "+W32", "+H32", "--require", "gpu", timeout=60)
    assert result.returncode == 1, result.stderr
    assert "is blocked: no live node has the tags it requires (gpu): local-1 lacks gpu; local-2 lacks gpu" \
        in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
