#!/usr/bin/env bash
# Set up a virtual environment with the test extras and run the test suite (arguments go to pytest).
# The tests render with the real POV-Ray and its example scenes and sandbox it with bubblewrap, so those
# are installed with apt-get when missing (Debian/Ubuntu), the way scripts/demo.sh does; so is headless
# Chromium, which tests/test_web.py drives.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v povray >/dev/null 2>&1 || [ ! -d /usr/share/povray-3.7/scenes ] || ! command -v bwrap >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "installing POV-Ray, its example scenes and bubblewrap" \
       "(apt-get install povray povray-includes povray-examples bubblewrap)..." >&2
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q povray povray-includes povray-examples bubblewrap
fi

# tests/test_video.py encodes an animation with ffmpeg, as a node with the video kind does.
if ! command -v ffmpeg >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "installing ffmpeg (apt-get install ffmpeg)..." >&2
  $SUDO apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q ffmpeg >/dev/null
fi

# tests/test_web.py drives the controller's page in Debian's headless Chromium.
if { [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; } && command -v apt-get >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q chromium chromium-driver >/dev/null
fi

# tests/test_discovery_netns.py (and bench/wan.py) join two network namespaces with a veth pair.
if ! command -v ip >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q iproute2 >/dev/null
fi

python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip >/dev/null
.venv/bin/pip install -q -e '.[test]'
exec .venv/bin/python -m pytest "$@"
