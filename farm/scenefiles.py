"""Files a scene writes itself (`#fopen ... write`, as the portfolio scenes write their HTML pages), on their
way from a node's POV-Ray back to the user: what every side agrees they are.

A node sends, beside a unit's rows, the files POV-Ray created or changed in the scene's folder while it
rendered the unit, as one zip; the controller keeps, per job and per name, the version from the unit
POV-Ray would have written last (the latest frame, then the strip lowest in the image: `order`), and the
client writes them where `povray` leaves them. Names are checked like bundle members, and count and size
are bounded on every side. Pure: bytes in, bytes out.
"""

from __future__ import annotations

import io
import zipfile
from typing import Iterable

from farm.bundle.rules import check_member_name
from farm.faults import Code, FarmError

MAX_FILES = 32                   # files one job brings back
MAX_BYTES = 4 * 1024 * 1024      # their bytes, all together
MAX_ZIP = MAX_BYTES + MAX_FILES * 1024 + 4096     # the zip of them, uncompressed (stored)
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


def pack(files: dict[str, bytes], order: tuple[int, int] = (0, 0)) -> bytes:
    """The files as a zip (stored, sorted, fixed times); each member's comment is `order`, the unit's
    (frame, first row) by which the controller keeps the latest version of each name."""
    check(files)
    return pack_kept({name: (order, data) for name, data in files.items()})


def unpack(data: bytes) -> dict[str, tuple[tuple[int, int], bytes]]:
    """name -> (order, bytes), every name and bound checked; BAD_ARGUMENT if anything is wrong. Empty
    data (no files) is no files."""
    if not data:
        return {}
    if len(data) > MAX_ZIP:
        raise _bad(f"{len(data)} bytes is more than {MAX_ZIP}")
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            infos = archive.infolist()
            if len(infos) > MAX_FILES or sum(info.file_size for info in infos) > MAX_BYTES:
                raise _bad(f"more than {MAX_FILES} files or {MAX_BYTES} bytes")
            found = {}
            for info in infos:
                name = _checked_name(info.filename)
                found[name] = (_order(info.comment), archive.read(info))
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as err:
        raise _bad(f"not a readable zip ({err})") from None
    check({name: data for name, (_, data) in found.items()})
    return found


def merge(kept: dict[str, tuple[tuple[int, int], bytes]], new: dict[str, tuple[tuple[int, int], bytes]]
          ) -> tuple[dict[str, tuple[tuple[int, int], bytes]], list[str]]:
    """`kept` with `new`'s versions of names where they are later; names beyond the bounds are left out
    and returned."""
    merged = dict(kept)
    left_out = []
    for name, (order, data) in sorted(new.items()):
        if name in merged and merged[name][0] > order:
            continue
        trial = {**merged, name: (order, data)}
        if len(trial) > MAX_FILES or sum(len(d) for _, d in trial.values()) > MAX_BYTES:
            left_out.append(name)
            continue
        merged = trial
    return merged, left_out


def pack_kept(kept: dict[str, tuple[tuple[int, int], bytes]]) -> bytes:
    """What `merge` keeps, as a zip that `unpack` reads back (each member with its own order)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name in sorted(kept):
            order, data = kept[name]
            info = zipfile.ZipInfo(name, _ZIP_TIME)
            info.comment = f"{order[0]},{order[1]}".encode("ascii")
            archive.writestr(info, data)
    return buffer.getvalue()


def check(files: dict[str, bytes]) -> None:
    if len(files) > MAX_FILES:
        raise _bad(f"{len(files)} files, more than {MAX_FILES}")
    if sum(len(data) for data in files.values()) > MAX_BYTES:
        raise _bad(f"more than {MAX_BYTES} bytes")
    for name in files:
        _checked_name(name)


def _checked_name(name: str) -> str:
    try:
        return check_member_name(name)
    except FarmError as err:
        raise _bad(str(err).replace("bundle member", "file")) from None


def _order(comment: bytes) -> tuple[int, int]:
    try:
        frame, row = (int(part) for part in comment.decode("ascii").split(","))
    except ValueError:
        return (0, 0)
    return frame, row


def _bad(why: str) -> FarmError:
    return FarmError(Code.BAD_ARGUMENT, f"the files the scene wrote: {why}")


def shown(names: Iterable[str], most: int = 4) -> str:
    listed = sorted(names)
    return ", ".join(listed[:most]) + (f" and {len(listed) - most} more" if len(listed) > most else "")
