#!/usr/bin/env bash
# Measures oxmpi's two shared-memory rendezvous protocols against each other, the data behind
# the default thresholds (docs/benchmarks.md): rndv/read (process_vm_readv, one copy by the
# receiver) and rndv/pipeline (64 KiB chunks through the ring, both ranks copying at once).
# Usage: scripts/shm-protocols.sh [ROUNDS]   (best of ROUNDS runs per figure, default 3)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-3}"
R=target/release
[ -x $R/oxrun ] || { echo "shm-protocols.sh: run 'cargo build --release' first" >&2; exit 1; }
declare -A best
for ((r = 1; r <= rounds; r++)); do
    for proto in read pipeline; do
        if [ $proto = read ]; then knobs=(OXMPI_RNDV_READ_MIN=8193 OXMPI_RNDV_READ_MAX=1024m); else knobs=(OXMPI_SHM_CMA=0); fi
        for bench in osu_latency osu_bw osu_bibw; do
            while read -r size value; do
                key="$bench/$proto/$size"
                old="${best[$key]:-}"
                if [ -z "$old" ] || { [ $bench = osu_latency ] && awk "BEGIN{exit !($value < $old)}"; } ||
                   { [ $bench != osu_latency ] && awk "BEGIN{exit !($value > $old)}"; }; then
                    best[$key]=$value
                fi
            done < <(env "${knobs[@]}" OXMPI_FABRIC=shm timeout 300 $R/oxrun -n 2 --bind-to core \
                        $R/$bench -m 16384:4194304 | grep -E '^[0-9]')
        done
    done
done
echo "# oxmpi shared-memory rendezvous protocols, best of $rounds; 2 ranks pinned; $(nproc) CPUs"
printf '%-10s %12s %12s %12s %12s %12s %12s\n' "# size" "lat read" "lat pipe" "bw read" "bw pipe" "bibw read" "bibw pipe"
for size in 16384 32768 65536 131072 262144 524288 1048576 2097152 4194304; do
    printf '%-10s' $size
    for b in osu_latency osu_bw osu_bibw; do
        for p in read pipeline; do printf ' %12s' "${best[$b/$p/$size]:--}"; done
    done
    echo
done
