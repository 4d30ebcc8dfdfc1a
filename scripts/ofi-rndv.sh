#!/usr/bin/env bash
# Where the time of a rendezvous over libfabric's shm provider goes: interleaved rounds of
#   fi_pingpong        libfabric's own ping-pong (fi_send matched by the provider to a fi_recv)
#   rndv (C)           oxmpi's protocol alone in C: RTS inject, fi_read, FIN inject
#                      (bench/peer/ofi_rndv_pingpong.c, built here with cc -lfabric)
#   tagged (C)         the same loop with -t: RTS inject, then the data as a tagged message
#                      the receiver posts a tagged receive for on the RTS; no FIN
#   osu_latency        oxmpi's osu_latency over OXMPI_FABRIC=ofi OXMPI_OFI_PROVIDER=shm
# each pinned to CPUs 0 and 1, at the sizes where the ofi backend uses the rendezvous
# (above 16 KiB) and at 4 and 16 KiB; prints each one's median (and range) in us, half a
# round trip as all three report it.
#
#   scripts/ofi-rndv.sh [ROUNDS] [ITERS]      (default 8 rounds, 20000 iterations)
#
# Needs libfabric-dev and libfabric-bin, and target/release/{oxrun,osu_latency} built with
# the ofi feature (cargo build --release --workspace --bins --features oxmpi/ofi).
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=${1:-8}
iters=${2:-20000}
sizes="4096 16384 32768 65536"
bin=target/release
for t in oxrun osu_latency; do
    [ -x "$bin/$t" ] || { echo "ofi-rndv.sh: build first: $bin/$t is missing" >&2; exit 1; }
done
command -v fi_pingpong >/dev/null || { echo "ofi-rndv.sh: fi_pingpong missing: apt-get install libfabric-bin" >&2; exit 1; }
mkdir -p bench/peer/build
cc -O2 -o bench/peer/build/ofi_rndv_pingpong bench/peer/ofi_rndv_pingpong.c -lfabric

raw=$(mktemp)
trap 'rm -f "$raw"' EXIT
# A port of this run's own (a server left over from an interrupted run holds its port).
port=$((40000 + $$ % 20000))
for r in $(seq "$rounds"); do
    for size in $sizes; do
        port=$((port + 1))
        timeout 60 taskset -c 0 fi_pingpong -p shm -e rdm -I "$iters" -S "$size" -B "$port" \
            >/dev/null 2>&1 &
        server=$!
        sleep 0.3
        timeout 60 taskset -c 1 fi_pingpong -p shm -e rdm -I "$iters" -S "$size" -P "$port" \
            127.0.0.1 | awk -v b="$size" 'NR > 1 { print "fi_pingpong", b, $7 }' >>"$raw" ||
            echo "ofi-rndv.sh: fi_pingpong failed at $size bytes in round $r" >&2
        wait "$server" 2>/dev/null || true
    done
    # shellcheck disable=SC2086
    timeout 120 bench/peer/build/ofi_rndv_pingpong -i "$iters" $sizes |
        awk '{ print "rndv_c", $1, $2 }' >>"$raw" ||
        echo "ofi-rndv.sh: ofi_rndv_pingpong failed in round $r" >&2
    # shellcheck disable=SC2086
    timeout 120 bench/peer/build/ofi_rndv_pingpong -t -i "$iters" $sizes |
        awk '{ print "tagged_c", $1, $2 }' >>"$raw" ||
        echo "ofi-rndv.sh: ofi_rndv_pingpong -t failed in round $r" >&2
    OXMPI_FABRIC=ofi OXMPI_OFI_PROVIDER=shm timeout 120 "$bin/oxrun" --bind-to core -n 2 \
        "$bin/osu_latency" -m 4096:65536 -i "$iters" |
        awk -v want="$sizes" 'BEGIN { split(want, w); for (i in w) keep[w[i]] = 1 }
            /^[0-9]/ && ($1 in keep) { print "osu_latency", $1, $2 }' >>"$raw" ||
        echo "ofi-rndv.sh: osu_latency failed in round $r" >&2
done

echo "# shm provider, $rounds interleaved rounds, $iters iterations at every size"
echo "# median (min-max) in us; ratios of medians to fi_pingpong"
python3 - "$raw" <<'PY'
import collections, statistics, sys
d = collections.defaultdict(list)
for line in open(sys.argv[1]):
    who, size, us = line.split()
    d[(int(size), who)].append(float(us))
cols = ["fi_pingpong", "rndv_c", "tagged_c", "osu_latency"]
print(f"{'size':>8} " + " ".join(f"{c:>20}" for c in cols)
      + f" {'rndv_c/fpp':>11} {'tagged_c/fpp':>13} {'osu/fpp':>8}")
for size in sorted({s for s, _ in d}):
    med = {c: statistics.median(d[(size, c)]) for c in cols if d[(size, c)]}
    cell = lambda c: (f"{med[c]:.2f} ({min(d[(size, c)]):.2f}-{max(d[(size, c)]):.2f})"
                      if c in med else "-")
    ratio = lambda c: f"{med[c] / med['fi_pingpong']:.2f}" if c in med and "fi_pingpong" in med else "-"
    print(f"{size:>8} " + " ".join(f"{cell(c):>20}" for c in cols)
          + f" {ratio('rndv_c'):>11} {ratio('tagged_c'):>13} {ratio('osu_latency'):>8}")
PY
