//! `osu_latency`: ping-pong between ranks 0 and 1; one-way latency in microseconds.

use oxmpi_bench::{buffer, header, line, Options};
use std::time::Instant;

fn main() -> Result<(), oxmpi::Error> {
    let universe = oxmpi::init()?;
    let world = universe.world();
    let opts = Options::parse("osu_latency", 0, 10_000, 1_000);
    oxmpi_bench::require(&world, "osu_latency", world.size() == 2, "exactly 2 ranks");
    let me = world.rank();
    let mut sbuf = buffer(opts.max, b'a');
    let mut rbuf = buffer(opts.max, b'b');
    if me == 0 {
        header("OSU MPI Latency Test", "Latency (us)");
    }
    for size in opts.sizes() {
        let (iters, warmup) = opts.iters_for(size);
        world.barrier()?;
        let mut start = Instant::now();
        for i in 0..iters + warmup {
            if i == warmup {
                start = Instant::now();
            }
            if me == 0 {
                world.send(&sbuf[..size], 1, 1)?;
                world.recv_into(&mut rbuf[..size], 1, 1)?;
            } else {
                world.recv_into(&mut rbuf[..size], 0, 1)?;
                world.send(&sbuf[..size], 0, 1)?;
            }
        }
        let us = start.elapsed().as_secs_f64() * 1e6 / (2.0 * iters as f64);
        if me == 0 {
            line(size, us);
        }
        sbuf[0] = sbuf[0].wrapping_add(1);
    }
    Ok(())
}
