"""Checking a bundle's zip without unpacking it: what the controller verifies of every upload, and the
node of every download before it unpacks one.

Bundles arrive from the network, so nothing in one is trusted: the end records' entry count and
directory size are checked before zipfile reads the directory, then every member's name, type,
encryption and compression, the tree's shape (no duplicates, ignoring case), and the declared sizes.
"""

from __future__ import annotations

import io
import os
import stat
import struct
import zipfile
import zlib
from typing import BinaryIO

from farm.bundle.rules import MAX_FILES, MAX_TOTAL_BYTES, check_member_name, is_source
from farm.faults import Code, FarmError

MEMBER_CHUNK = 1 << 16          # bytes read from a member at a time


def open_zip(data: bytes | BinaryIO, max_files: int = MAX_FILES) -> zipfile.ZipFile:
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
    with open_zip(data, max_files) as archive:
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
        with open_zip(data) as archive:
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
            chunk = member.read(min(MEMBER_CHUNK, budget))
            if not chunk:
                break
            budget -= len(chunk)
            if word in tail + chunk:
                return True, budget
            tail = chunk[-(len(word) - 1):]
    return False, budget
