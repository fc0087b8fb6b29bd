"""The video kind (farm.video, docs/kinds.md): an animation's frames encoded by ffmpeg on a node, checked
with ffprobe and against POV-Ray's own first frame; its parameters, argument list and capability rules."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import threading
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from farm import jobkinds
from farm.config import Config
from farm.faults import Code, FarmError
from farm.images.png import decode_png
from farm.rendering.encode import VideoEncoder
from farm.rendering.povray import ProcessResult
from farm.rendering.sandbox import Sandbox
from farm.rendering.task import Task
from farm.store import Store
from farm.video import MAX_CRF, VideoParams, ffmpeg_argv
from farm.wire import Binary
from harness import (SCENES, as_before, needs_povray, register_node, rows_for, run_cli, stepped_farm, submit, wait_ended,
                     wait_until)

CLOCKD = SCENES / "animations" / "clockd"
# Under CI the tests must run: scripts/test.sh installs ffmpeg as it installs povray.
needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None and os.environ.get("CI") != "true",
                                  reason="needs ffmpeg (apt-get install ffmpeg)")


def _probe(video: Path) -> dict:
    done = subprocess.run(["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0", "-show_entries",
                           "stream=codec_name,width,height,pix_fmt,nb_read_frames,r_frame_rate", "-of", "json",
                           str(video)], capture_output=True, text=True, timeout=60, check=True)
    return json.loads(done.stdout)["streams"][0]


def _first_frame_errors(video: Path, png: Path) -> tuple[float, float]:
    """How far the video's first decoded frame is from `png`, as mean absolute differences (0..255): of
    the luma (which yuv420p keeps at full resolution), and of the colours averaged over 2x2 blocks (the
    resolution yuv420p keeps colour at: this scene's thin saturated lines lose ~10 per pixel to that)."""
    done = subprocess.run(["ffmpeg", "-v", "error", "-i", str(video), "-frames:v", "1", "-f", "rawvideo",
                           "-pix_fmt", "rgb24", "-"], capture_output=True, timeout=60, check=True)
    image = decode_png(png.read_bytes())
    assert image.channels == 3 and image.bits == 8 and len(done.stdout) == len(image.pixels)
    width, height = image.width, image.height

    def luma(pixels: bytes) -> list[float]:
        return [0.299 * pixels[i] + 0.587 * pixels[i + 1] + 0.114 * pixels[i + 2] for i in range(0, len(pixels), 3)]

    def blocks(pixels: bytes) -> list[float]:
        return [sum(pixels[((y + dy) * width + x + dx) * 3 + channel] for dy in (0, 1) for dx in (0, 1)) / 4
                for y in range(0, height - 1, 2) for x in range(0, width - 1, 2) for channel in range(3)]

    def mean_error(a: list[float], b: list[float]) -> float:
        return sum(abs(x - y) for x, y in zip(a, b)) / len(a)
    return (mean_error(luma(done.stdout), luma(image.pixels)),
            mean_error(blocks(done.stdout), blocks(image.pixels)))


def _clockd(folder: Path) -> Path:
    folder.mkdir()
    for name in ("clockd.ini", "clockd.pov"):
        shutil.copy(CLOCKD / name, folder / name)
    return folder


@needs_povray
@needs_ffmpeg
def test_render_with_video_writes_the_frames_and_an_mp4_of_them(tmp_path):
    folder = _clockd(tmp_path / "clockd")
    result = run_cli("render", "clockd.ini", "+W320", "+H240", "--video", "clockd.mp4", cwd=folder, timeout=300)
    assert result.returncode == 0, result.stderr
    assert sorted(path.name for path in folder.glob("clockd*.png")) == [f"clockd{n:02d}.png" for n in range(1, 21)]
    stream = _probe(folder / "clockd.mp4")
    assert (stream["codec_name"], stream["pix_fmt"], stream["r_frame_rate"]) == ("h264", "yuv420p", "25/1")
    assert (stream["width"], stream["height"], int(stream["nb_read_frames"])) == (320, 240, 20)
    luma, colour = _first_frame_errors(folder / "clockd.mp4", folder / "clockd01.png")
    assert luma < 3.0 and colour < 5.0, (luma, colour)     # measured: 1.8 and 3.5


@needs_povray
@needs_ffmpeg
def test_a_finished_animation_gets_its_video_and_nodes_show_their_kinds(farm, tmp_path):
    farm.start_controller()
    farm.start_node("n1")
    wait_until(lambda: farm.client.call("nodes.list"), what="the node")
    folder = _clockd(tmp_path / "clockd")
    submitted = run_cli("submit", "clockd.ini", "+W64", "+H48", "+KFF4", "--controller", farm.url, cwd=folder)
    assert submitted.returncode == 0, submitted.stderr
    job = int(submitted.stdout.split()[0])
    assert wait_ended(farm.client, job)["state"] == "done"
    made = run_cli("video", str(job), "--output", str(tmp_path / "anim.mp4"), "--video-fps", "12",
                   "--video-crf", "30", "--controller", farm.url)
    assert made.returncode == 0, made.stderr
    stream = _probe(tmp_path / "anim.mp4")
    assert (stream["width"], stream["height"], int(stream["nb_read_frames"]), stream["r_frame_rate"]) == \
        (64, 48, 4, "12/1")
    video_job = max(job["id"] for job in farm.client.call("jobs.list"))
    assert farm.client.call("jobs.status", video_job)["kind"] == "video"
    fetched = run_cli("fetch", str(video_job), "--output", str(tmp_path / "again.mp4"), "--controller", farm.url)
    assert fetched.returncode == 0 and (tmp_path / "again.mp4").read_bytes() == (tmp_path / "anim.mp4").read_bytes()
    nodes = run_cli("nodes", "--controller", farm.url).stdout
    assert "KINDS" in nodes and "povray,video" in nodes, nodes


@needs_povray
def test_a_farm_without_an_ffmpeg_node_says_so(tmp_path):
    folder = _clockd(tmp_path / "clockd")
    env = dict(os.environ, POVFARM_KINDS="povray")     # the local nodes run POV-Ray jobs only
    result = run_cli("render", "clockd.ini", "+W32", "+H24", "+KFF2", "--video", "clockd.mp4", cwd=folder, env=env,
                     timeout=120)
    assert result.returncode == 1, result.stderr
    assert "is blocked: no live node runs video jobs (a node needs ffmpeg and the kind in its setting 'kinds')" \
        in result.stderr, result.stderr
    assert len(list(folder.glob("clockd*.png"))) == 2 and not (folder / "clockd.mp4").exists()


@given(source=st.integers(1, 10**6), first=st.integers(0, 500), count=st.integers(1, 500),
       fps=st.floats(0.01, 240.0), crf=st.integers(0, MAX_CRF))
def test_video_parameters_travel_as_options_and_back(source, first, count, fps, crf):
    params = VideoParams(source, first, first + count - 1, float(f"{fps:g}"), crf)
    assert VideoParams.from_options(params.to_options()) == params


@pytest.mark.parametrize("options", [
    ["source=1", "first=1", "last=2", "fps=25", "crf=23", "crf=1"],        # one twice
    ["source=1", "first=1", "last=2", "fps=25"],                           # one missing
    ["source=1", "first=1", "last=2", "fps=25", "crf=23", "-vf=x"],         # not its own
    ["source=1", "first=1", "last=2", "fps=25", "crf=99"],                 # out of range
    ["source=1", "first=1", "last=2", "fps=0", "crf=23"],
    ["source=1", "first=1", "last=2", "fps=25;rm", "crf=23"],
])
def test_a_node_accepts_only_the_video_kinds_own_parameters(options):
    with pytest.raises(FarmError) as err:
        VideoParams.from_options(options)
    assert err.value.code is Code.BAD_ARGUMENT


def test_ffmpegs_argument_list_is_built_whole_and_never_for_a_shell(tmp_path):
    argv = ffmpeg_argv("/usr/bin/ffmpeg", VideoParams(3, 1, 20, 25.0, 23), tmp_path / "frames", tmp_path / "v.mp4")
    assert argv[0] == "/usr/bin/ffmpeg" and all(isinstance(arg, str) for arg in argv)
    pairs = dict(zip(argv, argv[1:]))
    assert (pairs["-c:v"], pairs["-pix_fmt"], pairs["-crf"], pairs["-framerate"]) == ("libx264", "yuv420p", "23", "25")
    assert (pairs["-start_number"], pairs["-frames:v"]) == ("1", "20") and argv[-1] == str(tmp_path / "v.mp4")


def test_nodes_offer_the_kinds_whose_program_they_have_and_carry_their_capability():
    assert jobkinds.parse_offered("", lambda kind: True) == ("povray", "video")
    assert jobkinds.parse_offered("auto", lambda kind: kind == "povray") == ("povray",)
    assert jobkinds.parse_offered("video", lambda kind: False) == ("video",)
    with pytest.raises(FarmError):
        jobkinds.parse_offered("povray,blender", lambda kind: True)
    assert jobkinds.capability_tags({"kinds": ["povray", "video"]}) == ("kind-video",)
    assert jobkinds.capability_tags({}) == () and jobkinds.offered_by({}) == ("povray",)
    assert jobkinds.own_tags(("fast", "kind-video")) == ("fast",)


_MP4 = b"\0\0\0\x18ftypisom" + bytes(100)     # the start of an MP4: its file-type box


def _rows_until_done(stepped, node: str, job: int) -> None:
    while stepped.call("jobs.status", job)["state"] != "done":
        task = stepped.call("nodes.poll", node)
        stepped.call("nodes.complete", node, task["lease"], rows_for(task), 0.1)
        stepped.settle()


def test_the_controller_runs_a_video_after_its_animation_on_a_node_offering_the_kind(stepped, scene):
    animation = submit(stepped, scene, animation={"first": 1, "last": 3}, strips=1)
    video = stepped.call("jobs.video", {"job": animation, "fps": 12.5, "crf": 20})
    povray_only = stepped.call("nodes.register", "p", {"povray": "3.7", "kinds": ["povray"]})["node_id"]
    with_ffmpeg = stepped.call("nodes.register", "v", {"povray": "3.7", "kinds": ["povray", "video"]})["node_id"]
    assert stepped.call("jobs.status", video)["kind"] == "video"
    _rows_until_done(stepped, povray_only, animation)
    assert stepped.call("nodes.poll", povray_only) == {}           # it lacks kind-video
    task = stepped.call("nodes.poll", with_ffmpeg)
    assert (task["job"], task["kind"], task["width"], task["height"]) == (video, "video", 8, 64)
    assert VideoParams.from_options(task["options"]) == VideoParams(animation, 1, 3, 12.5, 20)
    frame = stepped.call("nodes.source_frame", with_ffmpeg, task["lease"], 2).data
    assert frame == stepped.call("jobs.fetch", animation, 2).data
    for wrong in (0, 4):
        with pytest.raises(FarmError) as err:
            stepped.call("nodes.source_frame", with_ffmpeg, task["lease"], wrong)
        assert err.value.code is Code.BAD_ARGUMENT
    with pytest.raises(FarmError) as err:
        stepped.call("nodes.complete", with_ffmpeg, task["lease"], Binary(b"not a video"), 0.5)
    assert err.value.code is Code.BAD_ARGUMENT and "not an MP4" in str(err.value)
    stepped.call("nodes.complete", with_ffmpeg, task["lease"], Binary(_MP4), 0.5)
    stepped.settle()
    assert stepped.call("jobs.status", video)["state"] == "done"
    assert stepped.call("jobs.fetch", video, 1).data == _MP4
    assert [node["kinds"] for node in stepped.call("nodes.list")] == [["povray"], ["povray", "video"]]


def test_a_video_waits_blocked_without_a_node_for_it_and_fails_with_its_animation(stepped, scene):
    animation = submit(stepped, scene, animation={"first": 1, "last": 2}, strips=1)
    video = stepped.call("jobs.video", {"job": animation})
    register_node(stepped)       # a node from before kinds: POV-Ray's only
    stepped.clock_.now += 60
    assert stepped.call("jobs.status", video)["blocked"].startswith(
        "no live node runs video jobs (a node needs ffmpeg and the kind in its setting 'kinds'); no live node has "
        "the tags it requires (kind-video): n1 lacks kind-video")
    stepped.call("jobs.cancel", animation)
    stepped.tick()
    assert stepped.call("jobs.status", video)["state"] == "canceled"
    with pytest.raises(FarmError) as err:
        stepped.call("jobs.video", {"job": animation})
    assert err.value.code is Code.BAD_ARGUMENT
    with pytest.raises(FarmError) as err:
        stepped.call("jobs.video", {"job": video})
    assert err.value.code is Code.BAD_ARGUMENT


def test_an_old_data_dir_gains_the_kind_column_and_keeps_its_jobs(tmp_path, scene):
    controller, store = stepped_farm(tmp_path / "data")
    job = submit(controller, scene)
    store.close()
    as_before(tmp_path / "data", "ALTER TABLE jobs DROP COLUMN kind")
    store = Store(tmp_path / "data" / "db.sqlite3")
    try:
        assert store.jobs.get(job).kind == "povray"
    finally:
        store.close()


def test_the_encoder_reports_ffmpegs_own_words_and_refuses_options_not_its_own(tmp_path):
    ran = []

    def runner(argv, cwd, env, log_path, timeout, should_stop, limits):
        ran.append(argv)
        log_path.write_text("frame-%06d.png: No such file or directory\n")
        return ProcessResult(returncode=1, signal=None, timed_out=False, stopped=False, seconds=0.1)
    encoder = VideoEncoder(Config(work_dir=tmp_path), "/usr/bin/ffmpeg", Sandbox("none"), runner,
                           fetch_frame=lambda task, number: b"png", watch=lambda task, log_path: (lambda: False),
                           aborting=threading.Event())
    task = Task(lease="l", job=2, frame=1, strip=0, attempt=1, width=8, height=8, row_start=0, row_end=8,
                bundle="b", scene="s.pov", options=VideoParams(1, 1, 2).to_options(), channels=3, bits=8,
                frame_last=1, kind="video")
    outcome = encoder.render(task, tmp_path / "unit")
    assert outcome.kind == "failed" and not outcome.scene_error
    assert outcome.error == "ffmpeg exited with code 1: frame-%06d.png: No such file or directory"
    assert ran[0][0] == "/usr/bin/ffmpeg" and sorted(p.name for p in (tmp_path / "unit" / "frames").iterdir()) == \
        ["frame-000001.png", "frame-000002.png"]
    refused = encoder.render(dataclasses.replace(task, options=("source=1", "-f", "lavfi")), tmp_path / "other")
    assert refused.kind == "failed" and refused.scene_error and len(ran) == 1
