#!/usr/bin/env bash
# osu_latency and osu_bw over oxmpi's ofi backend beside libfabric's own fi_pingpong (package
# libfabric-bin), per provider, interleaved in one run; prints the median of each figure.
#
#   scripts/ofi-compare.sh [ROUNDS] [PROVIDER...]    (default: 5 rounds, "tcp;ofi_rxm" and shm)
#
# fi_pingpong's "usec/xfer" is half a round trip, as osu_latency's figure is. Its "MB/sec" is
# ping-pong bandwidth (one message in flight); osu_bw keeps a window of 64 in flight, sent from
# one buffer as OSU does but each received into its own (safe Rust cannot hand one receive
# buffer to 64 pending receives as OSU's C code does), so at large sizes it writes 64 x size
# bytes of memory per window; the `-W 4` column keeps the buffers in cache as fi_pingpong's
# one buffer is.
# MB here are 10^6 bytes, as both tools print them. Build first:
#   cargo build --release --workspace --bins --features oxmpi/ofi
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=${1:-5}
shift || true
providers=("$@")
[ ${#providers[@]} -gt 0 ] || providers=("tcp;ofi_rxm" "shm")
bin=target/release
for t in oxrun osu_latency osu_bw; do
    [ -x "$bin/$t" ] || { echo "build first: $bin/$t is missing" >&2; exit 1; }
done
command -v fi_pingpong >/dev/null || { echo "fi_pingpong missing: apt-get install libfabric-bin" >&2; exit 1; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
port=47600
max=4194304

# fi_pingpong prints sizes as 1k, 1.5k, 4m: to bytes, keep powers of two, print "size us MB/s".
fpp_table() {
    awk 'NR > 1 {
        s = $1; m = 1
        if (s ~ /k$/) { m = 1024; sub(/k$/, "", s) }
        if (s ~ /m$/) { m = 1048576; sub(/m$/, "", s) }
        b = s * m
        x = b; while (x > 1 && x % 2 == 0) x /= 2
        if (b >= 1 && x == 1) print b, $7, $6
    }' "$1"
}

for prov in "${providers[@]}"; do
    tag=$(echo "$prov" | tr -c 'a-z0-9\n' '_')
    for r in $(seq "$rounds"); do
        port=$((port + 1))
        timeout 300 fi_pingpong -p "$prov" -e rdm -I 2000 -S all -B "$port" >/dev/null 2>&1 &
        server=$!
        sleep 0.5
        timeout 300 fi_pingpong -p "$prov" -e rdm -I 2000 -S all -P "$port" 127.0.0.1 >"$tmp/raw.$tag.$r"
        wait "$server" || true
        fpp_table "$tmp/raw.$tag.$r" >"$tmp/fpp.$tag.$r"
        OXMPI_FABRIC=ofi OXMPI_OFI_PROVIDER="$prov" timeout 300 "$bin/oxrun" -n 2 \
            "$bin/osu_latency" -m "1:$max" | awk '/^[0-9]/ { print $1, $2 }' >"$tmp/lat.$tag.$r"
        OXMPI_FABRIC=ofi OXMPI_OFI_PROVIDER="$prov" timeout 300 "$bin/oxrun" -n 2 \
            "$bin/osu_bw" -m "1:$max" | awk '/^[0-9]/ { print $1, $2 }' >"$tmp/bw.$tag.$r"
        OXMPI_FABRIC=ofi OXMPI_OFI_PROVIDER="$prov" timeout 300 "$bin/oxrun" -n 2 \
            "$bin/osu_bw" -W 4 -m "1:$max" | awk '/^[0-9]/ { print $1, $2 }' >"$tmp/bw4.$tag.$r"
    done
    echo "# provider $prov: median of $rounds interleaved rounds"
    printf "%-9s %10s %10s %6s %11s %10s %6s %10s %6s\n" size fi_pp_us osu_lat ratio fi_pp_MB/s osu_bw ratio bw_W4 ratio
    # One line per (kind, size, value), then medians per size.
    {
        cat "$tmp"/fpp."$tag".* | awk '{ print "fl", $1, $2; print "fb", $1, $3 }'
        cat "$tmp"/lat."$tag".* | awk '{ print "ol", $1, $2 }'
        cat "$tmp"/bw."$tag".* | awk '{ print "ob", $1, $2 }'
        cat "$tmp"/bw4."$tag".* | awk '{ print "o4", $1, $2 }'
    } | sort -k1,1 -k2,2n -k3,3g | awk '
        { key = $1 " " $2; v[key, ++n[key]] = $3; sizes[$2] = 1 }
        END {
            for (k in n) { c = n[k]; med[k] = (c % 2) ? v[k, (c + 1) / 2] : (v[k, c / 2] + v[k, c / 2 + 1]) / 2 }
            for (s in sizes) order[++m] = s + 0
            for (i = 1; i <= m; i++) for (j = i + 1; j <= m; j++) if (order[j] < order[i]) { t = order[i]; order[i] = order[j]; order[j] = t }
            for (i = 1; i <= m; i++) {
                s = order[i]
                fl = med["fl " s]; ol = med["ol " s]; fb = med["fb " s]; ob = med["ob " s]; o4 = med["o4 " s]
                if (fl == "" || ol == "") continue
                printf "%-9d %10.2f %10.2f %6.2f %11.1f %10.1f %6.2f %10.1f %6.2f\n", s, fl, ol, ol / fl, fb, ob, (fb > 0 ? ob / fb : 0), o4, (fb > 0 ? o4 / fb : 0)
            }
        }'
    echo
done
