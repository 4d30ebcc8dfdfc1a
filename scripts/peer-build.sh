#!/usr/bin/env bash
# Builds the plain-MPI peer loops in bench/peer/ (point to point: osu_latency, osu_bw, osu_bibw,
# osu_multi_lat; collectives: osu_barrier, osu_bcast, osu_reduce, osu_allreduce, osu_allgather,
# osu_alltoall, osu_gather, osu_scatter, osu_reduce_scatter, osu_iallreduce; the reduction
# kernels: reduce_local) against Debian's Open MPI and MPICH:
#   bench/peer/build/openmpi/BENCH   (mpicc.openmpi -O2)
#   bench/peer/build/mpich/BENCH     (mpicc.mpich -O2)
# Usage: scripts/peer-build.sh [--install]
#   --install   apt-get install the MPI packages first (otherwise only print the command).
set -euo pipefail
cd "$(dirname "$0")/.."

PKGS="openmpi-bin libopenmpi-dev mpich libmpich-dev"
BENCHES="osu_latency osu_bw osu_bibw osu_multi_lat \
osu_barrier osu_bcast osu_reduce osu_allreduce osu_allgather osu_alltoall \
osu_gather osu_scatter osu_reduce_scatter osu_iallreduce reduce_local"
# -Wno-stringop-overflow: GCC 12 misreads MPICH's MPI_STATUSES_IGNORE ((MPI_Status *)1).
CFLAGS="${CFLAGS:--O2 -Wall -Wextra -Wno-stringop-overflow}"

install=0
for a in "$@"; do
    case "$a" in
        --install) install=1 ;;
        -h|--help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "peer-build.sh: unknown argument '$a' (see --help)" >&2; exit 2 ;;
    esac
done

if [ "$install" = 1 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y $PKGS
fi

built=0
for flavour in openmpi mpich; do
    cc="mpicc.$flavour"
    if ! command -v "$cc" >/dev/null 2>&1; then
        echo "peer-build.sh: $cc not found; install it with:" >&2
        echo "    apt-get install -y $PKGS" >&2
        echo "  (or run scripts/peer-build.sh --install)" >&2
        continue
    fi
    out="bench/peer/build/$flavour"
    mkdir -p "$out"
    for b in $BENCHES; do
        # shellcheck disable=SC2086
        "$cc" $CFLAGS -o "$out/$b" "bench/peer/$b.c"
    done
    echo "built $out/{${BENCHES// /,}} with $cc"
    built=$((built + 1))
done
[ "$built" -gt 0 ] || exit 1
