#!/usr/bin/env bash
# Make sure a PostgreSQL server (initdb, pg_ctl, postgres) is installed.
#
# Why: some tests start a throwaway PostgreSQL server on 127.0.0.1 (tests/postgres.py),
# for the Iceberg SQL catalog. CI machines may not have it, so `make test` runs this first.
# Idempotent: a fast no-op when initdb is already under /usr/lib/postgresql/*/bin.
# Only installs the binaries; the Debian package's own service is neither needed nor started.
set -euo pipefail

have_initdb() {
    compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null
}

if have_initdb; then
    exit 0
fi

sudo_cmd=()
if [ "${EUID}" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        sudo_cmd=(sudo)
    else
        echo "ensure-postgres: PostgreSQL not found; install it (apt-get install postgresql) or run this script as root" >&2
        exit 1
    fi
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure-postgres: PostgreSQL not found and apt-get is unavailable; install the PostgreSQL server (initdb, pg_ctl, postgres) under /usr/lib/postgresql/<version>/bin" >&2
    exit 1
fi

echo "ensure-postgres: installing PostgreSQL with apt-get" >&2
if ! { "${sudo_cmd[@]}" apt-get update -qq \
        && "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; }; then
    echo "ensure-postgres: apt-get install postgresql failed; install the PostgreSQL server package (postgresql) by hand" >&2
    exit 1
fi

if ! have_initdb; then
    echo "ensure-postgres: postgresql installed but no initdb under /usr/lib/postgresql/*/bin; install the PostgreSQL server package (postgresql)" >&2
    exit 1
fi
