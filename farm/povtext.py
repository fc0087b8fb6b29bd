"""POV-Ray's text output read as POV-Ray writes it: its streams told apart, progress lines dropped, bounded.

The console `povray` writes all of its message streams to one place (stderr with `-D`), in an order that
says which is which: the banner, the options, then for each frame a parse section (`==== [Parsing...]`:
the scene's `#debug` text, its `#warning`s and POV-Ray's parse warnings, in scene order), the parser's
statistics, the render options, the render section (`==== [Rendering...]`: progress, render warnings)
and the render statistics; errors (the fatal stream) end it. `classify` gives each line its stream.

`#debug` and `#warning` are parse-time directives, so the text a scene prints is always in a parse section;
the render section holds only POV-Ray's own messages (its warnings are kept as such, anything else there is
the render stream). `parse_messages` is the text the scene printed, per frame, as `povray` shows it.
Pure: no I/O, shared by the node (which bounds what it sends), the controller and the clients.
"""

from __future__ import annotations

import re
from typing import Iterable

BANNER, RENDER, DEBUG, WARNING, ERROR, STATISTICS = "banner", "render", "debug", "warning", "error", "statistics"
KINDS = (BANNER, RENDER, DEBUG, WARNING, ERROR, STATISTICS)

WRAP_WIDTH = 80      # POV-Ray cuts its messages' lines at 80 columns (base/textstreambuffer.cpp)
CUT_MARK = "[povfarm: {cut} of POV-Ray's output cut here]"
BANNER_MARK = "[povfarm: POV-Ray's banner left out]"

def is_section_line(line: str) -> bool:
    """Whether the line is POV-Ray's heading of a section ("==== [Parsing...] ===="). Its front end prints
    the heading from another thread, so it may land among an error message's lines."""
    return bool(_SECTION.match(line))


# POV-Ray's progress line, rewritten in place as it renders ("Rendered 1234 of 307200 pixels"), read from the
# bytes of its stderr (the node's unit progress, the radiosity pre-pass's passes).
PROGRESS = re.compile(rb"Rendered (\d+) of (\d+) pixels")

_PARSING = "==== [Parsing...]"
_SECTION = re.compile(r"^==== \[[A-Za-z ]+\.\.\.\] =+\s*$")    # "==== [Parsing...] ====...", any section
_RENDERING = "==== [Rendering...]"
_DASHES = re.compile(r"^-{20,}$")
_STATISTICS_TITLE = re.compile(r"^(Parser Statistics|Parser Time|Render Statistics|Render Time:?)\b")
_OPTIONS_TITLE = re.compile(r"^(Parser Options|Animation Options|Image Output Options|Information Output Options|"
                            r"Render Options|Radiosity Options|Photon Options)\b")
_FRAME = re.compile(r"^Rendering frame \d+ of \d+")
_PLACE = r"(File '.*' line \d+:\s*)?"
_WARNING = re.compile(_PLACE + r"(Parse Warning|Possible Parse Error|Warning)\b|^.*\bWarning: ")
_ERROR = re.compile(_PLACE + r"(Parse Error|Fatal error|Render failed|Failed to parse|Error:|Render error)")
_PLACE_ONLY = re.compile(r"^File '.*' line \d+:\s*$")
_LAST_OPTION = re.compile(r"^  Warning Stream to console\b")    # the last line POV-Ray prints before parsing
_AWAITING = "awaiting"    # after the options, before `==== [Parsing...]`: where a busy POV-Ray may print messages
_BANNER_END = re.compile(r"^(Parser Options|==== \[Parsing|Rendering frame \d)", re.MULTILINE)


def without_progress(text: str) -> str:
    """The text with POV-Ray's progress lines (each rewritten in place with a carriage return) reduced to
    the last one written on each line, so a long render leaves one line, not thousands."""
    lines = []
    for line in text.split("\n"):
        if "\r" in line:
            parts = [part for part in line.split("\r") if part.strip()]
            line = parts[-1] if parts else ""
        lines.append(line)
    return "\n".join(lines)


def bounded(text: str, limit: int) -> tuple[str, int]:
    """(the text in at most about `limit` bytes of UTF-8, bytes cut). Too long a text loses POV-Ray's
    banner first (its credits, the same in every run), then keeps its head (the parse messages) and its
    tail (the statistics and any error), cut at line ends, with a line saying how much went."""
    data = text.encode("utf-8", "replace")
    if len(data) <= limit:
        return text, 0
    banner = _BANNER_END.search(text)
    if banner is not None and banner.start() > 0 and not text.startswith(BANNER_MARK):
        mark = BANNER_MARK + "\n"
        shorter, cut = bounded(mark + text[banner.start():], limit)
        return shorter, cut + len(text[:banner.start()].encode("utf-8", "replace"))
    head_size, tail_size = limit * 2 // 3, limit // 3
    head = data[:head_size]
    head = head[:head.rfind(b"\n") + 1] if b"\n" in head else _whole_characters(head)
    tail = data[len(data) - tail_size:] if tail_size else b""
    tail = tail[tail.find(b"\n") + 1:] if b"\n" in tail else _whole_characters(tail)
    cut = len(data) - len(head) - len(tail)
    mark = CUT_MARK.format(cut=f"{cut} bytes") + "\n"
    return (head + mark.encode() + tail).decode("utf-8", "replace"), cut


def _whole_characters(data: bytes) -> bytes:
    """UTF-8 `data` without the pieces of characters cut at either end."""
    return data.decode("utf-8", "ignore").encode("utf-8")


def classify(text: str) -> list[tuple[str, str]]:
    """Each line of POV-Ray's console output with the stream it belongs to (one of KINDS)."""
    lines = without_progress(text).replace("\r", "").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    out: list[tuple[str, str]] = []
    section, previous = BANNER, BANNER
    for index, line in enumerate(lines):
        following = lines[index + 1] if index + 1 < len(lines) else ""
        section = _section(section, line, following)
        kind = _kind(section, line, following, previous)
        if previous in (WARNING, ERROR) and len(lines[index - 1]) == WRAP_WIDTH and line.strip() \
                and kind not in (WARNING, ERROR):
            kind = previous     # the rest of a word POV-Ray cut where the message's line was full
        out.append((kind, line))
        previous = kind
    return out


def _section(section: str, line: str, following: str) -> str:
    """Where in POV-Ray's output `line` is: BANNER, RENDER (options), DEBUG (a parse section), "tracing"
    (a render section) or STATISTICS."""
    if line.startswith(_PARSING):
        return DEBUG
    if line.startswith(_RENDERING):
        return "tracing"
    if _DASHES.match(line) and _STATISTICS_TITLE.match(following):
        return STATISTICS
    if section in (DEBUG, "tracing", _AWAITING):
        return section
    if _OPTIONS_TITLE.match(line) or _FRAME.match(line) or line.startswith("POV-Ray finished"):
        return RENDER
    return _AWAITING if _LAST_OPTION.match(line) else section


def _kind(section: str, line: str, following: str, previous: str) -> str:
    if _ERROR.match(line) or (_PLACE_ONLY.match(line) and _ERROR.match(following)):
        return ERROR
    if section == BANNER:
        return BANNER
    if _WARNING.match(line) or (_PLACE_ONLY.match(line) and _WARNING.match(following)):
        return WARNING
    if previous in (WARNING, ERROR) and line.startswith(" ") and not line.startswith("  "):
        return previous   # POV-Ray wraps a message at about 80 columns: its next lines start with a space
    if section == DEBUG:
        return DEBUG if not line.startswith(_PARSING) else RENDER
    if section == "tracing":
        return RENDER
    if section == _AWAITING and not _LAST_OPTION.match(line):
        return DEBUG      # the scene's text, printed before the `==== [Parsing...]` line it belongs under
    return RENDER if section == _AWAITING else section


def parse_messages(text: str, kinds: Iterable[str] = (DEBUG, WARNING)) -> list[str]:
    """The scene's messages (its `#debug` text and warnings; with ERROR in `kinds` its parse errors too)
    as `povray` prints them, one text per parse, in order: one per frame the run rendered. A busy POV-Ray
    may print a parse's first messages before its `==== [Parsing...]` line (its streams race): they count
    with that parse, which ends where the parser's statistics begin."""
    chosen = frozenset(kinds)
    frames: list[list[str]] = []
    parsing = tracing = False     # in a parse; in a render (its warnings are no parse's)
    for kind, line in classify(text):
        if line.startswith(_RENDERING) or _FRAME.match(line):
            tracing = line.startswith(_RENDERING)
        starts = line.startswith(_PARSING) or (kind in (DEBUG, WARNING, ERROR) and not tracing)
        if starts and not parsing:
            frames.append([])
            parsing, tracing = True, False
        if kind == STATISTICS:
            parsing = False
        elif frames and parsing and kind in chosen:
            frames[-1].append(line)
    return ["".join(f"{line}\n" for line in _trimmed(lines)) for lines in frames]


def _trimmed(lines: list[str]) -> list[str]:
    """Without the blank lines POV-Ray ends a section with."""
    while lines and not lines[-1].strip():
        lines = lines[:-1]
    return lines

