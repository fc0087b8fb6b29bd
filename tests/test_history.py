"""The farm's history: ages as written, jobs.list's pages, purging (the store's rules with a fake clock, and
a purge on a real farm while a job renders), and the controller's disk use."""

from __future__ import annotations

import json
import sqlite3
import stat

import pytest
from hypothesis import given
from hypothesis import strategies as st

from farm.durations import age_text, parse_age
from farm.faults import Code, FarmError
from farm.states import JobState
from farm.store.history import PER_JOB_TABLES
from harness import register_node, rows_for, run_cli, submit, wait_ended, wait_until, write_scene


@pytest.mark.parametrize("text, seconds", [("30d", 30 * 86400), ("12h", 43200), ("90m", 5400), ("45s", 45),
                                           ("2w", 14 * 86400), ("600", 600), (" 1.5H ", 5400), ("0", 0)])
def test_ages_as_written(text, seconds):
    assert parse_age(text) == seconds


@pytest.mark.parametrize("text", ["", "d", "30 days", "-1d", "1e3", "3x"])
def test_ages_that_are_not(text):
    with pytest.raises(ValueError, match="an age is a number"):
        parse_age(text)


@given(st.integers(0, 10 ** 9))
def test_an_age_reads_back(seconds):
    assert parse_age(age_text(seconds)) == seconds


def test_pages_newest_first_and_the_old_call_unchanged(stepped, tmp_path):
    scene = write_scene(tmp_path / "scene")
    ids = [submit(stepped, scene) for _ in range(5)]
    assert [job["id"] for job in stepped.call("jobs.list")] == ids        # no arguments: every job, oldest first
    first = stepped.call("jobs.list", 2)
    assert [job["id"] for job in first] == ids[:-3:-1]
    assert [job["id"] for job in stepped.call("jobs.list", 2, first[-1]["id"])] == ids[2:0:-1]
    assert [job["id"] for job in stepped.call("jobs.list", 10, ids[1])] == ids[:1]
    with pytest.raises(FarmError) as refused:
        stepped.call("jobs.list", 0, 3)
    assert refused.value.code is Code.BAD_ARGUMENT


def finish(stepped, node: str) -> None:
    """Lease and deliver every unit the node is given."""
    while (task := stepped.call("nodes.poll", node)):
        stepped.call("nodes.complete", node, task["lease"], rows_for(task), 0.1)
    stepped.settle()


def test_a_purge_deletes_ended_jobs_with_every_row_and_keeps_the_rest(stepped, tmp_path):
    store, clock = stepped.store, stepped.clock_
    node = register_node(stepped)
    done = submit(stepped, write_scene(tmp_path / "a", "sphere { 0, 1 pigment { rgb 1 } }\n"))
    finish(stepped, node)
    failed = submit(stepped, write_scene(tmp_path / "b", "sphere { 0, 2 pigment { rgb 1 } }\n"))
    task = stepped.call("nodes.poll", node)
    stepped.call("nodes.fail", node, task["lease"], "Parse Error: broken", True)
    kept_before = submit(stepped, write_scene(tmp_path / "c", "sphere { 0, 3 pigment { rgb 1 } }\n"))
    stepped.call("jobs.cancel", kept_before)
    waiting = submit(stepped, write_scene(tmp_path / "d"), after=[kept_before])   # ends when the tick sees it
    queued = submit(stepped, write_scene(tmp_path / "e", "sphere { 0, 4 pigment { rgb 1 } }\n"))
    image = stepped.services.files.image_dir / str(done)
    assert image.is_dir()
    clock.now += 3600
    assert stepped.call("farm.purge", 7200) == {"jobs": [], "bundles": 0}      # nothing ended 2 h ago
    purged = stepped.call("farm.purge", 1800)
    assert purged["jobs"] == [done, failed]      # not the canceled one: a queued job runs after it
    assert purged["bundles"] == 2                # a's and b's: c's, d's and e's are used
    assert not image.exists()
    with sqlite3.connect(store.path) as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        for table in (name for name in PER_JOB_TABLES if name in tables):
            assert db.execute(f"SELECT COUNT(*) FROM {table} WHERE job IN (?, ?)", (done, failed)).fetchone()[0] == 0
        assert db.execute("SELECT COUNT(*) FROM units WHERE job=?", (queued,)).fetchone()[0] > 0
    for job in (done, failed):
        with pytest.raises(FarmError) as gone:
            stepped.call("jobs.status", job)
        assert gone.value.code is Code.UNKNOWN_JOB
    assert [job["id"] for job in stepped.call("jobs.list")] == [kept_before, waiting, queued]
    stepped.tick()                               # the dependent job is canceled with the one it ran after
    assert store.jobs.get(waiting).state is JobState.CANCELED
    clock.now += 3600
    assert stepped.call("farm.purge", 0)["jobs"] == [kept_before, waiting]
    assert store.jobs.get(queued).state is JobState.QUEUED
    assert [job["id"] for job in stepped.call("jobs.list")] == [queued]


def test_automatic_purging_is_off_unless_set(tmp_path):
    from harness import stepped_farm
    stepped, store = stepped_farm(tmp_path / "off")
    try:
        node = register_node(stepped)
        job = submit(stepped, write_scene(tmp_path / "s"))
        finish(stepped, node)
        stepped.clock_.now += 10 ** 8
        stepped.tick()
        assert store.jobs.exists(job)
        assert stepped.call("farm.status")["purge_after"] == ""
    finally:
        store.close()
    stepped, store = stepped_farm(tmp_path / "on", purge_after="30d")
    try:
        node = register_node(stepped)
        job = submit(stepped, write_scene(tmp_path / "s"))
        finish(stepped, node)
        stepped.clock_.now += 29 * 86400
        stepped.tick()
        assert store.jobs.exists(job)
        stepped.clock_.now += 2 * 86400      # and over an hour since the last purge
        stepped.tick()
        assert not store.jobs.exists(job)
        assert stepped.call("farm.status")["purge_after"] == "30d"
    finally:
        store.close()


def test_a_bad_purge_after_setting_is_named(tmp_path):
    from harness import stepped_farm
    with pytest.raises(FarmError, match="purge_after"):
        stepped_farm(tmp_path / "bad", purge_after="soon")


def slow_povray(folder) -> str:
    """A povray that takes its time: each unit renders for at least half a second."""
    path = folder / "slow-povray"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\nsleep 0.5\nexec povray \"$@\"\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def test_a_purge_while_a_job_renders(farm, tmp_path):
    farm.start_controller()
    farm.start_node("n1", "--povray", slow_povray(tmp_path / "bin"))
    old = submit(farm.client, write_scene(tmp_path / "old", "sphere { 0, 1 pigment { rgb 1 } }\n"))
    assert wait_ended(farm.client, old)["state"] == "done"
    running = submit(farm.client, write_scene(tmp_path / "running"), height=256, strips=8)
    wait_until(lambda: farm.client.call("jobs.status", running)["strips_done"] >= 1, what="the job to render")
    disk_before = json.loads(run_cli("status", "--farm", "--json", "--controller", farm.url).stdout)["disk"]
    assert disk_before["images"] > 0 and disk_before["database"] > 0 and disk_before["free"] > 0
    assert len(list((farm.data_dir / "bundles").glob("*.zip"))) == 2
    purge = run_cli("purge", "--older-than", "0", "--controller", farm.url)
    assert purge.returncode == 0, purge.stderr
    assert purge.stdout.strip() == f"purged 1 job(s): {old} and 1 bundle(s) no job uses"
    assert not (farm.data_dir / "jobs" / str(old)).exists()
    assert len(list((farm.data_dir / "bundles").glob("*.zip"))) == 1      # the running job's
    assert [job["id"] for job in farm.client.call("jobs.list")] == [running]
    status = wait_ended(farm.client, running)
    assert status["state"] == "done" and status["strips_done"] == status["strips_total"] == 8
    fetched = run_cli("fetch", str(running), "--output", str(tmp_path / "running.png"), "--controller", farm.url)
    assert fetched.returncode == 0, fetched.stderr
    newest = run_cli("status", "--controller", farm.url)       # no job named: the newest (a page of one)
    assert newest.stdout.startswith(f"job {running} ("), newest.stderr
    listed = run_cli("jobs", "--limit", "1", "--controller", farm.url)
    assert listed.returncode == 0 and listed.stdout.splitlines()[1].split()[0] == str(running)
    shown = run_cli("status", "--farm", "--controller", farm.url)
    assert shown.returncode == 0 and "1 done" in shown.stdout and "purge:    never" in shown.stdout


def test_a_long_history_goes_in_batches(stepped, tmp_path, monkeypatch):
    from farm.service import history
    from farm.store import history as stored
    monkeypatch.setattr(history, "PURGE_BATCH", 2)
    batches = []
    purge = stepped.store.history.purge
    monkeypatch.setattr(stepped.store.history, "purge", lambda before: batches.append(purge(before, 2)) or batches[-1])
    jobs = [submit(stepped, write_scene(tmp_path / "s")) for _ in range(5)]
    for job in jobs:
        stepped.call("jobs.cancel", job)
    stepped.clock_.now += 10
    assert stepped.call("farm.purge", 1) == {"jobs": jobs, "bundles": 1}
    assert [batch.jobs for batch in batches] == [tuple(jobs[:2]), tuple(jobs[2:4]), tuple(jobs[4:])]
    assert [len(batch.bundles) for batch in batches] == [0, 0, 1]
    assert stored.PURGE_BATCH == 100
