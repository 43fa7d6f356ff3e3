#!/usr/bin/env bash
# A local PostgreSQL server for distributed searches and their tests (`cotune fit --storage URL`).
#
#   bash scripts/postgres.sh start   # install (apt) if missing, init, start; prints the URL on stdout
#   bash scripts/postgres.sh url     # prints the URL of the running server
#   bash scripts/postgres.sh status  # exit 0 when it is running
#   bash scripts/postgres.sh stop
#
# The cluster lives in $COTUNE_PG_DIR (default: cotune-pg in the system temporary folder, whatever TMPDIR
# says, since the postgres user must reach it): data/, server.log, its socket and the
# port it listens on. It listens on 127.0.0.1 only, on $COTUNE_PG_PORT (default 55432) or the next
# free port, with trust authentication for the `postgres` user and a database `cotune`; it is a
# throwaway server for one machine (fsync off), not for data you want to keep. As root, the server
# runs as the `postgres` OS user (PostgreSQL refuses root); otherwise as the current user.
# Everything but the URL goes to stderr, so `URL=$(bash scripts/postgres.sh start)` works.
set -euo pipefail

SYS_TMP=$(env -u TMPDIR mktemp -u)  # a name in the system temporary folder; nothing is created
PG_DIR="${COTUNE_PG_DIR:-${SYS_TMP%/*}/cotune-pg}"
PG_PORT="${COTUNE_PG_PORT:-55432}"
DATA="$PG_DIR/data"
DB=cotune

log() { echo "postgres.sh: $*" >&2; }

bindir() {  # the newest installed server's bin/ (Debian keeps it off PATH)
    local d
    d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
    if [ -z "$d" ] && command -v pg_ctl >/dev/null; then d=$(dirname "$(command -v pg_ctl)"); fi
    echo "$d"
}

ensure_installed() {
    local bin
    bin=$(bindir)
    [ -n "$bin" ] && [ -x "$bin/initdb" ] && return 0
    if [ "$(id -u)" != 0 ]; then
        log "PostgreSQL is not installed; install it (sudo apt-get install -y postgresql) and run this again."
        exit 1
    fi
    log "installing PostgreSQL (apt-get)..."
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq postgresql >&2
}

as_pg() {  # run a server command as the cluster's owner, from a folder it can read
    if [ "$(id -u)" = 0 ]; then
        (cd / && runuser -u postgres -- "$@")
    else
        (cd / && "$@")
    fi
}

running() { [ -f "$DATA/PG_VERSION" ] && as_pg "$(bindir)/pg_ctl" -D "$DATA" status >/dev/null 2>&1; }

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

url() { echo "postgresql+psycopg2://postgres@127.0.0.1:$(cat "$PG_DIR/port")/$DB"; }

start() {
    ensure_installed
    local bin port
    bin=$(bindir)
    if [ "$(id -u)" = 0 ]; then install -d -o postgres -g postgres -m 0700 "$PG_DIR"; else mkdir -p -m 0700 "$PG_DIR"; fi
    if ! [ -f "$DATA/PG_VERSION" ]; then
        log "initializing a cluster in $DATA"
        as_pg "$bin/initdb" -D "$DATA" -U postgres --auth=trust -E UTF8 --locale=C >"$PG_DIR/initdb.log" 2>&1 \
            || { cat "$PG_DIR/initdb.log" >&2; exit 1; }
        cat >>"$DATA/postgresql.conf" <<EOF
# cotune: a throwaway local server for searches and tests
listen_addresses = '127.0.0.1'
unix_socket_directories = '$PG_DIR'
max_connections = 200
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
    fi
    if running; then
        port=$(cat "$PG_DIR/port")
        log "already running on 127.0.0.1:$port"
    else
        port=$PG_PORT
        while port_in_use "$port"; do
            port=$((port + 1))
            [ "$port" -lt $((PG_PORT + 50)) ] || { log "no free port in $PG_PORT..$((PG_PORT + 49))"; exit 1; }
        done
        as_pg "$bin/pg_ctl" -D "$DATA" -l "$PG_DIR/server.log" -o "-p $port" -w -t 60 start >&2 \
            || { tail -n 20 "$PG_DIR/server.log" >&2; exit 1; }
        echo "$port" >"$PG_DIR/port"
        log "started on 127.0.0.1:$port (log: $PG_DIR/server.log)"
    fi
    if [ -z "$(as_pg "$bin/psql" -h 127.0.0.1 -p "$port" -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$DB'")" ]; then
        as_pg "$bin/createdb" -h 127.0.0.1 -p "$port" -U postgres "$DB"
    fi
    url
}

stop() {
    if running; then
        as_pg "$(bindir)/pg_ctl" -D "$DATA" -m fast -w stop >&2
    else
        log "not running"
    fi
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    url) running || { log "not running; start it with: bash scripts/postgres.sh start"; exit 1; }; url ;;
    status) running ;;
    *) echo "usage: $0 start|stop|url|status" >&2; exit 2 ;;
esac
