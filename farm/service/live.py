"""Live blocks: the finished render blocks of units still in flight, relayed from nodes to viewers.

A node rendering a unit of a watched job reads POV-Ray's render state file as it grows and sends its new
blocks (8-bit RGB rows, zlib) with `nodes.live`. They are a preview only: kept here in memory, never
stored as the image, and forgotten when the unit's final rows arrive (or it fails, is released, or no
block came for a lease timeout). Each block gets a sequence number per job, so a viewer asks for the
blocks after the last it saw; a viewer that joins late (cursor 0) gets every block of the units in flight.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

LEASE_BUDGET = 4 * 1024 * 1024    # bytes of blocks kept per lease (a 640x480 frame's blocks are ~ 500 KB)
MAX_BLOCKS_PER_REPLY = 256        # blocks per viewer.watch reply


class LiveBlocks:
    def __init__(self, stale_after: float, clock: Callable[[], float] = time.monotonic):
        """`stale_after`: seconds after its last block a lease's blocks are forgotten (its unit ended
        without a word, e.g. its lease expired)."""
        self._stale_after, self._clock = stale_after, clock
        self._lock = threading.Lock()
        self._seq: dict[int, int] = {}                             # job -> its last block's number
        self._leases: dict[str, tuple[int, float, list]] = {}      # lease -> (job, last added, [(seq, block)])

    def add(self, job_id: int, lease: str, blocks: list[dict[str, Any]]) -> None:
        """Keep a lease's new blocks (structs: frame, left, top, right, bottom, rows: zlib bytes). A block sent
        again (the node read its state file again for a viewer that joined) replaces the one kept."""
        with self._lock:
            _, _, kept = self._leases.get(lease, (job_id, 0.0, []))
            fresh = {_place(block) for block in blocks}
            kept = [(seq, block) for seq, block in kept if _place(block) not in fresh]
            for block in blocks:
                self._seq[job_id] = seq = self._seq.get(job_id, 0) + 1
                kept.append((seq, block))
            size = sum(len(block["rows"]) for _, block in kept)
            while size > LEASE_BUDGET and len(kept) > 1:
                size -= len(kept.pop(0)[1]["rows"])
            self._leases[lease] = (job_id, self._clock(), kept)

    def drop(self, lease: str) -> None:
        """The lease's unit ended: its final rows (or nothing) replace its blocks."""
        with self._lock:
            self._leases.pop(lease, None)

    def after(self, job_id: int, cursor: int, limit: int = MAX_BLOCKS_PER_REPLY) -> tuple[int, list[dict]]:
        """The job's blocks numbered after `cursor` of the units in flight (at most `limit`, oldest
        first) and the cursor after them."""
        now = self._clock()
        with self._lock:
            for lease in [lease for lease, (_, added, _) in self._leases.items() if now - added > self._stale_after]:
                del self._leases[lease]
            found = sorted((seq, block) for job, _, kept in self._leases.values() if job == job_id
                           for seq, block in kept if seq > cursor)[:limit]
            last = self._seq.get(job_id, 0)
        if not found:
            return last, []
        return found[-1][0], [block for _, block in found]


def _place(block: dict[str, Any]) -> tuple[int, int, int, int, int]:
    return block["frame"], block["left"], block["top"], block["right"], block["bottom"]
