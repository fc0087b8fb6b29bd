"""Which POV-Ray a node renders with (its build: version and flavour), and a job's pinned version.

Two builds of POV-Ray need not render the same pixels, so every unit of a frame (its strips and its radiosity
pre-pass; its preview, shown only until the strips replace it, aside) renders on one build
(`farm.policy.fits_frames`). A node says its build when it registers: `povray` (the version its probe read,
"3.7.0.10") and `povray_flavour` ("console", or "pvengine" for POV-Ray for Windows).
"""

from __future__ import annotations

import re
from typing import Any, Mapping

from farm.wire import shown

CONSOLE = "console"
_PIN = re.compile(r"[0-9][0-9A-Za-z.+_-]{0,63}")


def build_of(info: Mapping[str, Any]) -> str:
    """A node's build as the farm names it, "3.7.0.10 (console)"; "" when it did not say its version."""
    version = str(info.get("povray") or "").strip()
    flavour = str(info.get("povray_flavour") or CONSOLE).strip()
    return f"{version} ({flavour})" if version else ""


def version_of(build: str) -> str:
    """The version part of a build: "3.7.0.10 (console)" -> "3.7.0.10"."""
    return build.rsplit(" (", 1)[0]


def pinned_to(pin: str, build: str) -> bool:
    """Whether a node of `build` has the version a job is pinned to: that version, or one it starts
    (a pin 3.7.0.10 takes Debian's "3.7.0.10.unofficial"; 3.7 takes every 3.7.x)."""
    version = version_of(build)
    return version == pin or (version.startswith(pin) and version[len(pin):len(pin) + 1] in ".-+_")


def check_pin(value: object) -> str:
    """A job's pinned POV-Ray version ("" for none), as `povray --version` reports it (3.7.0.10)."""
    text = "" if value is None else value
    if not isinstance(text, str) or (text and not _PIN.fullmatch(text)):
        raise ValueError(f"povray_version must be a POV-Ray version such as 3.7.0.10, not {shown(value)}")
    return text
