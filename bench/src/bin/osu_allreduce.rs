//! `osu_allreduce`: `allreduce` (sum of `f32`) of SIZE bytes on every rank.
//! Sizes are bytes of `f32` data (SIZE / 4 elements; sizes under 4 bytes are left out).
//! Average latency over the ranks in microseconds, timed as OSU's collective tests do (see
//! [`oxmpi_bench::time_collective`]); `-f` adds the minimum, maximum and iteration count.
//! Unlike OSU it also runs on one rank (the software cost of a call with nothing to send),
//! the first point of the growth table in docs/benchmarks.md.

use oxmpi::Op;
use oxmpi_bench::{collective_latency, header_collective, Options};

fn main() -> Result<(), oxmpi::Error> {
    let universe = oxmpi::init()?;
    let world = universe.world();
    let opts = Options::parse_collective("osu_allreduce", 4, 1_000, 200);
    let sbuf = vec![1.0f32; (opts.max / 4).max(1)];
    let mut rbuf = vec![0.0f32; (opts.max / 4).max(1)];
    header_collective(&world, "OSU MPI Allreduce Latency Test", &opts, true);
    for size in opts.elem_sizes(4) {
        let count = size / 4;
        collective_latency(&world, &opts, size, || {
            world.allreduce(&sbuf[..count], &mut rbuf[..count], Op::Sum)
        })?;
    }
    Ok(())
}
