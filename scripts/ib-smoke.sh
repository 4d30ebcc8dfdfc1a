#!/usr/bin/env bash
# Smoke test of the RDMA backends on a machine with an InfiniBand or RoCE device.
#
#   scripts/ib-smoke.sh            (on a compute node, e.g. inside `salloc -N1`)
#
# What it does, on this one node (oxrun starts ranks on the local machine; the HCA loops
# traffic between them through the device, so the verbs data path, queue-pair connection,
# credits and RDMA reads all run on real hardware):
#   1. builds oxmpi with the `ofi` and `verbs` features (release);
#   2. prints `oxrun --fabric-info` (devices, ports, providers, the auto choice);
#   3. runs the point-to-point scenarios and every collective over OXMPI_FABRIC=verbs with 2, 4
#      and 8 ranks, and over OXMPI_FABRIC=ofi with the `verbs;ofi_rxm` provider;
#   4. runs osu_latency, osu_bw and osu_allreduce over verbs and prints them, with the
#      registration-cache counters of osu_bw at 1 MiB.
# Exits non-zero if any step fails; the summary at the end lists each step.
#
# Environment: OXMPI_VERBS_DEVICE, OXMPI_VERBS_PORT and OXMPI_VERBS_GID_INDEX (RoCE v2 usually
# needs the index of the RoCE v2 GID: `show_gids`) pick the port; SMOKE_RANKS="2 4 8".
set -uo pipefail
cd "$(dirname "$0")/.."

ranks=${SMOKE_RANKS:-"2 4 8"}
results=()
fail=0
step() {
    local name=$1
    shift
    echo "== $name"
    if "$@"; then
        results+=("PASS  $name")
    else
        results+=("FAIL  $name")
        fail=1
    fi
}

step "build (release, ofi + verbs)" \
    cargo build --release --workspace --bins --examples --features oxmpi/ofi,oxmpi/verbs --quiet
bin=target/release
step "fabric info" "$bin/oxrun" --fabric-info

if ! "$bin/oxrun" --fabric-info | grep -q "^  verbs: usable"; then
    echo "ib-smoke: the verbs backend finds no usable device here; see the report above" >&2
    fail=1
fi

for n in $ranks; do
    step "p2p scenarios, verbs, $n ranks" \
        env OXMPI_FABRIC=verbs "$bin/oxrun" -n "$n" "$bin/examples/suite" all
    step "every collective and algorithm, verbs, $n ranks" \
        env OXMPI_FABRIC=verbs "$bin/oxrun" -n "$n" "$bin/examples/coll_suite"
    step "p2p scenarios, ofi verbs;ofi_rxm, $n ranks" \
        env OXMPI_FABRIC=ofi OXMPI_OFI_PROVIDER="verbs;ofi_rxm" "$bin/oxrun" -n "$n" "$bin/examples/suite" all
done

step "osu_latency over verbs" env OXMPI_FABRIC=verbs "$bin/oxrun" -n 2 "$bin/osu_latency" -m 1:4194304
step "osu_bw over verbs (with cache counters)" \
    env OXMPI_FABRIC=verbs OXMPI_COUNTERS=1 "$bin/oxrun" -n 2 "$bin/osu_bw" -m 1:4194304
step "osu_allreduce over verbs, 4 ranks" env OXMPI_FABRIC=verbs "$bin/oxrun" -n 4 "$bin/osu_allreduce"

echo
echo "== summary"
printf '%s\n' "${results[@]}"
exit "$fail"
