//! `osu_bcast`: `bcast` of SIZE bytes from rank 0.
//! Average latency over the ranks in microseconds, timed as OSU's collective tests do (see
//! [`oxmpi_bench::time_collective`]); `-f` adds the minimum, maximum and iteration count.

use oxmpi_bench::{buffer, collective_latency, header_collective, require, Options};

fn main() -> Result<(), oxmpi::Error> {
    let universe = oxmpi::init()?;
    let world = universe.world();
    let opts = Options::parse_collective("osu_bcast", 1, 1_000, 200);
    require(&world, "osu_bcast", world.size() >= 2, "at least 2 ranks");
    let mut buf = buffer(opts.max, 1);
    header_collective(&world, "OSU MPI Broadcast Latency Test", &opts, true);
    for size in opts.sizes() {
        collective_latency(&world, &opts, size, || world.bcast(&mut buf[..size], 0))?;
    }
    Ok(())
}
