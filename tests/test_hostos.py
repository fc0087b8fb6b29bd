"""The platform layer: the Windows branch through a recording runner, the POSIX one for real."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from farm import hostos
from farm.rendering import sandbox
from harness import wait_until

ROOT = Path(__file__).resolve().parent.parent


class Recorder:
    """Stands in for subprocess.run: records each command, answers with a return code."""

    def __init__(self, returncode: int = 0):
        self.calls: list[list[str]] = []
        self.returncode = returncode

    def __call__(self, argv, **kwargs):
        self.calls.append(list(argv))
        return subprocess.CompletedProcess(argv, self.returncode, b"", b"")


class FakeProcess:
    pid = 4242

    def __init__(self, returncode=None):
        self.signals: list[int] = []
        self.returncode = returncode

    def send_signal(self, signum):
        self.signals.append(signum)

    def poll(self):
        return self.returncode


def test_windows_starts_a_new_process_group_without_posix_hooks():
    options = hostos.Host("win32").popen_options(hostos.Limits(memory_bytes=1 << 30))
    assert options == {"creationflags": hostos.CREATE_NEW_PROCESS_GROUP}
    lowered = hostos.Host("win32").popen_options(hostos.Limits(nice=10))
    assert lowered == {"creationflags": hostos.CREATE_NEW_PROCESS_GROUP | hostos.BELOW_NORMAL_PRIORITY_CLASS}


def test_windows_stops_the_whole_tree_with_taskkill():
    runner = Recorder()
    host = hostos.Host("win32", run=runner)
    assert host.stop_tree(FakeProcess(), hard=False)
    assert host.stop_tree(FakeProcess(), hard=True)
    assert runner.calls == [["taskkill", "/PID", "4242", "/T"], ["taskkill", "/PID", "4242", "/T", "/F"]]


def test_windows_a_process_without_a_window_is_ended_forcefully_at_once():
    runner = Recorder(returncode=1)      # taskkill without /F cannot end a console program
    assert hostos.Host("win32", run=runner).stop_tree(FakeProcess(), hard=False)
    assert runner.calls == [["taskkill", "/PID", "4242", "/T"], ["taskkill", "/PID", "4242", "/T", "/F"]]


def test_windows_a_process_already_gone_is_left_alone():
    runner = Recorder()
    assert not hostos.Host("win32", run=runner).stop_tree(FakeProcess(returncode=0), hard=False)
    assert runner.calls == []


def test_windows_interrupt_stops_the_tree_at_once():
    runner = Recorder()
    process = FakeProcess()
    hostos.Host("win32", run=runner).interrupt(process)
    assert runner.calls == [["taskkill", "/PID", "4242", "/T", "/F"]] and process.signals == []


def test_windows_has_no_limits_and_no_sandbox_and_says_so():
    host = hostos.Host("win32")
    assert not host.has_limits and not host.can_sandbox and not host.signal_descendants(1)
    box = sandbox.build("auto", platform="win32", memory_mb=100)
    assert box.kind == "none" and "Windows" in box.warning and "UNCONFINED" in box.warning
    assert "memory" in box.warning and "--strip-timeout" in box.warning


def test_macos_runs_unconfined_with_the_warning_but_keeps_its_limits():
    box = sandbox.build("auto", platform="darwin")
    assert box.kind == "none" and "macOS" in box.warning and "UNCONFINED" in box.warning
    assert "file-size" not in box.warning
    assert hostos.Host("darwin").has_limits and not hostos.Host("darwin").can_sandbox
    with pytest.raises(Exception, match="needs Linux"):
        sandbox.build("bwrap", platform="darwin")


@pytest.mark.skipif(sys.platform == "win32", reason="the POSIX branch")
def test_posix_stop_tree_reaches_grandchildren(tmp_path):
    host = hostos.Host()
    marker = tmp_path / "grandchild.pid"
    script = (f"import subprocess, time; p = subprocess.Popen(['sleep', '60']); "
              f"open({str(marker)!r}, 'w').write(str(p.pid)); time.sleep(60)")
    process = subprocess.Popen([sys.executable, "-c", script], **host.popen_options())
    wait_until(lambda: marker.exists() and marker.read_text(), timeout=10, interval=0.05,
               what="the child to start its grandchild")
    grandchild = int(marker.read_text())
    assert host.stop_tree(process, hard=False)
    assert process.wait(10) == -15
    wait_until(lambda: not Path(f"/proc/{grandchild}").exists() or "Z" in _state(grandchild), timeout=10,
               interval=0.05, what="the grandchild to end")


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][:1]
    except OSError:
        return "Z"


POSIX_ONLY = re.compile(r"os\.killpg|os\.setsid|start_new_session|import resource|resource\.|signal\.SIGKILL"
                        r"|preexec_fn|fcntl|import pwd|\bpwd\.|os\.getuid|os\.fork\b")


def test_nothing_posix_only_outside_the_platform_layer_on_the_node_side():
    """No module calls a POSIX-only process API except through farm/hostos.py."""
    offenders = []
    for path in sorted((ROOT / "farm").rglob("*.py")):
        if path.name == "hostos.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if POSIX_ONLY.search(line) and "SIGKILL\":" not in line:
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert offenders == []


class StubbornProcess(FakeProcess):
    """Ignores the polite request: its first wait times out."""

    def __init__(self):
        super().__init__()
        self.waits = 0

    def wait(self, timeout=None):
        self.waits += 1
        if self.waits == 1:
            raise subprocess.TimeoutExpired("pvengine64.exe", timeout)
        return 0


def test_windows_stopping_povray_asks_then_ends_the_whole_tree():
    from farm.rendering import povray

    runner = Recorder()
    process = StubbornProcess()
    povray.stop_group(process, hostos.Host("win32", run=runner))
    assert runner.calls == [["taskkill", "/PID", "4242", "/T"], ["taskkill", "/PID", "4242", "/T", "/F"]]
    assert process.waits == 2 and process.signals == []
