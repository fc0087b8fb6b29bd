"""Where `povray` 3.7 on Unix finds its own defaults, `povray.ini`, so that `povfarm render` starts from the
same settings (Debian's system file sets 800x600 and the library paths of the shipped INI files).

The rule, from POV-Ray's source (vfe/unix/unixoptions.cpp, `Process_povray_ini`): the *first* of these
that exists is read, and only that one: `$POVINI`; `./povray.ini` in the working folder;
`~/.povray/3.7/povray.ini`; `/etc/povray/3.7/povray.ini`; then the old names `~/.povrayrc` and
`/etc/povray.ini`. A `$POVINI` naming a missing file is skipped (POV-Ray warns and goes on). After it,
`$POVINC` adds one library path. Pure: the environment and the file test are passed in.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping

SYSTEM_INI = Path("/etc/povray/3.7/povray.ini")
_OLD_SYSTEM_INI = Path("/etc/povray.ini")
USER_INI = Path(".povray") / "3.7" / "povray.ini"
_OLD_USER_INI = Path(".povrayrc")


def find_povray_ini(env: Mapping[str, str], cwd: Path,
                    exists: Callable[[Path], bool] = lambda path: path.is_file()) -> Path | None:
    """The povray.ini `povray` would read when started in `cwd` with environment `env`, or None."""
    home = env.get("HOME", "")
    candidates = [Path(env["POVINI"])] if env.get("POVINI") else []
    candidates.append(cwd / "povray.ini")
    if home:
        candidates.append(Path(home) / USER_INI)
    candidates.append(SYSTEM_INI)
    if home:
        candidates.append(Path(home) / _OLD_USER_INI)
    candidates.append(_OLD_SYSTEM_INI)
    return next((path for path in candidates if exists(path)), None)


def include_path(env: Mapping[str, str]) -> str | None:
    """`$POVINC`: one more library path, after those of povray.ini."""
    return env.get("POVINC") or None
