//! `osu_bw`: rank 0 streams windows of nonblocking sends to rank 1, which answers each window
//! with a short acknowledgement; bandwidth in MB/s.
//!
//! As in OSU's C code, every send of a window goes from the same buffer (shared borrows may
//! overlap). The receives cannot share one buffer, as OSU's do: the borrow checker (and the
//! MPI standard) forbid overlapping buffers of pending receives, so each receive of a window
//! has its own.

use oxmpi::wait_all;
use oxmpi_bench::{buffer, header, line, Options};
use std::time::Instant;

fn main() -> Result<(), oxmpi::Error> {
    let universe = oxmpi::init()?;
    let world = universe.world();
    let opts = Options::parse("osu_bw", 1, 100, 10);
    oxmpi_bench::require(&world, "osu_bw", world.size() == 2, "exactly 2 ranks");
    let me = world.rank();
    let window = opts.window;
    let sbuf = buffer(opts.max, b's');
    let mut rbuf = buffer(opts.max * window, b'r');
    let mut ack = [0u8; 4];
    if me == 0 {
        header("OSU MPI Bandwidth Test", "Bandwidth (MB/s)");
    }
    for size in opts.sizes() {
        let (iters, warmup) = opts.bw_iters_for(size);
        world.barrier()?;
        let mut start = Instant::now();
        for i in 0..iters + warmup {
            if i == warmup {
                start = Instant::now();
            }
            if me == 0 {
                world.scope(|s| -> Result<(), oxmpi::Error> {
                    let mut reqs = Vec::with_capacity(window);
                    for _ in 0..window {
                        reqs.push(s.isend(&sbuf[..size], 1, 100)?);
                    }
                    wait_all(&mut reqs)?;
                    Ok(())
                })?;
                world.recv_into(&mut ack, 1, 101)?;
            } else {
                world.scope(|s| -> Result<(), oxmpi::Error> {
                    let mut reqs = Vec::with_capacity(window);
                    for chunk in rbuf.chunks_mut(size.max(1)).take(window) {
                        reqs.push(s.irecv(&mut chunk[..size], 0, 100)?);
                    }
                    wait_all(&mut reqs)?;
                    Ok(())
                })?;
                world.send(&ack, 0, 101)?;
            }
        }
        let secs = start.elapsed().as_secs_f64();
        if me == 0 {
            line(size, (size * window * iters) as f64 / secs / 1e6);
        }
    }
    Ok(())
}
