"""What a unit of work is, in the words the controller, the node and the viewers share: the kinds of
unit (pixel rows, a frame's radiosity pre-pass, a preview), when a job's first frame gets a preview,
and how big a preview is."""

from __future__ import annotations

import enum

from farm.wire import shown

ROWS, PRETRACE = "rows", "pretrace"   # kinds of unit: pixel rows, or a frame's radiosity pre-pass
PREVIEW = "preview"   # a quick low-resolution render of a whole frame, for viewers only: never stitched
LIVE = "live"         # a finished block of a unit still rendering, relayed to viewers: never stored
VIDEO = "video"       # a video job's one unit: its animation's frames encoded into one file (farm.video)
PREVIEW_SCALE = 8     # a preview is 1/PREVIEW_SCALE of the frame's width and height


class PreviewMode(str, enum.Enum):
    """When a job's first frame gets a preview."""
    ALWAYS = "always"     # whoever watches (a viewer may be opened after the job starts)
    WATCHED = "watched"   # when a viewer watches the job as its first frame starts: nobody else sees it
    NEVER = "never"

    @classmethod
    def parse(cls, value: object) -> "PreviewMode":
        """From a setting or a submission: a mode's name, "auto" (WATCHED), or yes/no in any usual form."""
        if isinstance(value, bool):
            return cls.ALWAYS if value else cls.NEVER
        text = str(value).strip().lower()
        words = {"auto": cls.WATCHED, "true": cls.ALWAYS, "yes": cls.ALWAYS, "on": cls.ALWAYS, "1": cls.ALWAYS,
                 "false": cls.NEVER, "no": cls.NEVER, "off": cls.NEVER, "0": cls.NEVER}
        if text in words:
            return words[text]
        try:
            return cls(text)
        except ValueError:
            raise ValueError(f"preview must be auto, always or never, not {shown(value)}") from None


def preview_size(width: int, height: int) -> tuple[int, int]:
    """The size of a frame's preview: 1/PREVIEW_SCALE of each side, at least 1x1."""
    return max(1, width // PREVIEW_SCALE), max(1, height // PREVIEW_SCALE)
