#!/usr/bin/env bash
# Install Debian's chromium for the browser tests (tests/test_app_browser.py) when it is missing.
# Idempotent and quiet: does nothing when /usr/bin/chromium already exists. Needs root (CI runs as root).
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
  exit 0
fi
SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  SUDO=(sudo)
fi
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
test -x /usr/bin/chromium || { echo "install-browser: /usr/bin/chromium still missing after apt-get" >&2; exit 1; }
