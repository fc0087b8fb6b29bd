"""How a job is cut into units of work at submit: strips of a frame, runs of whole frames, or one
remainder per frame that the scheduler cuts as nodes ask (`farm.scheduler`), with a radiosity pre-pass
and a preview where the job asks for them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from farm.kinds import PRETRACE, PREVIEW, ROWS, preview_size
from farm.strips import DEFAULT_BLOCK, block_count, plan_strips


@dataclass(frozen=True)
class UnitPlan:
    """A unit of work as planned at submit: rows [row_start, row_end) of frames first_frame..last_frame,
    rendered by one POV-Ray process. kind ROWS delivers those rows; PRETRACE is a frame's radiosity
    pre-pass over its rows (the whole frame, or a band of it) whose result is a radiosity cache; PREVIEW is a
    frame's preview, whose rows are those of the preview's own (smaller) image. A `remainder` is not
    rendered as planned: each lease cuts the next unit off it (`farm.scheduler`)."""
    first_frame: int
    last_frame: int
    row_start: int
    row_end: int
    kind: str = ROWS
    remainder: bool = False

    def splits_frame(self, height: int) -> bool:
        return self.remainder or (self.row_start, self.row_end) != (0, height)


def plan_units(height: int, first_frame: int, last_frame: int, slots: int, strips: int | str = "auto",
               block: int = DEFAULT_BLOCK, runs_per_slot: int = 2) -> list[UnitPlan]:
    """Units of work for frames first..last, for a farm with `slots` POV-Ray slots in all.

    With an explicit strip count every frame is split into that many strips. Otherwise a still, or
    fewer frames than slots, gets one remainder unit per frame, cut into strips as nodes ask for work
    (`farm.scheduler`); with more frames than slots, whole frames are the units, in runs of consecutive
    frames that one POV-Ray process renders (+SF/+EF) so its start-up cost is paid once per run;
    `runs_per_slot` runs per slot let faster nodes take more of the frames."""
    frames = last_frame - first_frame + 1
    if frames < 1:
        raise ValueError("the frame range is empty")
    slots = max(1, slots)
    if strips == "auto" and (frames == 1 or frames < slots) and block_count(height, block) > 1:
        return [UnitPlan(frame, frame, 0, height, remainder=True) for frame in range(first_frame, last_frame + 1)]
    if strips != "auto" or frames == 1 or frames < slots:
        count = int(strips) if strips != "auto" else 1
        rows = plan_strips(height, count, block)
        return [UnitPlan(frame, frame, start, end) for frame in range(first_frame, last_frame + 1)
                for start, end in rows]
    runs = min(frames, slots * runs_per_slot)
    base, extra = divmod(frames, runs)
    units, frame = [], first_frame
    for index in range(runs):
        size = base + (1 if index < extra else 0)
        units.append(UnitPlan(frame, frame + size - 1, 0, height))
        frame += size
    return units


def with_pretrace(units: Sequence[UnitPlan], height: int, pretrace: bool,
                  bands: Sequence[tuple[int, int]] = ()) -> list[UnitPlan]:
    """The units, where `pretrace` asks for it with a radiosity pre-pass just before the first strip of
    every frame cut into strips: strips of one frame must share one radiosity cache to match a single
    render. The pre-pass is a unit per band of rows in `bands` (the whole frame when none are given), so
    that several boxes share it; their caches are merged (the submission cuts them: equal and
    block-aligned, or by cost, farm.radiosity). A unit with a frame's every row needs none."""
    bands = list(bands) or [(0, height)]
    planned: list[UnitPlan] = []
    for unit in units:
        if pretrace and unit.splits_frame(height) and (not planned or planned[-1].first_frame != unit.first_frame):
            planned += [UnitPlan(unit.first_frame, unit.first_frame, start, end, PRETRACE) for start, end in bands]
        planned.append(unit)
    return planned


def with_preview(units: Sequence[UnitPlan], width: int, height: int, preview: bool) -> list[UnitPlan]:
    """The units, where `preview` asks for it with a preview unit of the first frame ahead of all of them:
    a viewer sees the whole picture coarsely within seconds, long before the first strip is in."""
    if not preview or not units:
        return list(units)
    first = min(unit.first_frame for unit in units)
    return [UnitPlan(first, first, 0, preview_size(width, height)[1], PREVIEW), *units]
