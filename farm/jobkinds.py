"""Kinds of job, in one registry: the seam every kind of batch work goes through (docs/kinds.md).

A kind declares its name, the program a node runs for its units, the file its finished job's result is,
the kinds of unit its jobs hold, and where its two parts live: its controller part (how a job of it is
submitted, how a unit's result is checked and bounded as it arrives, how the job's result is assembled,
what viewers get: `farm.service.kindparts.ControllerPart`) and its node part (what a node runs for a
unit: `farm.rendering.kindparts`). The parts are named as "module:attribute" and imported where they run,
so a client loads neither, and a node never loads the controller's.

POV-Ray (stills and animations) and the video of an animation (farm.video) register here; more kinds
come from the modules the setting `kind_modules` names, which call `register` when imported.

A node offers the kinds whose program it has (or those its setting `kinds` names) and carries the
capability tag `capability(K)` of each; a job of kind K is leased only to a node carrying it, matched at
lease time like a required tag, so jobs stored before kinds need nothing new. A node from before kinds
says none: it offers POV-Ray's.
"""

from __future__ import annotations

import importlib
import threading
from dataclasses import dataclass
from typing import Any

from farm import tags
from farm.faults import Code, FarmError
from farm.kinds import PREVIEW, PRETRACE, ROWS, VIDEO

POVRAY = "povray"
CAPABILITY_PREFIX = "kind-"   # a capability tag: "kind-video" (a tag word, farm.tags)


@dataclass(frozen=True)
class Kind:
    name: str
    program: str          # the node's setting naming the program its units run ("": none beyond Python)
    result_suffix: str    # the file its finished job's result is stored and fetched as
    units: tuple[str, ...]   # the kinds of unit its jobs hold (farm.kinds for the built-in ones)
    controller: str       # "module:attribute": its controller part (farm.service.kindparts.ControllerPart)
    node: str             # "module:attribute": its node part, called with the node, giving its unit runner
    live_units: tuple[str, ...] = ()    # kinds of unit whose runs leave finished blocks to send while watched
    aside_units: tuple[str, ...] = ()   # kinds of unit a node renders beside its slot's work, not in its place


KINDS: dict[str, Kind] = {}
_UNITS: dict[str, str] = {}        # kind of unit -> kind of job
_LOCK = threading.RLock()       # an import under it may register a kind
_LOADED: dict[str, Any] = {}       # "module:attribute" -> what it names


def register(kind: Kind) -> Kind:
    """Add a kind (importing its module twice is harmless). BAD_ARGUMENT for a name or a kind of unit
    another kind has already."""
    with _LOCK:
        known = KINDS.get(kind.name)
        if known is not None and known != kind:
            raise FarmError(Code.BAD_ARGUMENT, f"kind {kind.name!r} is registered twice, differently")
        if tags.parse(capability(kind.name), "a kind's name") != (capability(kind.name),):
            raise FarmError(Code.BAD_ARGUMENT, f"kind {kind.name!r}: a kind's name is a short lower-case word")
        taken = [unit for unit in kind.units if _UNITS.get(unit, kind.name) != kind.name]
        if taken or not kind.units:
            raise FarmError(Code.BAD_ARGUMENT, f"kind {kind.name!r}: its kinds of unit must be its own "
                                               f"({', '.join(taken) or 'none given'})")
        KINDS[kind.name] = kind
        _UNITS.update({unit: kind.name for unit in kind.units})
    return kind


def get(name: str) -> Kind:
    """The kind called `name`; BAD_ARGUMENT (saying which there are) for none."""
    kind = KINDS.get(name)
    if kind is None:
        raise FarmError(Code.BAD_ARGUMENT, f"no kind {str(name)[:60]!r} is loaded (kinds: {', '.join(KINDS)}; "
                                           "more come from the setting 'kind_modules')")
    return kind


def of_unit(unit_kind: str) -> Kind:
    """The kind whose jobs hold units of `unit_kind` (an unknown one is POV-Ray's: it renders as rows, as a
    node from before kinds renders it)."""
    return KINDS[_UNITS.get(unit_kind, POVRAY)]


def part(path: str) -> Any:
    """What "module:attribute" names, imported once."""
    found = _LOADED.get(path)
    if found is not None:     # every call after the first: no lock on the result path
        return found
    with _LOCK:
        if path not in _LOADED:
            module, _, attribute = path.partition(":")
            _LOADED[path] = getattr(importlib.import_module(module), attribute)
        return _LOADED[path]


def load_modules(text: str) -> tuple[str, ...]:
    """Import the modules the setting `kind_modules` names (comma-separated), each registering its kinds;
    BAD_ARGUMENT, with the reason, for one that cannot be imported or registers no kind."""
    loaded = []
    for name in (item.strip() for item in text.split(",")):
        if not name:
            continue
        try:
            module = importlib.import_module(name)
        except FarmError as err:
            raise FarmError(Code.BAD_ARGUMENT, f"setting 'kind_modules': {name}: {err}") from None
        except Exception as err:   # anything an import may raise: said in one sentence
            raise FarmError(Code.BAD_ARGUMENT, f"setting 'kind_modules': cannot import {name}: "
                                               f"{type(err).__name__}: {err}") from None
        if not any(name in (kind.controller.partition(":")[0], kind.node.partition(":")[0])
                   or any(value is kind for value in vars(module).values()) for kind in KINDS.values()):
            raise FarmError(Code.BAD_ARGUMENT, f"setting 'kind_modules': {name} registers "
                                               "no kind (it must call farm.jobkinds.register)")
        loaded.append(name)
    return tuple(loaded)


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
    """The tag a node offering `kind` carries, which a job of that kind needs."""
    return CAPABILITY_PREFIX + kind


def kind_tags(info: dict) -> tuple[str, ...]:
    """The capability tags of a node, one per kind it offers (from what it said at registration)."""
    return tuple(sorted(capability(kind) for kind in offered_by(info)))


def capability_tags(info: dict) -> tuple[str, ...]:
    """Those of a node's capability tags a job names in its `require` (a video job's "kind-video"); a
    POV-Ray job names none: its kind is matched at lease time (`needs`)."""
    return tuple(tag for tag in kind_tags(info) if tag != capability(POVRAY))


def needs(kind: str, require: tuple[str, ...]) -> tuple[str, ...]:
    """The tags a node must have to take a job of `kind` requiring `require`: those, and the kind's."""
    return require if capability(kind) in require else (*require, capability(kind))


def result_suffix(kind: str) -> str:
    return KINDS[kind].result_suffix if kind in KINDS else KINDS[POVRAY].result_suffix


def offered_by(info: dict) -> tuple[str, ...]:
    """The kinds a node offers, from what it said at registration (a node from before kinds: POV-Ray's)."""
    offered = info.get("kinds", (POVRAY,))
    return tuple(kind for kind in KINDS if isinstance(offered, (list, tuple)) and kind in offered)


def sends_live(unit_kind: str) -> bool:
    """Whether a node sends the finished blocks of a unit of `unit_kind` as it renders, while a viewer
    watches (its kind declares it in `live_units`)."""
    return unit_kind in of_unit(unit_kind).live_units


def runs_aside(unit_kind: str) -> bool:
    """Whether a node renders a unit of `unit_kind` beside its slot's work instead of in its place (a small
    unit nobody waits behind: its kind declares it in `aside_units`)."""
    return unit_kind in of_unit(unit_kind).aside_units


def own_tags(tags: tuple[str, ...]) -> tuple[str, ...]:
    """A node's tags without the capability tags of its kinds, for showing."""
    return tuple(tag for tag in tags if not tag.startswith(CAPABILITY_PREFIX))


def lacking_kinds(require: tuple[str, ...]) -> str:
    """The start of a blocked job's reason when it needs a kind no live node offers ("" when it needs none)."""
    said = [tag[len(CAPABILITY_PREFIX):] for tag in require if tag.startswith(CAPABILITY_PREFIX)]
    return "".join(f"no live node runs {kind} jobs (a node needs {_program(KINDS[kind])}the kind in its "
                   f"setting 'kinds'); " for kind in dict.fromkeys(said) if kind in KINDS)


def _program(kind: Kind) -> str:
    return f"{kind.program} and " if kind.program else ""


# The kinds this farm is built with: POV-Ray's scenes rendered into frames, and an animation's video.
register(Kind(POVRAY, "povray", ".png", (ROWS, PRETRACE, PREVIEW), "farm.service.povray_kind:PART",
              "farm.rendering.kindparts:povray", live_units=(ROWS,), aside_units=(PREVIEW,)))
register(Kind(VIDEO, "ffmpeg", ".mp4", (VIDEO,), "farm.service.videos:PART", "farm.rendering.encode:node_part"))
