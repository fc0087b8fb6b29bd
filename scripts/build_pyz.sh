#!/usr/bin/env bash
# Build povfarm.pyz: the controller, the node and the CLI as one file for any Python 3.10+.
#   bash scripts/build_pyz.sh                      # -> ./povfarm.pyz
#   bash scripts/build_pyz.sh --output dist/povfarm.pyz
# Copy it to a render box and run `py povfarm.pyz node ...` (Windows) or `python3 povfarm.pyz node ...`.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
exec "$PYTHON" -m farm.build_pyz "$@"
