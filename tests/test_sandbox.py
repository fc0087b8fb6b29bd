"""Scenes are untrusted: a node confines POV-Ray. Real controller and node processes, real povray,
and scenes that try to write outside their folder and read the node user's files."""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
from pathlib import Path

import pytest

from harness import (ROOT, SCENES, assert_same_pixels, farm_argv, free_port, native_render, needs_povray, submit,
                     wait_ended)
from farm.rendering import sandbox
from farm.rendering import povray
from farm.faults import FarmError

pytestmark = needs_povray

WINEGLASS = SCENES / "advanced/wineglass.pov"
ATTACK_JOB = {"width": 32, "height": 32, "strips": 1}    # a hostile scene needs no more to try its attack
SCENE = """
camera { location <0, 0, -3> look_at 0 }
light_source { <5, 5, -5> rgb 1 }
sphere { 0, 1 pigment { rgb <1, 0, 0> } }
"""


def _bwrap_problem() -> str:
    try:
        sandbox.build("bwrap", sandbox.resolve_program("povray"))
    except FarmError as err:
        return str(err)
    return ""


BWRAP_PROBLEM = _bwrap_problem()
needs_bwrap = pytest.mark.skipif(bool(BWRAP_PROBLEM), reason=f"bubblewrap does not work here: {BWRAP_PROBLEM}")


# -- helpers ---------------------------------------------------------------------------------------

def start_node(farm, name: str, *extra: str, env: dict[str, str]) -> subprocess.Popen:
    """Like farm.start_node, with the node's own environment (its HOME, its PATH)."""
    node = subprocess.Popen(
        farm_argv("node", "--controller", farm.url, "--name", name, "--threads", "1",
                  "--work-dir", str(farm.tmp / name), *extra),
        stdout=subprocess.DEVNULL, stderr=open(farm.tmp / f"{name}.log", "ab"), env=env, cwd=ROOT)
    farm.nodes.append(node)
    return node


class Attack:
    """Scenes that try to get out: write an absolute path, write `../../`, read the node user's files."""

    def __init__(self, tmp: Path, write_target: Path):
        self.home = tmp / "home"
        self.home.mkdir()
        self.secret = f"povfarm_secret_{secrets.token_hex(8)}"
        # `#include` echoes an identifier it does not know; `#read` wants a quoted string.
        (self.home / "ident.inc").write_text(f"{self.secret}\n")
        (self.home / "token.txt").write_text(f'"{self.secret}"\n')
        self.escape = f"escape-{secrets.token_hex(6)}"
        self.write_target = write_target
        self.scenes = tmp / "scenes"
        texts = {
            "write_abs": f'#fopen F "{write_target}" write\n#write (F, "pwned\\n")\n#fclose F\n',
            "write_rel": f'#fopen F "../../{self.escape}" write\n#write (F, "pwned\\n")\n#fclose F\n',
            "include": f'#include "{self.home / "ident.inc"}"\n',
            "read": f'#fopen R "{self.home / "token.txt"}" read\n#read (R, S)\n#fclose R\n'
                    f'#error concat("read: ", S)\n',
        }
        self.paths = {}
        for name, text in texts.items():
            path = self.scenes / name / f"{name}.pov"
            path.parent.mkdir(parents=True)
            path.write_text(text + SCENE)
            self.paths[name] = path

    def node_env(self, **extra: str) -> dict[str, str]:
        return {**os.environ, "HOME": str(self.home), **extra}

    def escapes(self, root: Path) -> list[Path]:
        return list(root.rglob(f"{self.escape}*"))


# -- bubblewrap confines the attack ---------------------------------------------------------------

@needs_bwrap
def test_bwrap_contains_a_scene_that_tries_to_get_out(farm, tmp_path):
    attack = Attack(tmp_path, Path("/var/tmp") / f"povfarm-pwned-{secrets.token_hex(6)}")
    try:
        farm.start_controller()
        start_node(farm, "n1", "--sandbox", "bwrap", env=attack.node_env())
        jobs = {name: submit(farm.client, path, **ATTACK_JOB) for name, path in attack.paths.items()}
        good = submit(farm.client, WINEGLASS, width=96, height=64, strips=2)
        results = {name: wait_ended(farm.client, job, timeout=60) for name, job in jobs.items()}

        for name, result in results.items():
            assert result["state"] == "failed", f"{name}: the attack was not stopped"
            assert re.search(r"Parse Error|Cannot open", result["error"]), (name, result["error"])
        assert "Cannot open user file" in results["write_abs"]["error"]
        assert "(write)" in results["write_rel"]["error"]
        assert "Cannot open include file" in results["include"]["error"]
        assert "(read)" in results["read"]["error"]

        assert not attack.write_target.exists()
        assert not attack.escapes(tmp_path) and not attack.escapes(Path("/var/tmp"))
        leaks = [text for text in [result["error"] for result in results.values()]
                 + [farm.log("n1"), farm.log("controller")] if attack.secret in text]
        assert not leaks, "the node user's secret got out"

        # The farm is unharmed and still renders bit-identical pixels through the sandbox.
        assert farm.client.call("api.version")["api"] == 1
        assert wait_ended(farm.client, good, timeout=60)["state"] == "done"
        (tmp_path / "farm.png").write_bytes(farm.client.call("jobs.fetch", good).data)
        assert_same_pixels(tmp_path / "farm.png", native_render(WINEGLASS, 96, 64, [], tmp_path / "native.png"))
        assert "confined by bubblewrap" in farm.log("n1")
    finally:
        attack.write_target.unlink(missing_ok=True)


def test_without_a_sandbox_the_same_scene_gets_out(farm, tmp_path):
    """Why the default matters: unconfined, POV-Ray 3.7 writes and reads wherever the node's user can.
    (Kept inside tmp_path: the 'outside' here is only outside the strip's folder.)"""
    outside = tmp_path / "outside"
    outside.mkdir()
    attack = Attack(tmp_path, outside / "pwned")
    farm.start_controller()
    start_node(farm, "n1", "--sandbox", "none", env=attack.node_env())
    results = {name: wait_ended(farm.client, submit(farm.client, path, **ATTACK_JOB), timeout=60)
               for name, path in attack.paths.items()}

    assert results["write_abs"]["state"] == "done" and attack.write_target.read_text() == "pwned\n"
    assert results["write_rel"]["state"] == "done" and attack.escapes(tmp_path / "n1")
    assert attack.secret in results["include"]["error"]
    assert attack.secret in results["read"]["error"]
    log = farm.log("n1")
    assert "UNCONFINED" in log and "--sandbox none" in log


# -- choosing the sandbox at start ----------------------------------------------------------------

@pytest.mark.parametrize("bwrap", ["missing", "broken"])
def test_sandbox_bwrap_refuses_to_start_without_a_working_bubblewrap(tmp_path, bwrap):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    if bwrap == "broken":
        fake = bin_dir / "bwrap"
        fake.write_text("#!/bin/sh\necho 'bwrap: No permissions to create new namespace' >&2\nexit 1\n")
        fake.chmod(0o755)
    env = {key: value for key, value in os.environ.items() if not key.startswith("POVFARM_")}
    env.update(PATH=str(bin_dir), HOME=str(tmp_path))
    done = subprocess.run(
        farm_argv("node", "--controller", f"http://127.0.0.1:{free_port()}", "--sandbox", "bwrap",
                  "--povray", "/usr/bin/povray", "--work-dir", str(tmp_path / "work")),
        capture_output=True, text=True, timeout=30, env=env, cwd=ROOT)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("povfarm: error: --sandbox bwrap cannot confine POV-Ray"), \
        done.stderr
    assert ("not installed" if bwrap == "missing" else "does not work here") in lines[0]


def test_auto_without_bubblewrap_warns_loudly_and_still_renders(farm, tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    farm.start_controller()
    start_node(farm, "n1", "--povray", "/usr/bin/povray", env={**os.environ, "PATH": str(empty)})
    job = submit(farm.client, WINEGLASS, width=64, height=48, strips=1)
    assert wait_ended(farm.client, job, timeout=60)["state"] == "done"
    log = farm.log("n1")
    assert "WARNING" in log and "POV-Ray runs UNCONFINED on this node: bubblewrap (bwrap) is not installed" \
        in " ".join(log.split())
    assert "!" * 40 in log, "the warning should stand out"


# -- the pieces --------------------------------------------------------------------------------------

LIMITS = {"Max address space": 1536 * 2**20, "Max file size": 7 * 2**20, "Max cpu time": (10 * 3) + 30}


@pytest.mark.parametrize("kind", ["none", pytest.param("bwrap", marks=needs_bwrap)])
def test_resource_limits_reach_the_process(tmp_path, kind):
    box = sandbox.build(kind, memory_mb=1536, output_mb=7)
    command = box.command(["/bin/sh", "-c", "cat /proc/self/limits >&2"], tmp_path, tmp_path, dict(os.environ),
                          timeout=10, threads=2)
    result = povray.run_process(command.argv, tmp_path, command.env, tmp_path / "log", timeout=20,
                                limits=command.limits)
    assert result.returncode == 0, (tmp_path / "log").read_text()
    text = (tmp_path / "log").read_text()
    for name, value in LIMITS.items():
        soft = re.search(rf"^{name}\s+(\S+)", text, re.M)
        assert soft and soft.group(1) == str(value), f"{name}: {soft and soft.group(1)} != {value}"


@pytest.mark.parametrize("kind", ["none", pytest.param("bwrap", marks=needs_bwrap)])
def test_povray_runs_below_the_nodes_priority_with_no_terminal_to_write_into(tmp_path, kind):
    """Each POV-Ray is a session of its own (so its whole tree can be stopped); Linux shares the CPU between
    sessions first, so the session's autogroup is lowered too, not only the process. Started in a session of
    its own, the sandbox has no controlling terminal (bubblewrap's --new-session guarded against writing
    into it)."""
    box = sandbox.build(kind, nice=7)
    script = "cat /proc/self/autogroup >&2 || true; cut -d' ' -f19 /proc/self/stat >&2; (: </dev/tty) 2>/dev/null " \
             "&& echo tty >&2 || echo no-tty >&2"
    command = box.command(["/bin/sh", "-c", script], tmp_path, tmp_path, dict(os.environ))
    result = povray.run_process(command.argv, tmp_path, command.env, tmp_path / "log", timeout=20,
                                limits=command.limits)
    text = (tmp_path / "log").read_text()
    assert result.returncode == 0, text
    own = os.getpriority(os.PRIO_PROCESS, 0)
    assert re.search(rf"^{own + 7}$", text, re.M), text                       # the process's nice
    if Path("/proc/self/autogroup").exists():
        assert re.search(rf"/autogroup-\d+ nice {own + 7}$", text, re.M), text  # and its session's
    assert text.strip().endswith("no-tty"), text
    with pytest.raises(FarmError, match="0 to 19"):
        sandbox.build(kind, nice=20)


def test_a_file_over_the_size_limit_stops_the_process(tmp_path):
    box = sandbox.build("none", output_mb=1)
    command = box.command(["/usr/bin/dd", "if=/dev/zero", "of=big", "bs=1M", "count=3"], tmp_path, tmp_path, {})
    result = povray.run_process(command.argv, tmp_path, command.env, tmp_path / "log", timeout=20,
                                limits=command.limits)
    assert result.signal == signal.SIGXFSZ and "larger than the node allows" in result.describe(), result
    assert (tmp_path / "big").stat().st_size <= 2**20


def test_the_confined_command_shows_only_the_strip_folder_writable(tmp_path):
    box = sandbox.Sandbox("bwrap", bwrap="/usr/bin/bwrap", system_args=sandbox.system_args("/usr/bin/povray"))
    strip = tmp_path / "strips" / "job1-f1-s0-abc"
    env = {"POVINI": "/etc/povray/3.7/povray.ini", "HOME": "/home/node", "SECRET_TOKEN": "x", "PATH": "/x"}
    argv = box.command(["/usr/bin/povray", "+Iscene.pov"], strip, strip / "scene", env).argv
    pairs = list(zip(argv, argv[1:]))
    assert [b for a, b in pairs if a == "--bind"] == [str(strip)]            # the one writable host path
    assert all(a not in ("--dev-bind", "--bind-try", "--share-net") for a in argv)
    for flag in ("--unshare-all", "--die-with-parent", "--clearenv"):
        assert flag in argv
    assert "--new-session" not in argv       # the node's own new session (popen_options) keeps its lowered priority
    assert argv.index("--clearenv") < argv.index("--setenv")
    setenv = {argv[i + 1]: argv[i + 2] for i, arg in enumerate(argv) if arg == "--setenv"}
    assert setenv["HOME"] == str(strip) and setenv["POVINI"] == env["POVINI"] and "SECRET_TOKEN" not in setenv
    assert not any(arg.startswith("/home") for arg in argv)
    assert argv[-3:] == ["--", "/usr/bin/povray", "+Iscene.pov"]


def test_windows_runs_unconfined_and_says_so():
    box = sandbox.build("auto", platform="win32")
    assert box.kind == "none" and "low-privilege user" in box.warning
    assert box.info() == {"sandbox": "none", "sandbox_warning": box.warning}
    with pytest.raises(FarmError):
        sandbox.build("bwrap", platform="win32")
