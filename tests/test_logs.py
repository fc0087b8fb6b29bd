"""POV-Ray's logs (farm/povtext.py, farm/unitlog.py, the controller's unit_logs): its streams told apart in
its real output, the bounds (property-tested), the controller's rules stepped (kept per unit and per job,
failures, malformed logs, jobs.log and jobs.messages), an old data dir's migration, and a node that sends a
log only to a controller that takes one. The real farm end to end: tests/test_cli_povray.py."""

from __future__ import annotations

import subprocess
import threading
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from farm import povtext
from farm.faults import Code, FarmError
from farm.features import CURRENT, OLDEST
from farm.rendering.delivery import Delivery
from farm.rendering.task import RenderOutcome
from farm.store import Store
from farm.store.logs import delete_logs_of
from farm.unitlog import UnitLog
from farm.wire import Binary
from harness import as_before, needs_povray, register_node, rows_for, stepped_farm, submit

SCENE = ('#version 3.7;\nglobal_settings { assumed_gamma 1 }\n#debug "hello\\n"\n#warning "mind the gap"\n'
         'camera { location <0, 0, -3> look_at 0 }\nsphere { 0, 1 pigment { rgb 1 } }\n')
OUTPUT = ("Persistence of Vision(tm) Ray Tracer Version 3.7.0.10\nParser Options\n  Input file: s.pov\n"
          "Information Output Options\n  Warning Stream to console.......On \n==== [Parsing...] ==========\nhello\nFile 's.pov' line 4: Parse Warning: mind the gap\n"
          + "-" * 76 + "\nParser Statistics\n" + "-" * 76 + "\nRender Options\n  Quality:  9\n"
          "==== [Rendering...] ==========\nRendered 10 of 20 pixels (50%)\rRendered 20 of 20 pixels (100%)\r\n"
          + "-" * 76 + "\nRender Statistics\nPixels: 20\nPOV-Ray finished\n")


def run_log(output: str = OUTPUT, **changes) -> dict:
    run = UnitLog(text=output, command=("povray", "+Is.pov"), started=1000.0, seconds=0.5, exit_code=0, signal=None)
    wire = run.to_wire()
    wire.update(changes)
    return wire


# -- POV-Ray's streams ---------------------------------------------------------------------------------

@needs_povray
def test_povrays_real_output_is_told_apart_stream_by_stream(tmp_path):
    (tmp_path / "s.pov").write_text(SCENE + '#error "stop here"\n')
    done = subprocess.run(["povray", "+Is.pov", "+W16", "+H8", "-D"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)
    lines = povtext.classify(done.stderr)
    assert ("debug", "hello") in lines
    assert ("warning", "File 's.pov' line 4: Parse Warning: mind the gap") in lines
    assert ("error", "File 's.pov' line 7: Parse Error: Parse halted by #error directive: stop here") in lines
    assert ("error", "Render failed") in lines
    assert {kind for kind, line in lines if "Persistence of Vision" in line} == {"banner"}
    assert povtext.parse_messages(done.stderr) == ["hello\nFile 's.pov' line 4: Parse Warning: mind the gap\n"]


@needs_povray
def test_a_finished_renders_statistics_and_progress_are_their_own_streams(tmp_path):
    (tmp_path / "s.pov").write_text(SCENE)
    done = subprocess.run(["povray", "+Is.pov", "+W16", "+H8", "-D", "+Oout.png"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    lines = povtext.classify(done.stderr)
    kinds = {line: kind for kind, line in lines}
    assert kinds["Parser Statistics"] == kinds["Render Statistics (Partial Image Rendered)"
                                                if "Render Statistics (Partial Image Rendered)" in kinds
                                                else "Render Statistics"] == "statistics"
    assert kinds["POV-Ray finished"] == "render"
    progress = [line for kind, line in lines if line.startswith("Rendered ")]
    assert progress == ["Rendered 128 of 128 pixels (100%)"]      # the last one of its line only
    assert not [line for kind, line in lines if kind == "debug" and line.strip() and line != "hello"]


def test_messages_of_each_frame_in_a_run_of_several():
    second = OUTPUT.split("\n", 1)[1]     # the banner comes once, at the start
    two = OUTPUT.replace("POV-Ray finished\n", "Rendering frame 2 of 2\n") + second.replace("hello", "again")
    assert povtext.parse_messages(two) == ["hello\nFile 's.pov' line 4: Parse Warning: mind the gap\n",
                                           "again\nFile 's.pov' line 4: Parse Warning: mind the gap\n"]
    assert povtext.parse_messages(two, kinds=("debug",)) == ["hello\n", "again\n"]


def test_messages_a_busy_povray_prints_before_the_parse_header_count_with_that_parse():
    messages = "hello\nFile 's.pov' line 4: Parse Warning: mind the gap\n"
    early = OUTPUT.replace(messages, "").replace("==== [Parsing", messages + "==== [Parsing")
    assert early != OUTPUT and povtext.parse_messages(early) == povtext.parse_messages(OUTPUT) == [messages]
    assert ("debug", "hello") in povtext.classify(early)
    rendering = OUTPUT.replace("Render Statistics", "Warning: a render warning\n" + "-" * 76 + "\nRender Statistics")
    assert ("warning", "Warning: a render warning") in povtext.classify(rendering)
    two = rendering.replace("POV-Ray finished\n", "Rendering frame 2 of 2\n") + early.split("\n", 1)[1].replace(
        "hello", "again")
    assert povtext.parse_messages(two) == [messages, messages.replace("hello", "again")]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(alphabet=st.characters(blacklist_categories=("Cs", "Lu")), max_size=90), max_size=200),
       st.integers(min_value=0, max_value=3000))
def test_a_bounded_text_keeps_its_head_and_tail_and_says_what_it_cut(lines, limit):
    text = "".join(f"{line}\n" for line in lines)
    kept, cut = povtext.bounded(text, limit)
    size, kept_size = len(text.encode()), len(kept.encode())
    if size <= limit:
        assert (kept, cut) == (text, 0)
        return
    mark = povtext.CUT_MARK.format(cut=f"{cut} bytes") + "\n"
    assert mark in kept and kept_size - len(mark.encode()) + cut == size
    assert kept_size - len(mark.encode()) <= limit
    head, _, tail = kept.partition(mark)
    assert text.startswith(head) and text.endswith(tail)


def test_a_text_over_its_bound_loses_povrays_banner_before_its_messages():
    banner = "Persistence of Vision(tm) Ray Tracer\n" + "  Chris Cason  Thorsten Froehlich\n" * 60
    text = banner + OUTPUT.replace("Pixels: 20\n", "Pixels: 20\n" * 20)
    kept, cut = povtext.bounded(text, 900)
    assert kept.startswith(povtext.BANNER_MARK + "\nParser Options\n") and "Chris Cason" not in kept
    assert povtext.parse_messages(kept) == povtext.parse_messages(text)
    marks = sum(len(line) + 1 for line in kept.splitlines() if line.startswith("[povfarm: "))
    assert len(kept) - marks + cut == len(text)
    shorter, cut = povtext.bounded(text, 400)       # and then its middle
    assert shorter.startswith(povtext.BANNER_MARK) and "cut here]" in shorter and shorter.endswith("finished\n")
    marks = sum(len(line) + 1 for line in shorter.splitlines() if line.startswith("[povfarm: "))
    assert len(shorter) - marks + cut == len(text)


# -- the controller keeps them ---------------------------------------------------------------------------

@pytest.fixture
def one_task(tmp_path):
    def start(**settings):
        controller, store = stepped_farm(tmp_path / "data", **settings)
        scene = tmp_path / "s.pov"
        scene.write_text(SCENE)
        job = submit(controller, scene, strips=1)
        node = register_node(controller)
        started.append(store)
        return controller, job, node, controller.call("nodes.poll", node)
    started: list[Store] = []
    yield start
    for store in started:
        store.close()


def test_a_delivered_log_is_kept_with_its_run_and_read_back_by_stream(one_task):
    controller, job, node, task = one_task()
    controller.call("nodes.complete", node, task["lease"], rows_for(task), 0.5, "zlib", run_log())
    reply = controller.call("jobs.log", job)
    [entry] = reply["logs"]
    assert entry["unit"] == task["strip"] and entry["node"] == "n1" and entry["outcome"] == "done"
    assert entry["command"] == ["povray", "+Is.pov"] and entry["ending"] == "exit 0" and entry["cut"] == ""
    assert ["debug", "hello"] in entry["lines"] and ["statistics", "Render Statistics"] in entry["lines"]
    assert reply["cursor"] == entry["id"] and not reply["more"] and reply["size"] > 0
    assert controller.call("jobs.log", job, {"after": reply["cursor"]})["logs"] == []
    assert controller.call("jobs.log", job, {"unit": task["strip"] + 1})["logs"] == []
    assert controller.call("jobs.messages", job) == [
        {"frame": task["frame"], "text": "hello\nFile 's.pov' line 4: Parse Warning: mind the gap\n"}]


def test_a_long_log_is_cut_per_unit_and_a_job_past_its_bound_keeps_only_messages(one_task):
    controller, job, node, task = one_task(unit_log_kb=1, job_log_mb=0)
    long = OUTPUT.replace("Pixels: 20\n", "Pixels: 20\n" * 500)
    controller.call("nodes.complete", node, task["lease"], rows_for(task), 0.5, "zlib", run_log(long))
    [entry] = controller.call("jobs.log", job)["logs"]
    assert "only the scene's messages of this run were kept" in entry["cut"]
    assert [line for _, line in entry["lines"]] == ["hello", "File 's.pov' line 4: Parse Warning: mind the gap"]


def test_a_unit_log_over_unit_log_kb_keeps_head_and_tail(one_task):
    controller, job, node, task = one_task(unit_log_kb=1)
    long = OUTPUT.replace("Pixels: 20\n", "Pixels: 20\n" * 500)
    controller.call("nodes.complete", node, task["lease"], rows_for(task), 0.5, "zlib", run_log(long))
    [entry] = controller.call("jobs.log", job)["logs"]
    texts = [line for _, line in entry["lines"]]
    assert "hello" in texts and "POV-Ray finished" in texts and "unit_log_kb = 1" in entry["cut"]
    assert any(line.startswith("[povfarm: ") and "cut here" in line for line in texts)


def test_a_failed_units_log_is_kept_and_a_malformed_one_refused_before_anything_is_stored(one_task):
    controller, job, node, task = one_task()
    for bad in (run_log(text=Binary(b"not zlib")), run_log(command="povray"), run_log(seconds="soon"),
                run_log(text=Binary(zlib.compress(b"x" * (17 * 1024 * 1024))))):
        with pytest.raises(FarmError) as caught:
            controller.call("nodes.complete", node, task["lease"], rows_for(task), 0.5, "zlib", bad)
        assert caught.value.code is Code.BAD_ARGUMENT and "log is malformed" in str(caught.value)
    assert controller.call("jobs.status", job)["strips_done"] == 0
    failed = run_log(OUTPUT.replace("POV-Ray finished", "Render failed"), exit_code=1)
    controller.call("nodes.fail", node, task["lease"], "Render failed", False, failed)
    [entry] = controller.call("jobs.log", job)["logs"]
    assert entry["outcome"] == "failed" and entry["ending"] == "exit 1" and ["error", "Render failed"] in entry["lines"]


def test_a_jobs_logs_go_with_it(one_task):
    controller, job, node, task = one_task()
    controller.call("nodes.complete", node, task["lease"], rows_for(task), 0.5, "zlib", run_log())
    store = controller.store
    with store.db.write() as db:       # as deleting a job does, in its own write
        delete_logs_of(db, job)
    assert controller.call("jobs.log", job)["logs"] == [] and store.logs.size(job) == 0
    assert controller.call("jobs.messages", job) == []


def test_an_old_data_dir_gains_the_log_tables_and_keeps_its_jobs(tmp_path):
    controller, store = stepped_farm(tmp_path / "data")
    (tmp_path / "s.pov").write_text(SCENE)
    job = submit(controller, tmp_path / "s.pov")
    store.close()
    as_before(tmp_path / "data", "DROP TABLE unit_logs", "DROP TABLE log_sizes")
    controller, store = stepped_farm(tmp_path / "data")
    try:
        node = register_node(controller)
        task = controller.call("nodes.poll", node)
        assert task["job"] == job
        controller.call("nodes.complete", node, task["lease"], rows_for(task), 0.5, "zlib", run_log())
        assert len(controller.call("jobs.log", job)["logs"]) == 1
    finally:
        store.close()


# -- the node sends them where they are taken ----------------------------------------------------------

class Recorder:
    def __init__(self):
        self.calls = []

    def call(self, method, *args):
        self.calls.append((method, args))
        return True


@pytest.mark.parametrize("features, sent", [(CURRENT, True), (OLDEST, False)])
def test_a_node_sends_its_log_only_to_a_controller_that_keeps_logs(features, sent):
    client = Recorder()
    delivery = Delivery(client, lambda: "n1-1", lambda: features, threading.Event(), threading.Event(),
                        lambda delay, ceiling: 0.0)
    run = UnitLog.of_run(OUTPUT, ["povray"], 1.0, 0.5, 0, None, False, 65536)
    delivery.complete("lease", RenderOutcome("done", rows=b"x", seconds=0.5, log=run), take_next=False)
    delivery.fail("lease", RenderOutcome("failed", error="boom", log=run), "boom")
    (complete, complete_args), (fail, fail_args) = client.calls
    assert complete == "nodes.complete" and fail == "nodes.fail"
    assert (len(complete_args), len(fail_args)) == ((6, 5) if sent else (4, 4))
    if sent:
        assert UnitLog.from_wire(fail_args[-1], 65536) == run
