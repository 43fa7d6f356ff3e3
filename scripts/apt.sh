# Sourced by the install scripts: apt_install PACKAGE... installs Debian packages without recommends, as root
# or through sudo, non-interactively, apt-get's output on stderr.
apt_install() {
    local sudo=
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -q >&2
    $sudo apt-get install -y -q --no-install-recommends "$@" >&2
}
