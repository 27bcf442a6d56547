#!/usr/bin/env bash
# Drift check: the README's test command with the NEWEST releases the version ranges in
# pyproject.toml allow (no constraints file), in a throw-away virtual environment, so a release that
# breaks nucleiseg is seen before users see it. What it found is recorded in docs/install.md.
# Usage: bash scripts/check_latest.sh [pytest args...]   (log: out/check_latest.log)
set -uo pipefail
cd "$(dirname "$0")/.."
export NO_ALBUMENTATIONS_UPDATE=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
venv="$(mktemp -d)/venv"
trap 'rm -rf "$(dirname "$venv")"' EXIT
mkdir -p out
log=out/check_latest.log
python3 -m venv "$venv"
"$venv/bin/pip" install -q --upgrade --upgrade-strategy eager -e ".[dev,napari]" > "$log" 2>&1 || { echo "check_latest: install failed (see $log)"; exit 1; }
"$venv/bin/pip" freeze --exclude-editable > out/check_latest_freeze.txt
echo "check_latest: versions that differ from requirements/ci.txt:"
python3 - out/check_latest_freeze.txt requirements/ci.txt <<'PY'
import sys

def pins(path):
    out = {}
    for line in open(path, encoding="utf-8"):
        line = line.strip()
        if line and not line.startswith("#") and "==" in line:
            name, version = line.split("==", 1)
            out[name.lower().replace("_", "-")] = version.split("+")[0]
    return out

latest, locked = pins(sys.argv[1]), pins(sys.argv[2])
for name in sorted(set(latest) & set(locked)):
    if latest[name] != locked[name]:
        print(f"  {name}: {locked[name]} -> {latest[name]}")
PY
bash .ci/install-browser.sh && bash .ci/install-gui.sh
xvfb-run -a -s "-screen 0 1280x1024x24" "$venv/bin/python" -m pytest -q "$@" 2>&1 | tee -a "$log" | tail -30
exit "${PIPESTATUS[0]}"
