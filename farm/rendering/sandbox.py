"""Confining POV-Ray: every submitted scene is untrusted input.

A POV-Ray scene can read and write files (`#fopen`, `#write`, `#read`, and
`#include` echoes a file's first line in its error text), and Debian's POV-Ray
3.7 does not enforce the file I/O restriction of its povray.conf. So a node runs
each POV-Ray under bubblewrap when it can: the system directories read-only,
only the strip's own folder writable (bound at the same path; everything else,
including an empty private `/tmp` and a minimal `/dev`, is read-only), a private
`/proc`, no network and no other namespaces shared, no capabilities, a cleared
environment, and nothing of the node user's home. In every mode the process
also gets resource limits (address space, file size, CPU time), set in the
child before exec.

A `Sandbox` is built once at node start by `build` (which probes bubblewrap
once); `command` turns POV-Ray's argv into what to run for one strip. Building
argv is pure: only `build`, `Sandbox.check` and `Limits.apply` touch the system.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Mapping, Sequence

from farm.faults import Code, FarmError
from farm.hostos import Host, Limits
from farm.rendering.povray import ProcessResult, is_signal

log = logging.getLogger(__name__)

MODES = ("auto", "bwrap", "none")
# Read-only inside the sandbox, when they exist: programs and libraries, POV-Ray's INI, conf and
# include files (/usr/share/povray-3.7, /etc/povray), the dynamic loader's cache, font configuration, and
# Debian's alternatives, through which libraries such as ffmpeg's BLAS are linked.
SYSTEM_PATHS = ("/usr", "/etc/povray", "/etc/ld.so.cache", "/etc/fonts", "/etc/alternatives")
# Top-level directories that are symlinks into /usr on merged-/usr systems, real directories elsewhere.
TOP_LEVEL = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
SANDBOX_PATH = "/usr/local/bin:/usr/bin:/bin"
PASSED_ENV = ("POVINI", "LANG", "LC_ALL")   # all POV-Ray needs from the node's environment
CHECK_TIMEOUT = 30.0
CPU_SLACK_SECONDS = 30


@dataclasses.dataclass(frozen=True)
class Command:
    """What to run for one strip: the (possibly wrapped) argv, its environment and its limits."""
    argv: list[str]
    env: dict[str, str]
    limits: Limits


@dataclasses.dataclass(frozen=True)
class Sandbox:
    kind: str                              # "bwrap" or "none"
    bwrap: str = ""                        # bubblewrap's path when kind == "bwrap"
    system_args: tuple[str, ...] = ()      # bwrap arguments that show the system read-only
    warning: str = ""                      # why POV-Ray runs unconfined, when it does
    memory_mb: int = 0
    output_mb: int = 0
    nice: int = 0                          # POV-Ray's CPU priority below the node's

    @property
    def confined(self) -> bool:
        return self.kind == "bwrap"

    def info(self) -> dict[str, str]:
        """What the node tells the controller at registration."""
        info = {"sandbox": self.kind}
        if self.warning:
            info["sandbox_warning"] = self.warning
        return info

    def limits(self, timeout: float = 0.0, threads: int = 1) -> Limits:
        """The limits for one run. CPU time follows the wall-clock limit: POV-Ray cannot use more than
        its render threads plus its parser thread for that long, so this only catches a runaway
        process that the wall-clock watch missed."""
        cpu = math.ceil(timeout * (max(threads, 1) + 1)) + CPU_SLACK_SECONDS if timeout > 0 else 0
        return Limits(memory_bytes=self.memory_mb * 2**20, file_bytes=self.output_mb * 2**20, cpu_seconds=cpu,
                      nice=self.nice)

    def command(self, argv: Sequence[str], strip_dir: Path, cwd: Path, env: Mapping[str, str],
                timeout: float = 0.0, threads: int = 1) -> Command:
        """argv, environment and limits to run POV-Ray for one strip. Its `~` is the strip folder,
        so POV-Ray's user configuration lookups (~/.povray) stay inside it."""
        inner = dict(env, HOME=str(strip_dir))
        limits = self.limits(timeout, threads)
        if not self.confined:
            return Command(list(argv), inner, limits)
        inner = {key: inner[key] for key in PASSED_ENV if key in inner}
        inner.update(PATH=SANDBOX_PATH, HOME=str(strip_dir), TMPDIR=str(strip_dir))
        # The strip folder is the one writable place: the sandbox's own root, its /tmp (which may hold the
        # strip folder's parents) and /dev (whose device nodes stay usable) are remounted read-only.
        wrapped = [self.bwrap, *self.system_args, "--bind", str(strip_dir), str(strip_dir),
                   "--remount-ro", "/", "--remount-ro", "/tmp", "--remount-ro", "/dev",
                   "--chdir", str(cwd), "--clearenv"]
        for key, value in sorted(inner.items()):
            wrapped += ["--setenv", key, value]
        return Command([*wrapped, "--", *argv], {"PATH": SANDBOX_PATH}, limits)

    def outcome(self, result: ProcessResult) -> ProcessResult:
        """How POV-Ray itself ended. bubblewrap exits with 128 + N when the program inside was killed by
        signal N (153: SIGXFSZ, 139: SIGSEGV); its own failures are small codes."""
        code = result.returncode
        if self.confined and code is not None and code > 128 and is_signal(code - 128):
            return result.signalled(code - 128)
        return result

    def check(self, argv: Sequence[str]) -> str:
        """Run argv in the sandbox, in a scratch folder. '' when it exits 0, else what went wrong."""
        scratch = Path(tempfile.mkdtemp(prefix="povfarm-sandbox-check-"))
        try:
            command = self.command(argv, scratch, scratch, {})
            done = subprocess.run(command.argv, env=command.env, cwd=scratch, stdin=subprocess.DEVNULL,
                                  capture_output=True, timeout=CHECK_TIMEOUT)
        except (OSError, subprocess.SubprocessError) as err:
            return str(err)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        if done.returncode == 0:
            return ""
        text = (done.stderr or done.stdout).decode("utf-8", "replace").strip()
        return text.splitlines()[-1] if text else f"exit code {done.returncode}"


def system_args(povray: str = "", root: Path = Path("/")) -> tuple[str, ...]:
    """bwrap arguments for the read-only system: the paths in SYSTEM_PATHS, the top-level
    /bin, /lib... as they are on this machine (symlinks or directories), the POV-Ray program
    itself when it lives elsewhere, a new /proc, a minimal /dev and an empty /tmp."""
    # No --new-session: the node starts bubblewrap in a session of its own already (hostos.Host.popen_options),
    # with no controlling terminal for the sandbox to write into, and that session's CPU priority is the one
    # the node lowered (a second one would be a new autogroup at the default priority).
    args = ["--unshare-all", "--die-with-parent", "--cap-drop", "ALL"]
    for path in SYSTEM_PATHS:
        args += ["--ro-bind-try", path, path]
    for name in TOP_LEVEL:
        path = root / name
        if path.is_symlink():
            args += ["--symlink", os.readlink(path), f"/{name}"]
        elif path.is_dir():
            args += ["--ro-bind", f"/{name}", f"/{name}"]
    args += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
    if povray and not any(_under(povray, top) for top in (*SYSTEM_PATHS, *(f"/{n}" for n in TOP_LEVEL))):
        args += ["--ro-bind", povray, povray]   # after /tmp, which it may live under
    return tuple(args)


def _under(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


def resolve_program(program: str) -> str:
    """The real path of a program given by name or path ('' when it cannot be found)."""
    found = shutil.which(program)
    return os.path.realpath(found) if found else ""


def _unconfined(reason: str) -> str:
    return (f"POV-Ray runs UNCONFINED on this node: {reason}. Every scene submitted to the farm can read "
            f"and write any file this node's user can (POV-Ray 3.7 does not enforce its own file I/O "
            f"restriction), so run the node only for scenes you trust, as a user that owns nothing of value.")


def build(mode: str, povray: str = "povray", memory_mb: int = 0, output_mb: int = 0,
          platform: str = sys.platform, nice: int = 0) -> Sandbox:
    """The node's sandbox for `--sandbox MODE`, probing bubblewrap once. Raises FarmError with one
    sentence when MODE is bwrap and bubblewrap cannot be used."""
    if mode not in MODES:
        raise FarmError(Code.BAD_ARGUMENT, f"--sandbox takes {', '.join(MODES)}, not {mode!r}")
    if not 0 <= nice <= 19:
        raise FarmError(Code.BAD_ARGUMENT, f"render_nice (--render-nice) takes 0 to 19, not {nice}")
    limits = {"memory_mb": max(0, memory_mb), "output_mb": max(0, output_mb), "nice": nice}
    if not Host(platform).can_sandbox:
        if mode == "bwrap":
            raise FarmError(Code.BAD_ARGUMENT, "--sandbox bwrap needs Linux (bubblewrap); on this system the node "
                                               "cannot confine POV-Ray, so run it as a low-privilege user with "
                                               "--sandbox none.")
        where = {"win32": "Windows", "darwin": "macOS"}.get(platform, "this system")
        unlimited = "" if Host(platform).has_limits else " (nor memory or file-size limits: only the wall-clock " \
                                                            "--strip-timeout)"
        return Sandbox("none", warning=_unconfined(f"{where} has no sandbox the node can use{unlimited}; run the "
                                                   f"node as a dedicated low-privilege user"), **limits)
    if mode == "none":
        return Sandbox("none", warning=_unconfined("--sandbox none was given, which is unsafe for "
                                                   "untrusted scenes"), **limits)
    bwrap = shutil.which("bwrap") or ""
    problem = "bubblewrap (bwrap) is not installed or not on PATH" if not bwrap else ""
    sandbox = Sandbox("bwrap", bwrap=bwrap, system_args=system_args(resolve_program(povray)), **limits)
    if bwrap:
        trivial = resolve_program("true") or "/usr/bin/true"
        detail = sandbox.check([trivial])
        if detail:
            problem = f"bubblewrap at {bwrap} does not work here ({detail})"
    if not problem:
        return sandbox
    if mode == "bwrap":
        raise FarmError(Code.BAD_ARGUMENT, f"--sandbox bwrap cannot confine POV-Ray: {problem}; install "
                                           f"bubblewrap (Debian: apt-get install bubblewrap) and allow "
                                           f"user namespaces, or choose --sandbox auto or none.")
    return Sandbox("none", warning=_unconfined(f"{problem}; install it (Debian: apt-get install bubblewrap)"),
                   **limits)


def warning_banner(text: str, width: int = 78) -> str:
    """A multi-line block that stands out in a log."""
    rule = "!" * width
    return "\n".join(["", rule, *textwrap.wrap(text, width), rule])
