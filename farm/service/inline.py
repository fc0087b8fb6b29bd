"""Small bundles sent with a node's first lease of them, so the node need not fetch its scene in a round trip
of its own before its first unit (on a link with a long round trip, that trip is a visible part of a short
job). A bundle goes inline once per node: the controller remembers, for the node ids it has served lately,
which bundles it sent them; a node that asks again (a later unit of the job) gets only the digest, and a
large bundle is always fetched as before (bundles.fetch_range, resumable).
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Callable

log = logging.getLogger(__name__)

INLINE_BUNDLE_BYTES = 256 * 1024   # the largest bundle sent with a lease
REMEMBERED = 65536                  # (node, bundle) pairs remembered; the oldest forgotten first


class InlineBundles:
    """Which bundles went inline to which node: `take(node, digest)` is the bundle's bytes the first time,
    when it is small enough, and None after that (or when it is not)."""

    def __init__(self, path_of: Callable[[str], Path], limit: int = INLINE_BUNDLE_BYTES,
                 remembered: int = REMEMBERED):
        self.path_of, self.limit, self.remembered = path_of, limit, remembered
        self._sent: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, node_id: str, digest: str) -> bytes | None:
        key = (node_id, digest)
        with self._lock:
            if key in self._sent:
                self._sent.move_to_end(key)
                return None
        try:
            path = self.path_of(digest)
            if path.stat().st_size > self.limit:
                return None
            data = path.read_bytes()
        except OSError as err:      # the node fetches it as before, and hears of any trouble then
            log.debug("bundle %s not sent inline: %s", digest, err)
            return None
        with self._lock:
            if len(data) > self.limit or key in self._sent:    # grown meanwhile, or sent by another request
                return None
            self._sent[key] = None
            while len(self._sent) > self.remembered:
                self._sent.popitem(last=False)
        return data
