//! `osu_scatter`: `scatter` of N × SIZE bytes at rank 0, SIZE bytes to every rank.
//! Average latency over the ranks in microseconds, timed as OSU's collective tests do (see
//! [`oxmpi_bench::time_collective`]); `-f` adds the minimum, maximum and iteration count.

use oxmpi_bench::{buffer, collective_latency, header_collective, require, Options};

fn main() -> Result<(), oxmpi::Error> {
    let universe = oxmpi::init()?;
    let world = universe.world();
    let opts = Options::parse_collective("osu_scatter", 1, 1_000, 200);
    require(&world, "osu_scatter", world.size() >= 2, "at least 2 ranks");
    let n = world.size() as usize;
    let sbuf = buffer(opts.max * n, 1);
    let mut rbuf = buffer(opts.max, 0);
    header_collective(&world, "OSU MPI Scatter Latency Test", &opts, true);
    for size in opts.sizes() {
        collective_latency(&world, &opts, size, || {
            world.scatter(&sbuf[..size * n], &mut rbuf[..size], 0)
        })?;
    }
    Ok(())
}
