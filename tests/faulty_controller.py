"""`python tests/faulty_controller.py FAILURES ARGS` is `povfarm controller ARGS` whose connection lobby raises
an unexpected error on its first FAILURES connections (-1: on every one), as a bug would: the supervisor must
restart the lobby, or end the process when it keeps failing."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from farm.server import admission  # noqa: E402
from farm.cli import main  # noqa: E402

_left = int(sys.argv.pop(1))
_hand_over = admission.Lobby._hand_over


def failing_hand_over(self, record):
    global _left
    if _left != 0:
        _left -= 1
        raise RuntimeError("a bug in the lobby")
    _hand_over(self, record)


admission.Lobby._hand_over = failing_hand_over

if __name__ == "__main__":
    sys.exit(main(["controller", *sys.argv[1:]]))
