"""GET /metrics: the exposition format (parsed by prometheus_client's own parser), failure kinds, the
metrics role, an old role file gaining its token, and counters moving as a real job renders."""

from __future__ import annotations

import subprocess
import urllib.error
import urllib.request

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from farm import auth, policy
from farm.meter import Family, Meter, exposition
from harness import submit, wait_ended, wait_until, write_scene


def parsed(text: str) -> dict[str, dict[tuple, float]]:
    """{sample name: {labels: value}} as Prometheus' own parser reads the text."""
    samples: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def test_the_format_parses_with_escaped_labels_and_cumulative_buckets():
    meter = Meter()
    meter.declare("request_duration_seconds", "histogram", "Latency\nwith a newline", buckets=(0.1, 1.0))
    for seconds in (0.05, 0.5, 0.7, 30.0):
        meter.observe("request_duration_seconds", seconds, method='a "quoted" \\ method')
    meter.count("things_total", 3, kind="x")
    text = exposition([*meter.families(), Family("jobs", "gauge", "Jobs.", {(("state", "done"),): 2})]).decode()
    samples = parsed(text)
    label = (("method", 'a "quoted" \\ method'),)
    buckets = samples["povfarm_request_duration_seconds_bucket"]
    assert [buckets[(("le", le),) + label] for le in ("0.1", "1", "+Inf")] == [1, 3, 4]
    assert samples["povfarm_request_duration_seconds_count"][label] == 4
    assert samples["povfarm_request_duration_seconds_sum"][label] == pytest.approx(31.25)
    assert samples["povfarm_things_total"][(("kind", "x"),)] == 3
    assert samples["povfarm_jobs"][(("state", "done"),)] == 2


@given(st.text(max_size=40), st.booleans())
def test_every_failure_has_one_of_the_kinds(error, scene_error):
    kind = policy.failure_kind(error, scene_error)
    assert kind in policy.FAILURE_KINDS
    assert (kind == "scene") == scene_error


@pytest.mark.parametrize("error, kind", [
    ("POV-Ray ran out of memory on node a: ...", "memory"),
    ("POV-Ray was killed by its time limit (strip_timeout) after 60 s on node a", "time_limit"),
    ("POV-Ray was stopped by signal 9 SIGKILL: killed on node a", "signal"),
    ("POV-Ray exited with code 2 on node a: bad", "exit"),
    ("the bundle could not be fetched", "other")])
def test_failure_kinds_from_the_nodes_sentences(error, kind):
    assert policy.failure_kind(error, False) == kind


def test_a_role_file_from_before_the_metrics_role_gains_one(tmp_path, monkeypatch):
    path = tmp_path / "tokens"
    path.write_text("submit = s\nnode = n\nview = v\n")
    tokens = auth.controller_tokens(tmp_path, None, None)
    assert tokens["submit"] == "s" and len(tokens[auth.METRICS]) > 20
    assert auth.read_token_file(path) == tokens
    assert auth.controller_tokens(tmp_path, None, None) == tokens    # made once
    folder = tmp_path / "read-only"
    folder.mkdir()
    (folder / "tokens").write_text("submit = s\nnode = n\nview = v\n")

    def refused(*args, **kwargs):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(auth.atomic, "write", refused)     # a file the controller may not write
    assert auth.controller_tokens(folder, None, None) == {"submit": "s", "node": "n", "view": "v"}


def get_metrics(url: str, token: str | None) -> str:
    request = urllib.request.Request(url + "/metrics", headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return response.read().decode()


def test_metrics_need_a_token_and_the_metrics_token_reads_nothing_else(farm):
    farm.start_controller()
    with pytest.raises(urllib.error.HTTPError) as refused:
        get_metrics(farm.url, None)
    assert refused.value.code == 401
    with pytest.raises(urllib.error.HTTPError) as refused:
        get_metrics(farm.url, "not-a-token")
    assert refused.value.code == 401
    assert "povfarm_jobs" in get_metrics(farm.url, auth.read_token_file(farm.token_file)["view"])
    metrics = farm.client_as(auth.METRICS)
    assert "povfarm_jobs" in get_metrics(farm.url, metrics.token)
    with pytest.raises(Exception):
        metrics.call("jobs.list")


def test_counters_move_as_a_job_renders_and_curl_reads_them(farm, tmp_path):
    farm.start_controller()
    token = auth.read_token_file(farm.token_file)[auth.METRICS]
    before = parsed(get_metrics(farm.url, token))
    assert before["povfarm_units_stored_total"][(("kind", "rows"),)] == 0
    assert before["povfarm_povray_failures_total"][(("kind", "scene"),)] == 0
    farm.start_node("n1")
    wait_until(lambda: parsed(get_metrics(farm.url, token))["povfarm_nodes"][(("state", "idle"),)] == 1)
    job = submit(farm.client, write_scene(tmp_path / "scene"), strips=4)
    assert wait_ended(farm.client, job)["state"] == "done"
    broken = submit(farm.client, write_scene(tmp_path / "broken", "sphere { 0, 1 pigment { colour Nope } }"))
    assert wait_ended(farm.client, broken)["state"] == "failed"
    text = subprocess.run(["curl", "-sf", "-H", f"Authorization: Bearer {token}", farm.url + "/metrics"],
                          capture_output=True, text=True, timeout=30, check=True).stdout
    after = parsed(text)
    assert after["povfarm_units_stored_total"][(("kind", "rows"),)] == after["povfarm_units_done_total"][()] >= 2
    assert after["povfarm_stored_bytes_total"][(("kind", "rows"),)] > 0
    assert after["povfarm_povray_failures_total"][(("kind", "scene"),)] == 1
    assert after["povfarm_jobs"][(("state", "done"),)] == 1
    assert after["povfarm_jobs"][(("state", "failed"),)] == 1
    assert after["povfarm_units"][(("state", "queued"),)] == 0
    assert after["povfarm_received_bytes_total"][()] > before["povfarm_received_bytes_total"][()]
    assert after["povfarm_sent_bytes_total"][()] > before["povfarm_sent_bytes_total"][()]
    calls = after["povfarm_request_duration_seconds_count"]
    assert sum(calls.get((("method", name),), 0) for name in ("nodes.complete", "nodes.complete_and_poll")) >= 2
    assert calls[(("method", "GET /metrics"),)] >= 2
    assert after["povfarm_connections"][(("state", "node"),)] >= 1
    assert after["povfarm_queue_age_seconds"][()] == 0
    disk = after["povfarm_disk_bytes"]
    assert disk[(("what", "database"),)] > 0 and disk[(("what", "capacity"),)] > 0
