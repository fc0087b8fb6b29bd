"""A small bundle comes with a node's first lease of it (farm/service/inline.py, features.INLINE_BUNDLES), so the
node's first unit of a job waits for no download of its own; nodes and controllers without it go on as before."""

from __future__ import annotations

import threading

from harness import (SCENES, assert_same_pixels, native_render, needs_povray, register_node, submit, wait_ended,
                     write_scene)
from farm.bundle.cache import BundleCache
from farm.features import OLDEST
from farm.rendering.downloads import INLINE_KEPT, Downloads
from farm.service.inline import InlineBundles
from farm.wire import Binary


def test_a_small_bundle_goes_inline_once_per_node_and_a_large_one_never(tmp_path):
    small, large = tmp_path / "small.zip", tmp_path / "large.zip"
    small.write_bytes(b"s" * 100)
    large.write_bytes(b"l" * 101)
    inline = InlineBundles(lambda digest: tmp_path / f"{digest}.zip", limit=100, remembered=2)
    assert inline.take("n1", "small") == b"s" * 100
    assert inline.take("n1", "small") is None             # sent already: the node has it
    assert inline.take("n2", "small") == b"s" * 100        # another node has not
    assert inline.take("n1", "large") is None and inline.take("n1", "missing") is None
    assert inline.take("n3", "small") == b"s" * 100        # three pairs: n1's, the oldest, is forgotten
    assert inline.take("n1", "small") == b"s" * 100


def test_a_poll_that_takes_bundles_inline_gets_the_bundle_with_the_nodes_first_lease_of_it(stepped, tmp_path):
    job = submit(stepped, write_scene(tmp_path / "scene"), width=4, height=128, strips=4)
    first, second = register_node(stepped, "first"), register_node(stepped, "second")
    task = stepped.call("nodes.poll", first, 0, True)
    assert isinstance(task["bundle_data"], Binary) and task["job"] == job
    assert "bundle_data" not in stepped.call("nodes.poll", first, 0, True)     # its second unit: not again
    assert "bundle_data" not in stepped.call("nodes.poll", second, 0)          # an older node: never
    assert "bundle_data" in stepped.call("nodes.poll", second, 0, True)
    data = stepped.call("bundles.fetch", task["bundle"])
    assert task["bundle_data"].data == data.data


class Recorder:
    def __init__(self):
        self.calls = []

    def call(self, method, *args):
        self.calls.append((method, *args))
        return Binary(b"fetched")


def downloads(client, features):
    return Downloads(client, BundleCache(client.cache_dir), lambda: features, threading.Event(), lambda d, c: 0.0)


def test_a_bundle_that_came_with_a_lease_spares_its_download_once(tmp_path):
    client = Recorder()
    client.cache_dir = tmp_path / "cache"
    got = downloads(client, OLDEST)
    got.keep({"bundle": "sha256:aa", "bundle_data": Binary(b"inline")})
    got.keep({"bundle": "sha256:bb"})
    got.keep({})
    assert got.fetch("sha256:aa") == b"inline" and client.calls == []
    assert got.fetch("sha256:aa") == b"fetched" and client.calls == [("bundles.fetch", "sha256:aa")]
    for index in range(INLINE_KEPT + 1):          # bounded: the oldest is dropped
        got.keep({"bundle": f"sha256:{index}", "bundle_data": Binary(b"x")})
    assert got.fetch("sha256:0") == b"fetched" and got.fetch(f"sha256:{INLINE_KEPT}") == b"x"


@needs_povray
def test_a_node_renders_its_first_unit_from_the_bundle_that_came_with_the_lease(farm, tmp_path):
    farm.start_controller()
    farm.start_node("n")
    scene = SCENES / "advanced/wineglass.pov"
    job = submit(farm.client, scene, width=160, height=120, strips=2)
    final = wait_ended(farm.client, job)
    assert final["state"] == "done", final["error"]
    assert "came with the lease" in farm.log("n")
    fetched = tmp_path / "farm.png"
    fetched.write_bytes(farm.client.call("jobs.fetch", job).data)
    assert_same_pixels(fetched, native_render(scene, 160, 120, [], tmp_path / "native.png"))
