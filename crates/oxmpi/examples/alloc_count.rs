//! Counts heap allocations on oxmpi's fast paths: a counting global allocator
//! (`stats_alloc`) wraps the system one, and after a warm-up each operation runs `ITERS` times
//! while the allocations and reallocations are counted. Prints one line per operation, `OP ALLOCS`, the allocations of all
//! `ITERS` iterations on this rank. Run through `oxrun` (any fabric); the end-to-end test
//! `small_messages_and_collectives_allocate_nothing` holds them all to (nearly) zero.
//!
//!   oxrun -n 2 alloc_count [ITERS]

use oxmpi::Op;
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};
use std::alloc::System;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Allocations made by `iters` runs of `op`, after `iters / 10 + 10` unmeasured ones.
fn count(
    iters: u64,
    mut op: impl FnMut() -> Result<(), oxmpi::Error>,
) -> Result<u64, oxmpi::Error> {
    for _ in 0..iters / 10 + 10 {
        op()?;
    }
    let region = Region::new(GLOBAL);
    for _ in 0..iters {
        op()?;
    }
    let c = region.change();
    Ok((c.allocations + c.reallocations) as u64)
}

fn main() -> Result<(), oxmpi::Error> {
    let iters: u64 = std::env::args()
        .nth(1)
        .map_or(1000, |s| s.parse().expect("ITERS is a number"));
    let universe = oxmpi::init()?;
    let world = universe.world();
    let (rank, size) = (world.rank(), world.size());
    let right = (rank + 1) % size;
    let left = (rank + size - 1) % size;
    let mut report = Vec::new();

    // Ping-pong between ranks 0 and 1 (the others only take part in the collectives).
    for bytes in [8usize, 4096, 65536] {
        let out = vec![1u8; bytes];
        let mut inbox = vec![0u8; bytes];
        let n = count(iters, || {
            match rank {
                0 => {
                    world.send(&out, 1, 7)?;
                    world.recv_into(&mut inbox, 1, 7)?;
                }
                1 => {
                    world.recv_into(&mut inbox, 0, 7)?;
                    world.send(&out, 0, 7)?;
                }
                _ => {}
            }
            Ok(())
        })?;
        report.push((format!("pingpong_{bytes}"), n));
    }

    // Nonblocking exchange around a ring, in a scope.
    let out = [rank as u64; 1];
    let mut inbox = [0u64; 1];
    let mut statuses = Vec::new();
    let n = count(iters, || {
        world.scope(|s| -> Result<(), oxmpi::Error> {
            let r = s.irecv(&mut inbox, left, 8)?;
            let q = s.isend(&out, right, 8)?;
            oxmpi::wait_all_into(&mut [r, q], &mut statuses)
        })
    })?;
    report.push(("ring_isend_irecv_8".into(), n));

    let n = count(iters, || world.barrier())?;
    report.push(("barrier".into(), n));

    // A bcast's root may run any number of calls ahead of the others, whose early messages
    // then wait as unexpected ones, in buffers beyond the engine's pool: a barrier after each
    // keeps the ranks in step, as OSU's loop does.
    let mut b = [0u64; 1];
    let n = count(iters, || {
        world.bcast(&mut b, 0)?;
        world.barrier()
    })?;
    report.push(("bcast_8_barrier".into(), n));

    let x = [f64::from(rank); 1];
    let mut sum = [0.0f64; 1];
    let n = count(iters, || world.allreduce(&x, &mut sum, Op::Sum))?;
    report.push(("allreduce_8".into(), n));

    let plan = world.allreduce_init::<f64, _>(1, Op::Sum)?;
    let n = count(iters, || plan.run(&x, &mut sum))?;
    report.push(("persistent_allreduce_8".into(), n));

    let n = count(iters, || {
        world.scope(|s| -> Result<(), oxmpi::Error> {
            s.iallreduce(&x, &mut sum, Op::Sum)?.wait()?;
            Ok(())
        })
    })?;
    report.push(("iallreduce_8".into(), n));

    for (op, n) in report {
        println!("rank {rank}: {op} {n}");
    }
    Ok(())
}
