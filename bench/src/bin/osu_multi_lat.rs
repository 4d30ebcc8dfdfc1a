//! `osu_multi_lat`: ranks i and i + N/2 ping-pong concurrently; average one-way latency in
//! microseconds over all pairs.

use oxmpi_bench::{buffer, header, line, Options};
use std::time::Instant;

fn main() -> Result<(), oxmpi::Error> {
    let universe = oxmpi::init()?;
    let world = universe.world();
    let opts = Options::parse("osu_multi_lat", 0, 10_000, 1_000);
    let (me, n) = (world.rank(), world.size());
    oxmpi_bench::require(
        &world,
        "osu_multi_lat",
        n >= 2 && n % 2 == 0,
        "an even number of ranks",
    );
    let half = n / 2;
    let (peer, pinger) = if me < half {
        (me + half, true)
    } else {
        (me - half, false)
    };
    let sbuf = buffer(opts.max, b'a');
    let mut rbuf = buffer(opts.max, b'b');
    if me == 0 {
        header("OSU MPI Multiple Latency Test", "Latency (us)");
    }
    for size in opts.sizes() {
        let (iters, warmup) = opts.iters_for(size);
        world.barrier()?;
        let mut start = Instant::now();
        for i in 0..iters + warmup {
            if i == warmup {
                start = Instant::now();
            }
            if pinger {
                world.send(&sbuf[..size], peer, 1)?;
                world.recv_into(&mut rbuf[..size], peer, 1)?;
            } else {
                world.recv_into(&mut rbuf[..size], peer, 1)?;
                world.send(&sbuf[..size], peer, 1)?;
            }
        }
        let us = start.elapsed().as_secs_f64() * 1e6 / (2.0 * iters as f64);
        // Average over the pingers: each sends its figure to rank 0.
        if pinger && me != 0 {
            world.send(&[us], 0, 2)?;
        }
        if me == 0 {
            let mut total = us;
            for p in 1..half {
                let mut x = [0f64];
                world.recv_into(&mut x, p, 2)?;
                total += x[0];
            }
            line(size, total / half as f64);
        }
    }
    Ok(())
}
