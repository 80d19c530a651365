# Sourced by the scripts: installs what a fresh machine lacks and exports the
# Cargo target directory (kept outside the clone, so it can be a CI cache).
set -euo pipefail

SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"

# apt-get install PACKAGE..., quietly and without questions (CI has no stdin);
# the package lists are updated once per run, before the first install.
apt_install() {
    if [ -z "${CAIRN_APT_UPDATED:-}" ]; then
        $SUDO apt-get update -qq || return
        CAIRN_APT_UPDATED=1
    fi
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# on_exit COMMAND: runs COMMAND when the shell exits (also on failure or a
# fatal signal), before whatever EXIT trap was already set.
on_exit() {
    local cmd=$1 prev
    prev=$(trap -p EXIT)
    eval "set -- $prev"
    # shellcheck disable=SC2064
    trap "$cmd; ${3:-}" EXIT
}

if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
    echo "==> rustup target add wasm32-wasip2" >&2
    rustup target add wasm32-wasip2
fi
if ! dpkg -s libclang-dev >/dev/null 2>&1; then
    echo "==> installing libclang-dev (the rocksdb crate's build needs it)" >&2
    apt_install libclang-dev
fi
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/cairn-target}"
# Cargo's progress bar on a terminal (which crates build, how many are left);
# elsewhere (CI, a pipe) cargo prints one line per crate it compiles.
export CARGO_TERM_PROGRESS_WHEN="${CARGO_TERM_PROGRESS_WHEN:-auto}"

# Every package under guests/, as cargo -p flags.
guest_packages() {
    for toml in guests/*/Cargo.toml; do
        printf -- '-p %s ' "$(sed -n 's/^name = "\(.*\)"/\1/p' "$toml" | head -1)"
    done
}

build_all() {
    if [ ! -x "$CARGO_TARGET_DIR/release/cairn" ]; then
        echo "==> first build in $CARGO_TARGET_DIR: RocksDB (C++) and wasmtime take 15 to 25 minutes on 2 cores;" >&2
        echo "    cargo shows its progress below (one line per crate when not on a terminal)" >&2
    fi
    echo "==> building guest components (wasm32-wasip2)" >&2
    # shellcheck disable=SC2046
    cargo build --release --target wasm32-wasip2 $(guest_packages)
    echo "==> building the cairn host" >&2
    cargo build --release -p cairn
}

# --- PostgreSQL, the second store -------------------------------------------
# The tests run the host against a throwaway cluster: initdb in a temporary
# directory, listening on 127.0.0.1 only, stopped and deleted when the script
# exits. initdb refuses root, so as root the cluster runs as the `postgres`
# OS user that Debian's package creates.

# The newest server's bin directory (initdb, pg_ctl, postgres), or nothing.
pg_bindir() {
    local d
    d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1) || true
    if [ -n "$d" ] && [ -x "$d/initdb" ]; then echo "$d"; fi
}

# Installs Debian's postgresql package unless a server is already there.
ensure_postgres() {
    if [ -n "$(pg_bindir)" ]; then
        return 0
    fi
    echo "==> installing postgresql (the second store the tests run against)" >&2
    # No default cluster: the tests start their own, and nothing may keep
    # running (or listen anywhere but 127.0.0.1) after them.
    $SUDO mkdir -p /etc/postgresql-common/createcluster.d || return
    echo "create_main_cluster = false" | $SUDO tee /etc/postgresql-common/createcluster.d/cairn-tests.conf >/dev/null || return
    apt_install postgresql || return
    if [ -z "$(pg_bindir)" ]; then
        echo "ensure_postgres: no initdb under /usr/lib/postgresql/*/bin after installing postgresql" >&2
        return 1
    fi
}

# Runs a server program (initdb, pg_ctl, ...) as the cluster's owner, from
# the cluster's directory (the caller's may not be readable by `postgres`).
_pg() {
    local prog="$CAIRN_PG_BIN/$1"
    shift
    if [ "$(id -u)" -eq 0 ]; then
        (cd "$CAIRN_PG_DIR" && runuser -u postgres -- "$prog" "$@")
    else
        (cd "$CAIRN_PG_DIR" && "$prog" "$@")
    fi
}

# Starts a throwaway cluster on a free loopback port and exports
# CAIRN_TEST_PG=postgres://postgres@127.0.0.1:PORT (trust authentication,
# superuser `postgres`). It is stopped and deleted on exit.
start_postgres() {
    CAIRN_PG_BIN=$(pg_bindir)
    if [ -z "$CAIRN_PG_BIN" ]; then
        echo "start_postgres: no initdb under /usr/lib/postgresql/*/bin (see ensure_postgres)" >&2
        return 1
    fi
    # Under /tmp, not $TMPDIR: `postgres` must reach it, and the Unix socket's
    # path must stay short.
    CAIRN_PG_DIR=$(mktemp -d /tmp/cairn-pg.XXXXXX) || return
    on_exit stop_postgres
    if [ "$(id -u)" -eq 0 ]; then
        chown postgres: "$CAIRN_PG_DIR" || return
    fi
    echo "==> initdb $CAIRN_PG_DIR/data ($("$CAIRN_PG_BIN/initdb" --version))" >&2
    if ! _pg initdb -D "$CAIRN_PG_DIR/data" -U postgres --auth=trust -E UTF8 --no-locale --no-sync \
        >"$CAIRN_PG_DIR/initdb.log" 2>&1; then
        cat "$CAIRN_PG_DIR/initdb.log" >&2
        return 1
    fi
    cat >>"$CAIRN_PG_DIR/data/postgresql.conf" <<EOF || return

# scripts/env.sh start_postgres: a throwaway cluster for the tests
listen_addresses = '127.0.0.1'
unix_socket_directories = '$CAIRN_PG_DIR'
max_connections = 200
EOF
    local port attempt
    for attempt in 1 2 3 4 5 6 7 8 9 10; do
        port=$((20000 + RANDOM % 40000))
        # Something answers there: take another.
        if (: <>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            continue
        fi
        echo "==> pg_ctl start (127.0.0.1:$port)" >&2
        rm -f "$CAIRN_PG_DIR/server.log"
        if _pg pg_ctl -D "$CAIRN_PG_DIR/data" -l "$CAIRN_PG_DIR/server.log" -o "-p $port" -w -t 60 start >/dev/null; then
            if "$CAIRN_PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$port" -t 30; then
                export CAIRN_TEST_PG="postgres://postgres@127.0.0.1:$port"
                echo "==> postgres is ready: CAIRN_TEST_PG=$CAIRN_TEST_PG" >&2
                return 0
            fi
            echo "start_postgres: the server started but does not answer on 127.0.0.1:$port" >&2
            cat "$CAIRN_PG_DIR/server.log" >&2
            return 1
        fi
        # Another process took the port between the check and the bind: retry.
        if grep -q "could not bind\|Address already in use" "$CAIRN_PG_DIR/server.log" 2>/dev/null; then
            echo "==> port $port is taken (attempt $attempt), trying another" >&2
            continue
        fi
        cat "$CAIRN_PG_DIR/server.log" >&2
        return 1
    done
    echo "start_postgres: found no free loopback port" >&2
    return 1
}

# Stops the cluster (immediately: it is thrown away) and deletes its
# directory. Never fails: it runs from the EXIT trap.
stop_postgres() {
    if [ -z "${CAIRN_PG_DIR:-}" ]; then
        return 0
    fi
    if [ -f "$CAIRN_PG_DIR/data/postmaster.pid" ]; then
        local pid i
        pid=$(head -1 "$CAIRN_PG_DIR/data/postmaster.pid" 2>/dev/null) || true
        echo "==> stopping postgres" >&2
        _pg pg_ctl -D "$CAIRN_PG_DIR/data" -m immediate -w -t 60 stop >/dev/null 2>&1 || true
        # pg_ctl returns once the pid file is gone; the postmaster exits a
        # moment later. Nothing may outlive the script.
        for i in $(seq 1 100); do
            if [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null; then
                break
            fi
            sleep 0.1
        done
        if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    rm -rf "$CAIRN_PG_DIR" || true
    CAIRN_PG_DIR=""
    unset CAIRN_TEST_PG
}

# --- The web console's browser test (tests/console.rs) -----------------------
# Debian's chromium (headless, launched by path: Playwright downloads no
# browser), node and npm, and playwright-core from tests/console's
# package-lock.json (`npm ci`, into tests/console/node_modules, ignored by git;
# 1.61, the newest that runs on Debian 12's node 18).
ensure_browser_tools() {
    if [ ! -x /usr/bin/chromium ]; then
        echo "==> installing chromium (the console test's headless browser)" >&2
        apt_install chromium || return
    fi
    if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
        echo "==> installing nodejs and npm (they drive the console test's browser)" >&2
        apt_install nodejs npm || return
    fi
    # Again when the lock file changed since the last install.
    if [ ! -d tests/console/node_modules/playwright-core ] \
        || [ tests/console/package-lock.json -nt tests/console/node_modules/.package-lock.json ]; then
        echo "==> npm ci in tests/console (playwright-core)" >&2
        (cd tests/console && npm ci --no-audit --no-fund --loglevel=error) || return
    fi
}
