#!/bin/sh
# A throwaway PostgreSQL for the tests (tests/e2e/src/pg.rs).
#
#   postgres.sh start DIR PORT PASSWORD [PID]   install PostgreSQL if missing (apt, as root),
#                                               initdb in DIR, listen on 127.0.0.1:PORT only;
#                                               user `dphost` with PASSWORD (scram), may create
#                                               databases; given PID, the server stops and DIR
#                                               is removed once that process ends (also when a
#                                               test fails or is killed)
#   postgres.sh stop DIR                        stop it and remove DIR
#
# The server runs as the `postgres` user (as root) or as the caller. It is a
# test server: fsync is off (the tests kill dphost, never the database).
set -eu
tests_dir=$(cd "$(dirname "$0")/.." && pwd)

cmd=${1:?usage: postgres.sh start DIR PORT PASSWORD [PID] | stop DIR}
dir=${2:?the working folder}

bindir() {
    for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        if [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ]; then
            echo "$d"
            return 0
        fi
    done
    return 1
}

# as_owner CMD...: run as the server's owner.
as_owner() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

case "$cmd" in
start)
    port=${3:?port}
    password=${4:?password}
    owner_pid=${5:-}
    if ! bin=$(bindir); then
        # The tests run their own servers: the package need not create and
        # start a default cluster on port 5432.
        if [ ! -e /etc/postgresql-common/createcluster.conf ]; then
            mkdir -p /etc/postgresql-common
            echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.conf
        fi
        sh "$tests_dir/apt-install.sh" postgresql
        bin=$(bindir)
    fi
    if [ "$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1; then
        useradd --system --home-dir /var/lib/postgresql --shell /bin/sh postgres
    fi
    mkdir -p "$dir"
    chmod 755 "$dir"
    [ "$(id -u)" = 0 ] && chown postgres "$dir"
    pwfile="$dir/pw"
    printf '%s\n' "$password" > "$pwfile"
    [ "$(id -u)" = 0 ] && chown postgres "$pwfile"
    as_owner "$bin/initdb" -D "$dir/data" -U dphost --pwfile="$pwfile" \
        --auth-local=scram-sha-256 --auth-host=scram-sha-256 \
        --encoding=UTF8 --locale=C >"$dir/initdb.log" 2>&1 || {
        cat "$dir/initdb.log" >&2
        exit 1
    }
    rm -f "$pwfile"
    as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
        -o "-c listen_addresses=127.0.0.1 -p $port -c unix_socket_directories=$dir -c max_connections=400 -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
        start >/dev/null || {
        cat "$dir/server.log" >&2
        exit 1
    }
    if [ -n "$owner_pid" ]; then
        # Stops the server once the test process is gone, however it ended.
        nohup setsid sh -c "
            while kill -0 $owner_pid 2>/dev/null; do sleep 1; done
            if [ \$(id -u) = 0 ]; then runuser -u postgres -- '$bin/pg_ctl' -D '$dir/data' -m immediate stop
            else '$bin/pg_ctl' -D '$dir/data' -m immediate stop; fi
            rm -rf '$dir'
        " >/dev/null 2>&1 &
    fi
    echo "postgres listening on 127.0.0.1:$port"
    ;;
stop)
    bin=$(bindir)
    if [ -d "$dir/data" ]; then
        as_owner "$bin/pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true
    fi
    rm -rf "$dir"
    ;;
*)
    echo "unknown command $cmd" >&2
    exit 2
    ;;
esac
