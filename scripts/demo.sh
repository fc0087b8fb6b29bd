#!/usr/bin/env bash
# Set up povfarm and render the example scene on a local farm: an embedded controller and 2 nodes.
# Installs POV-Ray and bubblewrap (the nodes' sandbox) with apt-get when missing (Debian/Ubuntu).
# Writes lantern.png here.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v povray >/dev/null 2>&1 || ! command -v bwrap >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "installing POV-Ray and bubblewrap (apt-get install povray povray-includes bubblewrap)..." >&2
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q povray povray-includes bubblewrap
fi

python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip >/dev/null
.venv/bin/pip install -q -e .
.venv/bin/povfarm render examples/scenes/lantern/lantern.pov +W640 +H480 +A0.3 --nodes 2 --output lantern.png "$@"
