"""Packing a scene into a bundle, on the user's box (`povfarm submit`, `povfarm render`).

`plan_bundle` finds every local file a scene needs by reading its source as POV-Ray would look files
up; `pack` zips them deterministically, so the same files always give the same bytes and the same
"sha256:<hex>" name (`rules.bundle_hash`). Only the client packs: the controller and the node never
import this module.
"""

from __future__ import annotations

import io
import logging
import os
import re
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from farm.bundle.rules import MAX_FILES, MAX_TOTAL_BYTES, check_member_name, is_source
from farm.faults import Code, FarmError

log = logging.getLogger(__name__)

MAX_INCLUDE_DEPTH = 64          # deeper chains are surely generated or broken; stop scanning there

# POV-Ray tries these when a name has no extension (`ttf "cyrvetic"`, `png "map"`):
# its gPOV_File_Extensions table, each in lower and upper case.
_IMPLIED_EXTENSIONS = tuple(
    e for ext in (".inc", ".pov", ".ini", ".png", ".tga", ".ppm", ".pgm", ".gif", ".iff", ".jpg",
                  ".jpeg", ".tif", ".tiff", ".bmp", ".exr", ".hdr", ".sys", ".csv", ".txt",
                  ".df3", ".ttf", ".ttc")
    for e in (ext, ext.upper()))

_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
_ZIP_MODE = (stat.S_IFREG | 0o644) << 16
_ZIP_LEVEL = 6


@dataclass(frozen=True)
class BundlePlan:
    root: Path                 # common ancestor directory of the scene and all its files
    scene: str                 # scene path relative to root, POSIX form
    files: tuple[str, ...]     # every file relative to root (POSIX), sorted, scene included
    library_dirs: tuple[str, ...] = ()   # local library folders (+L) in the bundle, relative to the scene's
                                         # folder (POSIX), in the order POV-Ray searches them


# ---------------------------------------------------------------------------
# Scanning scene source for file names

_TOKEN = re.compile(r'//|/\*|"|#[ \t]*include\b')
_BLOCK = re.compile(r"/\*|\*/")
_STRING_BODY = re.compile(r'[^"\\]*(?:\\.[^"\\]*)*', re.S)   # unrolled: no backtracking
_ESCAPE = re.compile(r'\\([\\"])')
_LOOKS_LIKE_FILE = re.compile(r"[\w.\-/ ]+\.\w{1,5}")


def scan_strings(text: str) -> Iterator[tuple[str, bool]]:
    """Yield (string literal, named by #include) for each string outside comments.

    Only as much of the language as finding file names needs: `//` and nested
    `/* */` comments (inside a block comment only `/*` and `*/` count, as in
    POV-Ray), strings with backslash escapes, and `#include` directly before a
    string. Anything between `#include` and the string (e.g. `concat(`) means
    the name is computed, so it is not marked.
    """
    pos, include_pending = 0, False
    while (m := _TOKEN.search(text, pos)) is not None:
        if include_pending and text[pos:m.start()].strip():
            include_pending = False
        token = m.group()
        if token == "//":
            end = text.find("\n", m.end())
            pos = len(text) if end < 0 else end + 1
        elif token == "/*":
            pos = _skip_block_comment(text, m.end())
        elif token == '"':
            body = _STRING_BODY.match(text, m.end())
            pos = min(body.end() + 1, len(text))
            yield _ESCAPE.sub(r"\1", body.group()), include_pending
            include_pending = False
        else:
            include_pending, pos = True, m.end()


def _skip_block_comment(text: str, pos: int) -> int:
    """Position just after the block comment that opened before pos (nesting counts)."""
    depth = 1
    while depth:
        m = _BLOCK.search(text, pos)
        if m is None:
            return len(text)
        depth += 1 if m.group() == "/*" else -1
        pos = m.end()
    return pos


def scan_ini(text: str) -> Iterator[tuple[str, bool]]:
    """Yield the values of `Key=value` lines of a POV-Ray INI file (files it may name)."""
    for line in text.splitlines():
        line = line.split(";", 1)[0].strip()
        if "=" in line:
            value = line.split("=", 1)[1].strip().strip('"')
            if value:
                yield value, False


def _read_text(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")   # never fails; file names are usually ASCII anyway


def _plausible_relative(name: str) -> bool:
    """Could POV-Ray read this string as a relative file name here?"""
    if not name or len(name) > 4096 or "\\" in name or any(ord(c) < 32 for c in name):
        return False
    return not (name.startswith("/") or re.match(r"[A-Za-z]:", name))


def _candidates(name: str) -> Iterator[str]:
    yield name
    if not os.path.splitext(name)[1]:
        for ext in _IMPLIED_EXTENSIONS:
            yield name + ext


def _resolve(name: str, bases: Iterable[str]) -> list[str]:
    """Existing regular files (absolute, normalized) that `name` may mean."""
    found = []
    for base in bases:
        for candidate in _candidates(name):
            path = os.path.abspath(os.path.join(base, candidate))
            if os.path.isfile(path) and path not in found:
                found.append(path)
    return found


def _references(source: str, scene_dir: str, library: Sequence[str] = ()) -> Iterator[tuple[str, bool]]:
    """(absolute path, named by #include) for each local file the source names."""
    try:
        text = _read_text(Path(source))
    except OSError as exc:
        log.warning("cannot read %s to look for the files it uses: %s", source, exc)
        return
    strings = scan_ini(text) if source.lower().endswith(".ini") else scan_strings(text)
    # POV-Ray's working folder first, then its library paths (+L); the including file's folder last.
    bases = dict.fromkeys([scene_dir, *library, os.path.dirname(source)])
    for name, included in strings:
        if not _plausible_relative(name):
            if name.startswith("/"):
                log.debug("%s: skipping absolute path %s", source, name)
            continue
        paths = _resolve(name, bases)
        if not paths and _LOOKS_LIKE_FILE.fullmatch(name):
            log.debug("%s: %s is not a local file; the node's library path must supply it", source, name)
        for path in paths:
            yield path, included


def _scan_sources(scene: str, extra: Iterable[str] = (), library: Sequence[str] = ()) -> set[str]:
    """The scene, the extra files and every local file reachable from them through string literals,
    looked up beside the scene and in the library folders."""
    scene_dir = os.path.dirname(scene)
    files, scanned = {scene, *extra}, set()
    pending = [(scene, 0)] + [(path, 0) for path in sorted(files - {scene}) if is_source(path)]
    while pending:
        source, depth = pending.pop()
        if source in scanned:
            continue                    # include cycles end here
        scanned.add(source)
        if depth >= MAX_INCLUDE_DEPTH:
            log.warning("%s: includes nested deeper than %s; not scanning further", source, depth)
            continue
        for path, included in _references(source, scene_dir, library):
            files.add(path)
            if included or is_source(path):
                pending.append((path, depth + 1))
    return files


def _expand_assets(assets: Sequence[Path]) -> set[str]:
    """Absolute paths of the given files and of every file under the given directories."""
    files = set()
    for asset in assets:
        path = os.path.abspath(asset)
        if os.path.isfile(path):
            files.add(path)
        elif os.path.isdir(path):
            for dirpath, _dirs, names in os.walk(path):
                files.update(os.path.join(dirpath, n) for n in names
                             if os.path.isfile(os.path.join(dirpath, n)))
        else:
            raise FarmError(Code.BAD_ARGUMENT, f"{asset}: no such asset file or directory")
    return files


def check_scene(scene: Path) -> str:
    """The scene's absolute path; SCENE_NOT_FOUND when it is missing or unreadable."""
    path = os.path.abspath(scene)
    try:
        if not os.path.isfile(path):
            raise FileNotFoundError(path)
        open(path, "rb").close()        # unreadable is as good as missing to the user
    except OSError:
        raise FarmError(Code.SCENE_NOT_FOUND, f"{scene}: no such scene file") from None
    return path


def plan_bundle(scene: Path, assets: Sequence[Path] = (), *, library_paths: Sequence[Path] = (),
                max_files: int = MAX_FILES, max_total: int = MAX_TOTAL_BYTES) -> BundlePlan:
    """Find the files a scene needs.

    Every string literal in the scene source that, taken as a relative path,
    names an existing regular file relative to the scene's directory (POV-Ray's
    working directory) or to the directory of the file containing it is part of
    the bundle; POV-Ray source among them (.pov .inc .mcr .ini, or anything
    named by #include) is scanned in turn. Names found nowhere ("colors.inc")
    are left to the node's own library path. `..` references move the root up
    to the common ancestor. `assets` adds files or whole directories (source
    files among them are scanned like the scene). `library_paths` (POV-Ray's
    +L folders) are searched after the scene's folder, as POV-Ray does; those
    that supply files are named in `library_dirs` so the node searches them too,
    while POV-Ray's own include folders are left to the node's POV-Ray. The
    limits are checked here too, so the user hears about them before uploading.
    """
    path = check_scene(scene)
    library = _local_library(library_paths)
    files = _scan_sources(path, _expand_assets(assets), library)
    root = os.path.commonpath([os.path.dirname(f) for f in files])
    names = sorted(_member_name(f, root) for f in files)
    _check_plan_limits(names, files, max_files, max_total)
    log.debug("bundle for %s: %s files under %s", scene, len(names), root)
    scene_dir = os.path.dirname(path)
    used = [folder for folder in library
            if folder != scene_dir and any(f.startswith(folder + os.sep) for f in files)]
    return BundlePlan(Path(root), _member_name(path, root), tuple(names),
                      tuple(Path(os.path.relpath(folder, scene_dir)).as_posix() for folder in used))


# POV-Ray's own include folders: every node has them, so they are never shipped.
SYSTEM_LIBRARY_ROOTS = ("/usr/share/povray", "/usr/local/share/povray")


def _local_library(library_paths: Sequence[Path]) -> list[str]:
    """Absolute library folders worth searching and shipping: existing ones, not POV-Ray's own."""
    folders = []
    for folder in library_paths:
        path = os.path.abspath(folder)
        if not os.path.isdir(path):
            log.debug("library path %s is not a folder here; the node's POV-Ray must supply it", folder)
            continue
        if path.startswith(SYSTEM_LIBRARY_ROOTS) or path in folders:
            continue
        folders.append(path)
    return folders


def _member_name(path: str, root: str) -> str:
    name = Path(os.path.relpath(path, root)).as_posix()
    try:
        return check_member_name(name)
    except FarmError as exc:
        raise FarmError(Code.BAD_BUNDLE, f"{path} cannot go into a bundle: {exc}") from None


def _check_plan_limits(names: list[str], files: set[str], max_files: int, max_total: int) -> None:
    if len(names) > max_files:
        raise FarmError(Code.BUNDLE_TOO_LARGE,
                        f"the scene needs {len(names)} files; a bundle may hold at most {max_files}")
    total = sum(os.path.getsize(f) for f in files)
    if total > max_total:
        raise FarmError(Code.BUNDLE_TOO_LARGE,
                        f"the scene's files hold {total} bytes; a bundle may hold at most {max_total}")


# ---------------------------------------------------------------------------
# Packing

def pack(plan: BundlePlan) -> bytes:
    """A deterministic zip of the plan's files.

    Sorted names, fixed 1980-01-01 timestamps, fixed 0644 permissions, Unix as
    the creating system and a fixed deflate level: nothing about the user's box
    or the time leaks in, so equal files give equal bytes and an equal hash.
    """
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name in sorted(plan.files):
            info = zipfile.ZipInfo(check_member_name(name), date_time=_ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.create_system = 3
            info.external_attr = _ZIP_MODE
            archive.writestr(info, _read_member(plan.root / name), compresslevel=_ZIP_LEVEL)
    return buffer.getvalue()


def _read_member(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise FarmError(Code.SCENE_NOT_FOUND, f"{path}: cannot read ({exc.strerror})") from None
