"""Kinds of job through their registry (farm.jobkinds, docs/kinds.md). docs/kinds.md's worked example is
`test_a_kind_from_kind_modules_runs_on_a_real_controller_and_node`: a kind from a module the setting
kind_modules names (farm.extras.checksums), none of the store, the scheduler's core or the transport told
of it. Then: jobs.kind and its checks, kinds matched at lease time (a node leaving POV-Ray out), and a
video unit's progress and failures."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys

import pytest

from farm import jobkinds
from farm.config import Config
from farm.faults import Code, FarmError
from farm.meter import Meter
from farm.video import PROGRESS_NAME, encoded_fraction
from farm.wire import Binary
from harness import (needs_povray, register_node, rows_for, run_cli, stepped_farm, submit, wait_ended, wait_until,
                     write_scene)

CHECKSUMS_MODULE = "farm.extras.checksums"
needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None and os.environ.get("CI") != "true",
                                  reason="needs ffmpeg (apt-get install ffmpeg)")


@pytest.fixture
def registry():
    """The registry as it was, after a test that loads kind modules into this process."""
    kinds, units = dict(jobkinds.KINDS), dict(jobkinds._UNITS)
    yield
    jobkinds.KINDS.clear()
    jobkinds.KINDS.update(kinds)
    jobkinds._UNITS.clear()
    jobkinds._UNITS.update(units)
    for name in (CHECKSUMS_MODULE, CHECKSUMS_MODULE + "_controller"):
        sys.modules.pop(name, None)


@pytest.fixture
def with_checksums(tmp_path, registry):
    controller, store = stepped_farm(tmp_path / "data", kind_modules=CHECKSUMS_MODULE)
    yield controller
    store.close()


def _sha256sum(frames: dict[int, bytes]) -> bytes:
    return b"".join(f"{hashlib.sha256(data).hexdigest()}  frame-{number:05d}.png\n".encode()
                    for number, data in sorted(frames.items()))


def _frames(client, job: int, numbers) -> dict[int, bytes]:
    return {number: client.call("jobs.fetch", job, number).data for number in numbers}


def test_a_kind_from_kind_modules_runs_on_a_real_controller_and_node(farm, tmp_path):
    farm.start_controller("--kind-modules", CHECKSUMS_MODULE)
    farm.start_node("n1", "--kind-modules", CHECKSUMS_MODULE)
    nodes = wait_until(lambda: farm.client.call("nodes.list"), what="the node")
    assert "checksums" in nodes[0]["kinds"] and "povray" in nodes[0]["kinds"]
    animation = submit(farm.client, write_scene(tmp_path / "scene"), animation={"first": 1, "last": 3}, strips=1)
    sums = farm.client.call("jobs.kind", "checksums", {"job": animation})
    status = wait_ended(farm.client, sums)
    assert (status["state"], status["kind"], status["after"]) == ("done", "checksums", [animation])
    listing = farm.client.call("jobs.fetch", sums, 1).data
    assert listing == _sha256sum(_frames(farm.client, animation, (1, 2, 3)))
    # sha256sum itself agrees, over the frames as the controller stored them
    checked = subprocess.run(["sha256sum", "-c", "-"], input=listing, capture_output=True, timeout=30,
                             cwd=farm.data_dir / "jobs" / str(animation))
    assert checked.returncode == 0 and checked.stdout.count(b": OK") == 3, checked
    fetched = run_cli("fetch", str(sums), "--output", str(tmp_path / "frames.sha256"), "--controller", farm.url)
    assert fetched.returncode == 0 and (tmp_path / "frames.sha256").read_bytes() == listing
    again = run_cli("kind", "checksums", "--param", f"job={animation}", "--output", str(tmp_path / "again.sha256"),
                    "--controller", farm.url)
    assert again.returncode == 0 and (tmp_path / "again.sha256").read_bytes() == listing, again.stderr
    refused = run_cli("kind", "checksums", "--param", f"job={animation}", "--param", "fps=2", "--controller", farm.url)
    assert refused.returncode != 0 and "a checksums job takes job and priority, not fps" in refused.stderr
    shown = run_cli("nodes", "--controller", farm.url).stdout
    assert "povray,video,checksums" in shown or "povray,checksums" in shown, shown


def test_a_module_that_cannot_be_loaded_is_refused_in_a_sentence(farm, registry):
    with pytest.raises(FarmError) as err:
        jobkinds.load_modules("farm.extras.nothing_here")
    assert err.value.code is Code.BAD_ARGUMENT and str(err.value) == (
        "setting 'kind_modules': cannot import farm.extras.nothing_here: ModuleNotFoundError: No module named "
        "'farm.extras.nothing_here'")
    with pytest.raises(FarmError) as err:
        jobkinds.load_modules("farm.tags")
    assert "farm.tags registers no kind (it must call farm.jobkinds.register)" in str(err.value)
    started = run_cli("controller", "--kind-modules", "no_such_kinds", "--port", "0", "--data-dir",
                      str(farm.data_dir), timeout=60)
    assert started.returncode != 0 and "cannot import no_such_kinds: ModuleNotFoundError" in started.stderr


def test_jobs_kind_submits_any_loaded_kind_with_its_parameters_checked(with_checksums, scene):
    stepped = with_checksums
    with pytest.raises(FarmError) as err:
        stepped.call("jobs.kind", "blender", {})
    assert err.value.code is Code.BAD_ARGUMENT and "kinds: povray, video, checksums" in str(err.value)
    animation = stepped.call("jobs.kind", "povray", {**_spec(stepped, scene), "animation": {"first": 1, "last": 2}})
    assert stepped.call("jobs.status", animation)["kind"] == "povray"
    for params, code in (({"job": animation, "fps": 25}, Code.BAD_ARGUMENT), ({"job": 99}, Code.UNKNOWN_JOB),
                         ({"job": "1"}, Code.BAD_ARGUMENT), ({"job": animation, "priority": 5000}, Code.BAD_ARGUMENT)):
        with pytest.raises(FarmError) as err:
            stepped.call("jobs.kind", "checksums", params)
        assert err.value.code is code, params
    sums = stepped.call("jobs.kind", "checksums", {"job": animation, "priority": 3})
    video = stepped.call("jobs.kind", "video", {"job": animation, "fps": 10})
    assert [stepped.call("jobs.status", job)["kind"] for job in (sums, video)] == ["checksums", "video"]
    with pytest.raises(FarmError) as err:
        stepped.call("jobs.kind", "checksums", {"job": sums})
    assert "job %d is a checksums, not frames" % sums in str(err.value)


def _spec(stepped, scene) -> dict:
    job = submit(stepped, scene)     # uploads the bundle; its spec again, through jobs.kind
    status = stepped.call("jobs.status", job)
    stepped.call("jobs.cancel", job)
    return {"bundle": stepped.store.jobs.get(job).bundle, "scene": status["scene"], "width": 8, "height": 64,
            "strips": 1, "preview": False}


def test_a_kind_is_leased_only_to_a_node_offering_it_and_its_result_checked(with_checksums, scene):
    stepped = with_checksums
    animation = submit(stepped, scene, animation={"first": 1, "last": 2}, strips=1)
    sums = stepped.call("jobs.kind", "checksums", {"job": animation})
    old = register_node(stepped, "old")      # from before kinds: POV-Ray's only
    while stepped.call("jobs.status", animation)["state"] != "done":
        task = stepped.call("nodes.poll", old)
        assert task["job"] == animation
        stepped.call("nodes.complete", old, task["lease"], rows_for(task), 0.1)
        stepped.settle()
    assert stepped.call("nodes.poll", old) == {}
    stepped.clock_.now += 60
    assert stepped.call("jobs.status", sums)["blocked"] == (
        "no live node runs checksums jobs (a node needs the kind in its setting 'kinds'); no live node has the "
        "tags it requires (kind-checksums): old lacks kind-checksums")
    new = stepped.call("nodes.register", "new", {"povray": "3.7", "kinds": ["checksums"]})["node_id"]
    task = stepped.call("nodes.poll", new)
    assert (task["job"], task["kind"]) == (sums, "checksums")
    frames = {number: stepped.call("nodes.source_frame", new, task["lease"], number).data for number in (1, 2)}
    assert frames == _frames(stepped, animation, (1, 2))
    with pytest.raises(FarmError) as err:
        stepped.call("nodes.source_frame", new, task["lease"], 3)
    assert err.value.code is Code.BAD_ARGUMENT
    with pytest.raises(FarmError) as err:
        stepped.call("nodes.complete", new, task["lease"], Binary(_sha256sum({1: frames[1]})), 0.1)
    assert str(err.value).startswith("the checksums rejected: it is not the list of frames 1-2")
    stepped.call("nodes.complete", new, task["lease"], Binary(_sha256sum(frames)), 0.1)
    stepped.settle()
    assert stepped.call("jobs.status", sums)["state"] == "done"
    assert stepped.call("jobs.fetch", sums, 1).data == _sha256sum(frames)
    assert {node["name"]: node["kinds"] for node in stepped.call("nodes.list")} == {"old": ["povray"],
                                                                                    "new": ["checksums"]}


def test_a_node_leaving_povray_out_is_leased_no_povray_unit(stepped, scene):
    video_only = stepped.call("nodes.register", "v", {"povray": "3.7", "kinds": ["video"]})["node_id"]
    job = submit(stepped, scene, strips=2)
    assert stepped.call("nodes.poll", video_only) == {}
    stepped.clock_.now += 60
    assert stepped.call("jobs.status", job)["blocked"] == (
        "no live node runs povray jobs (a node needs povray and the kind in its setting 'kinds'); no live node "
        "has the tags it requires (kind-povray): v lacks kind-povray")
    old = register_node(stepped, "old")
    assert stepped.call("jobs.status", job)["blocked"] == ""
    assert stepped.call("nodes.poll", old)["job"] == job
    assert stepped.call("nodes.poll", video_only) == {}


def test_two_real_nodes_and_only_the_one_offering_povray_renders_it(farm, tmp_path):
    farm.start_controller()
    farm.start_node("p")
    farm.start_node("v", "--kinds", "video")
    nodes = wait_until(lambda: (lambda found: found if len(found) == 2 else None)(farm.client.call("nodes.list")),
                       what="both nodes")
    ids = {node["name"]: node["id"] for node in nodes}
    assert {node["name"]: node["kinds"] for node in nodes} == {"p": ["povray", "video"], "v": ["video"]} or \
        {node["name"]: node["kinds"] for node in nodes} == {"p": ["povray"], "v": ["video"]}
    job = submit(farm.client, write_scene(tmp_path / "scene"), strips=4)
    assert wait_ended(farm.client, job)["state"] == "done"
    assert {strip["node"] for strip in farm.client.call("jobs.status", job)["strips"]} == {ids["p"]}


def test_a_video_units_progress_is_the_frames_ffmpeg_encoded(tmp_path):
    progress = tmp_path / PROGRESS_NAME
    assert encoded_fraction(progress, 20) is None
    progress.write_text("frame=0\nfps=0.0\nprogress=continue\n")
    assert encoded_fraction(progress, 20) == 0.0
    with progress.open("a") as out:
        out.write("frame=5\nfps=12.0\nout_time=00:00:00.200000\nprogress=continue\nframe=15\nfps=12.0\n")
    assert encoded_fraction(progress, 20) == 0.75


def test_a_failed_video_unit_is_not_counted_as_a_povray_failure(stepped, scene):
    animation = submit(stepped, scene, animation={"first": 1, "last": 1}, strips=1)
    video = stepped.call("jobs.video", {"job": animation})
    node = stepped.call("nodes.register", "v", {"povray": "3.7", "kinds": ["povray", "video"]})["node_id"]
    task = stepped.call("nodes.poll", node)
    stepped.call("nodes.complete", node, task["lease"], rows_for(task), 0.1)
    stepped.settle()
    task = stepped.call("nodes.poll", node)
    assert task["job"] == video
    stepped.call("nodes.fail", node, task["lease"], "ffmpeg exited with code 1: no frames", False)
    meter: Meter = stepped.services.meter
    assert meter.value("units_failed_total", kind="video") == 1
    assert meter.value("units_failed_total", kind="rows") == 0
    assert all(meter.value("povray_failures_total", kind=kind) == 0 for kind in ("exit", "other", "scene"))


def test_a_node_whose_kinds_leave_povray_out_needs_no_povray(tmp_path):
    from farm.node import Node
    settings = {"povray": str(tmp_path / "no-povray"), "sandbox": "none", "work_dir": tmp_path / "work",
                "probe_cache": tmp_path / "probe.json"}
    assert "POV-Ray was not found" in Node(Config(**settings), client=None).info()["error"]
    assert "POV-Ray was not found" in Node(Config(**settings, kinds="povray,video"), client=None).info()["error"]
    video_only = Node(Config(**settings, kinds="video"), client=None).info()
    assert "error" not in video_only and video_only["kinds"] == ["video"]


@needs_povray
@needs_ffmpeg
def test_a_box_with_ffmpeg_and_no_working_povray_encodes_the_video(farm, tmp_path):
    farm.start_controller()
    farm.start_node("p", "--kinds", "povray")
    farm.start_node("v", "--povray", str(tmp_path / "no-povray"), "--kinds", "video")
    nodes = wait_until(lambda: (lambda found: found if len(found) == 2 else None)(farm.client.call("nodes.list")),
                       what="both nodes")
    assert {node["name"]: (node["state"], node["kinds"]) for node in nodes} == {"p": ("idle", ["povray"]),
                                                                                "v": ("idle", ["video"])}
    ids = {node["name"]: node["id"] for node in nodes}
    animation = submit(farm.client, write_scene(tmp_path / "scene"), animation={"first": 1, "last": 2}, strips=1)
    video = farm.client.call("jobs.video", {"job": animation, "fps": 2})
    assert wait_ended(farm.client, video)["state"] == "done"
    assert {strip["node"] for strip in farm.client.call("jobs.status", animation)["strips"]} == {ids["p"]}
    assert {strip["node"] for strip in farm.client.call("jobs.status", video)["strips"]} == {ids["v"]}
    assert farm.client.call("jobs.fetch", video, 1).data[4:8] == b"ftyp"
    shown = {line.split()[0]: line.split() for line in run_cli("nodes", "--controller", farm.url).stdout.splitlines()}
    assert shown["v"][1] != "broken" and shown["v"][-2:] == ["video", "-"], shown


def test_a_video_units_heartbeat_carries_the_frames_ffmpeg_encoded(tmp_path):
    from farm.node import Node
    from farm.rendering import encode
    from farm.rendering.task import Task
    from farm.video import VideoParams
    now = [0.0]
    node = Node(Config(povray=str(tmp_path / "no-povray"), sandbox="none", work_dir=tmp_path / "work",
                       probe_cache=tmp_path / "probe.json"), client=None, clock=lambda: now[0])
    reported = []
    node.beats.report = lambda lease, progress: reported.append((lease, progress)) and False
    task = Task(lease="l1", job=2, frame=1, strip=0, attempt=1, width=8, height=8, row_start=0, row_end=8,
                bundle="b", scene="s.pov", options=VideoParams(1, 1, 20).to_options(), channels=3, bits=8,
                frame_last=1, kind="video")
    folder = tmp_path / "unit"
    folder.mkdir()
    should_stop = encode.node_part(node).watch(task, folder / "ffmpeg.log")
    (folder / PROGRESS_NAME).write_text("frame=5\nprogress=continue\n")
    now[0] += 60
    assert not should_stop() and reported == [("l1", 0.25)]
