"""The ETA as a viewer shows it: the controller's estimates smoothed, counted down between them, and held
still while the controller is out of reach. Pure, with the time passed in.

The controller refits a job's cost model every few seconds, and early on its estimate swings (0:50, then
0:26, then 0:36 within 3 s). Shown as it comes, the ETA jumps; shown smoothed, it moves towards each new
estimate by the share of the gap that the time since the last one earns (1 - e^(-dt/SMOOTHING)), so a
burst of replies moves it no further than one reply after the same wait, and estimates that agree with
the countdown leave it as it is. While the controller cannot be reached nothing new is known: the
ETA stops counting down and is marked (`held`) until the link is back. farm/web/eta.js (`EtaShown`) does
the same for the page.
"""

from __future__ import annotations

import math
from typing import Any

from farm.states import ENDED

SMOOTHING = 6.0     # seconds: the time constant with which the shown ETA follows the controller's estimates


def status_estimate(job: dict[str, Any], now: float) -> tuple[float | None, bool]:
    """The seconds left a job's status says, and whether that is a guess: the controller's estimate, from
    the cost per row it measured, else a guess from the fraction done; None while nothing says (or once
    the job has ended)."""
    if job.get("state") in ENDED or not job.get("started"):
        return None, True
    if job.get("eta") is not None:
        return float(job["eta"]), False
    progress = float(job.get("progress", 0.0))
    if progress <= 0.0:
        return None, True
    elapsed = max(0.0, now - float(job["started"]))
    return elapsed * (1.0 - progress) / progress, True


class ShownEta:
    """One job's ETA on screen."""

    def __init__(self, smoothing: float = SMOOTHING):
        self.smoothing = smoothing
        self._value: float | None = None     # seconds left at `_at`
        self._at = 0.0
        self._guessed = True                 # `_value` comes from guesses only (the fraction done)
        self._held_at: float | None = None   # since when the controller is out of reach

    @property
    def held(self) -> bool:
        return self._held_at is not None

    def left(self, now: float) -> float | None:
        """Seconds left, counted down since the last estimate (not while held); None before any."""
        if self._value is None:
            return None
        until = now if self._held_at is None else min(now, self._held_at)
        return max(0.0, self._value - max(0.0, until - self._at))

    def measure(self, estimate: float | None, now: float, guess: bool = False) -> None:
        """A new estimate (seconds left) from the controller, measured `now`; None leaves the ETA as it is.
        A `guess` (from the fraction done, before the controller has measured anything) is shown only
        until its first measured estimate, which replaces it outright: early guesses are far off."""
        if estimate is None:
            return
        estimate = max(0.0, float(estimate))
        shown = self.left(now)
        if shown is None or (self._guessed and not guess):
            self._value, self._guessed = estimate, guess
        else:
            share = 1.0 - math.exp(-max(0.0, now - self._at) / self.smoothing)
            self._value = shown + share * (estimate - shown)
        self._at = now
        if self._held_at is not None:      # news: the controller answered again
            self._held_at = None

    def hold(self, now: float) -> None:
        """The controller is out of reach: stop counting down."""
        if self._held_at is None:
            self._held_at = now

    def resume(self, now: float) -> None:
        """The controller answers again: count down on from where the ETA was held."""
        if self._held_at is not None:
            self._at += max(0.0, now - self._held_at)
            self._held_at = None
