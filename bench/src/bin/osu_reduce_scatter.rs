//! `osu_reduce_scatter`: `reduce_scatter_block` (sum of `f32`) of SIZE bytes in all: every rank
//! contributes N × COUNT elements and receives COUNT, with COUNT = SIZE / 4 / N; sizes where
//! COUNT is 0 are left out. Average latency over the ranks in microseconds, timed as OSU's
//! collective tests do (see [`oxmpi_bench::time_collective`]); `-f` adds the minimum, maximum
//! and iteration count.

use oxmpi::Op;
use oxmpi_bench::{collective_latency, header_collective, require, Options};

fn main() -> Result<(), oxmpi::Error> {
    let universe = oxmpi::init()?;
    let world = universe.world();
    let opts = Options::parse_collective("osu_reduce_scatter", 4, 1_000, 200);
    require(
        &world,
        "osu_reduce_scatter",
        world.size() >= 2,
        "at least 2 ranks",
    );
    let n = world.size() as usize;
    let sbuf = vec![1.0f32; (opts.max / 4).max(1)];
    let mut rbuf = vec![0.0f32; (opts.max / 4 / n).max(1)];
    header_collective(
        &world,
        "OSU MPI Reduce_scatter_block Latency Test",
        &opts,
        true,
    );
    for size in opts.elem_sizes(4) {
        let count = size / 4 / n;
        if count == 0 {
            continue;
        }
        collective_latency(&world, &opts, size, || {
            world.reduce_scatter_block(&sbuf[..count * n], &mut rbuf[..count], Op::Sum)
        })?;
    }
    Ok(())
}
