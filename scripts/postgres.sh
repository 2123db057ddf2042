#!/usr/bin/env bash
# A throwaway PostgreSQL server for tests, from Debian's packages (no systemd).
#
#   scripts/postgres.sh start DIR   initdb in DIR (once), start on a free port
#                                   (the last one's again if still free)
#                                   on 127.0.0.1 only, create database `warden`,
#                                   print its URL (postgres://warden@127.0.0.1:PORT/warden)
#                                   on stdout and nothing else
#   scripts/postgres.sh stop DIR    stop it (fast shutdown); DIR stays
#   scripts/postgres.sh destroy DIR stop it and remove its files
#   scripts/postgres.sh url DIR     print the URL of the running server
#
# Run as root, the server runs as the `postgres` user (PostgreSQL refuses
# root) through runuser, in /tmp/warden-pg-<hash of DIR> (handed to that
# user), since DIR may be under a home it cannot enter. Authentication is
# `trust` on loopback only: a test database, never a real one.
set -euo pipefail

die() { printf 'postgres.sh: %s\n' "$*" >&2; exit 1; }

pg_bin() {
    local dir
    if command -v pg_config >/dev/null 2>&1 && [ -x "$(pg_config --bindir)/initdb" ]; then
        pg_config --bindir
        return
    fi
    dir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)"
    [ -n "$dir" ] && [ -x "$dir/initdb" ] || die "PostgreSQL is not installed (Debian: apt-get install postgresql)"
    echo "$dir"
}

as_owner() {
    if [ "$(id -u)" = 0 ]; then
        # From /: the caller's directory may be one `postgres` cannot enter.
        (cd / && runuser -u postgres -- "$@")
    else
        "$@"
    fi
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# Free for a server as PostgreSQL binds it (SO_REUSEADDR: the connections a
# stopped server closed may still be in TIME_WAIT on its port).
port_is_free() {
    python3 -c 'import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.close()' "$1" 2>/dev/null
}

cmd="${1:-}"
dir="${2:-}"
[ -n "$cmd" ] && [ -n "$dir" ] || die "usage: $0 start|stop|destroy|url DIR"
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"
if [ "$(id -u)" = 0 ]; then
    # The server runs as `postgres`, which cannot reach a DIR under a
    # private home (a checkout in /root, mode 700): as root the cluster lives
    # in a directory of its own under /tmp, named after DIR, so start, stop
    # and url agree on it.
    dir="/tmp/warden-pg-$(printf '%s' "$dir" | sha256sum | cut -c1-16)"
    mkdir -p "$dir"
fi
data="$dir/data"
BIN="$(pg_bin)"

url_of() {
    local port
    port="$(cat "$dir/port" 2>/dev/null)" || die "no server was started in $dir"
    echo "postgres://warden@127.0.0.1:$port/warden"
}

case "$cmd" in
    start)
        if [ "$(id -u)" = 0 ]; then
            id postgres >/dev/null 2>&1 || die "no postgres user (apt-get install postgresql creates it)"
            chown postgres: "$dir"
        fi
        if [ ! -f "$data/PG_VERSION" ]; then
            as_owner "$BIN/initdb" -D "$data" -U postgres --auth=trust --encoding=UTF8 --no-locale >"$dir/initdb.log" 2>&1 \
                || { cat "$dir/initdb.log" >&2; die "initdb failed"; }
        fi
        if as_owner "$BIN/pg_ctl" -D "$data" status >/dev/null 2>&1; then
            url_of
            exit 0
        fi
        # A restart comes back on the port it had (its clients keep their
        # URL), unless something else took it meanwhile.
        port="$(cat "$dir/port" 2>/dev/null || true)"
        if [ -z "$port" ] || ! port_is_free "$port"; then
            port="$(free_port)"
        fi
        echo "$port" > "$dir/port"
        [ "$(id -u)" = 0 ] && chown postgres: "$dir/port"
        # Loopback only, socket in DIR (not /var/run/postgresql, which may not exist).
        as_owner "$BIN/pg_ctl" -D "$data" -l "$dir/server.log" -w -t 60 \
            -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c fsync=off -c max_connections=200" start >/dev/null \
            || { tail -20 "$dir/server.log" >&2; die "pg_ctl start failed"; }
        as_owner "$BIN/psql" -h 127.0.0.1 -p "$port" -U postgres -d postgres -qtA -v ON_ERROR_STOP=1 >/dev/null <<'SQL' \
            || die "cannot create the warden role and database"
SELECT 'CREATE ROLE warden LOGIN CREATEDB' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'warden')\gexec
SELECT 'CREATE DATABASE warden OWNER warden' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'warden')\gexec
SQL
        url_of
        ;;
    stop)
        if [ -f "$data/PG_VERSION" ]; then
            as_owner "$BIN/pg_ctl" -D "$data" -m fast -w stop >/dev/null 2>&1 || true
        fi
        ;;
    destroy)
        if [ -f "$data/PG_VERSION" ]; then
            as_owner "$BIN/pg_ctl" -D "$data" -m immediate -w stop >/dev/null 2>&1 || true
        fi
        rm -rf "$dir"
        ;;
    url)
        url_of
        ;;
    *)
        die "usage: $0 start|stop|destroy|url DIR"
        ;;
esac
