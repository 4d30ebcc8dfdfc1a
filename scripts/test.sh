#!/usr/bin/env bash
# Runs every oxmpi test: formatting, lints, unit and harness tests, and the end-to-end tests
# that start real jobs through oxrun over shared memory, TCP and libfabric. Installs what it
# needs (libfabric-dev, libibverbs-dev and libclang-dev for the ofi and verbs bindings).
set -euo pipefail
cd "$(dirname "$0")/.."

need_pkgs=()
command -v cc >/dev/null 2>&1 || need_pkgs+=(build-essential)
command -v pkg-config >/dev/null 2>&1 || need_pkgs+=(pkg-config)
# libfabric's headers and libclang for the ofi-sys bindings; fi_info for the provider checks.
pkg-config --exists libfabric 2>/dev/null || need_pkgs+=(libfabric-dev)
command -v fi_info >/dev/null 2>&1 || need_pkgs+=(libfabric-bin)
# The verbs bindings are generated from libibverbs' headers (the library itself is loaded at
# run time, so the binaries run without it).
[ -f /usr/include/infiniband/verbs.h ] || need_pkgs+=(libibverbs-dev)
ls /usr/lib/llvm-*/lib/libclang.so* >/dev/null 2>&1 || ls /usr/lib/*/libclang*.so* >/dev/null 2>&1 || need_pkgs+=(libclang-dev)
if [ ${#need_pkgs[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq && apt-get install -y -qq "${need_pkgs[@]}"
    else
        echo "scripts/test.sh: please install: ${need_pkgs[*]}" >&2
        exit 1
    fi
fi
[ -d /dev/shm ] && [ -w /dev/shm ] || { echo "scripts/test.sh: /dev/shm must be writable" >&2; exit 1; }

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
# The ofi and verbs backends are built and tested everywhere: the same feature set for every
# step, so no step rebuilds the binaries the end-to-end tests launch without them.
features=(--features oxmpi/ofi,oxmpi-fabric/ofi,oxmpi/verbs,oxmpi-fabric/verbs)
cargo clippy --workspace --all-targets "${features[@]}" --quiet -- -D warnings
echo "== cargo build (binaries and examples the end-to-end tests launch)"
cargo build --workspace --bins --examples "${features[@]}" --quiet
echo "== cargo test"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace "${features[@]}" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
echo
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
