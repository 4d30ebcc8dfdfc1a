//! `osu_iallreduce`: OSU's overlap test for the nonblocking `iallreduce` (sum of `f32`, SIZE / 4
//! elements; sizes under 4 bytes are left out). Per size, after a barrier:
//!
//! 1. pure communication: warm-up + timed `iallreduce` + `wait`, each timed on its own and
//!    followed by an untimed barrier ([`oxmpi_bench::time_collective`]); this rank's average is
//!    its "Pure Comm." time;
//! 2. overlap: warm-up + timed `iallreduce`, then a dummy compute lasting this rank's pure
//!    communication time (with `-t CALLS` cut into CALLS pieces, each followed by a `test` of
//!    the request), then `wait`; each iteration followed by an untimed barrier.
//!
//! Every figure is averaged over the ranks at rank 0 ([`oxmpi_bench::report_nonblocking`]):
//! Overall = Coll. Init + Compute + MPI_Test + MPI_Wait; Compute excludes the tests;
//! Overlap(%) = max(0, 100 - (Overall - Compute) / Pure Comm. × 100).

use oxmpi::{Error, Op};
use oxmpi_bench::{
    header_nonblocking, report_nonblocking, require, time_collective, DummyCompute, NbcTimes,
    Options,
};
use std::time::{Duration, Instant};

fn main() -> Result<(), Error> {
    let universe = oxmpi::init()?;
    let world = universe.world();
    let opts = Options::parse_nonblocking("osu_iallreduce", 4, 1_000, 200);
    require(
        &world,
        "osu_iallreduce",
        world.size() >= 2,
        "at least 2 ranks",
    );
    let sbuf = vec![1.0f32; (opts.max / 4).max(1)];
    let mut rbuf = vec![0.0f32; (opts.max / 4).max(1)];
    let mut compute = DummyCompute::default();
    header_nonblocking(&world, "OSU MPI Non-blocking Allreduce Latency Test", &opts);
    for size in opts.elem_sizes(4) {
        let count = size / 4;
        let (send, recv) = (&sbuf[..count], &mut rbuf[..count]);
        let (iters, warmup) = opts.iters_for(size);

        // 1. Pure communication.
        world.barrier()?;
        let comm_us = time_collective(&world, iters, warmup, || {
            world.scope(|s| -> Result<(), Error> { s.iallreduce(send, recv, Op::Sum)?.wait() })
        })?;

        // 2. The same with a dummy compute of that length between start and wait.
        let target = Duration::from_secs_f64(comm_us / 1e6);
        let mut times = NbcTimes::default();
        world.barrier()?;
        for i in 0..warmup + iters {
            let mut t = NbcTimes::default();
            let start = Instant::now();
            world.scope(|s| -> Result<(), Error> {
                let mut req = s.iallreduce(send, recv, Op::Sum)?;
                t.init = start.elapsed();
                let computing = Instant::now();
                t.test = compute.run(target, opts.test_calls, || req.test().map(drop))?;
                t.compute = computing.elapsed() - t.test;
                let waiting = Instant::now();
                req.wait()?;
                t.wait = waiting.elapsed();
                Ok(())
            })?;
            t.overall = start.elapsed();
            if i >= warmup {
                times.overall += t.overall;
                times.compute += t.compute;
                times.init += t.init;
                times.test += t.test;
                times.wait += t.wait;
            }
            world.barrier()?;
        }
        report_nonblocking(&world, size, comm_us, &times, iters, opts.full)?;
    }
    Ok(())
}
