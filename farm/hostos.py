"""What the node and its helpers need from the operating system, in one place.

POSIX and Windows start, confine and stop processes differently:

| need | Linux / macOS | Windows |
|---|---|---|
| own process group | a new session (`start_new_session`) | `CREATE_NEW_PROCESS_GROUP` |
| die with the node | Linux: parent-death signal; macOS: none | none: a killed node's POV-Ray runs on to its end |
| stop the whole tree | SIGTERM to the group, then SIGKILL | `taskkill /T` (closes windows), then `taskkill /T /F` |
| resource limits | `resource` (address space, file size, CPU time) | none: only the wall-clock limit |
| lower CPU priority | `nice`, and on Linux its session's autogroup too | `BELOW_NORMAL_PRIORITY_CLASS` |
| sandbox | bubblewrap on Linux only | none |

Everything POSIX-only the farm calls (`os.killpg`, `resource`, `preexec_fn`, SIGKILL...) is called here
and nowhere else. A `Host` is built for one platform name and one command runner, so the Windows
branch is exercised on Linux by giving it `name="win32"` and a runner that records what it is asked.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

try:
    import resource     # imported here, never in a forked child
except ImportError:     # Windows
    resource = None

log = logging.getLogger(__name__)

CREATE_NEW_PROCESS_GROUP = 0x00000200   # the Windows creation flag (subprocess has it only on Windows)
BELOW_NORMAL_PRIORITY_CLASS = 0x00004000
AUTOGROUP = Path("/proc/self/autogroup")
TASKKILL_TIMEOUT = 30.0
PR_SET_PDEATHSIG = 1


@dataclasses.dataclass(frozen=True)
class Limits:
    """Resource limits for one process; 0 means no limit."""
    memory_bytes: int = 0       # RLIMIT_AS: address space
    file_bytes: int = 0         # RLIMIT_FSIZE: the largest file it may write (SIGXFSZ beyond)
    cpu_seconds: int = 0        # RLIMIT_CPU: CPU time over all its threads (SIGXCPU beyond)
    nice: int = 0               # how much lower than its parent's its CPU priority is (0-19)

    def apply(self) -> None:
        """In the child, before exec: lower its priority, and its soft and hard limits (never above the current
        hard limit) where the platform has a `resource` module."""
        if self.nice > 0:
            lower_priority(self.nice)
        if resource is None:
            return
        for which, value in ((resource.RLIMIT_AS, self.memory_bytes), (resource.RLIMIT_FSIZE, self.file_bytes),
                             (resource.RLIMIT_CPU, self.cpu_seconds)):
            if value <= 0:
                continue
            hard = resource.getrlimit(which)[1]
            if hard != resource.RLIM_INFINITY:
                value = min(value, hard)
            resource.setrlimit(which, (value, value))


def lower_priority(nice: int) -> None:
    """In the child, after it began a session of its own: lower its CPU priority by `nice`. On Linux the
    scheduler shares the CPU between sessions first ("autogroups"), so a new session's nice is set too:
    otherwise each POV-Ray, a session of its own, weighs as much as the node's whole session, and eight of
    them left the node (its live blocks, rows and heartbeats) an eighth of the box."""
    level = os.nice(nice)
    try:
        AUTOGROUP.write_text(str(level))
    except OSError:     # no autogroups here (another system, or a kernel without them): nice alone does it
        pass


class Host:
    """Process control for one platform (`name` as in sys.platform); `run` runs helper commands
    (taskkill) and is replaced in tests."""

    def __init__(self, name: str = sys.platform, run: Callable[..., Any] = subprocess.run):
        self.name, self.run = name, run

    @property
    def windows(self) -> bool:
        return self.name == "win32"

    @property
    def linux(self) -> bool:
        return self.name.startswith("linux")

    @property
    def has_limits(self) -> bool:
        """Whether per-process resource limits (memory, file size, CPU time) can be set here."""
        return not self.windows and resource is not None

    @property
    def can_sandbox(self) -> bool:
        """Whether bubblewrap may exist here (Linux only); elsewhere POV-Ray runs unconfined."""
        return self.linux

    # -- starting ----------------------------------------------------------------------------

    def popen_options(self, limits: Limits | None = None, die_with_parent: bool = True) -> dict[str, Any]:
        """Keyword arguments for subprocess.Popen: a process group of its own (so the whole tree can
        be stopped), the lower priority `limits.nice` asks for, and on POSIX the limits and, on Linux, death
        with the parent, set before exec."""
        if self.windows:
            lower = BELOW_NORMAL_PRIORITY_CLASS if limits is not None and limits.nice > 0 else 0
            return {"creationflags": CREATE_NEW_PROCESS_GROUP | lower}
        return {"start_new_session": True, "preexec_fn": self._child_setup(limits, die_with_parent)}

    def _child_setup(self, limits: Limits | None, die_with_parent: bool) -> Callable[[], None] | None:
        """What the child does before exec: die with its parent (Linux: PR_SET_PDEATHSIG, so no orphaned
        POV-Ray keeps burning a CPU on a strip already rendered elsewhere), then lower its limits."""
        prctl = _prctl() if die_with_parent and self.linux else None
        if prctl is None and limits is None:
            return None

        def setup() -> None:
            if prctl is not None:
                prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
            if limits is not None:
                limits.apply()
        return setup

    # -- stopping ----------------------------------------------------------------------------

    def stop_tree(self, process: subprocess.Popen, hard: bool) -> bool:
        """Ask the process and everything it started to stop (kill them when `hard`). False when it
        is already gone."""
        if self.windows:
            if process.poll() is not None:
                return False
            if not self._taskkill(process.pid, hard) and not hard:
                # A program without a window (a console POV-Ray) can only be ended forcefully.
                self._taskkill(process.pid, hard=True)
            return True
        try:
            os.killpg(process.pid, signal.SIGKILL if hard else signal.SIGTERM)
            return True
        except ProcessLookupError:
            return False

    def _taskkill(self, pid: int, hard: bool) -> bool:
        """`taskkill /T` closes the windows of the process and its children (the GUI POV-Ray then ends
        its render and exits); with /F it ends them all at once."""
        argv = ["taskkill", "/PID", str(pid), "/T", *(["/F"] if hard else [])]
        try:
            done = self.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=TASKKILL_TIMEOUT)
        except (OSError, subprocess.SubprocessError) as err:
            log.warning("taskkill of process %s failed: %s", pid, err)
            return False
        return done.returncode == 0

    def signal_descendants(self, pid: int) -> list[int]:
        """Linux: SIGTERM to every process below `pid`, also those in sessions of their own (bubblewrap
        starts POV-Ray in a new session, out of reach of the group signal). Returns them; elsewhere none
        (the whole-tree stop reaches them)."""
        below = descendants(pid) if self.linux else []
        for child in below:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(child, signal.SIGTERM)
        return below

    def interrupt(self, process: subprocess.Popen) -> None:
        """The stop request a `povfarm node` child counts as its second one (stop POV-Ray at once):
        SIGINT on POSIX; on Windows a console group cannot be sent one, so it is stopped outright."""
        if self.windows:
            self.stop_tree(process, hard=True)
        else:
            process.send_signal(signal.SIGINT)

    @staticmethod
    def usable_cores() -> int:
        """The cores this process may run on (its CPU affinity where the system has one: a node pinned with
        taskset, or in a cpuset, has fewer than the box)."""
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except (AttributeError, OSError):    # no affinity on Windows and macOS
            return os.cpu_count() or 1

    def machine(self, boot_id: Path = Path("/proc/sys/kernel/random/boot_id")) -> str:
        """Who shares this box's cores: a digest of the running kernel's boot id (Linux), the same for
        every node on the box, containers included, and different on another box even when it was cloned
        from this one. "" where there is none: such nodes are taken to be on boxes of their own."""
        if not self.linux:
            return ""
        try:
            return hashlib.sha256(boot_id.read_bytes().strip()).hexdigest()[:16]
        except OSError:
            return ""

    # -- the controller ------------------------------------------------------------------------

    def raise_open_files_limit(self) -> None:
        """Many idle or half-open sockets must not make accept() fail: lift the soft limit on open files
        to the hard one, where there is such a limit."""
        if resource is None or self.windows:
            return
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY or hard > soft:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 1 << 20), hard))
            except (ValueError, OSError) as err:
                log.debug("cannot raise the open files limit: %s", err)


def descendants(pid: int) -> list[int]:
    """Linux: every process below `pid`, from /proc. Without /proc: none."""
    found, parents = [], [pid]
    while parents:
        parent = parents.pop()
        for children in Path(f"/proc/{parent}/task").glob("*/children"):
            try:
                kids = [int(kid) for kid in children.read_text().split()]
            except (OSError, ValueError):
                continue
            found += kids
            parents += kids
    return found


@functools.lru_cache(maxsize=1)
def _prctl() -> Callable[..., int] | None:
    """libc's prctl, looked up once in the parent: the child between fork and exec must only call it
    (loading a library there could deadlock when other threads hold the loader's lock)."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes
    return ctypes.CDLL(None, use_errno=True).prctl


HOST = Host()
