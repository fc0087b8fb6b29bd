"""The node's start-up check of POV-Ray: does it run, inside the node's sandbox too, and which version is it.

POV-Ray takes most of a second to start, and a node started again (or the local nodes of `povfarm render`)
would wait for that every time: a success is remembered in a small JSON file, keyed by the POV-Ray binary
and the sandbox program as files, so a changed binary is probed afresh.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import os
from pathlib import Path
from typing import Any, Callable

from farm import atomic
from farm.rendering import povray
from farm.rendering import sandbox as sandboxes

log = logging.getLogger(__name__)


def probe_povray(program: str, sandbox: sandboxes.Sandbox, flavour: str, runner: Callable[..., povray.ProcessResult],
                 cache: Path, scratch: Path) -> tuple[str | None, str | None]:
    """(POV-Ray's version, None) when it runs, inside the sandbox too; else (None, what is wrong).
    A success is remembered in `cache`; `scratch` is where the Windows GUI renders its test scene."""
    key = _probe_key(program, sandbox, flavour)
    remembered = _read_json(cache)
    if key and remembered.get("key") == key:
        return remembered["version"], None
    if flavour == povray.PVENGINE:
        # The GUI has no --version and cannot run in bubblewrap: render a test scene the farm's way.
        version, broken = povray.probe_gui(program, scratch, runner)
    else:
        version, broken = _probe_console(program, sandbox)
    if version and key:
        _write_json(cache, {"key": key, "version": version})
    return version, broken


def _probe_console(program: str, sandbox: sandboxes.Sandbox) -> tuple[str | None, str | None]:
    # Both probes start POV-Ray, which takes a moment: run them side by side.
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        plain = pool.submit(povray.probe, program)
        confined = pool.submit(sandbox.check, [program, "--version"]) if sandbox.confined else None
        version, broken = plain.result()
        problem = confined.result() if confined is not None else ""
    if version and problem:
        return None, (f"POV-Ray runs, but not inside the bubblewrap sandbox ({problem}); install it under "
                      f"/usr or run the node with --sandbox none at your own risk")
    return version, broken


def _probe_key(program: str, sandbox: sandboxes.Sandbox, flavour: str = povray.CONSOLE) -> str:
    """What a probe's answer depends on: the POV-Ray binary (and how it is driven) and the sandbox
    program, as files."""
    parts = [sandbox.kind, flavour]
    for path in (program, sandbox.bwrap):
        if path:
            try:
                info = os.stat(path)
            except OSError:
                return ""
            parts += [os.path.realpath(path), str(info.st_size), str(info.st_mtime_ns)]
    return "|".join(parts)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _write_json(path: Path, value: dict[str, Any]) -> None:
    """Best effort: a cache that cannot be written only costs the next start a moment."""
    try:
        atomic.write(path, json.dumps(value).encode("utf-8"))
    except OSError as err:
        log.debug("cannot remember the POV-Ray probe in %s: %s", path, err)
