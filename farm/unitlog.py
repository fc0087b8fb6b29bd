"""One POV-Ray run's log, as a node delivers it with the unit's result or failure and the controller keeps it.

What ran (the command line, without the node's own folders), how long, how it ended (exit code, signal,
time limit) and POV-Ray's text, bounded (farm/povtext.py). On the wire it is a struct whose text is zlib
(`nodes.complete`, `nodes.complete_and_poll` and `nodes.fail` take it as `log` where the controller lists
the feature `unit_logs`); `from_wire` checks every member and bounds the text again, since the controller
trusts no node.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import Any

from farm import povtext
from farm.faults import Code, FarmError
from farm.rows import decompress_capped
from farm.wire import Binary, shown

MAX_WIRE_TEXT = 16 * 1024 * 1024    # the most a delivered log may inflate to, whatever the node's setting
MAX_COMMAND = 512                   # arguments of a command line kept
MAX_ARGUMENT = 4096                 # characters of one argument kept


@dataclass(frozen=True)
class UnitLog:
    text: str                       # POV-Ray's output, progress lines dropped, bounded
    command: tuple[str, ...]        # the POV-Ray command line it ran
    started: float                  # Unix time
    seconds: float
    exit_code: int | None           # None: ended by a signal, or killed without a code
    signal: int | None
    timed_out: bool = False
    cut: int = 0                    # bytes of the text cut by the node

    @classmethod
    def of_run(cls, text: str, command: list[str], started: float, seconds: float, exit_code: int | None,
               signal: int | None, timed_out: bool, limit: int, skipped: int = 0) -> UnitLog:
        """`skipped`: bytes of the output left out before `text` was read."""
        kept, cut = povtext.bounded(povtext.without_progress(text), limit)
        return cls(kept, tuple(command), started, seconds, exit_code, signal, timed_out, cut + skipped)

    def to_wire(self) -> dict[str, Any]:
        return {"text": Binary(zlib.compress(self.text.encode("utf-8", "replace"), 6)),
                "command": list(self.command), "started": self.started, "seconds": self.seconds,
                "exit_code": -1 if self.exit_code is None else self.exit_code,
                "signal": self.signal or 0, "timed_out": self.timed_out, "cut": self.cut}

    @classmethod
    def from_wire(cls, value: Any, limit: int) -> UnitLog:
        """A delivered log, checked; its text cut again to `limit` bytes (the controller's setting)."""
        if not isinstance(value, dict):
            raise _malformed(f"it must be a struct, not {shown(value)}")
        text = value.get("text")
        data = getattr(text, "data", text)
        if not isinstance(data, bytes):
            raise _malformed("text must be base64 (zlib of UTF-8)")
        try:
            raw = decompress_capped(data, MAX_WIRE_TEXT) if data else b""
        except ValueError as err:
            raise _malformed(f"text: {err}") from None
        kept, cut = povtext.bounded(raw.decode("utf-8", "replace"), limit)
        command = value.get("command", [])
        if not isinstance(command, list) or not all(isinstance(arg, str) for arg in command):
            raise _malformed("command must be an array of texts")
        numbers = {name: value.get(name, 0) for name in ("started", "seconds", "exit_code", "signal", "cut")}
        for name, number in numbers.items():
            if isinstance(number, bool) or not isinstance(number, (int, float)) \
                    or not math.isfinite(number):
                raise _malformed(f"{name} must be a number, not {shown(number)}")
        exit_code, signal = int(numbers["exit_code"]), int(numbers["signal"])
        return cls(kept, tuple(arg[:MAX_ARGUMENT] for arg in command[:MAX_COMMAND]), float(numbers["started"]),
                   max(0.0, float(numbers["seconds"])), None if exit_code < 0 else exit_code, signal or None,
                   bool(value.get("timed_out", False)), max(0, int(numbers["cut"])) + cut)

    def ending(self) -> str:
        """How the run ended, in a few words: "exit 0", "signal 9", "time limit"."""
        if self.timed_out:
            return "killed by its time limit"
        if self.signal:
            return f"signal {self.signal}"
        return "no exit code" if self.exit_code is None else f"exit {self.exit_code}"


def _malformed(why: str) -> FarmError:
    return FarmError(Code.BAD_ARGUMENT, f"the unit's log is malformed: {why}")


@dataclass(frozen=True)
class KeptLog:
    """A run's log as the controller keeps it: which unit, attempt and node, how the unit ended, the run."""
    id: int                 # the order logs were kept in: a reader's cursor
    job: int
    index: int              # the unit's index in its job
    frame: int
    frame_last: int
    kind: str               # the unit's kind (farm.kinds)
    attempt: int
    node: str               # the node's name
    outcome: str            # "done" or "failed"
    run: UnitLog
    cut: str                # what of the output was not kept, and why ("" when nothing)
