"""A node's files shared by its strips of one frame: photon maps and radiosity caches.

A frame's photon map is shot by the first of the node's strips of it and loaded by the others (the scene
text is rewritten by `farm/rendering/photons.py`); its radiosity cache is fetched from the controller once, by
whichever slot asks first (`farm/radiosity.py` has the pre-pass and the wrapper scene). This module owns the
files on disk and the locking between the node's slots.
"""

from __future__ import annotations

import contextlib
import shutil
import threading
from pathlib import Path
from typing import Callable

from farm import atomic
from farm.rendering import photons
from farm.rendering import povray
from farm.radiosity import MAX_RADIOSITY_CACHE
from farm.faults import Code, FarmError
from farm.rows import decompress_capped



class PhotonMaps:
    """A node's photon maps, one per frame, shared by the strips it renders (see farm/rendering/photons.py)."""

    KEEP = 16   # maps kept on disk; older ones are deleted

    def __init__(self, directory: Path):
        self.directory = directory
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def _lock(self, key: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())

    @contextlib.contextmanager
    def shared(self, key: str, scene: Path, publish: bool = True):
        """Around one strip's render: the first strip of a frame saves the map and yields a
        `PhotonPublisher` (other slots wait until it publishes the map); later ones load the map and
        yield None. Scenes without a global photons block are left alone. A strip that must not keep the
        others waiting (`publish` false) shoots the map for itself when none is in: a strip waiting for its
        frame's radiosity cache publishes nothing until the cache comes, which may be from a band on this
        node that would wait for the map (the node's two slots deadlocked until a lease ran out)."""
        original = scene.read_bytes().decode("latin-1")    # latin-1 round-trips every byte
        if photons.with_photon_file(original, save=True) is None:
            yield None
            return
        stored = self.directory / f"{key}.ph"
        lock = self._lock(key)
        lock.acquire()
        if not stored.exists() and not publish:
            lock.release()
            yield None
            return
        if not stored.exists():
            scene.write_bytes(photons.with_photon_file(original, save=True).encode("latin-1"))
            publisher = PhotonPublisher(self, scene.parent / photons.PHOTON_FILE, stored, lock)
            try:
                yield publisher
            finally:
                publisher.publish()
            return
        try:
            shutil.copyfile(stored, scene.parent / photons.PHOTON_FILE)
        finally:
            lock.release()
        scene.write_bytes(photons.with_photon_file(original, save=False).encode("latin-1"))
        yield None

    def _keep(self, produced: Path, stored: Path) -> None:
        if not produced.is_file() or produced.stat().st_size == 0:
            return      # the render failed; the next strip shoots the photons again
        with atomic.replacing(stored) as out, open(produced, "rb") as source:
            shutil.copyfileobj(source, out)
        for old in sorted(self.directory.glob("*.ph"), key=lambda p: p.stat().st_mtime)[:-self.KEEP]:
            old.unlink(missing_ok=True)


class RadiosityCaches:
    """Radiosity caches fetched from the controller, one per frame, shared by the node's slots."""

    KEEP = 16   # caches kept on disk; older ones are deleted

    def __init__(self, directory: Path):
        self.directory = directory
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}

    def get(self, key: str, fetch: Callable[[], bytes]) -> Path:
        """The cache file for `key`, fetched (zlib data) once by whichever slot asks first."""
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        path = self.directory / f"{key}.rad"
        with lock:
            if not path.is_file():
                try:
                    data = decompress_capped(fetch(), MAX_RADIOSITY_CACHE)
                except ValueError as err:
                    raise FarmError(Code.BAD_ARGUMENT, f"the cache is unusable: {err}") from None
                atomic.write(path, data)
                for old in sorted(self.directory.glob("*.rad"), key=lambda p: p.stat().st_mtime)[:-self.KEEP]:
                    old.unlink(missing_ok=True)
        return path


class PhotonPublisher:
    """Publishes a strip's freshly shot photon map to the node's other slots, once: as soon as POV-Ray
    has started tracing (it writes the map before that), so they need not wait for the whole strip."""

    def __init__(self, maps: PhotonMaps, produced: Path, stored: Path, lock: threading.Lock):
        self.maps, self.produced, self.stored, self.lock = maps, produced, stored, lock
        self.done = False

    def when_tracing(self, log_path: Path) -> None:
        if not self.done and povray.progress_fraction(log_path) is not None:
            self.publish()

    def publish(self) -> None:
        if self.done:
            return
        self.done = True
        try:
            self.maps._keep(self.produced, self.stored)
        finally:
            self.lock.release()
