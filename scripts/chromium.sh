#!/usr/bin/env bash
# Install Debian's headless-capable Chromium if no Chromium binary is on PATH (the report tests open
# report.html in it). Idempotent: does nothing when one is already there. Prints the binary's path.
set -euo pipefail
. "$(dirname "$0")/apt.sh"

find_chromium() {
    local name
    for name in chromium chromium-browser google-chrome-stable google-chrome; do
        if command -v "$name" >/dev/null 2>&1; then
            command -v "$name"
            return 0
        fi
    done
    return 1
}

if ! path=$(find_chromium); then
    apt_install chromium fonts-dejavu-core
    path=$(find_chromium) || { echo "chromium.sh: chromium is still not on PATH after apt-get install" >&2; exit 1; }
fi
echo "$path"
