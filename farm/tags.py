"""Node tags and the tags a job requires or prefers, as pure rules.

A node says what it is (`povfarm node --tags windows,fast`, or the controller's override set with
`povfarm node-tags`); a job requires tags (every one: only such a node renders it) and prefers others
(when several nodes wait, one that has them gets the job first). Tags are short words, compared as
written in lower case.
"""

from __future__ import annotations

import re
from typing import Iterable

from farm.faults import Code, FarmError
from farm.wire import shown

MAX_TAGS = 32
_TAG = re.compile(r"[a-z0-9][a-z0-9_.-]{0,39}")


def parse(values: Iterable[str] | str, what: str = "tags") -> tuple[str, ...]:
    """Tags from a comma-separated text or a list of texts (each may hold commas), checked, in lower
    case, each once, sorted. BAD_ARGUMENT for a tag that is not a short word."""
    items = values.split(",") if isinstance(values, str) else [
        part for value in values for part in (value.split(",") if isinstance(value, str) else [value])]
    tags = set()
    for item in items:
        if not isinstance(item, str):
            raise FarmError(Code.BAD_ARGUMENT, f"{what}: {shown(item)} is not a text")
        tag = item.strip().lower()
        if not tag:
            continue
        if not _TAG.fullmatch(tag):
            raise FarmError(Code.BAD_ARGUMENT, f"{what}: {shown(item)} is not a tag (letters, digits, '_', '.', '-',"
                                               " at most 40, starting with a letter or digit)")
        tags.add(tag)
    if len(tags) > MAX_TAGS:
        raise FarmError(Code.BAD_ARGUMENT, f"{what}: at most {MAX_TAGS} tags")
    return tuple(sorted(tags))


def missing(required: Iterable[str], tags: Iterable[str]) -> tuple[str, ...]:
    """The required tags a node with `tags` lacks (() when it may render the job)."""
    have = set(tags)
    return tuple(sorted(tag for tag in required if tag not in have))


def fits(required: Iterable[str], tags: Iterable[str]) -> bool:
    return not missing(required, tags)
