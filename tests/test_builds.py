"""One POV-Ray per frame (farm.builds, farm.policy): the pure rules property-tested against a model of the
store, a job pinned to a version, the controller's stepped rules, and a real farm of two nodes whose
POV-Ray reports different versions (a wrapper script) rendering split frames, each on one version."""

from __future__ import annotations

import dataclasses
import stat
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from farm import builds, policy
from farm.policy import JobInLine
from farm.records import Unit
from farm.service import kindparts
from farm.states import UnitState
from harness import (SCENES, assert_same_pixels, native_render, needs_povray, register_node, rows_for, run_cli,
                     submit, wait_ended, wait_until, write_scene)

BUILDS = ["3.7.0.10 (console)", "3.7.0 (pvengine)", "3.8.0 (console)"]


def test_a_nodes_build_and_a_pin():
    assert builds.build_of({"povray": "3.7.0.10"}) == "3.7.0.10 (console)"
    assert builds.build_of({"povray": "3.7.0", "povray_flavour": "pvengine"}) == "3.7.0 (pvengine)"
    assert builds.build_of({}) == ""
    assert builds.version_of("3.7.0 (pvengine)") == "3.7.0"
    assert builds.check_pin("3.7.0.10") == "3.7.0.10" and builds.check_pin("") == ""
    for bad in ("latest", "3.7 beta", 37, "3" * 80):
        with pytest.raises(ValueError, match="povray_version must be a POV-Ray version"):
            builds.check_pin(bad)
    pinned = JobInLine(1, 0, povray="3.7.0.10")
    assert policy.takes_build(pinned, "3.7.0.10 (console)") and not policy.takes_build(pinned, "3.8.0 (console)")
    assert policy.takes_build(pinned, "3.7.0.10.unofficial (console)")       # Debian's
    assert not policy.takes_build(pinned, "3.7.0.100 (console)")
    assert policy.takes_build(JobInLine(1, 0), "3.8.0 (console)")


def make_unit(unit_id: int, job: int, frame: int, frame_last: int, kind: str = "rows") -> Unit:
    return Unit(id=unit_id, job=job, frame=frame, frame_last=frame_last, index=unit_id, row_start=0, row_end=32,
                state=UnitState.QUEUED, kind=kind, attempt=0, failures=0, lease="", node="", lease_expires=0.0,
                retry_at=0.0, progress=0.0, error="", seconds=0.0, done_seq=0)


@dataclass
class Farm:
    """The store as the rules see it: units with their states and builds, frames with theirs."""
    jobs: list[JobInLine]
    units: list[Unit]
    built: dict[int, str] = field(default_factory=dict)     # unit id -> the build it was leased on
    frames: dict[tuple[int, int], str] = field(default_factory=dict)   # (job, frame) -> its build

    def jobs_with_queued_units(self):
        return [job for job in self.jobs if any(u.job == job.id and u.state is UnitState.QUEUED for u in self.units)]

    def queued_units(self, job_id, limit):
        return [u for u in self.units if u.job == job_id and u.state is UnitState.QUEUED][:limit]

    def any_failures(self):
        return False

    def live_nodes(self):
        return []

    def frames_of_other_builds(self, job_id, build):
        return frozenset(number for (job, number), bound in self.frames.items()
                         if job == job_id and bound != build and any(
                             u.job == job and u.frame <= number <= u.frame_last and u.kind != "preview"
                             and u.state in (UnitState.DONE, UnitState.LEASED) for u in self.units))

    def set(self, unit: Unit, state: UnitState) -> None:
        self.units[self.units.index(unit)] = dataclasses.replace(unit, state=state)

    def lease(self, unit: Unit, build: str) -> None:
        """As the store's _lease: the unit leased, its frames bound to the build (a preview binds none)."""
        self.set(unit, UnitState.LEASED)
        self.built[unit.id] = build
        if unit.kind != "preview":
            for number in unit.frames:
                self.frames[unit.job, number] = build


@st.composite
def farms(draw):
    jobs = [JobInLine(job_id, 0, povray=draw(st.sampled_from(["", "3.7.0.10", "3.8.0"])))
            for job_id in (1, 2)]
    units = []
    for job in jobs:
        for frame in range(1, draw(st.integers(1, 3)) + 1):
            if draw(st.booleans()):
                units.append(make_unit(len(units) + 1, job.id, frame, frame, "preview"))
            for _ in range(draw(st.integers(1, 4))):
                units.append(make_unit(len(units) + 1, job.id, frame, frame))
        if draw(st.booleans()):     # an animation's unit over two frames
            units.append(make_unit(len(units) + 1, job.id, 1, 2))
    return Farm(jobs, units)


@settings(max_examples=300, deadline=None)
@given(farms(), st.lists(st.tuples(st.sampled_from(BUILDS), st.sampled_from(["lease", "done", "back"])),
                         max_size=60), st.randoms())
def test_every_frame_renders_on_one_build(farm, steps, rng):
    for build, action in steps:
        leased = [u for u in farm.units if u.state is UnitState.LEASED]
        if action == "lease":
            unit = policy.choose_unit(farm, "n", 0.0, (), build, kindparts.binds_frames)
            if unit is not None:
                job = next(job for job in farm.jobs if job.id == unit.job)
                assert policy.takes_build(job, build)
                farm.lease(unit, build)
            else:    # nothing for this build: every queued unit is of another build's frame, or pinned away
                for queued in (u for u in farm.units if u.state is UnitState.QUEUED):
                    job = next(job for job in farm.jobs if job.id == queued.job)
                    assert not policy.takes_build(job, build) or not policy.fits_frames(
                        queued, farm.frames_of_other_builds(queued.job, build), kindparts.binds_frames)
        elif leased:    # a lease ends: delivered, or handed back (its node died)
            farm.set(rng.choice(leased), UnitState.DONE if action == "done" else UnitState.QUEUED)
        kept = {}
        for unit in farm.units:
            if unit.kind != "preview" and unit.state in (UnitState.DONE, UnitState.LEASED):
                for number in unit.frames:
                    assert kept.setdefault((unit.job, number), farm.built[unit.id]) == farm.built[unit.id]


def test_a_frame_handed_back_before_anything_was_kept_may_change_build():
    farm = Farm([JobInLine(1, 0)], [make_unit(1, 1, 1, 1), make_unit(2, 1, 1, 1)])
    first = policy.choose_unit(farm, "a", 0.0, (), BUILDS[0])
    farm.lease(first, BUILDS[0])
    assert policy.choose_unit(farm, "b", 0.0, (), BUILDS[2]) is None
    farm.set(farm.units[0], UnitState.QUEUED)           # its node died before delivering
    assert policy.choose_unit(farm, "b", 0.0, (), BUILDS[2]).id == 1


# -- the controller's rules ---------------------------------------------------------------------------

def test_the_store_keeps_a_frame_on_the_build_of_its_first_unit(stepped, tmp_path):
    a = stepped.call("nodes.register", "a", {"povray": "3.7.0.10"})["node_id"]
    b = stepped.call("nodes.register", "b", {"povray": "3.8.0"})["node_id"]
    job = submit(stepped, write_scene(tmp_path / "s"), height=128, strips=4)
    first = stepped.call("nodes.poll", a)
    assert first and stepped.call("nodes.poll", b) == {}          # the frame is a's build's now
    stepped.call("nodes.complete", a, first["lease"], rows_for(first), 0.1)
    while (task := stepped.call("nodes.poll", a)):
        assert stepped.call("nodes.poll", b) == {}
        stepped.call("nodes.complete", a, task["lease"], rows_for(task), 0.1)
    stepped.settle()
    status = stepped.call("jobs.status", job)
    assert status["state"] == "done" and status["frames"][0]["povray"] == "3.7.0.10 (console)"
    pinned = submit(stepped, write_scene(tmp_path / "s"), povray_version="3.8.0")
    assert stepped.call("nodes.poll", a) == {}
    assert stepped.call("jobs.status", pinned)["povray_version"] == "3.8.0"
    task = stepped.call("nodes.poll", b)
    assert task["job"] == pinned


def test_a_job_pinned_to_a_version_no_node_has_says_so(stepped, tmp_path):
    register_node(stepped)      # POV-Ray 3.7
    job = submit(stepped, write_scene(tmp_path / "s"), povray_version="3.8.0")
    assert stepped.call("jobs.status", job)["blocked"] == \
        "no live node has POV-Ray 3.8.0, which the job is pinned to (they have: 3.7 (console))"
    with pytest.raises(Exception, match="povray_version must be"):
        submit(stepped, write_scene(tmp_path / "s"), povray_version="newest")


# -- a real farm ---------------------------------------------------------------------------------------

def povray_reporting(folder, version: str | None) -> str:
    """A povray that says it is `version` (None: as it is) and takes its time: each run lasts at least
    0.3 s, so both nodes ask for work while a frame renders."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "povray"
    banner = (f"povray --version 2>&1 | sed 's/POV-Ray [^ ]*/POV-Ray {version}/'" if version
              else "povray --version")
    path.write_text(f'#!/bin/sh\nif [ "$1" = "--version" ]; then {banner}; exit 0; fi\n'
                    'sleep 0.3\nexec povray "$@"\n')
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


@needs_povray
def test_two_builds_render_split_frames_each_frame_on_one(farm, tmp_path):
    farm.start_controller()
    farm.start_node("old", "--povray", povray_reporting(tmp_path / "old", None))
    farm.start_node("new", "--povray", povray_reporting(tmp_path / "new", "3.7.9"))
    nodes = wait_until(lambda: (lambda n: n if len(n) == 2 and all(x["state"] == "idle" for x in n) else None)(
        farm.client.call("nodes.list")), what="both nodes")
    versions = {node["id"]: node["povray"] for node in nodes}
    assert len(set(versions.values())) == 2 and "3.7.9" in versions.values()
    scene = SCENES / "advanced" / "wineglass.pov"
    still = submit(farm.client, scene, width=96, height=128, strips=4)
    animation = submit(farm.client, write_scene(tmp_path / "anim", "camera { location <0,0,-3> look_at 0 }"
                       " sphere { 0, clock + 0.5 pigment { rgb 1 } } light_source { <2,4,-3>, 1 }\n"),
                       height=128, strips=4, animation={"first": 1, "last": 2, "initial_clock": 0.0,
                                                        "final_clock": 1.0})
    used = set()
    for job in (still, animation):
        status = wait_ended(farm.client, job)
        assert status["state"] == "done", status["error"]
        by_frame: dict[int, set[str]] = {}
        for unit in status["strips"]:
            if unit["kind"] != "preview":
                by_frame.setdefault(unit["frame"], set()).add(versions[unit["node"]])
        assert all(len(each) == 1 for each in by_frame.values()), by_frame
        used |= set.union(*by_frame.values())
        assert {f["number"]: f["povray"].split(" ")[0] for f in status["frames"]} == \
            {frame: next(iter(each)) for frame, each in by_frame.items()}
    assert used == set(versions.values())       # both builds rendered: other frames, other jobs
    shown = run_cli("status", str(still), "--controller", farm.url)
    assert any(f"povray:   {version} (console)" in shown.stdout for version in versions.values()), shown.stdout
    native_render(scene, 96, 128, [], tmp_path / "native.png")
    (tmp_path / "farm.png").write_bytes(farm.client.call("jobs.fetch", still).data)
    assert_same_pixels(tmp_path / "farm.png", tmp_path / "native.png")


def test_an_old_data_dir_gains_the_build_columns_and_keeps_its_jobs(tmp_path):
    from harness import as_before, stepped_farm
    stepped, store = stepped_farm(tmp_path / "data")
    job = submit(stepped, write_scene(tmp_path / "s"))
    store.close()
    as_before(tmp_path / "data", "ALTER TABLE jobs DROP COLUMN povray", "ALTER TABLE frames DROP COLUMN povray")
    stepped, store = stepped_farm(tmp_path / "data")
    try:
        assert store.jobs.get(job).povray == "" and store.jobs.frames(job)[0].povray == ""
        node = register_node(stepped)
        task = stepped.call("nodes.poll", node)
        assert task["job"] == job and store.jobs.frames(job)[0].povray == "3.7 (console)"
    finally:
        store.close()
