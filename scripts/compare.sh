#!/usr/bin/env bash
# Runs one OSU-style benchmark under oxmpi, Open MPI and MPICH, one after another, and prints
# the results side by side.
#
# Usage: scripts/compare.sh [--fabric shm|tcp] [--np N] [--repeat R] [--stat best|median]
#                          [--col K|NAME] BENCH [flags...]
#   BENCH        point to point: osu_latency | osu_bw | osu_bibw | osu_multi_lat
#                collectives: osu_barrier | osu_bcast | osu_reduce | osu_allreduce |
#                osu_allgather | osu_alltoall | osu_gather | osu_scatter | osu_reduce_scatter |
#                osu_iallreduce
#   --fabric     shm (default): each library's shared-memory path between the local ranks;
#                tcp: each library's TCP path over loopback, shared memory kept out of the way
#   --np N, -n N ranks (default 2; osu_multi_lat takes any even N, the collectives any N >= 2)
#   --col K      which figure to compare: the K-th column after the size (default 1: the
#                latency, bandwidth, average latency or, for osu_iallreduce, Overall). By name:
#                avg, min, max (collectives, min/max with -f); overall, compute, init, test,
#                wait, comm, overlap (osu_iallreduce; init/test/wait with -f)
#   --repeat R   run the three R times, interleaved, and keep each one's best figure per size
#                (lowest latency, highest bandwidth): on a noisy VM this compares the
#                libraries rather than the moments they happened to run in (default 1)
#   --stat       with --repeat: report each library's best (default) or median figure per size
#   bench flags  passed to all three unchanged: -m [MIN:]MAX, -i ITERS, -x WARMUP, -W WINDOW
#                (point to point), -f (collectives), -t CALLS (osu_iallreduce)
#
# Binaries: target/release/{oxrun,BENCH} (cargo build --release) and
# bench/peer/build/{openmpi,mpich}/BENCH (scripts/peer-build.sh). A column whose binaries or
# launcher are missing, or whose run fails or passes `timeout`, is shown as '-'.
# Examples: scripts/compare.sh --fabric tcp osu_latency -m 0:64 -i 2000 -x 200
#           scripts/compare.sh -n 4 osu_allreduce -m 4:65536 -i 200 -x 20
#           scripts/compare.sh -n 4 --col overlap osu_iallreduce -m 4:65536 -t 10
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { sed -n '5,30p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

fabric=shm
np=2
repeat=1
stat=best
col=1
while [ $# -gt 0 ]; do
    case "$1" in
        --fabric) [ $# -ge 2 ] || usage; fabric="$2"; shift 2 ;;
        --fabric=*) fabric="${1#*=}"; shift ;;
        --np|-n|-np) [ $# -ge 2 ] || usage; np="$2"; shift 2 ;;
        --np=*) np="${1#*=}"; shift ;;
        --repeat) [ $# -ge 2 ] || usage; repeat="$2"; shift 2 ;;
        --stat) [ $# -ge 2 ] || usage; stat="$2"; shift 2 ;;
        --col) [ $# -ge 2 ] || usage; col="$2"; shift 2 ;;
        --col=*) col="${1#*=}"; shift ;;
        -h|--help) usage ;;
        *) break ;;
    esac
done
[ $# -ge 1 ] || usage
bench="$1"
shift
flags=("$@")
full=0
for a in "${flags[@]+"${flags[@]}"}"; do
    case "$a" in -f|--full) full=1 ;; esac
done

# The figures each benchmark prints after the size (osu_barrier prints no size).
case "$bench" in
    osu_latency|osu_multi_lat) columns=("Latency (us)") ;;
    osu_bw|osu_bibw) columns=("Bandwidth (MB/s)") ;;
    osu_barrier|osu_bcast|osu_reduce|osu_allreduce|osu_allgather|osu_alltoall|osu_gather|\
    osu_scatter|osu_reduce_scatter)
        columns=("Avg Latency(us)")
        [ "$full" = 0 ] || columns+=("Min Latency(us)" "Max Latency(us)" "Iterations")
        ;;
    osu_iallreduce)
        columns=("Overall(us)" "Compute(us)")
        [ "$full" = 0 ] || columns+=("Coll. Init(us)" "MPI_Test(us)" "MPI_Wait(us)")
        columns+=("Pure Comm.(us)" "Overlap(%)")
        ;;
    *) echo "compare.sh: unknown benchmark '$bench'" >&2; usage ;;
esac
sized=1
[ "$bench" != osu_barrier ] || sized=0
case "$fabric" in shm|tcp) ;; *) echo "compare.sh: --fabric must be shm or tcp" >&2; usage ;; esac
[[ "$np" =~ ^[1-9][0-9]*$ ]] || { echo "compare.sh: --np must be a positive integer" >&2; usage; }

# --col by name: the position of that figure in this benchmark's columns.
if ! [[ "$col" =~ ^[1-9][0-9]*$ ]]; then
    case "$col" in
        avg) pat="Avg Latency" ;; min) pat="Min Latency" ;; max) pat="Max Latency" ;;
        overall) pat="Overall" ;; compute) pat="Compute" ;; init) pat="Coll. Init" ;;
        test) pat="MPI_Test" ;; wait) pat="MPI_Wait" ;; comm) pat="Pure Comm." ;;
        overlap) pat="Overlap" ;;
        *) echo "compare.sh: --col must be a column number or a name (see --help)" >&2; usage ;;
    esac
    k=0
    for i in "${!columns[@]}"; do
        [[ "${columns[$i]}" != "$pat"* ]] || k=$((i + 1))
    done
    if [ "$k" = 0 ]; then
        echo "compare.sh: $bench $([ "$full" = 1 ] && echo "with" || echo "without") -f prints no '$col' column (it prints: ${columns[*]})" >&2
        exit 2
    fi
    col=$k
fi
if [ "$col" -gt "${#columns[@]}" ]; then
    echo "compare.sh: --col $col: $bench prints ${#columns[@]} column(s) after the size: ${columns[*]}" >&2
    exit 2
fi
column="${columns[$((col - 1))]}"

TIMEOUT="${COMPARE_TIMEOUT:-300}"
ncpu=$(nproc)
load_before=$(cut -d' ' -f1 /proc/loadavg 2>/dev/null || echo '?')

# Running as root, and possibly with more ranks than cores.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_rmaps_base_oversubscribe=1

work=$(mktemp -d "${TMPDIR:-/tmp}/oxmpi-compare.XXXXXX")
trap 'rm -rf "$work"' EXIT

# Shell-quotes a command for display, leaving plain words as they are.
q() {
    local out="" a
    for a in "$@"; do
        if [[ "$a" =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then out+="$a "; else out+="$(printf '%q' "$a") "; fi
    done
    printf '%s' "${out% }"
}

notes=()
declare -A cmd_text=()

if [ "$np" -gt "$ncpu" ]; then
    notes+=("$np ranks on $ncpu CPUs (oversubscribed): timings are dominated by scheduling; Open MPI yields when oversubscribed, MPICH/UCX keep busy-polling (ms-scale latencies)")
fi

# ---- oxmpi ------------------------------------------------------------------------------
ox_cmd=()
if [ -x target/release/oxrun ] && [ -x "target/release/$bench" ]; then
    ox_cmd=(env "OXMPI_FABRIC=$fabric" target/release/oxrun -n "$np" --bind-to core
            "target/release/$bench" "${flags[@]}")
else
    msg="oxmpi: target/release/oxrun or target/release/$bench is missing; run \`cargo build --release\` (oxmpi column skipped)"
    echo "compare.sh: $msg" >&2
    notes+=("$msg")
fi

# ---- Open MPI -----------------------------------------------------------------------------
ompi_cmd=()
if ! command -v mpirun.openmpi >/dev/null 2>&1; then
    notes+=("openmpi: mpirun.openmpi not found; run scripts/peer-build.sh --install (column skipped)")
elif [ ! -x "bench/peer/build/openmpi/$bench" ]; then
    notes+=("openmpi: bench/peer/build/openmpi/$bench missing; run scripts/peer-build.sh (column skipped)")
else
    # More ranks than cores: Open MPI refuses --bind-to core unless overload is allowed.
    bind=core
    [ "$np" -le "$ncpu" ] || bind=core:overload-allowed
    if [ "$fabric" = shm ]; then
        btl=(--mca btl self,vader --mca pml ob1)
    else
        btl=(--mca btl self,tcp --mca btl_tcp_if_include lo --mca pml ob1)
    fi
    ompi_cmd=(mpirun.openmpi --allow-run-as-root --oversubscribe -np "$np" --bind-to "$bind"
              "${btl[@]}" "bench/peer/build/openmpi/$bench" "${flags[@]}")
fi

# ---- MPICH --------------------------------------------------------------------------------
mpich_cmd=()
mpich_device=$(mpichversion 2>/dev/null | sed -n 's/^MPICH Device:[[:space:]]*//p' | head -1 || true)
if ! command -v mpiexec.mpich >/dev/null 2>&1; then
    notes+=("mpich: mpiexec.mpich not found; run scripts/peer-build.sh --install (column skipped)")
elif [ ! -x "bench/peer/build/mpich/$bench" ]; then
    notes+=("mpich: bench/peer/build/mpich/$bench missing; run scripts/peer-build.sh (column skipped)")
else
    mpich_env=()
    if [ "$fabric" = tcp ]; then
        # MPIR_CVAR_NOLOCAL=1 makes MPICH treat every rank as remote, so all traffic takes the
        # network module instead of MPICH's own shared memory; the netmod is then held to TCP.
        case "$mpich_device" in
            ch4:ucx*)
                # UCX would otherwise use its own shared memory (sysv/posix + cma) between
                # local ranks; UCX_TLS keeps it to TCP on the loopback device only.
                mpich_env=(MPIR_CVAR_NOLOCAL=1 UCX_TLS=tcp,self UCX_NET_DEVICES=lo
                           UCX_LOG_LEVEL=info)
                ;;
            ch4:ofi*)
                mpich_env=(MPIR_CVAR_NOLOCAL=1 FI_PROVIDER=tcp FI_TCP_IFACE=lo)
                notes+=("mpich: ch4:ofi tcp forcing (FI_PROVIDER=tcp) not verified on this host")
                ;;
            ch3:nemesis*)
                mpich_env=(MPIR_CVAR_NOLOCAL=1 MPICH_NO_LOCAL=1)
                notes+=("mpich: ch3:nemesis tcp forcing (MPIR_CVAR_NOLOCAL) not verified on this host")
                ;;
            ch3:sock*)
                ;;
            *)
                notes+=("mpich: device '${mpich_device:-unknown}': could NOT force the TCP path; MPICH column may be shared memory")
                ;;
        esac
    elif [[ "$mpich_device" == ch4:ucx* ]]; then
        # Logs the transports UCX picked (shown below), nothing else.
        mpich_env=(UCX_LOG_LEVEL=info)
    fi
    mpich_cmd=(env "${mpich_env[@]}" mpiexec.mpich -n "$np" -bind-to core
               "bench/peer/build/mpich/$bench" "${flags[@]}")
fi

# ---- run ----------------------------------------------------------------------------------
# run NAME CMD...: stdout to $work/NAME.out, stderr to $work/NAME.err; '-' column on failure.
run() {
    local name="$1"
    shift
    echo "compare.sh: running $name: $(q "$@")" >&2
    local rc=0
    timeout -k 10 "$TIMEOUT" "$@" >>"$work/$name.out" 2>>"$work/$name.err" || rc=$?
    if [ "$rc" -ne 0 ]; then
        if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
            notes+=("$name: timed out after ${TIMEOUT}s (partial results kept)")
        else
            notes+=("$name: exited with status $rc (column may be partial; stderr tail below)")
        fi
        echo "compare.sh: $name failed (rc=$rc); stderr tail:" >&2
        tail -n 15 "$work/$name.err" >&2 || true
    fi
    return 0
}

for ((round = 1; round <= repeat; round++)); do
    [ ${#ox_cmd[@]} -eq 0 ] || { cmd_text[oxmpi]=$(q "${ox_cmd[@]}"); run oxmpi "${ox_cmd[@]}"; }
    [ ${#ompi_cmd[@]} -eq 0 ] || { cmd_text[openmpi]=$(q "${ompi_cmd[@]}"); run openmpi "${ompi_cmd[@]}"; }
    [ ${#mpich_cmd[@]} -eq 0 ] || { cmd_text[mpich]=$(q "${mpich_cmd[@]}"); run mpich "${mpich_cmd[@]}"; }
done

# The UCX transports MPICH's endpoints actually used (ch4:ucx with UCX_LOG_LEVEL=info).
ucx_tls=""
if [ -f "$work/mpich.err" ]; then
    # UCX logs to stdout by default; look in both streams.
    ucx_tls=$(cat "$work/mpich.out" "$work/mpich.err" | grep -o 'ep_cfg\[[0-9]*\]: tag([^)]*)' |
              sed 's/.*: //' | sort -u | tr '\n' ' ' || true)
    ucx_tls="${ucx_tls% }"
fi

# ---- report -------------------------------------------------------------------------------
faster="lower is better; ratio < 1: oxmpi faster"
case "$column" in
    Latency*) lower=1; metric="one-way latency in us; $faster" ;;
    Bandwidth*) lower=0; metric="bandwidth in MB/s; higher is better; ratio > 1: oxmpi faster" ;;
    Avg*) lower=1; metric="latency per call in us, averaged over the ranks; $faster" ;;
    Min*) lower=1; metric="latency per call in us of the fastest rank; $faster" ;;
    Max*) lower=1; metric="latency per call in us of the slowest rank; $faster" ;;
    Iterations) lower=0; metric="timed iterations per size (no ratio meant)" ;;
    Overlap*) lower=0; metric="share of the communication hidden behind the compute in %, averaged over the ranks; higher is better; ratio > 1: oxmpi overlaps more" ;;
    *) lower=1; metric="${column%(us)} time per iteration in us, averaged over the ranks; $faster" ;;
esac
metric="column $col ($column): $metric"
echo "# oxmpi vs Open MPI vs MPICH: $bench, fabric $fabric, $np ranks, $ncpu CPUs ($(uname -m), $(uname -r))"
echo "# metric: $metric"
[ "$repeat" -gt 1 ] && echo "# $stat of $repeat interleaved runs per library and size"
echo "# 1-minute load average before the runs: $load_before (anything else running skews these figures)"
echo "# env: OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1"
for name in oxmpi openmpi mpich; do
    if [ -n "${cmd_text[$name]:-}" ]; then
        echo "# $name: ${cmd_text[$name]}"
    else
        echo "# $name: (not run)"
    fi
done
if [ -n "$mpich_device" ]; then
    echo "# mpich device: $mpich_device${ucx_tls:+; UCX transports used: $ucx_tls}"
fi
for n in "${notes[@]+"${notes[@]}"}"; do
    echo "# NOTE: $n"
done

for name in oxmpi openmpi mpich; do
    [ -f "$work/$name.out" ] || : >"$work/$name.out"
done
awk -v lower="$lower" -v stat="$stat" -v col="$col" -v sized="$sized" '
    function val(name, s) { return ((name, s) in v) ? v[name, s] : "-" }
    function ratio(a, b) {
        if (a == "-" || b == "-" || b + 0 == 0) return "-"
        return sprintf("%.2f", a / b)
    }
    FNR == 1 { name = FILENAME; sub(/.*\//, "", name); sub(/\.out$/, "", name) }
    /^#/ { next }
    # sized: "SIZE FIGURE...", the figure in field col + 1; osu_barrier: "FIGURE...", no size
    sized && (NF < col + 1 || $1 !~ /^[0-9]+$/) { next }
    !sized && (NF < col || $1 !~ /^[0-9.]+$/) { next }
    {
        key = sized ? $1 : "-"
        x = sized ? $(col + 1) : $col
        if (!((name, key) in v) || (lower ? x + 0 < v[name, key] + 0 : x + 0 > v[name, key] + 0))
            v[name, key] = x
        all[name, key, ++cnt[name, key]] = x + 0
        if (!(key in seen)) { seen[key] = 1; sizes[++n] = key }
    }
    END {
        if (stat == "median") {
            for (key in cnt) {
                k = cnt[key]
                for (i = 1; i <= k; i++) xs[i] = all[key, i]
                for (i = 2; i <= k; i++) { x = xs[i]; for (j = i - 1; j >= 1 && xs[j] > x; j--) xs[j + 1] = xs[j]; xs[j + 1] = x }
                v[key] = (k % 2) ? xs[(k + 1) / 2] : sprintf("%.2f", (xs[k / 2] + xs[k / 2 + 1]) / 2)
            }
        }
        # numeric insertion sort of the sizes seen in any output
        for (i = 2; i <= n; i++) {
            x = sizes[i]
            for (j = i - 1; j >= 1 && sizes[j] + 0 > x + 0; j--) sizes[j + 1] = sizes[j]
            sizes[j + 1] = x
        }
        printf "%-10s%14s%14s%14s%16s%14s\n", "# size", "oxmpi", "openmpi", "mpich",
               "oxmpi/openmpi", "oxmpi/mpich"
        for (i = 1; i <= n; i++) {
            s = sizes[i]
            o = val("oxmpi", s); p = val("openmpi", s); m = val("mpich", s)
            printf "%-10s%14s%14s%14s%16s%14s\n", s, o, p, m, ratio(o, p), ratio(o, m)
        }
    }
' "$work/oxmpi.out" "$work/openmpi.out" "$work/mpich.out"
