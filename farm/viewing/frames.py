"""Which frame of an animation the viewer shows, and which frames it keeps. Pure: no pygame, no network.

Following (the default), it is the newest frame with pixels (final rows, live blocks or a preview): never an
empty one while any frame has pixels. The user may step through the frames with pixels (the viewer's arrow
keys), play them in turn while the job runs, and go back to following. Finished frames are kept for that,
up to a memory budget (the lowest-numbered go first).
"""

from __future__ import annotations

from typing import Mapping, Protocol

PLAY_EVERY = 0.1                    # seconds per frame when playing (the animated PNG's default delay)
FRAME_MEMORY = 256 * 1024 * 1024    # bytes of frames kept for stepping back
NEXT, PREVIOUS, PLAY, FOLLOW = "next", "previous", "play", "follow"


class Frame(Protocol):
    has_pixels: bool
    size: int


def _with_pixels(frames: Mapping[int, Frame]) -> list[int]:
    return sorted(number for number, frame in frames.items() if frame.has_pixels)


def _neighbour(numbers: list[int], current: int | None, direction: int, wrap: bool = False) -> int:
    """The next (direction 1) or previous (-1) of `numbers` from `current`, staying at the ends unless `wrap`."""
    if current is None:
        return numbers[0] if direction > 0 else numbers[-1]
    after = [n for n in numbers if n > current] if direction > 0 else [n for n in numbers if n < current][::-1]
    if after:
        return after[0]
    if wrap:
        return numbers[0] if direction > 0 else numbers[-1]
    return current if current in numbers else (numbers[-1] if direction > 0 else numbers[0])


class FrameChoice:
    def __init__(self):
        self.pinned = False             # the user chose the frame (stepped or playing)
        self.playing = False
        self.chosen: int | None = None
        self._advanced = 0.0            # when playing last moved on

    def act(self, action: str, frames: Mapping[int, Frame], current: int | None, now: float) -> None:
        """NEXT or PREVIOUS frame with pixels, PLAY (or pause), FOLLOW the newest frame again."""
        numbers = _with_pixels(frames)
        if action == FOLLOW:
            self.pinned = self.playing = False
        elif action == PLAY:
            self.playing, self.pinned, self.chosen, self._advanced = not self.playing, True, current, now
        elif action in (NEXT, PREVIOUS) and numbers:
            self.playing, self.pinned = False, True
            self.chosen = _neighbour(numbers, current, 1 if action == NEXT else -1)
        elif action not in (NEXT, PREVIOUS):
            raise ValueError(f"unknown frame action {action!r}")

    def choose(self, frames: Mapping[int, Frame], current: int | None, first: int, now: float) -> int:
        """The frame to show now."""
        numbers = _with_pixels(frames)
        if self.playing and numbers and now - self._advanced >= PLAY_EVERY - 1e-6:
            self._advanced = now
            self.chosen = _neighbour(numbers, self.chosen, 1, wrap=True)
        if self.pinned and self.chosen in frames:
            return self.chosen
        self.pinned = self.playing = False      # the chosen frame is gone: follow again
        if numbers:
            return numbers[-1]
        return current if current is not None else first


def to_forget(frames: Mapping[int, Frame], shown: int, budget: int = FRAME_MEMORY) -> list[int]:
    """The frames to let go: those with no pixels (but the one shown), then the lowest-numbered until the
    rest fit the budget."""
    gone = [number for number, frame in frames.items() if number != shown and not frame.has_pixels]
    size = sum(frame.size for number, frame in frames.items() if number not in gone)
    for number in sorted(number for number in frames if number not in gone and number != shown):
        if size <= budget:
            break
        gone.append(number)
        size -= frames[number].size
    return gone
