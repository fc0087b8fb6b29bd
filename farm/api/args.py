"""Checks of values as they arrive over the wire: one sentence each, never a traceback."""

from __future__ import annotations

import json
import math
from typing import Any

from farm.faults import Code, FarmError
from farm.wire import Binary, shown

MAX_ID = 2**31 - 1


def whole(name: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise FarmError(Code.BAD_ARGUMENT, f"{name} must be a whole number from {low} to {high}, not {shown(value)}")
    return value


def row_costs(name: str, value: Any, max_entries: int, max_row: int) -> tuple[tuple[int, int, float], ...]:
    """A list of [row_start, row_end, seconds]: rows of an image (0-based, end exclusive) and what they cost."""
    if not isinstance(value, list) or len(value) > max_entries:
        raise FarmError(Code.BAD_ARGUMENT, f"{name} must be a list of at most {max_entries} [row_start, row_end, "
                                           f"seconds] entries")
    costs = []
    for entry in value:
        if not isinstance(entry, list) or len(entry) != 3:
            raise FarmError(Code.BAD_ARGUMENT, f"each of {name} must be [row_start, row_end, seconds], not "
                                               f"{shown(entry)}")
        start, end = whole(f"{name} row_start", entry[0], 0, max_row - 1), whole(f"{name} row_end", entry[1], 1, max_row)
        if end <= start:
            raise FarmError(Code.BAD_ARGUMENT, f"{name}: rows {start}-{end} are empty")
        costs.append((start, end, number(f"{name} seconds", entry[2], 0.0, 1e7)))
    return tuple(costs)


def job_id(value: Any) -> int:
    return whole("job", value, 1, MAX_ID)


def number(name: str, value: Any, low: float = 0.0, high: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise FarmError(Code.BAD_ARGUMENT, f"{name} must be a number from {low:g} to {high:g}, not {shown(value)}")
    return float(value)


def seconds(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
        raise FarmError(Code.BAD_ARGUMENT, f"{name} must be a number of seconds, not {shown(value)}")
    return float(value)


def text(name: str, value: Any, max_len: int = 255) -> str:
    if not isinstance(value, str) or not value or len(value) > max_len:
        raise FarmError(Code.BAD_ARGUMENT, f"{name} must be a non-empty text of at most {max_len} characters")
    return value


def binary(name: str, value: Any) -> bytes:
    if not isinstance(value, Binary):
        raise FarmError(Code.BAD_ARGUMENT, f"{name} must be binary (base64) data")
    return value.data


def struct(name: str, value: Any) -> dict:
    if not isinstance(value, dict):
        raise FarmError(Code.BAD_ARGUMENT, f"{name} must be a struct")
    return value


def plain_struct(name: str, value: Any, max_bytes: int = 16384) -> dict:
    """A struct of plain values (text, numbers, booleans, lists and structs of them) of bounded size."""
    value = struct(name, value)
    try:
        size = len(json.dumps(value))
    except (TypeError, ValueError):
        raise FarmError(Code.BAD_ARGUMENT, f"{name} may hold only text, numbers, booleans, lists and structs") \
            from None
    if size > max_bytes:
        raise FarmError(Code.BAD_ARGUMENT, f"{name} is over {max_bytes} bytes")
    return value


def choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise FarmError(Code.BAD_ARGUMENT, f"{name} must be one of {', '.join(choices)}, not {shown(value)}")
    return value


def flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise FarmError(Code.BAD_ARGUMENT, f"{name} must be true or false, not {shown(value)}")
    return value
