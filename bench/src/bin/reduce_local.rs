//! reduce_local: the throughput of the reduction kernels, `inout = in op inout` within one
//! process ([`oxmpi::reduce_local`], `MPI_Reduce_local`), for the builtin ops on the common
//! element types. Not an OSU test: its C counterpart, `bench/peer/reduce_local.c`, times
//! `MPI_Reduce_local` of Open MPI and MPICH the same way, and `scripts/reduce-local.sh` runs
//! the three side by side.
//!
//! Per (type, op, size), on page-aligned buffers: 10 warm-up calls, then 7 batches of calls covering about 16 MiB of
//! `inout` each; prints the best batch as MB/s (10^6 bytes of `inout` per second), so a batch
//! the host slowed down does not count. Flags: `-m [MIN:]MAX` (bytes; default 4096:1048576,
//! every 16x from MIN).

use oxmpi::{reduce_local, Op, Reducible};
use std::time::Instant;

const BATCHES: usize = 7;
const BATCH_BYTES: usize = 16 << 20;

fn sizes() -> Vec<usize> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (mut min, mut max) = (4096usize, 1 << 20);
    let usage = || -> ! {
        eprintln!("usage: reduce_local [-m [MIN:]MAX]");
        std::process::exit(2)
    };
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "-m" => {
                let v = args.get(i + 1).unwrap_or_else(|| usage());
                let num = |s: &str| s.parse::<usize>().unwrap_or_else(|_| usage());
                match v.split_once(':') {
                    Some((a, b)) => (min, max) = (num(a), num(b)),
                    None => max = num(v),
                }
                i += 2;
            }
            _ => usage(),
        }
    }
    if min == 0 || min > max {
        usage()
    }
    std::iter::successors(Some(min), |&s| s.checked_mul(16))
        .take_while(|&s| s <= max)
        .collect()
}

/// Best MB/s of `op` on `T` over buffers of `size` bytes.
fn measure<T: Reducible>(op: Op, size: usize, input: T, start: T) -> f64 {
    let n = (size / std::mem::size_of::<T>()).max(1);
    let bytes = n * std::mem::size_of::<T>();
    // Page-aligned, as the C loop's buffers (a plain Vec starts 16 bytes into a page, which
    // splits every other 32-byte load across cache lines).
    let (mut a_mem, mut b_mem) = (oxmpi_bench::buffer(bytes, 0), oxmpi_bench::buffer(bytes, 0));
    let a: &mut [T] = bytemuck::cast_slice_mut(&mut a_mem);
    a.fill(input);
    let a: &[T] = a;
    let b: &mut [T] = bytemuck::cast_slice_mut(&mut b_mem);
    b.fill(start);
    for _ in 0..10 {
        reduce_local(a, b, op).expect("a builtin op on its type");
    }
    let calls = (BATCH_BYTES / size).max(1);
    let mut best = 0f64;
    for _ in 0..BATCHES {
        let t = Instant::now();
        for _ in 0..calls {
            reduce_local(a, b, op).expect("a builtin op on its type");
        }
        best = best.max((calls * bytes) as f64 / t.elapsed().as_secs_f64() / 1e6);
    }
    std::hint::black_box(&*b);
    best
}

fn main() {
    let sizes = sizes();
    oxmpi_bench::emit_line(format_args!(
        "# oxmpi reduce_local (inout = in op inout), best of {BATCHES} batches"
    ));
    oxmpi_bench::emit_line(format_args!(
        "# {:<8} {:<5} {:>10} {:>12}",
        "type", "op", "size", "MB/s"
    ));
    macro_rules! cases {
        ($($name:literal $t:ty = ($input:expr, $start:expr): [$($op:ident),*];)*) => {$($(
            for &size in &sizes {
                let mbs = measure::<$t>(Op::$op, size, $input, $start);
                oxmpi_bench::emit_line(format_args!(
                    "{:<10} {:<5} {:>10} {:>12.1}",
                    $name,
                    stringify!($op).to_lowercase(),
                    size,
                    mbs
                ));
            }
        )*)*};
    }
    cases! {
        "float" f32 = (1.0, 2.0): [Sum, Prod, Max, Min];
        "double" f64 = (1.0, 2.0): [Sum, Prod, Max, Min];
        "int32" i32 = (1, 2): [Sum, Prod, Max, Min, Band];
        "uint32" u32 = (1, 2): [Max];
        "int64" i64 = (1, 2): [Sum, Prod, Max, Min, Bxor];
        "uint64" u64 = (1, 2): [Max];
        "int16" i16 = (1, 2): [Sum, Prod, Max];
        "uint8" u8 = (1, 2): [Sum, Prod, Max];
        "int8" i8 = (1, 2): [Sum];
    }
}
