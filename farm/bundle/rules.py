"""What every side agrees a bundle is: its limits, its name (the hash of its bytes), the member names it
may hold and which of its files are POV-Ray source. The client packs by these rules, the controller
checks uploads by them and the node checks downloads by them."""

from __future__ import annotations

import hashlib
import os
import re
import unicodedata

from farm.faults import Code, FarmError

MAX_FILES = 2000
MAX_TOTAL_BYTES = 256 * 1024 * 1024
MAX_NAME_PART = 255             # bytes per path part: what common filesystems allow

HASH_PREFIX = "sha256:"
_HEX_DIGEST = re.compile(r"[0-9a-f]{64}")

# Files POV-Ray parses as scene language, so names inside them matter too.
SOURCE_SUFFIXES = frozenset({".pov", ".inc", ".mcr", ".ini"})


def is_source(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in SOURCE_SUFFIXES


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
