"""Kinds of job and what each needs of a node: the seam a new kind of batch work goes through.

A job of kind POVRAY renders a scene (a still or an animation) into frames; that path predates this seam
and is not routed through it. A job of kind VIDEO (farm.video) encodes a finished animation's frames into
one video file. A kind here declares the program a node must have to run its units; a node offers the kinds
whose program it has (or those its setting `kinds` names), and the controller matches them like tags: a
node offering kind K carries the capability tag `capability(K)`, which every job of kind K requires.
"""

from __future__ import annotations

from dataclasses import dataclass

from farm.faults import Code, FarmError
from farm.kinds import VIDEO   # the job kind and its one unit's kind

POVRAY = "povray"
CAPABILITY_PREFIX = "kind-"   # a capability tag: "kind-video" (a tag word, farm.tags)


@dataclass(frozen=True)
class Kind:
    name: str
    program: str          # the program a node runs for its units (the node's setting of that name)
    result_suffix: str    # the file its finished job's result is stored and fetched as


KINDS = {POVRAY: Kind(POVRAY, "povray", ".png"), VIDEO: Kind(VIDEO, "ffmpeg", ".mp4")}


def parse_offered(text: str, has_program) -> tuple[str, ...]:
    """The kinds a node offers from its setting `kinds` (comma-separated; "" or "auto": every kind whose
    program `has_program(kind)` says it has). BAD_ARGUMENT for a kind there is no such thing as."""
    names = [name.strip().lower() for name in text.split(",") if name.strip()]
    if not names or names == ["auto"]:
        return tuple(name for name in KINDS if has_program(name))
    unknown = [name for name in names if name not in KINDS]
    if unknown:
        raise FarmError(Code.BAD_ARGUMENT, f"setting 'kinds': no kind {', '.join(unknown)} (kinds: "
                                           f"{', '.join(KINDS)})")
    return tuple(name for name in KINDS if name in names)


def capability(kind: str) -> str:
    """The tag a node offering `kind` carries and a job of that kind requires."""
    return CAPABILITY_PREFIX + kind


def capability_tags(info: dict) -> tuple[str, ...]:
    """The capability tags of a node from what it said at registration (its "kinds"; POV-Ray jobs
    require none, so a node from before kinds takes them as ever)."""
    return tuple(sorted(capability(kind) for kind in offered_by(info) if kind != POVRAY))


def result_suffix(kind: str) -> str:
    return KINDS[kind].result_suffix if kind in KINDS else KINDS[POVRAY].result_suffix


def offered_by(info: dict) -> tuple[str, ...]:
    """The kinds a node offers, from what it said at registration (a node from before kinds: POV-Ray's)."""
    offered = info.get("kinds", (POVRAY,))
    return tuple(kind for kind in KINDS if isinstance(offered, (list, tuple)) and kind in offered)


def own_tags(tags: tuple[str, ...]) -> tuple[str, ...]:
    """A node's tags without the capability tags of its kinds, for showing."""
    return tuple(tag for tag in tags if not tag.startswith(CAPABILITY_PREFIX))


def lacking_kinds(require: tuple[str, ...]) -> str:
    """The start of a blocked job's reason when it needs a kind no live node offers ("" when it needs none)."""
    needs = [tag[len(CAPABILITY_PREFIX):] for tag in require if tag.startswith(CAPABILITY_PREFIX)]
    return "".join(f"no live node runs {kind} jobs (a node needs {KINDS[kind].program} and the kind in its "
                   f"setting 'kinds'); " for kind in needs if kind in KINDS)
