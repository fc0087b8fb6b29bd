"""Running the real `povray` program: command lines, processes, and reading its text.

Everything here is an edge: it builds argv, starts a process in a group of its own
(so its whole tree can be stopped; how is up to farm/hostos.py), and reads POV-Ray's stderr for
progress and error messages. It knows nothing about the controller.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import signal
import subprocess
import time
from pathlib import Path, PureWindowsPath
from typing import TYPE_CHECKING, Callable, Sequence

from farm.hostos import HOST, Host, Limits
from farm.povtext import PROGRESS, is_section_line

if TYPE_CHECKING:
    from farm.rendering.reaper import Reaper

log = logging.getLogger(__name__)

TERMINATE_GRACE = 3.0   # seconds between asking a process group to stop and killing it
EARLY_EVERY = 0.05      # seconds between two looks at whether a run's work is done (a few file sizes)
_ERROR_START = re.compile(r"(Parse Error|Possible Parse Error|Fatal error|Failed to parse|Render failed|"
                          r"Invalid |Error:|Cannot )")
_SCENE_ERROR = re.compile(r"Parse Error|Fatal error in parser|Failed to parse|Parse halted")
# The system INI Debian ships: it sets the library paths the node's POV-Ray needs.
SYSTEM_INIS = (Path("/etc/povray/3.7/povray.ini"), Path("/usr/local/etc/povray/3.7/povray.ini"))


@dataclasses.dataclass(frozen=True)
class ProcessResult:
    returncode: int | None      # None when it had to be killed and reaped without a code
    signal: int | None          # the signal that ended it, if any
    timed_out: bool
    stopped: bool               # stopped on request (cancel / shutdown)
    seconds: float
    early: bool = False         # its work was seen done before it exited: returncode 0, the process kept on

    def describe(self) -> str:
        """One sentence: how POV-Ray ended, with the signal and what it means in plain words."""
        if self.timed_out:
            return f"POV-Ray was killed by its time limit (strip_timeout) after {self.seconds:.0f} s"
        if self.stopped:
            return "POV-Ray was stopped"
        if self.signal is not None:
            name = signal_name(self.signal)
            meaning = _SIGNAL_MEANINGS.get(name, "killed")
            return f"POV-Ray was stopped by signal {self.signal} {name}: {meaning}".replace("  ", " ")
        if self.returncode in _WINDOWS_STATUS:
            return f"POV-Ray ended with Windows status {self.returncode:#010x}: {_WINDOWS_STATUS[self.returncode]}"
        return f"POV-Ray exited with code {self.returncode}"

    def signalled(self, signum: int) -> "ProcessResult":
        """The same end, known to be by signal `signum` (a wrapper reported it as 128 + signum)."""
        return dataclasses.replace(self, returncode=None, signal=signum)


# What a signal that ends POV-Ray means, in plain words.
_SIGNAL_MEANINGS = {
    "SIGXFSZ": "file too large: it tried to write a file larger than the node allows (max_output_mb)",
    "SIGXCPU": "CPU time limit: it used more processor time than its strip time limit allows",
    "SIGKILL": "killed (the system may have run out of memory, or it was killed from outside)",
    "SIGSEGV": "POV-Ray crashed (segmentation fault)",
    "SIGBUS": "POV-Ray crashed (bus error)",
    "SIGILL": "POV-Ray crashed (illegal instruction)",
    "SIGFPE": "POV-Ray crashed (arithmetic error)",
    "SIGABRT": "POV-Ray aborted (often: out of memory)",
    "SIGTERM": "terminated from outside",
}
# How a Windows program that crashed ends: its exit code is the exception's status.
_WINDOWS_STATUS = {
    0xC0000005: "POV-Ray crashed (access violation)",
    0xC00000FD: "POV-Ray crashed (stack overflow)",
    0xC0000017: "out of memory",
    0xC000001D: "POV-Ray crashed (illegal instruction)",
    0xC0000094: "POV-Ray crashed (arithmetic error)",
    0xC0000409: "POV-Ray aborted (stack buffer overrun)",
    0xC000013A: "stopped by Ctrl-C or the window being closed",
}
_OUT_OF_MEMORY = re.compile(r"bad_alloc|[Oo]ut of memory|[Cc]annot allocate memory")


def signal_name(signum: int) -> str:
    """SIGSEGV for 11, "" for a number that is no signal here."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return ""


def is_signal(signum: int) -> bool:
    return bool(signal_name(signum))


def out_of_memory(stderr: str) -> bool:
    """Whether POV-Ray's text says an allocation failed (its address-space limit was reached)."""
    return bool(_OUT_OF_MEMORY.search(stderr))


def stop_group(process: subprocess.Popen, host: Host) -> None:
    """Ask the process and everything below it to stop (SIGTERM: POV-Ray then closes its files, such as
    a radiosity cache), then its whole tree, then kill the tree if it does not go within the grace
    period."""
    if host.signal_descendants(process.pid):
        try:
            process.wait(TERMINATE_GRACE)
            return
        except subprocess.TimeoutExpired:
            pass
    if not host.stop_tree(process, hard=False):
        return
    try:
        process.wait(TERMINATE_GRACE)
        return
    except subprocess.TimeoutExpired:
        host.stop_tree(process, hard=True)
    process.wait()


@dataclasses.dataclass(frozen=True)
class EarlyEnd:
    """How a run may end before its process does: `done()` says the process's work is complete (its image
    and statistics written); `keeper` starts the process and keeps it afterwards, under `label` (the job and
    unit, for its log), with `folder` waiting for it to end."""
    done: Callable[[], bool]
    keeper: "Reaper"
    label: str
    folder: Path


def run_process(argv: Sequence[str], cwd: Path, env: dict[str, str], log_path: Path,
                timeout: float = 0.0, should_stop: Callable[[], bool] = lambda: False,
                check_every: float = 0.5, limits: Limits | None = None, host: Host = HOST,
                early: EarlyEnd | None = None) -> ProcessResult:
    """Run argv with stdout discarded and stderr into log_path, under `limits` where the platform allows.

    `should_stop` is called about every `check_every` seconds (the node sends heartbeats from it);
    when it returns True, or the timeout passes, the process group is stopped. With `early`, the run also
    ends when `early.done()` (asked every EARLY_EVERY s) says the work is complete: it returns as a success
    seen early, and the process, started by `early.keeper`, is left to it with what is left of the timeout."""
    started = time.monotonic()
    flags = host.popen_options(limits)
    popen = early.keeper.popen if early is not None else subprocess.Popen
    step = min(check_every, EARLY_EVERY) if early is not None else check_every
    with open(log_path, "wb") as log_file:
        process = popen(list(argv), cwd=str(cwd), env=env, stdin=subprocess.DEVNULL,
                        stdout=subprocess.DEVNULL, stderr=log_file, **flags)
        timed_out = stopped = False
        checked = started
        while True:
            try:
                process.wait(step)
                break
            except subprocess.TimeoutExpired:
                pass
            if early is not None and early.done():
                early.keeper.adopt(process, started + timeout if timeout else None, early.label, early.folder)
                return ProcessResult(0, None, False, False, time.monotonic() - started, early=True)
            if time.monotonic() - checked < check_every:
                continue
            checked = time.monotonic()
            if timeout and checked - started > timeout:
                timed_out = True
            elif should_stop():
                stopped = True
            else:
                continue
            stop_group(process, host)
            break
    code = process.returncode
    return ProcessResult(
        returncode=code if code is None or code >= 0 else None,
        signal=-code if code is not None and code < 0 else None,
        timed_out=timed_out, stopped=stopped, seconds=time.monotonic() - started)


def render_command(povray: str, scene: str, width: int, height: int, row_options: Sequence[str],
                   output: Path, file_type: str, threads: int, library_path: Path,
                   user_options: Sequence[str]) -> list[str]:
    """argv for one strip. The farm's own options come last so they win over anything before them."""
    argv = [povray, f"+I{_quoted(scene)}", *user_options, f"+W{width}", f"+H{height}", *row_options,
            f"+O{_quoted(output)}", f"+F{file_type}", f"+L{_quoted(library_path)}", "-D", "-P"]
    if threads > 0:
        argv.append(f"+WT{threads}")
    return argv


def _quoted(path: object) -> str:
    """POV-Ray splits an option's value at spaces unless it is in double quotes (`+I"my scene.pov"`)."""
    text = str(path)
    return f'"{text}"' if " " in text else text


def povray_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment POV-Ray runs in: POVINI points at the system INI, so a `povray.ini`
    that a scene bundle ships in its folder is never applied, yet library paths are the usual ones."""
    env = dict(os.environ if base is None else base)
    for ini in SYSTEM_INIS:
        if ini.is_file():
            env["POVINI"] = str(ini)
            break
    return env


def progress_fraction(log_path: Path) -> float | None:
    """The last `Rendered N of M pixels` in POV-Ray's stderr, as a fraction."""
    try:
        with open(log_path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 4096))
            tail = handle.read()
    except OSError:
        return None
    matches = PROGRESS.findall(tail)
    if not matches:
        return None
    done, total = (int(n) for n in matches[-1])
    return done / total if total else None


_FRAME = re.compile(r"Rendering frame (\d+) of (\d+)")


def frame_index(stderr: str) -> int | None:
    """Which frame of its run (1-based) POV-Ray was on last, from `Rendering frame N of M`."""
    matches = _FRAME.findall(stderr)
    return int(matches[-1][0]) if matches else None


def error_text(stderr: str, tail: bool = True) -> tuple[str, bool]:
    """POV-Ray's error message from its stderr, and whether it is the scene's fault (a parse error).
    Without an error line: its last lines, or nothing when `tail` is false (a process killed by a signal
    leaves only its banner, which explains nothing)."""
    lines = [line for line in stderr.replace("\r", "\n").splitlines() if not is_section_line(line)]
    start = next((i for i, line in enumerate(lines)
                  if _ERROR_START.search(line) and "cannot open the user configuration" not in line), None)
    if start is None:
        message = "\n".join(line for line in lines[-5:] if line.strip()) if tail else ""
    else:
        # "File 'x.pov' line 4: Parse Error: ..." is usually one line, with wrapped continuation lines
        # after it, so keep everything from the first error line on; a long file name can push the
        # error words onto the next line, so take a "File '...' line N:" line just before it too.
        if start > 0 and lines[start - 1].startswith("File '"):
            start -= 1
        message = "\n".join(_unwrapped(line for line in lines[start:] if line.strip()))
    return message, bool(_SCENE_ERROR.search(message))


def _unwrapped(lines) -> list[str]:
    """POV-Ray wraps messages at about 80 columns, continuing on lines that start with a space:
    join them back into whole sentences."""
    joined: list[str] = []
    for line in lines:
        if joined and line.startswith(" ") and not line.startswith("  "):
            joined[-1] += line
        else:
            joined.append(line)
    return joined


def probe(povray: str) -> tuple[str | None, str | None]:
    """(version, None) when `povray` runs, else (None, a sentence saying what is wrong)."""
    try:
        done = subprocess.run([povray, "--version"], stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=30)
    except FileNotFoundError:
        return None, f"POV-Ray was not found as {povray!r}; install it (Debian: apt-get install povray) " \
                     f"or pass --povray PATH"
    except (OSError, subprocess.TimeoutExpired) as err:
        return None, f"POV-Ray at {povray!r} does not run: {err}"
    text = (done.stdout + done.stderr).decode("utf-8", "replace")
    match = re.search(r"POV-Ray (\d+\.\d+[\w.]*)", text)
    if done.returncode != 0 or match is None:
        return None, f"{povray!r} --version failed (exit {done.returncode}); is it POV-Ray 3.7?"
    return match.group(1), None


_STATISTICS = {
    "photons_shot": re.compile(r"Number of photons shot:\s+(\d+)"),
    "radiosity_calculated": re.compile(r"Radiosity samples calculated:\s+(\d+)"),
    "radiosity_reused": re.compile(r"Radiosity samples reused:\s+(\d+)"),
}
_PHOTON_LOAD = "Starting the load of photon file"
# POV-Ray's closing time lines ("  Parse Time:  0 hours  0 minutes  1 seconds (1.234 seconds)"), once per
# frame: the stages of a unit's run, for the node's profile line.
_STAGES = {stage: re.compile(rf"^\s*{label} Time:.*\(([\d.]+) seconds\)", re.MULTILINE)
           for stage, label in (("parse", "Parse"), ("bounding", "Bounding"), ("photons", "Photon"),
                                ("radiosity", "Radiosity"), ("trace", "Trace"))}


def render_statistics(stderr: str) -> dict[str, int]:
    """The figures of POV-Ray's closing statistics that tell whether shared work was reused: photons shot,
    photon_map_loaded (1 when a saved photon map was read instead), radiosity samples calculated and
    reused. Absent figures are left out."""
    found = {name: int(match.group(1)) for name, pattern in _STATISTICS.items()
             if (match := pattern.search(stderr))}
    if _PHOTON_LOAD in stderr:
        found["photon_map_loaded"] = 1
    return found


def stage_seconds(stderr: str) -> dict[str, float]:
    """Seconds POV-Ray says it spent parsing, bounding, shooting photons, pretracing radiosity and tracing,
    summed over the frames of its run (a stage it did not report is 0)."""
    return {stage: sum(float(found) for found in pattern.findall(stderr)) for stage, pattern in _STAGES.items()}


def sharing_report(statistics: dict[str, int]) -> str:
    """One line on shared work, for the node's log: "" when the render used neither photons nor radiosity."""
    parts = []
    if statistics.get("photon_map_loaded"):
        parts.append("photon map loaded")
    elif "photons_shot" in statistics:
        parts.append(f"{statistics['photons_shot']} photons shot")
    if "radiosity_calculated" in statistics:
        parts.append(f"radiosity samples {statistics['radiosity_calculated']} calculated, "
                     f"{statistics.get('radiosity_reused', 0)} reused")
    return "; ".join(parts)


# -- flavours: the console `povray` and POV-Ray for Windows' GUI engine ---------------------------------

CONSOLE = "console"     # `povray` (Unix, Homebrew, a console build on Windows): exits non-zero on error
PVENGINE = "pvengine"   # POV-Ray for Windows' pvengine.exe / pvengine64.exe: a GUI that always exits 0
# Stream files the GUI engine writes its messages to. POV-Ray takes bare names for them and writes them
# beside the output image (it refuses a stream file anywhere else), so they land in the strip's folder.
ALL_STREAM = "povray-streams.txt"
FATAL_STREAM = "povray-fatal.txt"
GUI_INI = "povfarm-render.ini"
PROBE_SCENE = ('#debug concat("povfarm probe: POV-Ray ", str(version, 0, 1), "\\n")\n'
               'camera { location <0, 0, -3> look_at 0 }\nsphere { 0, 1 pigment { rgb 1 } }\n')
_PROBE_VERSION = re.compile(r"povfarm probe: POV-Ray (\d+\.\d+)")
_STREAM_PLACE = re.compile(r"^File: (.*)  Line: (\d+)$")
_STREAM_CONTEXT = re.compile(r"^File Context \((\d+) lines?\):$")
_STREAM_MESSAGE = re.compile(r"^(Possible )?Parse (Error|Warning)|^[A-Z][A-Za-z ]*(Error|Warning):")


def flavour_of(program: str) -> str:
    """PVENGINE for POV-Ray for Windows' GUI program (pvengine.exe, pvengine64.exe...), else CONSOLE.
    Windows paths are read as such on any system (a node may be told `C:\\...\\pvengine64.exe`)."""
    name = PureWindowsPath(program).name.lower()
    return PVENGINE if name.startswith("pvengine") else CONSOLE


def gui_command(console_argv: Sequence[str], ini: Path) -> list[str]:
    """The GUI engine's command line for a console argv: the options go into an INI file, one switch a
    line exactly as on the console's command line, with the message streams sent to files; then
    `/EXIT` (quit when the render ends), `/NR` (do not restore the last session's files) and
    `/RENDER ini`. Only one path is on the command line, so no quoting rules of the GUI matter."""
    program, *options = console_argv
    ini.write_text("\n".join([*options, f"+GA{ALL_STREAM}", f"+GF{FATAL_STREAM}"]) + "\n", encoding="utf-8")
    return [program, "/EXIT", "/NR", "/RENDER", str(ini)]


def gui_outcome(result: ProcessResult, streams_dir: Path, log_path: Path) -> ProcessResult:
    """What the GUI engine's run amounts to, since it exits 0 whatever happens: its message streams,
    in the console's form, become the run's log (so errors, frames and statistics are read as on the
    console), and a fatal message there is an error exit (code 1, as the console's). A crash keeps its
    own exit code; a run that reports nothing and writes no image is judged by the missing image."""
    streams = _read_text(streams_dir / ALL_STREAM)
    fatal = _read_text(streams_dir / FATAL_STREAM)
    with open(log_path, "a", encoding="utf-8") as log_file:
        log_file.write(console_transcript(streams))
    if result.returncode == 0 and not result.timed_out and not result.stopped and fatal.strip():
        return dataclasses.replace(result, returncode=1)
    return result


def console_transcript(streams: str) -> str:
    """POV-Ray's message streams as the console prints them: a stream file says `File: x.pov  Line: 4`,
    then (for a fatal error) `File Context (N lines):` and up to N lines of the scene, then the message;
    the console says `File 'x.pov' line 4: message`."""
    lines = streams.replace("\r", "\n").splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        place = _STREAM_PLACE.match(lines[i])
        i += 1
        if place is None:
            out.append(lines[i - 1])
            continue
        context = _STREAM_CONTEXT.match(lines[i]) if i < len(lines) else None
        if context is not None:
            # Up to N lines of the scene, then the message: the last message-like line in that window
            # (a scene line may look like one too), before any next `File:` line.
            window = range(i + 1, min(i + int(context.group(1)) + 2, len(lines)))
            ends = [j for j in window if _STREAM_MESSAGE.match(lines[j])
                    and not any(_STREAM_PLACE.match(lines[k]) for k in range(i + 1, j))]
            i = ends[-1] if ends else i + 1
        if i < len(lines):
            out.append(f"File '{place.group(1)}' line {place.group(2)}: {lines[i]}")
            i += 1
    return "\n".join(out) + ("\n" if out else "")


def _read_text(path: Path) -> str:
    try:
        return path.read_text("utf-8", "replace")
    except OSError:
        return ""


def probe_gui(program: str, scratch: Path, runner: Callable[..., ProcessResult] = run_process,
              timeout: float = 120.0) -> tuple[str | None, str | None]:
    """(version, None) when the GUI engine renders a one-pixel scene as the farm drives it (INI, streams,
    image), else (None, what is wrong). Its version comes from the scene itself: the GUI has no
    --version."""
    scratch.mkdir(parents=True, exist_ok=True)
    (scratch / "probe.pov").write_text(PROBE_SCENE, encoding="utf-8")
    image = scratch / "probe.png"
    console = [program, "+Iprobe.pov", "+W1", "+H1", f"+O{_quoted(image)}", "+FN", "-D", "-P"]
    log_path = scratch / "probe.log"
    try:
        result = runner(gui_command(console, scratch / GUI_INI), cwd=scratch, env=povray_env(),
                        log_path=log_path, timeout=timeout)
    except OSError as err:
        return None, f"POV-Ray for Windows at {program!r} does not run: {err.strerror or err}"
    result = gui_outcome(result, scratch, log_path)
    transcript = _read_text(log_path)
    match = _PROBE_VERSION.search(transcript)
    if result.returncode != 0 or result.timed_out or not image.is_file() or match is None:
        detail = error_text(transcript)[0] or result.describe()
        return None, (f"POV-Ray for Windows at {program!r} did not render a test scene as the farm drives it "
                      f"(/EXIT /NR /RENDER with an INI file): {detail}")
    return match.group(1), None
