# Sourced by the scripts: installs what a fresh machine lacks and exports the
# Cargo target directory (kept outside the clone, so it can be a CI cache).
set -euo pipefail
if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
    echo "==> rustup target add wasm32-wasip2" >&2
    rustup target add wasm32-wasip2
fi
if ! dpkg -s libclang-dev >/dev/null 2>&1; then
    echo "==> installing libclang-dev (the rocksdb crate's build needs it)" >&2
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq libclang-dev >/dev/null
fi
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/cairn-target}"
export CARGO_TERM_PROGRESS_WHEN=never

# Every package under guests/, as cargo -p flags.
guest_packages() {
    for toml in guests/*/Cargo.toml; do
        printf -- '-p %s ' "$(sed -n 's/^name = "\(.*\)"/\1/p' "$toml" | head -1)"
    done
}

build_all() {
    echo "==> building guest components (wasm32-wasip2)" >&2
    # shellcheck disable=SC2046
    cargo build --release --target wasm32-wasip2 $(guest_packages)
    echo "==> building the cairn host" >&2
    cargo build --release -p cairn
}
