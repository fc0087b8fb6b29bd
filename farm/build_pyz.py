"""Build `povfarm.pyz`: the whole farm as one file that any Python 3.10+ runs.

    python -m farm.build_pyz [--output povfarm.pyz]
    py povfarm.pyz node --controller http://HOST:8642 --token-file node.token   (Windows)
    python3 povfarm.pyz node ...                                                  (elsewhere)

The controller and the node need only the standard library, so the archive holds nothing but the
`farm` package (its page's files included: they are read with importlib.resources, which reads from
a zip archive too). Built with the standard library's zipapp, compressed, with a `#!/usr/bin/env
python3` line so it also runs as `./povfarm.pyz` on POSIX.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import zipapp
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
MAIN = "import sys\n\nfrom farm.cli import main\n\nsys.exit(main())\n"
SKIPPED = shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo")


def build(output: Path) -> Path:
    """Write the archive to `output` and return its path."""
    with tempfile.TemporaryDirectory(prefix="povfarm-pyz-") as scratch:
        root = Path(scratch)
        shutil.copytree(PACKAGE, root / "farm", ignore=SKIPPED)
        (root / "__main__.py").write_text(MAIN, encoding="utf-8")
        output.parent.mkdir(parents=True, exist_ok=True)
        zipapp.create_archive(root, output, interpreter="/usr/bin/env python3", compressed=True)
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m farm.build_pyz", description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=Path("povfarm.pyz"), help="the archive (povfarm.pyz)")
    args = parser.parse_args(argv)
    path = build(args.output)
    print(f"{path} ({path.stat().st_size // 1024} KiB): run it with `python {path.name} node ...` "
          f"(`py {path.name} node ...` on Windows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
