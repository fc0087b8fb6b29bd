"""Scene bundles: a scene file plus every local file it needs, in one archive.

`povfarm submit scene.pov` plans and packs the bundle on the user's box; the
controller stores it by its hash; each node fetches it once, checks the hash,
keeps it unpacked in a `BundleCache` and renders in a private copy of it.

The archive is a plain zip made deterministically, so the same files always
give the same bytes and the same "sha256:<hex>" name. Bundles arrive from the
network, so nothing in one is trusted: member names, entry types and sizes are
checked before anything touches the disk, and extraction counts real bytes.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import shutil
import stat
import struct
import tempfile
import threading
import time
import unicodedata
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Iterator, Sequence

from farm.faults import Code, FarmError

log = logging.getLogger(__name__)

MAX_FILES = 2000
MAX_TOTAL_BYTES = 256 * 1024 * 1024
MAX_INCLUDE_DEPTH = 64          # deeper chains are surely generated or broken; stop scanning there
MAX_NAME_PART = 255             # bytes per path part: what common filesystems allow

HASH_PREFIX = "sha256:"
_HEX_DIGEST = re.compile(r"[0-9a-f]{64}")

# Files POV-Ray parses as scene language, so names inside them matter too.
SOURCE_SUFFIXES = frozenset({".pov", ".inc", ".mcr", ".ini"})
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
_CHUNK = 1 << 16
_PARTIAL = ".partial-"          # marks temporary unpack directories
_STALE_PARTIAL_SECONDS = 3600
_DOWNLOAD = ".download"           # a bundle's bytes gathering while it is downloaded
# A cut-short download is kept this long after its last byte came, for a retry or a restarted node to
# resume; older, its job is most likely over, and a later one starts afresh.
STALE_DOWNLOAD_SECONDS = 24 * 3600


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


def is_source(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in SOURCE_SUFFIXES


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
    path = os.path.abspath(scene)
    try:
        if not os.path.isfile(path):
            raise FileNotFoundError(path)
        open(path, "rb").close()        # unreadable is as good as missing to the user
    except OSError:
        raise FarmError(Code.SCENE_NOT_FOUND, f"{scene}: no such scene file") from None
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
# Packing and names

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


def bundle_hash(data: bytes) -> str:
    """The bundle's content address: "sha256:<hex>"."""
    return HASH_PREFIX + hashlib.sha256(data).hexdigest()


def parse_digest(digest: str) -> str:
    """The hex part of a "sha256:<hex>" bundle hash; BAD_ARGUMENT if malformed."""
    if (not isinstance(digest, str) or not digest.startswith(HASH_PREFIX)
            or not _HEX_DIGEST.fullmatch(digest[len(HASH_PREFIX):])):
        raise FarmError(Code.BAD_ARGUMENT, f"{digest!r} is not a bundle hash (sha256:<64 hex digits>)")
    return digest[len(HASH_PREFIX):]


def check_member_name(name: str) -> str:
    """Return name if it is a safe relative POSIX path inside a bundle, else BAD_BUNDLE.

    Refused: absolute paths, drive letters and any colon (Windows streams),
    backslashes, control characters (NUL included), empty, '.' and '..' parts,
    and parts too long for common filesystems. What passes stays inside the
    extraction directory on both POSIX and Windows nodes.
    """
    def bad(why: str) -> FarmError:
        return FarmError(Code.BAD_BUNDLE, f"bundle member {name!r}: {why}")

    if not isinstance(name, str) or not name:
        raise bad("empty name")
    if any(unicodedata.category(c) == "Cc" for c in name):
        raise bad("control characters are not allowed")
    if "\\" in name:
        raise bad("backslashes are not allowed")
    if name.startswith("/"):
        raise bad("absolute paths are not allowed")
    if ":" in name:
        raise bad("drive letters and colons are not allowed")
    for part in name.split("/"):
        if part in ("", ".", ".."):
            raise bad(f"{part!r} is not allowed as a path part")
        if len(part.encode("utf-8", "surrogatepass")) > MAX_NAME_PART:
            raise bad("a path part is too long")
    return name


# ---------------------------------------------------------------------------
# Checking and unpacking

def _open_zip(data: bytes | BinaryIO, max_files: int = MAX_FILES) -> zipfile.ZipFile:
    """The archive in `data`: bytes, or an open binary file (a large upload is never read into memory).
    Its entry count and directory size are checked first, from its end records: zipfile makes an object
    of every entry before anyone can count them."""
    handle = data if hasattr(data, "read") else io.BytesIO(data)
    try:
        entries, directory = _directory_extent(handle)
        if entries > max_files:
            raise FarmError(Code.BUNDLE_TOO_LARGE, f"the bundle has {entries} files; at most {max_files} "
                                                   f"are allowed")
        if directory > max_files * MAX_DIRECTORY_ENTRY:
            raise FarmError(Code.BUNDLE_TOO_LARGE, f"the bundle's directory is {directory} bytes; at most "
                                                   f"{max_files * MAX_DIRECTORY_ENTRY} are allowed")
        return zipfile.ZipFile(handle)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError, OSError, struct.error) as exc:
        raise FarmError(Code.BAD_BUNDLE, f"the bundle is not a readable zip archive ({exc})") from None


# The records at a zip's end that say where its central directory is and how many entries it has.
_END = struct.Struct("<4s4H2LH")
_END_SIGNATURE = b"PK\x05\x06"
_END64_LOCATOR = struct.Struct("<4sLQL")
_END64 = struct.Struct("<4sQ2H2L4Q")
MAX_DIRECTORY_ENTRY = 1024     # bytes per member, on average, of a bundle's central directory


def _directory_extent(handle: BinaryIO) -> tuple[int, int]:
    """(entries, bytes of the central directory) as the archive's end records declare them, found as
    zipfile finds them: the end record in the last 22 bytes, else the last one in the last 64 KiB; and
    a zip64 record before it when its locator is there (read both where Python 3.11 looks for it and
    where the locator points, as later Pythons do, and the larger figures count)."""
    handle.seek(0, os.SEEK_END)
    size = handle.tell()      # (an mmap's seek returns nothing)
    start = max(size - _END.size - 0xFFFF, 0)
    handle.seek(start)
    tail = handle.read()
    at = len(tail) - _END.size
    if not (at >= 0 and tail[at:at + 4] == _END_SIGNATURE and tail[-2:] == b"\0\0"):
        at = tail.rfind(_END_SIGNATURE)
    if at < 0 or len(tail) - at < _END.size:
        raise zipfile.BadZipFile("File is not a zip file")
    end = _END.unpack_from(tail, at)
    entries, directory = end[4], end[5]
    locator_at = start + at - _END64_LOCATOR.size
    if locator_at < 0:
        return entries, directory
    handle.seek(locator_at)
    locator = _END64_LOCATOR.unpack(handle.read(_END64_LOCATOR.size))
    if locator[0] != b"PK\x06\x07":
        return entries, directory
    readings = []     # a valid zip64 record replaces the end record's figures, else they stand
    for record_at in {locator_at - _END64.size, locator[2]}:
        record = None
        if 0 <= record_at <= size - _END64.size:
            handle.seek(record_at)
            record = _END64.unpack(handle.read(_END64.size))
        valid = record is not None and record[0] == b"PK\x06\x06"
        readings.append((max(record[6], record[7]), record[8]) if valid else (entries, directory))
    return max(reading[0] for reading in readings), max(reading[1] for reading in readings)


def _check_entry(info: zipfile.ZipInfo) -> str:
    if info.is_dir():
        raise FarmError(Code.BAD_BUNDLE, f"bundle member {info.orig_filename!r}: "
                                         "directory entries are not allowed")
    # orig_filename: zipfile cuts `filename` at a NUL, which would hide it.
    name = check_member_name(info.orig_filename)
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise FarmError(Code.BAD_BUNDLE, f"bundle member {name!r}: symbolic links are not allowed")
    if stat.S_IFMT(mode) and not stat.S_ISREG(mode):
        raise FarmError(Code.BAD_BUNDLE, f"bundle member {name!r}: only regular files are allowed")
    if info.flag_bits & 0x1:
        raise FarmError(Code.BAD_BUNDLE, f"bundle member {name!r}: encrypted entries are not allowed")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise FarmError(Code.BAD_BUNDLE, f"bundle member {name!r}: unsupported compression")
    return name


def _check_tree(names: list[str]) -> None:
    """No duplicates and no name that is both a file and a directory.

    Case is folded so that a bundle means the same on case-insensitive
    filesystems (Windows, macOS nodes) as on Linux.
    """
    files = {}
    for name in names:
        key = name.casefold()
        if key in files:
            raise FarmError(Code.BAD_BUNDLE, f"bundle member {name!r} appears twice "
                                             f"(as {files[key]!r}, ignoring case)")
        files[key] = name
    for name in names:
        parts = name.casefold().split("/")
        for i in range(1, len(parts)):
            if "/".join(parts[:i]) in files:
                raise FarmError(Code.BAD_BUNDLE, f"bundle member {name!r}: "
                                                 f"{files['/'.join(parts[:i])]!r} is a file, not a directory")


def check_archive(data: bytes | BinaryIO, max_files: int = MAX_FILES, max_total: int = MAX_TOTAL_BYTES) -> list[str]:
    """Validate an archive without extracting it; return its member names.

    The total checked is the sum of the sizes the archive declares; `unpack`
    also counts what it really writes, since declared sizes can lie.
    """
    with _open_zip(data, max_files) as archive:
        infos = archive.infolist()
    if len(infos) > max_files:
        raise FarmError(Code.BUNDLE_TOO_LARGE,
                        f"the bundle has {len(infos)} files; at most {max_files} are allowed")
    names = [_check_entry(info) for info in infos]
    _check_tree(names)
    total = sum(info.file_size for info in infos)
    if total > max_total:
        raise FarmError(Code.BUNDLE_TOO_LARGE,
                        f"the bundle unpacks to {total} bytes; at most {max_total} are allowed")
    return names


def mentions(data: bytes, word: bytes, scene: str) -> bool:
    """Whether the scene or any POV-Ray source file (.pov, .inc, ...) of a checked bundle contains `word`.
    Members are read in chunks, at most MAX_TOTAL_BYTES in all, whatever sizes they declare."""
    budget = MAX_TOTAL_BYTES
    try:
        with _open_zip(data) as archive:
            for info in archive.infolist():
                if info.orig_filename == scene or is_source(info.orig_filename):
                    found, budget = _member_mentions(archive, info, word, budget)
                    if found:
                        return True
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
        raise FarmError(Code.BAD_BUNDLE, f"the bundle cannot be read ({exc})") from None
    return False


def _member_mentions(archive: zipfile.ZipFile, info: zipfile.ZipInfo, word: bytes,
                     budget: int) -> tuple[bool, int]:
    tail = b""
    with archive.open(info) as member:
        while budget > 0:
            chunk = member.read(min(_CHUNK, budget))
            if not chunk:
                break
            budget -= len(chunk)
            if word in tail + chunk:
                return True, budget
            tail = chunk[-(len(word) - 1):]
    return False, budget


def unpack(data: bytes, dest: Path, expected_hash: str,
           max_files: int = MAX_FILES, max_total: int = MAX_TOTAL_BYTES) -> None:
    """Verify and extract a bundle into dest, which must not exist yet.

    Extraction goes into a temporary sibling directory that is renamed to dest
    at the end, so dest is either absent or complete, even after a crash.
    Raises FileExistsError (and discards its work) if dest exists by then.
    """
    parse_digest(expected_hash)
    actual = bundle_hash(data)
    if actual != expected_hash:
        raise FarmError(Code.BAD_BUNDLE, f"the bundle's hash is {actual}, expected {expected_hash}")
    names = check_archive(data, max_files, max_total)
    dest = Path(dest)
    if dest.exists():
        raise FileExistsError(f"{dest} already exists")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}{_PARTIAL}", dir=dest.parent))
    try:
        with _open_zip(data, max_files) as archive:
            _extract(archive, names, tmp, max_total)
        _rename_into_place(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.debug("unpacked %s (%s files) into %s", expected_hash, len(names), dest)


def _extract(archive: zipfile.ZipFile, names: list[str], into: Path, max_total: int) -> None:
    """Write the checked members under `into`, stopping once max_total real bytes are out."""
    written = 0
    for info, name in zip(archive.infolist(), names):
        target = into.joinpath(*name.split("/"))
        target.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
        try:
            with os.fdopen(fd, "wb") as out, archive.open(info) as member:
                while chunk := member.read(_CHUNK):
                    written += len(chunk)
                    if written > max_total:
                        raise FarmError(Code.BUNDLE_TOO_LARGE,
                                        f"the bundle unpacks to more than {max_total} bytes")
                    out.write(chunk)
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as exc:
            raise FarmError(Code.BAD_BUNDLE, f"bundle member {name!r} is corrupt ({exc})") from None


def _rename_into_place(tmp: Path, dest: Path) -> None:
    try:
        os.rename(tmp, dest)   # atomic; refuses a non-empty dest on POSIX, any dest on Windows
    except OSError:
        if dest.exists():
            raise FileExistsError(f"{dest} already exists") from None
        raise


# ---------------------------------------------------------------------------
# The node's cache

class BundleCache:
    """A node's cache of unpacked bundles under a directory: <dir>/<hex>/ .

    Entries only ever appear by atomic rename, so a directory named by a hash
    is always complete. Threads of one process take a lock per digest, so each
    bundle is fetched once; separate processes sharing the directory may both
    fetch, and the one that loses the rename throws its copy away.
    """

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}
        self._remove_stale_partials()
        self.sweep_downloads()

    def path_for(self, digest: str) -> Path:
        """Where the bundle with this hash lives (whether or not it is there yet)."""
        return self.directory / parse_digest(digest)

    def ensure(self, digest: str, fetch: Callable[[], bytes]) -> Path:
        """Return the unpacked directory, calling fetch() only when it is not cached yet."""
        path = self.path_for(digest)
        if path.is_dir():
            return path
        with self._lock_for(digest):
            if path.is_dir():           # another thread finished it while we waited
                return path
            log.info("fetching bundle %s", digest)
            self.sweep_downloads()
            try:
                unpack(fetch(), path, digest)
            except FileExistsError:
                log.debug("bundle %s appeared meanwhile (another process); keeping that copy", digest)
        return path

    def download_path(self, digest: str) -> Path:
        """Where a bundle's bytes gather while it is downloaded (kept when the download is cut short)."""
        return self.directory / f"{parse_digest(digest)}{_DOWNLOAD}"

    def sweep_downloads(self) -> None:
        """Remove cut-short downloads nothing will resume: those no byte was added to for
        STALE_DOWNLOAD_SECONDS, and those of a bundle that is here unpacked after all. Run when the cache
        opens (a node starts) and before each new download."""
        cutoff = time.time() - STALE_DOWNLOAD_SECONDS
        for entry in self.directory.glob(f"*{_DOWNLOAD}"):
            try:
                if entry.stat().st_mtime < cutoff or (self.directory / entry.name[:-len(_DOWNLOAD)]).is_dir():
                    log.info("removing the unfinished download %s", entry)
                    entry.unlink()
            except OSError as err:   # gone meanwhile (another process swept it), or not ours to remove
                log.debug("cannot remove %s: %s", entry, err)

    def _lock_for(self, digest: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(digest, threading.Lock())

    def _remove_stale_partials(self) -> None:
        """Clear temporary directories left by a crash (old ones only: another process may be busy)."""
        cutoff = time.time() - _STALE_PARTIAL_SECONDS
        for entry in self.directory.iterdir():
            try:
                if _PARTIAL in entry.name and entry.stat().st_mtime < cutoff:
                    log.info("removing stale partial bundle %s", entry)
                    shutil.rmtree(entry, ignore_errors=True)
            except OSError:
                continue


DOWNLOAD_CHUNK = 2 * 1024 * 1024   # bytes per ranged request: what an interrupted download loses at most


def download_resuming(part: Path, digest: str, fetch_range: Callable[[int], tuple[int, bytes]]) -> bytes:
    """A bundle's bytes, fetched range by range into the file `part`, starting where an earlier download
    into it stopped (a dropped link, a restarted node). `fetch_range(offset)` returns (the bundle's size,
    bytes from offset). The hash is checked at the end; a part file that turns out wrong is removed, so
    the next try starts afresh."""
    parse_digest(digest)
    part.parent.mkdir(parents=True, exist_ok=True)
    with open(part, "ab") as out:
        offset = out.tell()
        if offset:
            log.info("resuming the download of bundle %s at byte %d", digest, offset)
        while True:
            size, data = fetch_range(offset)
            if offset + len(data) > size or (not data and offset < size):
                part.unlink(missing_ok=True)
                raise FarmError(Code.BAD_BUNDLE, f"the controller sent bytes {offset}..{offset + len(data)} of "
                                                 f"bundle {digest}, which has {size}")
            out.write(data)
            out.flush()
            offset += len(data)
            if offset >= size:
                break
    data = part.read_bytes()
    part.unlink(missing_ok=True)
    actual = bundle_hash(data)
    if actual != digest:
        raise FarmError(Code.BAD_BUNDLE, f"the downloaded bundle's hash is {actual}, expected {digest}")
    return data


def copy_for_render(bundle_dir: Path, dest: Path) -> Path:
    """Copy an unpacked bundle into a fresh per-strip directory and return it.

    Real copies, never hard links: a scene may write files (#fopen, Parse_String)
    and the cached bundle must stay pristine for the next strip.
    """
    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()):
        raise FileExistsError(f"{dest} is not empty")
    shutil.copytree(bundle_dir, dest, symlinks=False, copy_function=shutil.copyfile, dirs_exist_ok=True)
    return dest
