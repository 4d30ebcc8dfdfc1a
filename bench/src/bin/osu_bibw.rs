//! `osu_bibw`: both ranks stream windows of nonblocking sends to each other at once;
//! aggregate bandwidth of both directions in MB/s.
//!
//! As in OSU's C code, every send of a window goes from the same buffer; each receive has its
//! own (see `osu_bw`).

use oxmpi::wait_all;
use oxmpi_bench::{buffer, header, line, Options};
use std::time::Instant;

fn main() -> Result<(), oxmpi::Error> {
    let universe = oxmpi::init()?;
    let world = universe.world();
    let opts = Options::parse("osu_bibw", 1, 100, 10);
    oxmpi_bench::require(&world, "osu_bibw", world.size() == 2, "exactly 2 ranks");
    let me = world.rank();
    let peer = 1 - me;
    let window = opts.window;
    let sbuf = buffer(opts.max, b's');
    let mut rbuf = buffer(opts.max * window, b'r');
    if me == 0 {
        header("OSU MPI Bi-Directional Bandwidth Test", "Bandwidth (MB/s)");
    }
    for size in opts.sizes() {
        let (iters, warmup) = opts.bw_iters_for(size);
        world.barrier()?;
        let mut start = Instant::now();
        for i in 0..iters + warmup {
            if i == warmup {
                start = Instant::now();
            }
            world.scope(|s| -> Result<(), oxmpi::Error> {
                let mut reqs = Vec::with_capacity(2 * window);
                for chunk in rbuf.chunks_mut(size.max(1)).take(window) {
                    reqs.push(s.irecv(&mut chunk[..size], peer, 100)?);
                }
                for _ in 0..window {
                    reqs.push(s.isend(&sbuf[..size], peer, 100)?);
                }
                wait_all(&mut reqs)?;
                Ok(())
            })?;
        }
        let secs = start.elapsed().as_secs_f64();
        if me == 0 {
            line(size, 2.0 * (size * window * iters) as f64 / secs / 1e6);
        }
    }
    Ok(())
}
