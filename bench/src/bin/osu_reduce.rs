//! `osu_reduce`: `reduce` (sum of `f32`) of SIZE bytes from every rank to rank 0.
//! Sizes are bytes of `f32` data (SIZE / 4 elements; sizes under 4 bytes are left out).
//! Average latency over the ranks in microseconds, timed as OSU's collective tests do (see
//! [`oxmpi_bench::time_collective`]); `-f` adds the minimum, maximum and iteration count.

use oxmpi::Op;
use oxmpi_bench::{collective_latency, header_collective, require, Options};

fn main() -> Result<(), oxmpi::Error> {
    let universe = oxmpi::init()?;
    let world = universe.world();
    let opts = Options::parse_collective("osu_reduce", 4, 1_000, 200);
    require(&world, "osu_reduce", world.size() >= 2, "at least 2 ranks");
    let sbuf = vec![1.0f32; (opts.max / 4).max(1)];
    let mut rbuf = vec![0.0f32; (opts.max / 4).max(1)];
    header_collective(&world, "OSU MPI Reduce Latency Test", &opts, true);
    for size in opts.elem_sizes(4) {
        let count = size / 4;
        collective_latency(&world, &opts, size, || {
            world.reduce(&sbuf[..count], &mut rbuf[..count], Op::Sum, 0)
        })?;
    }
    Ok(())
}
