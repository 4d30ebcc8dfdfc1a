#!/usr/bin/env bash
# The reduction kernels side by side: oxmpi's reduce_local (bench/src/bin/reduce_local.rs)
# beside MPI_Reduce_local of Open MPI and MPICH (bench/peer/reduce_local.c), one process each,
# interleaved for ROUNDS rounds; prints the median over the rounds of each one's MB/s (each
# round's figure is already its best of 7 batches) and oxmpi over Open MPI.
#
#   scripts/reduce-local.sh [ROUNDS] [-m [MIN:]MAX]       (default: 5 rounds, 4096:1048576)
#
# BASELINE=path/to/another/reduce_local adds its column (an older build, say).
# Build first: cargo build --release -p oxmpi-bench --bin reduce_local; scripts/peer-build.sh
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=5
if [ $# -gt 0 ] && [[ "$1" =~ ^[0-9]+$ ]]; then rounds=$1; shift; fi
args=("$@")
ox=target/release/reduce_local
[ -x "$ox" ] || { echo "build first: $ox is missing" >&2; exit 1; }
cpu=0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

cols=(oxmpi)
[ -n "${BASELINE:-}" ] && cols+=(baseline)
[ -x bench/peer/build/openmpi/reduce_local ] && command -v mpirun.openmpi >/dev/null && cols+=(openmpi)
[ -x bench/peer/build/mpich/reduce_local ] && command -v mpiexec.mpich >/dev/null && cols+=(mpich)

for r in $(seq "$rounds"); do
    for c in "${cols[@]}"; do
        case $c in
            oxmpi) taskset -c $cpu "$ox" "${args[@]}" ;;
            baseline) taskset -c $cpu "$BASELINE" "${args[@]}" ;;
            openmpi) mpirun.openmpi --allow-run-as-root -n 1 --bind-to none \
                         taskset -c $cpu bench/peer/build/openmpi/reduce_local "${args[@]}" ;;
            mpich) mpiexec.mpich -n 1 taskset -c $cpu bench/peer/build/mpich/reduce_local "${args[@]}" ;;
        esac | awk '!/^#/ { print $1 "/" $2 "/" $3, $4 }' >"$tmp/$c.$r"
    done
done

python3 - "$tmp" "$rounds" "${cols[@]}" <<'PY'
import statistics, sys
d, rounds, cols = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
vals = {c: {} for c in cols}
order = []
for c in cols:
    for r in range(1, rounds + 1):
        for line in open(f"{d}/{c}.{r}"):
            key, v = line.split()
            if key not in vals[c] and c == cols[0]:
                order.append(key)
            vals[c].setdefault(key, []).append(float(v))
print(f"# reduce_local, MB/s, median of {rounds} rounds (each the best of 7 batches); one core")
head = f"{'type':<8} {'op':<5} {'size':>8}" + "".join(f" {c:>10}" for c in cols)
if "openmpi" in cols:
    head += "  oxmpi/openmpi"
print(head)
for key in order:
    t, op, size = key.split("/")
    med = {c: statistics.median(vals[c][key]) for c in cols if key in vals[c]}
    line = f"{t:<8} {op:<5} {size:>8}" + "".join(f" {med.get(c, float('nan')):>10.0f}" for c in cols)
    if "openmpi" in med:
        line += f"  {med['oxmpi'] / med['openmpi']:13.2f}"
    print(line)
PY
