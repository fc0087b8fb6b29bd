"""Jobs after jobs (farm.dependencies): the pure rule, the controller's stepped rules, and a real farm."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from farm import dependencies
from farm.dependencies import Verdict
from farm.faults import Code, FarmError
from farm.states import JobState
from harness import register_node, run_cli, submit, wait_ended, write_scene

states = st.sampled_from(list(JobState))
afters = st.dictionaries(st.integers(1, 9), st.tuples(states, st.sampled_from(["", "boom\nmore"])), max_size=4)


@given(afters)
@settings(max_examples=500, deadline=None)
def test_a_job_goes_only_when_every_job_it_runs_after_is_done_and_ends_with_the_first_that_did_not(after):
    verdict, reason = dependencies.verdict(after)
    failed = sorted(j for j, (s, _) in after.items() if s is JobState.FAILED)
    canceled = sorted(j for j, (s, _) in after.items() if s is JobState.CANCELED)
    if failed:
        assert verdict is Verdict.FAIL and reason.startswith(f"job {failed[0]}, which it runs after, failed: ")
        assert "\n" not in reason
    elif canceled:
        assert verdict is Verdict.CANCEL and reason == f"job {canceled[0]}, which it runs after, was canceled"
    elif all(s is JobState.DONE for s, _ in after.values()):
        assert verdict is Verdict.GO and reason == "" and dependencies.waiting_for(after) == []
    else:
        assert verdict is Verdict.WAIT and dependencies.waiting_for(after)


def test_only_earlier_jobs_that_exist_may_be_waited_for():
    assert dependencies.check_after([3, 1, 3], 5, lambda job: True) == (1, 3)
    with pytest.raises(FarmError) as caught:
        dependencies.check_after([6], 5, lambda job: True)
    assert caught.value.code == Code.BAD_ARGUMENT and "cycle" in str(caught.value)
    with pytest.raises(FarmError) as caught:
        dependencies.check_after([2], 5, lambda job: job != 2)
    assert caught.value.code == Code.UNKNOWN_JOB and str(caught.value).endswith("after: there is no job 2")


def test_the_controller_holds_a_job_until_its_jobs_are_done_and_ends_it_with_theirs(stepped, scene):
    first = submit(stepped, scene)
    second = submit(stepped, scene, after=[first])
    with pytest.raises(FarmError) as caught:
        submit(stepped, scene, after=[second + 5])
    assert caught.value.code == Code.BAD_ARGUMENT
    node = register_node(stepped)
    leased = [stepped.call("nodes.poll", node).get("job") for _ in range(3)]
    assert leased == [first, first, None]          # no unit of the second job
    status = stepped.call("jobs.status", second)
    assert status["after"] == [first] and status["waiting_for"] == [first] and status["state"] == "queued"

    third = submit(stepped, scene, after=[first, second])
    stepped.call("jobs.cancel", first)
    stepped.tick()
    stepped.tick()       # the third ends after the second, which it runs after too
    assert stepped.call("jobs.status", second)["state"] == "canceled"
    assert stepped.call("jobs.status", second)["error"] == f"job {first}, which it runs after, was canceled"
    assert stepped.call("jobs.status", third)["state"] == "canceled"

    broken = submit(stepped, scene)
    after_broken = submit(stepped, scene, after=[broken])
    stepped.store.jobs.fail(broken, "Parse Error: no\nmore", stepped.clock_.now)
    stepped.tick()
    status = stepped.call("jobs.status", after_broken)
    assert status["state"] == "failed" and status["error"] == f"job {broken}, which it runs after, failed: Parse Error: no"


def test_on_a_real_farm_a_job_after_another_finishes_second_and_one_after_a_canceled_job_is_canceled(farm, tmp_path):
    farm.start_controller()
    farm.start_node("n1", slots=2)
    scene = write_scene(tmp_path / "scene")
    first = submit(farm.client, scene, strips=4)
    submitted = run_cli("submit", str(scene), "+W8", "+H64", "--after", str(first), "--controller", farm.url)
    assert submitted.returncode == 0, submitted.stderr
    second = int(submitted.stdout.strip())
    held = submit(farm.client, scene, require=["nowhere"])     # no node may render it: it stays queued
    canceled_after = submit(farm.client, scene, after=[held, first])
    listing = run_cli("jobs", "--controller", farm.url).stdout
    assert f"{second}   queued (after {first})" in listing and f"queued (after {first},{held})" in listing, listing

    done = [wait_ended(farm.client, job) for job in (first, second)]
    assert [status["state"] for status in done] == ["done", "done"]
    assert done[1]["started"] >= done[0]["finished"], done
    status = run_cli("status", str(canceled_after), "--controller", farm.url).stdout
    assert f"after:    {first},{held} (waiting for {held})" in status, status

    assert run_cli("cancel", str(held), "--controller", farm.url).returncode == 0
    ended = wait_ended(farm.client, canceled_after)
    assert ended["state"] == "canceled" and ended["error"] == f"job {held}, which it runs after, was canceled"
    refused = run_cli("submit", str(scene), "--after", "999", "--controller", farm.url)
    assert refused.returncode != 0 and "after: job 999 is not submitted yet" in refused.stderr, refused.stderr


def test_submit_refuses_after_and_require_for_a_controller_that_would_ignore_them():
    from farm.cli.job_request import _check_features
    from farm.features import FEATURES

    class Older:
        url = "http://old:8642"

        def __init__(self, features):
            self.features = features

        def call(self, name):
            assert name == "api.version"
            return {"api": 1, "features": self.features}

    _check_features(Older(list(FEATURES)), {"after": [1], "require": ["a"]})
    _check_features(Older([]), {"bundle": "x"})                 # nothing new asked: not even asked
    for key in ("after", "require", "prefer"):
        with pytest.raises(FarmError) as caught:
            _check_features(Older(["node_tags"] if key == "after" else []), {key: [1]})
        assert f"the controller at http://old:8642 is older than --{key}" in str(caught.value)
