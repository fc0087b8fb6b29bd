#!/usr/bin/env bash
# Set up a virtual environment with the test extras and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip >/dev/null
.venv/bin/pip install -q -e '.[test]'
exec .venv/bin/python -m pytest "$@"
