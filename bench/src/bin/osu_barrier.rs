//! `osu_barrier`: latency of `barrier` over all ranks in microseconds. Each warm-up and timed
//! barrier is timed on its own; rank 0 prints the average over the ranks of their per-barrier
//! latency (`-f`: also the minimum, maximum and iteration count), as OSU's `osu_barrier` does.

use oxmpi_bench::{header_collective, report_collective, require, Options};
use std::time::{Duration, Instant};

fn main() -> Result<(), oxmpi::Error> {
    let universe = oxmpi::init()?;
    let world = universe.world();
    let opts = Options::parse_collective("osu_barrier", 1, 1_000, 200);
    require(&world, "osu_barrier", world.size() >= 2, "at least 2 ranks");
    header_collective(&world, "OSU MPI Barrier Latency Test", &opts, false);
    world.barrier()?;
    let mut total = Duration::ZERO;
    for i in 0..opts.warmup + opts.iters {
        let start = Instant::now();
        world.barrier()?;
        let took = start.elapsed();
        if i >= opts.warmup {
            total += took;
        }
    }
    let us = total.as_secs_f64() * 1e6 / opts.iters as f64;
    report_collective(&world, None, us, opts.iters, opts.full)
}
