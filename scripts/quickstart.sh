#!/usr/bin/env bash
# The main job: builds oxmpi in release mode, runs the tutorial examples through oxrun, then
# the OSU latency and bandwidth tests between two ranks over shared memory.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cc >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq build-essential; }
cargo build --release --bins --examples --quiet
R=target/release
echo "== oxrun -n 4 hello"
$R/oxrun -n 4 $R/examples/hello
echo "== oxrun -n 2 p2p_dict / p2p_array / nonblocking"
$R/oxrun -n 2 $R/examples/p2p_dict
$R/oxrun -n 2 $R/examples/p2p_array
$R/oxrun -n 2 $R/examples/nonblocking
echo "== osu_latency over shared memory (2 ranks, pinned)"
OXMPI_FABRIC=shm $R/oxrun -n 2 --bind-to core $R/osu_latency -m 0:1048576
echo "== osu_bw over shared memory (2 ranks, pinned)"
OXMPI_FABRIC=shm $R/oxrun -n 2 --bind-to core $R/osu_bw -m 1:4194304
