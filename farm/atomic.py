"""Writing a file whole or not at all: the one way every process replaces a file.

The data goes to a temporary file in the same folder (a rename across file systems would not be atomic),
is fsynced, then renamed over the target: a reader, or a crash, sees the old file or the new one, never
half of one. The temporary file is named `.NAME.RANDOM.tmp`, which the controller sweeps away at start
(`farm.service.files.sweep_temporary`), and is removed when the write fails. Errors are raised as OSError
for the caller to word in its own terms.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
from pathlib import Path
from typing import BinaryIO, Iterator

log = logging.getLogger(__name__)

TEMPORARY_SUFFIX = ".tmp"
PUBLIC = 0o666      # the creation mode of a file anyone may read (less the umask), as open() makes it
PRIVATE = 0o600     # readable by the owner only (tokens, the controller's stored files)


@contextlib.contextmanager
def replacing(path: Path, mode: int = PUBLIC) -> Iterator[BinaryIO]:
    """A binary file to write `path`'s new content to; it replaces `path` when the block ends without an
    exception."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}{TEMPORARY_SUFFIX}")
    # O_BINARY: on Windows a descriptor opened without it translates line ends.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        _discard(tmp)
        raise


def write(path: Path, data: bytes, mode: int = PUBLIC) -> None:
    """Replace `path` with `data`, atomically and durably."""
    with replacing(path, mode) as handle:
        handle.write(data)


def _discard(tmp: Path) -> None:
    try:
        tmp.unlink()
    except FileNotFoundError:
        pass
    except OSError as err:
        log.error("cannot remove the temporary file %s: %s", tmp.name, err.strerror)
