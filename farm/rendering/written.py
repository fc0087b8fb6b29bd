"""The files a scene writes (`#fopen ... write`) while a node's POV-Ray renders a unit: what is new or changed
in the scene's folder after the run, packed for the controller (farm.scenefiles). The farm's own files there
(shared photon maps and radiosity caches) and POV-Ray's `Parse_String` scratch file are not the scene's."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from farm import scenefiles
from farm.faults import FarmError
from farm.radiosity import CACHE_FILE, WRAPPER_SCENE
from farm.rendering.photons import PHOTON_FILE

log = logging.getLogger(__name__)

NOT_THE_SCENES = frozenset({CACHE_FILE, WRAPPER_SCENE, PHOTON_FILE, "parse_string.tmp"})
MAX_WALK = 10_000                # entries looked at in the scene's folder, before and after


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Each regular file under `folder` (relative POSIX name) -> (size, modification time in ns)."""
    found: dict[str, tuple[int, int]] = {}
    for root, dirs, names in os.walk(folder):
        dirs.sort()
        for name in sorted(names):
            path = os.path.join(root, name)
            try:
                info = os.lstat(path)
            except OSError:
                continue
            if os.path.isfile(path) and not os.path.islink(path):
                found[Path(path).relative_to(folder).as_posix()] = (info.st_size, info.st_mtime_ns)
            if len(found) >= MAX_WALK:
                return found
    return found


def collect(folder: Path, before: dict[str, tuple[int, int]], order: tuple[int, int]) -> bytes:
    """A zip of the files new or changed under `folder` since `before` (b"" when none). Beyond the bounds
    of farm.scenefiles, the first files by name that fit are sent and the rest left out with a warning."""
    changed = sorted(name for name, stamp in snapshot(folder).items()
                     if before.get(name) != stamp and os.path.basename(name) not in NOT_THE_SCENES)
    files: dict[str, bytes] = {}
    total, left_out = 0, []
    for name in changed:
        try:
            data = (folder / name).read_bytes()
            scenefiles.check({name: b""})
        except (OSError, FarmError):
            left_out.append(name)
            continue
        if len(files) >= scenefiles.MAX_FILES or total + len(data) > scenefiles.MAX_BYTES:
            left_out.append(name)
            continue
        files[name] = data
        total += len(data)
    if left_out:
        log.warning("the scene wrote %s, which are not sent back (more than %s files or %s bytes, or unreadable)",
                    scenefiles.shown(left_out), scenefiles.MAX_FILES, scenefiles.MAX_BYTES)
    return scenefiles.pack(files, order) if files else b""
