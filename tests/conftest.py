"""Fixtures; the helpers they are built on are in harness.py.

- `farm`: a real controller and nodes as processes on 127.0.0.1 (harness.LocalFarm), started by the test;
- `stepped`: the controller's API and rules over a store, without the network, with a fake clock;
- `server`: a real controller serving on a free port, in this process;
- `scene`: a small scene file, `s.pov`.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from farm.config import Config
from farm.controller import Controller
from harness import LocalFarm, Stepped, stepped_farm, write_scene


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under CI=true a test that needs POV-Ray and was skipped is a failure: a box without POV-Ray or its
    example scenes must not pass by skipping the renders."""
    outcome = yield
    report = outcome.get_result()
    if (report.skipped and os.environ.get("CI") == "true"
            and any(mark.kwargs.get("reason", "").startswith("needs povray") or mark.name == "povray"
                    for mark in item.iter_markers())):
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, which must not happen: {report.longrepr}"


@pytest.fixture
def farm(tmp_path, monkeypatch) -> LocalFarm:
    farm = LocalFarm(tmp_path)
    # Every CLI and node process started by the test finds the controller's role file this way.
    monkeypatch.setenv("POVFARM_TOKEN_FILE", str(farm.token_file))
    monkeypatch.delenv("POVFARM_TOKEN", raising=False)
    yield farm
    farm.stop()


@pytest.fixture
def stepped(tmp_path) -> Stepped:
    controller, store = stepped_farm(tmp_path / "data")
    yield controller
    store.close()


@pytest.fixture
def server(tmp_path) -> Controller:
    controller = Controller(Config(data_dir=tmp_path / "data", port=0))
    controller.start_in_thread()
    yield controller
    controller.shutdown()


@pytest.fixture
def scene(tmp_path) -> Path:
    return write_scene(tmp_path / "scene")
