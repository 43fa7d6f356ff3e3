#!/usr/bin/env bash
# Install Debian's `fortunes` data (the quotation files under /usr/share/games/fortunes, one file per category,
# entries separated by lines holding only '%') for bench/text_fortunes.py. Idempotent: does nothing when the
# folder is already there. Installs `fortunes` and what it depends on (fortunes-min), no recommends (the
# `fortune` program itself is not needed). Prints the data folder.
set -euo pipefail
. "$(dirname "$0")/apt.sh"

DIR=/usr/share/games/fortunes

if ! [ -d "$DIR" ]; then
    apt_install fortunes
    [ -d "$DIR" ] || { echo "install_fortunes.sh: $DIR is still missing after apt-get install" >&2; exit 1; }
fi
echo "$DIR"
