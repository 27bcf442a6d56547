#!/usr/bin/env bash
# Install a virtual X display and the libraries Qt's xcb platform needs, for the napari viewer
# tests (tests/test_napari.py run them under xvfb-run; Qt's offscreen mode cannot host napari's
# OpenGL canvas). Idempotent and quiet: does nothing when xvfb-run already exists. Needs root
# (CI runs as root) or sudo.
set -euo pipefail
if command -v xvfb-run >/dev/null 2>&1 && [ -e /usr/lib/x86_64-linux-gnu/libxcb-cursor.so.0 ]; then
  exit 0
fi
SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  SUDO=(sudo)
fi
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
  xvfb xauth libgl1 libegl1 libxkbcommon-x11-0 libdbus-1-3 libfontconfig1 \
  libxcb-cursor0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 \
  libxcb-shape0 libxcb-xfixes0 libxcb-xinerama0 libxcb-xinput0 libxcb-xkb1 >/dev/null
command -v xvfb-run >/dev/null || { echo "install-gui: xvfb-run still missing after apt-get" >&2; exit 1; }
