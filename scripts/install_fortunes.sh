#!/usr/bin/env bash
# Install Debian's `fortunes` data (the quotation files under /usr/share/games/fortunes, one file per category,
# entries separated by lines holding only '%') for bench/text_fortunes.py. Idempotent: does nothing when the
# folder is already there. Installs `fortunes` and what it depends on (fortunes-min), no recommends (the
# `fortune` program itself is not needed). Prints the data folder.
set -euo pipefail

DIR=/usr/share/games/fortunes

if ! [ -d "$DIR" ]; then
    if [ "$(id -u)" -ne 0 ]; then
        SUDO=sudo
    else
        SUDO=
    fi
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -q >&2
    $SUDO apt-get install -y -q --no-install-recommends fortunes >&2
    [ -d "$DIR" ] || { echo "install_fortunes.sh: $DIR is still missing after apt-get install" >&2; exit 1; }
fi
echo "$DIR"
