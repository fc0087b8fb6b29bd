"""Scene bundles coming down to a node from the controller."""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable

from farm.bundle import cache as bundle
from farm.client import Client
from farm.faults import Code, FarmError
from farm.features import BUNDLE_RANGES, INLINE_BUNDLES, Features
from farm.retry import RETRY_CEILING
from farm.wire import Binary

log = logging.getLogger(__name__)

INLINE_KEPT = 8          # bundles that came with leases kept at once (each at most 256 KiB), the oldest dropped
BUNDLE_ATTEMPTS = 4      # tries at a bundle download (each resuming) before the strip is reported failed


class Downloads:
    """Bundles fetched in ranges that resume where a cut-short download stopped: on an unreachable controller
    it tries a few times more, and what it got is kept on disk (in the node's bundle cache) for the next try.
    A controller without ranges (its features) sends the whole bundle in one reply."""

    def __init__(self, client: Client, cache: bundle.BundleCache, features: Callable[[], Features],
                 aborting: threading.Event, backoff: Callable[[float, float], float]):
        """`backoff(delay, ceiling)`: the next pause before a retry."""
        self.client, self.cache, self.features = client, cache, features
        self.aborting, self.backoff = aborting, backoff
        self._inline: dict[str, bytes] = {}     # bundles that came with a lease, by digest, until unpacked
        self._lock = threading.Lock()

    def poll(self, node_id: str, wait: float) -> Any:
        """nodes.poll, taking a small bundle with the lease where the controller can send it (its features)."""
        inline = (True,) if INLINE_BUNDLES in self.features() else ()
        reply = self.client.call("nodes.poll", node_id, wait, *inline)
        self.keep(reply)
        return reply

    def keep(self, reply: Any) -> None:
        """A poll's reply: a bundle sent with it (`bundle_data`, farm/service/inline.py) is kept for `fetch`."""
        if isinstance(reply, dict) and isinstance(reply.get("bundle_data"), Binary) \
                and isinstance(reply.get("bundle"), str):
            with self._lock:
                self._inline[reply["bundle"]] = reply["bundle_data"].data
                while len(self._inline) > INLINE_KEPT:
                    self._inline.pop(next(iter(self._inline)))

    def fetch(self, digest: str) -> bytes:
        """The bundle's bytes (as it came with a lease, or downloaded); raises the last FarmError when every
        try failed (or the node is aborting)."""
        with self._lock:
            inline = self._inline.pop(digest, None)
        if inline is not None:
            log.info("bundle %s came with the lease", digest)
            return inline
        if BUNDLE_RANGES not in self.features():
            return self.client.call("bundles.fetch", digest).data
        part = self.cache.download_path(digest)
        delay, attempt = 0.0, 1
        while True:
            try:
                return bundle.download_resuming(part, digest, lambda offset: self._range(digest, offset))
            except FarmError as err:
                if err.code is not Code.UNREACHABLE or attempt >= BUNDLE_ATTEMPTS or self.aborting.is_set():
                    raise
                delay = self.backoff(delay, RETRY_CEILING)
                log.warning("downloading bundle %s: %s; resuming in %.1f s", digest, err, delay)
            attempt += 1
            self.aborting.wait(delay)

    def _range(self, digest: str, offset: int) -> tuple[int, bytes]:
        reply = self.client.call("bundles.fetch_range", digest, offset, bundle.DOWNLOAD_CHUNK)
        return int(reply["size"]), reply["data"].data
