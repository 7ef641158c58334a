#!/usr/bin/env bash
# A local PostgreSQL server for kernelwright's tests and for trying `--db postgresql+psycopg://...`.
#
# Idempotent: installs Debian's package if no server binaries are found, runs initdb once (as
# the postgres user), starts the server on 127.0.0.1 if it is not running, and creates a role
# (allowed to create databases: the tests make one per test) and a database of the same name.
# Prints the SQLAlchemy URL on stdout; with an argument, also writes it to that file.
#
#   KW_PG_DIR   data directory          (default /tmp/kernelwright-pg)
#   KW_PG_PORT  TCP port on 127.0.0.1   (default 5433, beside a system server on 5432)
#   KW_PG_USER  role and database name  (default kernelwright; the password is the same)
set -euo pipefail

DIR=${KW_PG_DIR:-/tmp/kernelwright-pg}
PORT=${KW_PG_PORT:-5433}
ROLE=${KW_PG_USER:-kernelwright}
SOCK=/tmp

log() { echo "start_postgres: $*" >&2; }

pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }

BIN=$(pg_bin)
if [ -z "$BIN" ] || [ ! -x "$BIN/initdb" ]; then
    log "installing PostgreSQL (Debian's package)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >&2
    apt-get install -y -q postgresql >&2
    BIN=$(pg_bin)
fi

as_pg() {
    if [ "$(id -u)" = 0 ]; then
        su postgres -s /bin/sh -c "$1"
    else
        sh -c "$1"  # already a user that owns the data directory
    fi
}

if [ ! -f "$DIR/PG_VERSION" ]; then
    log "initdb $DIR"
    mkdir -p "$DIR"
    [ "$(id -u)" = 0 ] && chown postgres:postgres "$DIR"
    chmod 700 "$DIR"
    as_pg "'$BIN/initdb' -D '$DIR' -U postgres --auth-local=peer --auth-host=scram-sha-256 -E UTF8 >/dev/null"
fi

if ! as_pg "'$BIN/pg_ctl' -D '$DIR' status" >/dev/null 2>&1; then
    log "starting the server on 127.0.0.1:$PORT"
    # max_connections: many test processes and Ray workers, each with a small pool
    as_pg "'$BIN/pg_ctl' -D '$DIR' -l '$DIR/server.log' -w -t 60 \
        -o \"-h 127.0.0.1 -p $PORT -k $SOCK -c max_connections=300\" start" >&2
fi

psql_pg() { as_pg "PGOPTIONS='-c client_min_messages=warning' '$BIN/psql' -h $SOCK -p $PORT -U postgres -d postgres -v ON_ERROR_STOP=1 -qtAc \"$1\""; }

if [ "$(psql_pg "SELECT 1 FROM pg_roles WHERE rolname = '$ROLE'")" != 1 ]; then
    psql_pg "CREATE ROLE $ROLE LOGIN CREATEDB PASSWORD '$ROLE'"
fi
# DROP DATABASE ... WITH (FORCE) of a test database must be able to end an autovacuum worker in it
psql_pg "GRANT pg_signal_backend TO $ROLE"
if [ "$(psql_pg "SELECT 1 FROM pg_database WHERE datname = '$ROLE'")" != 1 ]; then
    psql_pg "CREATE DATABASE $ROLE OWNER $ROLE"
fi

URL="postgresql+psycopg://$ROLE:$ROLE@127.0.0.1:$PORT/$ROLE"
if [ $# -ge 1 ]; then
    printf '%s\n' "$URL" >"$1"
fi
printf '%s\n' "$URL"
