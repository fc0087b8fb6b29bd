"""A strip's radiosity cache fed to POV-Ray through a FIFO, so the strip starts before the cache is complete.

POV-Ray opens its radiosity cache (`+RF... +RFI`) only after its start-up and the parse (in
View::StartRender, before photons): about 0.6 s of a balcony strip. A strip leased while the last band of its
frame's pre-pass still renders (the task's `cache_pending`) gets a FIFO where the cache file would be;
POV-Ray's `fopen` of it waits for a writer, and `CacheFeed` fetches the cache (a long poll at the controller,
NOT_READY until every band is in) and writes it once it is complete. The time POV-Ray waited is no part
of the strip's cost, and is taken off its seconds (`waited`).

Only the console `povray` on a system with FIFOs is fed so; a node says so when it registers (`available`).
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import stat
import threading
import time
from pathlib import Path
from typing import Callable

from farm.faults import Code, FarmError

log = logging.getLogger(__name__)

CACHE_WAIT = 20.0        # seconds one fetch of a cache not complete yet waits at the controller
OPEN_EVERY = 0.01        # seconds between looks for POV-Ray opening the FIFO


def available(console: bool) -> bool:
    """Whether this node can feed a strip's cache later: POV-Ray's console program on a system with FIFOs."""
    return console and hasattr(os, "mkfifo")


class CacheFeed:
    """Writes the cache that `fetch(ended)` gives (a file's path, once complete; `ended()` says the strip has
    ended and it may give up) into the FIFO at `fifo`, from two
    threads: one fetches, one waits for POV-Ray to open the FIFO. `failed()` says the strip must stop (the
    lease is gone, the controller unreachable); `close()` once POV-Ray has ended."""

    def __init__(self, fifo: Path, fetch: Callable[[Callable[[], bool]], Path], what: str,
                 clock: Callable[[], float] = time.monotonic):
        os.mkfifo(fifo, 0o600)
        self.fifo, self._fetch, self._what, self._clock = fifo, fetch, what, clock
        self.error: FarmError | None = None
        self._ready_at: float | None = None      # when the cache was complete here
        self._opened_at: float | None = None     # when POV-Ray was found waiting on the FIFO
        self._ended = threading.Event()
        self._cache: Path | None = None
        self._got = threading.Event()
        self._fetcher = threading.Thread(target=self._fetch_cache, name=f"cache-fetch {what}", daemon=True)
        self._writer = threading.Thread(target=self._write_cache, name=f"cache-feed {what}", daemon=True)
        self._fetcher.start()
        self._writer.start()

    def failed(self) -> bool:
        return self.error is not None

    @property
    def waited(self) -> float:
        """Seconds POV-Ray waited on the FIFO for the cache (0 when it came before POV-Ray asked)."""
        if self._ready_at is None or self._opened_at is None:
            return 0.0
        return max(0.0, self._ready_at - self._opened_at)

    def close(self) -> None:
        """POV-Ray has ended: stop feeding and take the FIFO away. The fetch, if still waiting at the
        controller, ends on its own (its long poll is bounded) and its cache is kept for the node's next strip."""
        self._ended.set()
        self._writer.join()
        try:
            self.fifo.unlink()
        except OSError:
            pass

    def _fetch_cache(self) -> None:
        try:
            self._cache = self._fetch(self._ended.is_set)
            self._ready_at = self._clock()
            log.debug("%s: the radiosity cache is complete", self._what)
        except FarmError as err:
            self.error = err
        except OSError as err:
            self.error = FarmError(Code.BAD_ARGUMENT, f"the cache could not be stored: {err.strerror or err}")
        finally:
            self._got.set()

    def _write_cache(self) -> None:
        fd = self._open_when_read()
        if fd is None:
            return
        try:
            while not self._got.wait(OPEN_EVERY * 10):
                if self._ended.is_set():
                    return
            if self._cache is None:     # failed(): POV-Ray is stopped, kept waiting until it ends
                self._ended.wait()
                return
            os.set_blocking(fd, True)
            with open(self._cache, "rb") as source, os.fdopen(os.dup(fd), "wb") as sink:
                shutil.copyfileobj(source, sink)
            log.info("%s: the frame's radiosity cache fed to POV-Ray, which waited %.2f s for it",
                     self._what, self.waited)
        except OSError as err:     # POV-Ray ended as it read (a broken pipe): its outcome says why
            log.debug("%s: feeding the radiosity cache stopped: %s", self._what, err)
        finally:
            os.close(fd)

    def _open_when_read(self) -> int | None:
        """The FIFO's writing end, once POV-Ray opens it to read; None if POV-Ray ended first."""
        while not self._ended.is_set():
            try:
                # Never a link, and only the FIFO made here: the scene's folder is the scene's to write in.
                fd = os.open(self.fifo, os.O_WRONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
            except OSError as err:
                if err.errno != errno.ENXIO:    # ENXIO: nobody reads it yet
                    log.warning("%s: the radiosity cache's FIFO cannot be opened: %s", self._what, err)
                    return None
                self._ended.wait(OPEN_EVERY)
                continue
            if not stat.S_ISFIFO(os.fstat(fd).st_mode):
                os.close(fd)
                log.warning("%s: the radiosity cache's FIFO was replaced; the cache is not fed", self._what)
                return None
            self._opened_at = self._clock()
            return fd
        return None


def fetch_until_ready(fetch: Callable[[float], bytes], stopped: Callable[[], bool]) -> bytes:
    """A cache that may not be complete yet: `fetch(wait)` asked again while the controller says NOT_READY,
    until `stopped()`."""
    while True:
        try:
            return fetch(CACHE_WAIT)
        except FarmError as err:
            if err.code is not Code.NOT_READY or stopped():
                raise
