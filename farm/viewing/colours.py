"""A node's colour in the viewers: derived from its name alone, so the pygame viewer and the page (and
every window of either) outline a node's strips in the same colour whatever order they met the nodes in.

The page computes it in JavaScript (`colour` in farm/web/colours.js) by the same steps over the same
palette; tests/test_web.py checks that both give the same colour for the same names. Pure.
"""

from __future__ import annotations

# Bright enough to read on the dark checkerboard and to carry black text (the page's labels).
PALETTE = ((255, 184, 0), (0, 200, 255), (255, 84, 168), (120, 232, 80), (186, 140, 255),
           (255, 122, 64), (64, 224, 200), (240, 240, 96))

_FNV_OFFSET, _FNV_PRIME = 0x811C9DC5, 0x01000193


def name_hash(name: str) -> int:
    """32-bit FNV-1a of the name's UTF-8 bytes, its high half folded into the low one (the palette index
    is taken from the low bits)."""
    value = _FNV_OFFSET
    for byte in name.encode("utf-8"):
        value = ((value ^ byte) * _FNV_PRIME) & 0xFFFFFFFF
    return value ^ (value >> 16)


def node_colour(name: str) -> tuple[int, int, int]:
    """The node's colour, (R, G, B) in 0-255."""
    return PALETTE[name_hash(name) % len(PALETTE)]


def css(colour: tuple[int, int, int]) -> str:
    """`#rrggbb`, as the page writes a colour."""
    return "#{:02x}{:02x}{:02x}".format(*colour)
