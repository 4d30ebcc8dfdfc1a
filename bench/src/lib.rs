//! Shared pieces of the OSU-style benchmarks: OSU's command-line flags (`-m MIN:MAX`,
//! `-i ITERS`, `-x WARMUP`, `-W WINDOW`; `-f` for the collective tests, `-t CALLS` for the
//! nonblocking ones) and its output shape ('#' header lines, then one "size value" line per
//! message size); for the collective tests also OSU's timing loop, its average, minimum and
//! maximum over the ranks, and its overlap figure for nonblocking collectives.

use oxmpi::{Communicator, Error, Op};
use std::hint::black_box;
use std::process::exit;
use std::time::{Duration, Instant};

/// Prints one line of results; a closed stdout (`osu_latency | head`) ends the process
/// quietly with the shell's SIGPIPE status instead of panicking.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::emit_line(format_args!($($arg)*))
    };
}

#[doc(hidden)]
pub fn emit_line(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    if writeln!(stdout, "{args}")
        .and_then(|()| stdout.flush())
        .is_err()
    {
        std::process::exit(141);
    }
}

/// Parsed benchmark options.
#[derive(Clone, Debug)]
pub struct Options {
    /// Smallest message size.
    pub min: usize,
    /// Largest message size.
    pub max: usize,
    /// Timed iterations (`-i`). Without `-i`, large messages run a tenth of the default, as
    /// OSU's do; `-i` sets the count for every size, as OSU's does.
    pub iters: usize,
    /// Untimed warm-up iterations (`-x`; without it large messages run a tenth, as above).
    pub warmup: usize,
    /// `-i` was given: `iters` holds for large messages too.
    pub iters_given: bool,
    /// `-x` was given: `warmup` holds for large messages too.
    pub warmup_given: bool,
    /// Messages in flight per window (`-W`, bandwidth tests).
    pub window: usize,
    /// Also print the minimum and maximum latency over the ranks and the iteration count
    /// (`-f`, collective tests).
    pub full: bool,
    /// Tests of the request spread over the dummy compute (`-t`, nonblocking collective
    /// tests; 0: none, the default).
    pub test_calls: usize,
}

/// Which flags a benchmark takes besides `-m`, `-i` and `-x`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flags {
    /// `-W WINDOW`.
    PointToPoint,
    /// `-f`.
    Collective,
    /// `-f`, `-t CALLS`.
    Nonblocking,
}

/// Messages above this size are "large" and run fewer iterations, as in OSU.
pub const LARGE: usize = 8192;

impl Options {
    /// Parses `std::env::args` with the given defaults; prints usage and exits on `-h` or errors.
    /// The point-to-point tests' flags: `-m`, `-i`, `-x`, `-W`.
    pub fn parse(name: &str, min: usize, iters: usize, warmup: usize) -> Self {
        Self::parse_flags(name, min, iters, warmup, Flags::PointToPoint)
    }

    /// Like [`Options::parse`], with the collective tests' flags: `-m`, `-i`, `-x`, `-f`.
    pub fn parse_collective(name: &str, min: usize, iters: usize, warmup: usize) -> Self {
        Self::parse_flags(name, min, iters, warmup, Flags::Collective)
    }

    /// Like [`Options::parse`], with the nonblocking collective tests' flags: `-m`, `-i`, `-x`,
    /// `-f`, `-t CALLS`.
    pub fn parse_nonblocking(name: &str, min: usize, iters: usize, warmup: usize) -> Self {
        Self::parse_flags(name, min, iters, warmup, Flags::Nonblocking)
    }

    fn parse_flags(name: &str, min: usize, iters: usize, warmup: usize, flags: Flags) -> Self {
        let mut o = Options {
            min,
            max: 4 << 20,
            iters,
            warmup,
            iters_given: false,
            warmup_given: false,
            window: 64,
            full: false,
            test_calls: 0,
        };
        let args: Vec<String> = std::env::args().skip(1).collect();
        let usage = || -> ! {
            let extra = match flags {
                Flags::PointToPoint => " [-W WINDOW]",
                Flags::Collective => " [-f]",
                Flags::Nonblocking => " [-f] [-t CALLS]",
            };
            eprintln!("usage: {name} [-m [MIN:]MAX] [-i ITERS] [-x WARMUP]{extra}");
            exit(2)
        };
        let num = |s: &str| s.parse::<usize>().unwrap_or_else(|_| usage());
        let mut i = 0;
        while i < args.len() {
            let (flag, inline) = match args[i].as_str() {
                a if a.len() > 2 && a.starts_with('-') && !a.starts_with("--") => {
                    (&a[..2], Some(&a[2..]))
                }
                a => (a, None),
            };
            if flag == "-f" || flag == "--full" {
                if flags == Flags::PointToPoint || inline.is_some() {
                    usage();
                }
                o.full = true;
                i += 1;
                continue;
            }
            let mut value = || -> String {
                if let Some(v) = inline {
                    return v.to_string();
                }
                i += 1;
                args.get(i).cloned().unwrap_or_else(|| usage())
            };
            match flag {
                "-m" | "--message-size" => {
                    let v = value();
                    match v.split_once(':') {
                        Some((a, b)) => {
                            if !a.is_empty() {
                                o.min = num(a);
                            }
                            if !b.is_empty() {
                                o.max = num(b);
                            }
                        }
                        None => o.max = num(&v),
                    }
                }
                "-i" | "--iterations" => {
                    o.iters = num(&value());
                    o.iters_given = true;
                }
                "-x" | "--warmup" => {
                    o.warmup = num(&value());
                    o.warmup_given = true;
                }
                "-W" | "--window-size" if flags == Flags::PointToPoint => {
                    o.window = num(&value()).max(1)
                }
                "-t" | "--num_test_calls" if flags == Flags::Nonblocking => {
                    o.test_calls = num(&value())
                }
                _ => usage(),
            }
            i += 1;
        }
        if o.min > o.max || (flags != Flags::PointToPoint && o.iters == 0) {
            usage();
        }
        o
    }

    /// Message sizes: `min` (or 0), then powers of two up to `max`.
    pub fn sizes(&self) -> Vec<usize> {
        let mut v = Vec::new();
        if self.min == 0 {
            v.push(0);
        }
        let mut s = self.min.max(1).next_power_of_two();
        if self.min > 0 && !self.min.is_power_of_two() {
            v.push(self.min);
        }
        while s <= self.max {
            v.push(s);
            s *= 2;
        }
        v
    }

    /// The sizes of a test on `elem`-byte elements (the reduction tests, on `f32`):
    /// [`Options::sizes`] rounded down to whole elements, leaving out 0 and repeats.
    pub fn elem_sizes(&self, elem: usize) -> Vec<usize> {
        let mut v: Vec<usize> = self
            .sizes()
            .into_iter()
            .map(|s| s / elem * elem)
            .filter(|&s| s > 0)
            .collect();
        v.dedup();
        v
    }

    /// (timed iterations, warm-up iterations) for a message size: large messages run a
    /// tenth of the defaults, and what `-i` and `-x` set holds for every size (OSU's
    /// `iterations_large` and `skip_large`).
    pub fn iters_for(&self, size: usize) -> (usize, usize) {
        let large = size > LARGE;
        (
            if large && !self.iters_given {
                (self.iters / 10).max(10)
            } else {
                self.iters
            },
            if large && !self.warmup_given {
                (self.warmup / 10).max(2)
            } else {
                self.warmup
            },
        )
    }

    /// Like [`Options::iters_for`], cut further for large messages without `-i`, as OSU's
    /// bandwidth tests' defaults are.
    pub fn bw_iters_for(&self, size: usize) -> (usize, usize) {
        let (iters, warmup) = self.iters_for(size);
        let iters = if size > LARGE && !self.iters_given {
            (iters * 2 / 10).max(10)
        } else {
            iters
        };
        (iters, warmup)
    }
}

/// Prints the OSU-style header lines.
pub fn header(title: &str, column: &str) {
    out!("# {title}");
    out!(
        "# oxmpi {} (OSU-style benchmark)",
        env!("CARGO_PKG_VERSION")
    );
    out!("# Size{column:>24}");
}

/// Prints one result line.
pub fn line(size: usize, value: f64) {
    out!("{size:<10}{value:>18.2}");
}

/// Alignment of [`buffer`]s: a page, as the C peer loops' `page_buffer`.
const PAGE: usize = 4096;

/// A touched buffer of `n` bytes (at least 1) that starts on a page boundary, as the C peer
/// loops' buffers do: a plain `Vec` of this size starts 16 bytes into a page, and the kernel's
/// copies (`process_vm_readv`, sockets) run slower on such misaligned memory.
pub fn buffer(n: usize, fill: u8) -> PageBuffer {
    let len = n.max(1);
    let mem = vec![fill; len + PAGE];
    let start = mem.as_ptr().align_offset(PAGE).min(PAGE);
    PageBuffer { mem, start, len }
}

/// See [`buffer`]: derefs to its `len` page-aligned bytes.
pub struct PageBuffer {
    mem: Vec<u8>,
    start: usize,
    len: usize,
}

impl std::ops::Deref for PageBuffer {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.mem[self.start..self.start + self.len]
    }
}

impl std::ops::DerefMut for PageBuffer {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.mem[self.start..self.start + self.len]
    }
}

/// Exits (non-zero, with a message from rank 0) unless `ok`: the benchmark needs `what`.
pub fn require(world: &oxmpi::Communicator, name: &str, ok: bool, what: &str) {
    if !ok {
        if world.rank() == 0 {
            eprintln!("{name} needs {what}");
        }
        std::process::exit(1);
    }
}

// ---- collectives ------------------------------------------------------------------------------
//
// OSU's collective latency tests: per size, a barrier, then warm-up + timed calls, each call
// timed on its own and followed by an untimed barrier; a rank's latency is its timed total over
// the timed calls; rank 0 prints the average over the ranks (with `-f` also the minimum, maximum
// and iteration count), from three reductions of the per-rank figures.

/// Prints (at rank 0) a collective latency test's header: the title, the library and the rank
/// count, then `# Size  Avg Latency(us)` (OSU's `%-10s%18s`; with `-f` also Min, Max,
/// Iterations). `sized`: false for a test without message sizes (`osu_barrier`).
pub fn header_collective(world: &Communicator, title: &str, opts: &Options, sized: bool) {
    if world.rank() != 0 {
        return;
    }
    out!("# {title}");
    out!(
        "# oxmpi {} (OSU-style benchmark), {} ranks",
        env!("CARGO_PKG_VERSION"),
        world.size()
    );
    let mut columns = if sized {
        format!("{:<10}{:>18}", "# Size", "Avg Latency(us)")
    } else {
        "# Avg Latency(us)".to_string()
    };
    if opts.full {
        columns += &format!(
            "{:>18}{:>18}{:>12}",
            "Min Latency(us)", "Max Latency(us)", "Iterations"
        );
    }
    out!("{columns}");
}

/// OSU's collective timing loop: `warmup` + `iters` calls of `op`, each timed on its own and
/// followed by an untimed barrier. Returns this rank's microseconds per timed call.
pub fn time_collective(
    world: &Communicator,
    iters: usize,
    warmup: usize,
    mut op: impl FnMut() -> Result<(), Error>,
) -> Result<f64, Error> {
    let mut total = Duration::ZERO;
    for i in 0..warmup + iters {
        let start = Instant::now();
        op()?;
        let took = start.elapsed();
        if i >= warmup {
            total += took;
        }
        world.barrier()?;
    }
    Ok(total.as_secs_f64() * 1e6 / iters.max(1) as f64)
}

/// Reduces this rank's latency `us` to the average, minimum and maximum over the ranks and
/// prints one line at rank 0 (`size` `None`: no size column, as `osu_barrier`). Collective:
/// every rank calls it.
pub fn report_collective(
    world: &Communicator,
    size: Option<usize>,
    us: f64,
    iters: usize,
    full: bool,
) -> Result<(), Error> {
    let (mut min, mut max, mut sum) = ([0f64], [0f64], [0f64]);
    world.reduce(&[us], &mut min, Op::Min, 0)?;
    world.reduce(&[us], &mut max, Op::Max, 0)?;
    world.reduce(&[us], &mut sum, Op::Sum, 0)?;
    if world.rank() != 0 {
        return Ok(());
    }
    let avg = sum[0] / world.size() as f64;
    let mut out = match size {
        Some(size) => format!("{size:<10}{avg:>18.2}"),
        None => format!("{avg:>17.2}"),
    };
    if full {
        out += &format!("{:>18.2}{:>18.2}{iters:>12}", min[0], max[0]);
    }
    out!("{out}");
    Ok(())
}

/// One message size of a collective latency test: its iteration counts, a barrier, the timing
/// loop around `op` ([`time_collective`]) and the report ([`report_collective`]).
pub fn collective_latency(
    world: &Communicator,
    opts: &Options,
    size: usize,
    op: impl FnMut() -> Result<(), Error>,
) -> Result<(), Error> {
    let (iters, warmup) = opts.iters_for(size);
    world.barrier()?;
    let us = time_collective(world, iters, warmup, op)?;
    report_collective(world, Some(size), us, iters, opts.full)
}

// ---- nonblocking collectives --------------------------------------------------------------------
//
// OSU's overlap test: first the pure communication time (start + wait, timed as above), then
// start + a dummy compute lasting about that long (with `-t CALLS` cut into CALLS pieces with a
// test of the request after each) + wait. Overall = init + compute + tests + wait; compute
// excludes the tests; overlap = max(0, 100 - (overall - compute) / pure comm * 100).

/// This rank's totals over the timed iterations of an overlap loop.
#[derive(Clone, Copy, Debug, Default)]
pub struct NbcTimes {
    /// Start to completion: init + compute + tests + wait.
    pub overall: Duration,
    /// The dummy compute, tests excluded.
    pub compute: Duration,
    /// Starting the collective.
    pub init: Duration,
    /// The tests made during the compute.
    pub test: Duration,
    /// The wait after the compute.
    pub wait: Duration,
}

const DIM: usize = 25;

/// OSU's dummy compute: sweeps over a small dense matrix until the requested time has passed.
#[derive(Clone, Debug)]
pub struct DummyCompute {
    a: [[f32; DIM]; DIM],
    x: [f32; DIM],
    y: [f32; DIM],
}

impl Default for DummyCompute {
    fn default() -> Self {
        DummyCompute {
            a: [[2.0; DIM]; DIM],
            x: [1.0; DIM],
            y: [1.0; DIM],
        }
    }
}

impl DummyCompute {
    fn step(&mut self) {
        for i in 0..DIM {
            for j in 0..DIM {
                self.x[i] += self.a[i][j] * self.a[j][i] + self.y[j];
            }
        }
        black_box(&mut self.x);
    }

    /// Computes for `target` (in `test_calls` pieces, each followed by a call of `test`, when
    /// `test_calls` > 0); returns the time spent in `test`.
    pub fn run(
        &mut self,
        target: Duration,
        test_calls: usize,
        mut test: impl FnMut() -> Result<(), Error>,
    ) -> Result<Duration, Error> {
        let pieces = test_calls.max(1);
        let piece = target / pieces as u32;
        let mut tested = Duration::ZERO;
        for _ in 0..pieces {
            let start = Instant::now();
            while start.elapsed() < piece {
                self.step();
            }
            if test_calls > 0 {
                let t = Instant::now();
                test()?;
                tested += t.elapsed();
            }
        }
        Ok(tested)
    }
}

/// Prints (at rank 0) a nonblocking collective test's header (OSU's columns; `-f` adds
/// Coll. Init, MPI_Test and MPI_Wait).
pub fn header_nonblocking(world: &Communicator, title: &str, opts: &Options) {
    if world.rank() != 0 {
        return;
    }
    out!("# {title}");
    out!(
        "# oxmpi {} (OSU-style benchmark), {} ranks",
        env!("CARGO_PKG_VERSION"),
        world.size()
    );
    out!("# Overall = Coll. Init + Compute + MPI_Test + MPI_Wait");
    let mut columns = format!("{:<10}{:>18}{:>18}", "# Size", "Overall(us)", "Compute(us)");
    if opts.full {
        columns += &format!(
            "{:>18}{:>18}{:>18}",
            "Coll. Init(us)", "MPI_Test(us)", "MPI_Wait(us)"
        );
    }
    columns += &format!("{:>18}{:>18}", "Pure Comm.(us)", "Overlap(%)");
    out!("{columns}");
}

/// Averages every figure over the ranks (a sum reduction to rank 0) and prints one line there.
/// `comm_us`: this rank's pure communication latency; `t`: this rank's totals over `iters`.
/// Collective: every rank calls it.
pub fn report_nonblocking(
    world: &Communicator,
    size: usize,
    comm_us: f64,
    t: &NbcTimes,
    iters: usize,
    full: bool,
) -> Result<(), Error> {
    let per = |d: Duration| d.as_secs_f64() * 1e6 / iters.max(1) as f64;
    let mine = [
        per(t.overall),
        per(t.compute),
        per(t.init),
        per(t.test),
        per(t.wait),
        comm_us,
    ];
    let mut sum = [0f64; 6];
    world.reduce(&mine, &mut sum, Op::Sum, 0)?;
    if world.rank() != 0 {
        return Ok(());
    }
    let [overall, compute, init, test, wait, comm] = sum.map(|x| x / world.size() as f64);
    let overlap = if comm > 0.0 {
        (100.0 - (overall - compute) / comm * 100.0).max(0.0)
    } else {
        0.0
    };
    let mut out = format!("{size:<10}{overall:>18.2}{compute:>18.2}");
    if full {
        out += &format!("{init:>18.2}{test:>18.2}{wait:>18.2}");
    }
    out += &format!("{comm:>18.2}{overlap:>18.2}");
    out!("{out}");
    Ok(())
}
