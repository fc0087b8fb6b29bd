"""States of jobs, frames, units and nodes, and the one place they change.

Every state is a `str` enum so it stores in SQLite and travels over XML-RPC as
plain text. `check_transition` is the only gate: the store calls it before
every update, so an impossible change (a done strip going back to the queue, a
canceled job finishing) fails loudly instead of corrupting a job.
"""

from __future__ import annotations

import enum

from farm.faults import Code, FarmError


class JobState(str, enum.Enum):
    QUEUED = "queued"
    RENDERING = "rendering"
    PAUSED = "paused"      # no new strips are leased; strips in flight may still finish
    DONE = "done"
    FAILED = "failed"
    CANCELED = "canceled"


class FrameState(str, enum.Enum):
    QUEUED = "queued"
    RENDERING = "rendering"
    DONE = "done"
    FAILED = "failed"
    CANCELED = "canceled"


class UnitState(str, enum.Enum):
    WAITING = "waiting"    # its frame's radiosity pre-pass is not done yet
    QUEUED = "queued"
    LEASED = "leased"
    DONE = "done"
    FAILED = "failed"
    CANCELED = "canceled"


class NodeState(str, enum.Enum):
    IDLE = "idle"
    BUSY = "busy"
    OFFLINE = "offline"
    BROKEN = "broken"  # its POV-Ray is missing or does not run


# A job in one of these states never changes again. The members are str, so a state read off the wire
# ("done") is found in it too.
ENDED = frozenset({JobState.DONE, JobState.FAILED, JobState.CANCELED})

_ALLOWED: dict[type, dict[enum.Enum, frozenset]] = {
    JobState: {
        JobState.QUEUED: frozenset({JobState.RENDERING, JobState.PAUSED, JobState.FAILED, JobState.CANCELED}),
        JobState.RENDERING: frozenset({JobState.DONE, JobState.PAUSED, JobState.FAILED, JobState.CANCELED}),
        JobState.PAUSED: frozenset({JobState.QUEUED, JobState.RENDERING, JobState.FAILED, JobState.CANCELED}),
        JobState.DONE: frozenset(),
        JobState.FAILED: frozenset(),
        JobState.CANCELED: frozenset(),
    },
    FrameState: {
        FrameState.QUEUED: frozenset({FrameState.RENDERING, FrameState.DONE,
                                      FrameState.FAILED, FrameState.CANCELED}),
        FrameState.RENDERING: frozenset({FrameState.DONE, FrameState.FAILED, FrameState.CANCELED}),
        FrameState.DONE: frozenset(),
        FrameState.FAILED: frozenset(),
        FrameState.CANCELED: frozenset(),
    },
    UnitState: {
        # LEASED -> QUEUED: the lease expired or was handed back; the strip is rendered again.
        # QUEUED -> DONE: a radiosity pre-pass found not needed (its frame goes out whole) is done
        # without a cache, as when the scene turns out to use no radiosity.
        # QUEUED -> WAITING: a preview no viewer watches is set aside until one comes.
        UnitState.WAITING: frozenset({UnitState.QUEUED, UnitState.CANCELED}),
        UnitState.QUEUED: frozenset({UnitState.LEASED, UnitState.CANCELED, UnitState.FAILED, UnitState.DONE,
                                     UnitState.WAITING}),
        UnitState.LEASED: frozenset({UnitState.QUEUED, UnitState.DONE,
                                      UnitState.FAILED, UnitState.CANCELED}),
        UnitState.DONE: frozenset(),
        UnitState.FAILED: frozenset(),
        UnitState.CANCELED: frozenset(),
    },
    NodeState: {
        NodeState.IDLE: frozenset({NodeState.BUSY, NodeState.OFFLINE, NodeState.BROKEN}),
        NodeState.BUSY: frozenset({NodeState.IDLE, NodeState.OFFLINE, NodeState.BROKEN}),
        NodeState.OFFLINE: frozenset({NodeState.IDLE, NodeState.BUSY, NodeState.BROKEN}),
        NodeState.BROKEN: frozenset({NodeState.IDLE, NodeState.OFFLINE}),
    },
}


def check_transition(current: enum.Enum, new: enum.Enum) -> None:
    """Raise if `current` may not become `new`; staying in the same state is always allowed."""
    kind = type(current)
    if type(new) is not kind:
        raise TypeError(f"cannot move a {kind.__name__} to a {type(new).__name__}")
    if new is current:
        return
    if new not in _ALLOWED[kind][current]:
        raise FarmError(Code.INTERNAL, f"a {kind.__name__} cannot go from {current.value} to {new.value}")
