#!/usr/bin/env bash
# Runs the collective comparisons recorded in docs/benchmarks.md: oxmpi, Open MPI and MPICH
# side by side (scripts/compare.sh, median of interleaved runs), plus oxmpi's allreduce at
# 1, 2, 4 and 8 ranks for the growth table. Results go to OUTDIR (default bench-results/).
#
# Usage: scripts/coll-bench.sh [--repeat R] [--outdir DIR] [--quick] [--growth-only]
#   --quick   fewer sizes and iterations (a smoke run, not for the record)
#   --growth-only   only the allreduce growth table (oxmpi at 1, 2, 4, 8 ranks)
# Needs: cargo build --release --workspace; scripts/peer-build.sh --install.
set -euo pipefail
cd "$(dirname "$0")/.."

repeat=5
out=bench-results
quick=0
growth_only=0
while [ $# -gt 0 ]; do
    case "$1" in
        --repeat) repeat="$2"; shift 2 ;;
        --outdir) out="$2"; shift 2 ;;
        --quick) quick=1; shift ;;
        --growth-only) growth_only=1; shift ;;
        -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "coll-bench.sh: unknown argument '$1'" >&2; exit 2 ;;
    esac
done
mkdir -p "$out"
sizes=4:4194304
[ "$quick" = 1 ] && { sizes=4:65536; repeat=1; }

run() { # name, then compare.sh arguments
    local name="$1"; shift
    echo "== $name: scripts/compare.sh --repeat $repeat --stat median $*" | tee "$out/$name.txt"
    bash scripts/compare.sh --repeat "$repeat" --stat median "$@" >> "$out/$name.txt" 2>&1 || true
    grep -v '^#' "$out/$name.txt" | tail -n +2 || true
}

if [ "$growth_only" = 0 ]; then
for b in osu_allreduce osu_bcast osu_alltoall; do
    run "${b}_2" -n 2 "$b" -m "$sizes"
done
# Four ranks on two cores: MPICH busy-polls, so fewer iterations keep its runs in minutes.
for b in osu_allreduce osu_bcast osu_alltoall; do
    run "${b}_4" -n 4 "$b" -m "$sizes" -i 200 -x 20
done
# Small collectives oversubscribed: 4 and 8 ranks on the 2 cores.
for n in 4 8; do
    run "osu_allreduce_8B_$n" -n "$n" osu_allreduce -m 8:8 -i 1000 -x 100
done
# Overlap of a nonblocking allreduce with computation.
run osu_iallreduce_2 -n 2 --col overlap osu_iallreduce -m 4:1048576 -i 200 -x 20
run osu_iallreduce_4 -n 4 --col overlap osu_iallreduce -m 4:1048576 -i 100 -x 10
run osu_iallreduce_2_overall -n 2 --col 1 osu_iallreduce -m 4:1048576 -i 200 -x 20
fi

# Growth with the rank count (oxmpi alone; 4 and 8 ranks are oversubscribed): median of
# REPEAT runs per rank count, every rank bound to a core as in the comparisons.
{
    echo "# oxmpi osu_allreduce, average latency (us) by ranks, median of $repeat runs; 1 rank is a world of one"
    for n in 1 2 4 8; do
        echo "## $n ranks"
        for _ in $(seq "$repeat"); do
            OXMPI_FABRIC=shm target/release/oxrun -n "$n" --bind-to core \
                target/release/osu_allreduce -m 8:1048576 -i 500 -x 50 | grep -v '^#'
        done | awk '{ v[$1] = v[$1] " " $2; if (!($1 in seen)) { seen[$1] = 1; order[++k] = $1 } }
            END { for (i = 1; i <= k; i++) { m = split(v[order[i]], a, " ");
                    for (x = 1; x <= m; x++) for (y = x + 1; y <= m; y++) if (a[y] + 0 < a[x] + 0) { t = a[x]; a[x] = a[y]; a[y] = t }
                    printf "%-10s %10.2f\n", order[i], a[int((m + 1) / 2)] } }'
    done
} > "$out/allreduce_growth.txt"
cat "$out/allreduce_growth.txt"
