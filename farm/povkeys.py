"""Every INI key of POV-Ray 3.7, and what the farm does with it: the one table `farm.povcmd` reads INI
files and `Key=Value` arguments by.

The keys are those of POV-Ray 3.7.0.10's own keyword table (`RenderOptions_INI_Table` in
source/frontend/processrenderoptions.cpp; tests/fixtures/povray37_ini_keys.txt holds that list and a test
checks this table against it). Each key is one of:

- passed: it stands for a rendering switch the nodes' POV-Ray gets (farm.options checks the value);
- farm: the farm itself handles it (size, output, animation, library paths, INI files);
- ignored: it means nothing on a farm and does no harm: one note says so;
- refused: the farm cannot honour it; the reason is said. Some are refused only when they would do
  something (`Dither=on`, a non-empty `Pre_Scene_Command`): their harmless values (`off`, empty, a row
  range that is the whole image) pass without a word, so shipped INI files such as benchmark.ini work.

A name that is no key at all is "not a POV-Ray setting", with the closest real key. The switches the
farm ignores or refuses (with their notes and reasons) are here too, so an INI key and its switch say the
same; those it passes are farm.options' allowlist.
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Optional

from farm.options import RADIOSITY_FILES
from farm.povstreams import STREAMS

PASSED, FARM, IGNORED, REFUSED = "passed", "farm", "ignored", "refused"
# When a refused key is harmless: never; when off (a false boolean, or empty); when empty; when it names
# the whole image (a start of 0 or 1, an end of 1: POV-Ray reads 0 <= v <= 1 as a fraction).
NEVER, WHEN_OFF, WHEN_EMPTY, WHEN_START, WHEN_END = "", "off", "empty", "start", "end"


@dataclasses.dataclass(frozen=True)
class Key:
    name: str                 # as POV-Ray's documentation spells it
    role: str                 # PASSED, FARM, IGNORED or REFUSED
    switch: str = ""          # the switch it stands for, if any (booleans become +X / -X)
    boolean: bool = False
    why: str = ""             # the note (ignored) or the reason (refused)
    harmless: str = NEVER     # refused keys: which values pass without a word

    def is_harmless(self, value: str, off: bool) -> bool:
        text = value.strip()
        if self.harmless == WHEN_OFF:
            return off or not text
        if self.harmless == WHEN_EMPTY:
            return not text
        try:
            number = float(text)
        except ValueError:
            return False
        return number in (0.0, 1.0) if self.harmless == WHEN_START else number == 1.0


_DISPLAY = "nodes never open a display"
_GONE = "POV-Ray 3.7 no longer uses it"
_BSP = "it tunes POV-Ray's BSP tree, which changes the speed, never the pixels; the nodes keep their own"
_SHELL = "a farm never runs shell commands on its nodes"
_WHOLE = "the farm renders whole images (crop the result instead)"
_RADIOSITY_FILES = RADIOSITY_FILES
_HEADER = "include header files are not supported: #include the file in the scene"
_DITHER = "the farm does not dither the image"
_FIELDS = "the farm renders every row (no interlaced fields)"
_STEP = "the farm renders every frame of the range (+SF/+EF pick a subset)"
_CLOCKLESS = "a farm animation always runs the clock"
_RTR = "real-time raytracing needs a display"
_MEMORY = "each node manages its own memory"
_ORDER = "the farm orders the work itself"
JPEG_QUALITY_NOTE = ("POV-Ray 3.7 takes JPEG's quality from Compression= (85 unless given), never from +FJ; the "
                     "farm does the same")

# Switches that do nothing useful on a farm and no harm: ignored, each with one note saying why.
IGNORED_SWITCHES = {
    "D": _DISPLAY, "P": "there is no window to pause", "V": "povfarm shows its own progress",
    "X": "stop with Ctrl-C", "SP": "there is no preview", "EP": "there is no preview",
    "WT": "each node sets its own thread count (povfarm render --threads)", "WL": "nodes set the warning level",
    "GP": "POV-Ray 3.7 writes nothing different for it", "GI": "no INI file is written",
    "C": "a farm render always starts afresh",
    "B": "bounding changes the speed, never the pixels", "MI": _MEMORY,
    "RS": _ORDER, "RP": _ORDER,
}
# Switches the farm cannot honour: refused, with the reason.
REFUSED_SWITCHES = {
    "SR": _WHOLE, "ER": _WHOLE, "SC": _WHOLE, "EC": _WHOLE, "RF": _RADIOSITY_FILES, "HI": _HEADER,
    "RFI": _RADIOSITY_FILES, "RFO": _RADIOSITY_FILES, "TH": _DITHER,
    "UF": _FIELDS, "UO": _FIELDS, "STP": _STEP,
    "KLA": _CLOCKLESS, "RTR": _RTR,
}
# Refused switches that do nothing when turned off (-TH, -UF, ...): those pass without a word.
REFUSED_WHEN_ON = frozenset({"RFI", "RFO", "TH", "UF", "UO", "KLA", "RTR"})


def _passed(name: str, switch: str, boolean: bool = False) -> Key:
    return Key(name, PASSED, switch, boolean)


def _farm(name: str, switch: str = "", boolean: bool = False) -> Key:
    return Key(name, FARM, switch, boolean)


def _ignored(name: str, why: str) -> Key:
    return Key(name, IGNORED, why=why)


def _ignored_switch(name: str, switch: str, boolean: bool = False) -> Key:
    """A key that stands for an ignored switch: its note is the switch's."""
    return Key(name, IGNORED, switch, boolean, IGNORED_SWITCHES[switch])


def _refused(name: str, why: str, harmless: str = NEVER) -> Key:
    return Key(name, REFUSED, why=why, harmless=harmless)


_KEYS = [
    # rendering: passed to the nodes as switches (farm.options checks each value)
    _passed("Antialias", "A", True), _passed("Antialias_Threshold", "A"), _passed("Antialias_Depth", "R"),
    _passed("Antialias_Gamma", "AG"), _passed("Sampling_Method", "AM"), _passed("Jitter", "J", True),
    _passed("Jitter_Amount", "J"), _passed("Quality", "Q"), _passed("Bounding", "MB", True),
    _passed("Bounding_Threshold", "MB"), _passed("Bounding_Method", "BM"), _passed("Version", "MV"),
    _passed("Light_Buffer", "UL", True), _passed("Vista_Buffer", "UV", True),
    _passed("Remove_Bounds", "UR", True), _passed("Draw_Vistas", "UD", True),
    _passed("Split_Unions", "SU", True), _passed("Render_Block_Size", "BS"), _passed("Clock", "K"),
    _passed("Output_Alpha", "UA", True), _passed("High_Reproducibility", "HR", True),
    _passed("Radiosity_Vain_Pretrace", "RVP", True), _passed("Declare", ""), _passed("File_Gamma", ""),
    # what to render: the farm's own job settings
    _farm("Width", "W"), _farm("Height", "H"), _farm("Input_File_Name", "I"), _farm("Output_File_Name", "O"),
    _farm("Output_File_Type"), _farm("Bits_Per_Color"), _farm("Bits_Per_Colour"), _farm("Library_Path", "L"),
    _farm("Include_Ini"), _farm("Initial_Frame", "KFI"), _farm("Final_Frame", "KFF"),
    _farm("Initial_Clock", "KI"), _farm("Final_Clock", "KF"), _farm("Subset_Start_Frame", "SF"),
    _farm("Subset_End_Frame", "EF"), _farm("Cyclic_Animation", "KC", True), _farm("Output_To_File", "F", True),
    _farm("Compression"),
    # POV-Ray's message streams (farm.povstreams): render writes their files and keeps them off its console
    _farm("Append_File", boolean=True),
    *(_farm(f"{name}_File") for name, _, _ in STREAMS.values()),
    *(_farm(f"{name}_Console", boolean=True) for name, _, _ in STREAMS.values()),
    # harmless on a farm: one note each
    _ignored_switch("Display", "D", True), _ignored("Display_Gamma", _DISPLAY), _ignored("Palette", _DISPLAY),
    _ignored("Video_Mode", _DISPLAY), _ignored_switch("Preview_Start_Size", "SP"),
    _ignored_switch("Preview_End_Size", "EP"), _ignored_switch("Pause_When_Done", "P", True),
    _ignored_switch("Verbose", "V", True), _ignored_switch("Test_Abort", "X", True),
    _ignored("Test_Abort_Count", IGNORED_SWITCHES["X"]), _ignored_switch("Continue_Trace", "C", True),
    _ignored_switch("Work_Threads", "WT"), _ignored_switch("Warning_Level", "WL"),
    _ignored("Max_Image_Buffer_Memory", _MEMORY), _ignored("Render_Block_Step", _ORDER),
    _ignored("Render_Pattern", _ORDER),
    _ignored("Create_Ini", "no INI file is written"),
    *(_ignored(f"BSP_{name}", _BSP) for name in ("BaseAccessCost", "ChildAccessCost", "ISectCost", "MaxDepth",
                                                 "MissChance")),
    *(_ignored(name, _GONE) for name in ("Buffer_Output", "Buffer_Size", "Create_Histogram", "Histogram_Name",
                                         "Histogram_Grid_Size", "Histogram_Type")),
    # refused, with the reason; some only when they would do something
    *(_refused(f"{when}_Command", _SHELL, WHEN_EMPTY) for when in ("Pre_Scene", "Pre_Frame", "Post_Scene",
                                                                   "Post_Frame", "User_Abort", "Fatal_Error")),
    *(_ignored(f"{when}_Return", "it acts on a shell command's result, and no shell command runs")
      for when in ("Pre_Scene", "Pre_Frame", "Post_Scene", "Post_Frame", "User_Abort", "Fatal_Error")),
    _refused("Start_Row", _WHOLE, WHEN_START), _refused("Start_Column", _WHOLE, WHEN_START),
    _refused("End_Row", _WHOLE, WHEN_END), _refused("End_Column", _WHOLE, WHEN_END),
    _refused("Radiosity_File_Name", _RADIOSITY_FILES, WHEN_EMPTY),
    _refused("Radiosity_From_File", _RADIOSITY_FILES, WHEN_OFF),
    _refused("Radiosity_To_File", _RADIOSITY_FILES, WHEN_OFF),
    _refused("Include_Header", _HEADER, WHEN_EMPTY), _refused("Dither", _DITHER, WHEN_OFF),
    _refused("Dither_Method", _DITHER, WHEN_EMPTY),
    _refused("Grayscale_Output", "the farm writes colour images", WHEN_OFF),
    _refused("Field_Render", _FIELDS, WHEN_OFF), _refused("Odd_Field", _FIELDS, WHEN_OFF),
    _refused("Frame_Step", _STEP, WHEN_EMPTY), _refused("Clockless_Animation", _CLOCKLESS, WHEN_OFF),
    _refused("Real_Time_Raytracing", _RTR, WHEN_OFF),
]
INI_KEYS: dict[str, Key] = {key.name.lower(): key for key in _KEYS}
assert len(INI_KEYS) == len(_KEYS), "a key is listed twice"


def lookup(name: str) -> Optional[Key]:
    return INI_KEYS.get(name.strip().lower())


def closest(name: str) -> Optional[str]:
    """The real key a typo most likely meant, or None."""
    found = difflib.get_close_matches(name.strip().lower(), INI_KEYS, n=1, cutoff=0.6)
    return INI_KEYS[found[0]].name if found else None
