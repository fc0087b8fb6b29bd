"""Sharing one photon map between the strips of a frame.

POV-Ray shoots the whole photon map again for every strip (a strip of a photon scene can spend
seconds shooting photons and a fraction of that tracing). The map does not depend on which rows
are rendered, so a node shoots it once per frame: the first strip renders with `save_file` put
into the scene's own `global_settings { photons { ... } }` block, the others with `load_file` in
its place. Measured on POV-Ray 3.7: strips rendered this way are bit-identical to the untouched
scene's render. (A second `global_settings` block does not work: it replaces the scene's photon
settings.)

This module only reads and rewrites scene text; the node owns the files and the locking.
"""

from __future__ import annotations

import re

PHOTON_FILE = "povfarm-photons.ph"     # relative: it lives in the strip's own (sandboxed) folder
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _tokens(text: str):
    """(position, token) for words and braces outside comments and strings."""
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            end = text.find("\n", i)
            i = n if end < 0 else end + 1
        elif text.startswith("/*", i):
            depth, i = 1, i + 2          # POV-Ray's block comments nest
            while i < n and depth:
                if text.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif text.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
        elif c == '"':
            i += 1
            while i < n and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
            i += 1
        elif c in "{}":
            yield i, c
            i += 1
        else:
            word = _WORD.match(text, i)
            if word:
                yield i, word.group()
                i = word.end()
            else:
                i += 1


def photons_block(text: str) -> int | None:
    """Where a photon-file directive can go: just after the `{` of the first `photons` block directly
    inside a `global_settings` block. None when the scene has none, or already names a photon file."""
    depth, settings_depth, want_brace = 0, None, None
    for position, token in _tokens(text):
        if token == "{":
            depth += 1
            if want_brace == "global_settings":
                settings_depth = depth
            elif want_brace == "photons":
                return None if re.search(r"\b(save_file|load_file)\b", _block(text, position)) else position + 1
            want_brace = None
        elif token == "}":
            if settings_depth == depth:
                settings_depth = None
            depth -= 1
        elif token == "global_settings" and settings_depth is None:
            want_brace = "global_settings"
        elif token == "photons" and settings_depth == depth:
            want_brace = "photons"
        else:
            want_brace = None
    return None


def _block(text: str, brace: int) -> str:
    """The text of the block that opens at `brace`, up to its matching close (comments included)."""
    depth = 0
    for position, token in _tokens(text[brace:]):
        depth += 1 if token == "{" else -1 if token == "}" else 0
        if depth == 0:
            return text[brace:brace + position]
    return text[brace:]


def with_photon_file(text: str, save: bool) -> str | None:
    """The scene text with `save_file` (save=True) or `load_file` of PHOTON_FILE in its global photons
    block; None when the scene has no such block to share."""
    where = photons_block(text)
    if where is None:
        return None
    directive = f' {"save_file" if save else "load_file"} "{PHOTON_FILE}" '
    return text[:where] + directive + text[where:]
