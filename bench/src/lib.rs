//! Shared pieces of the OSU-style benchmarks: OSU's command-line flags (`-m MIN:MAX`,
//! `-i ITERS`, `-x WARMUP`, `-W WINDOW`) and its output shape ('#' header lines, then one
//! "size value" line per message size).

use std::process::exit;

/// Parsed benchmark options.
#[derive(Clone, Debug)]
pub struct Options {
    /// Smallest message size.
    pub min: usize,
    /// Largest message size.
    pub max: usize,
    /// Timed iterations for small messages (`-i`); large ones use a tenth.
    pub iters: usize,
    /// Untimed warm-up iterations (`-x`).
    pub warmup: usize,
    /// Messages in flight per window (`-W`, bandwidth tests).
    pub window: usize,
}

/// Messages above this size are "large" and run fewer iterations, as in OSU.
pub const LARGE: usize = 8192;

impl Options {
    /// Parses `std::env::args` with the given defaults; prints usage and exits on `-h` or errors.
    pub fn parse(name: &str, min: usize, iters: usize, warmup: usize) -> Self {
        let mut o = Options {
            min,
            max: 4 << 20,
            iters,
            warmup,
            window: 64,
        };
        let args: Vec<String> = std::env::args().skip(1).collect();
        let usage = || -> ! {
            eprintln!("usage: {name} [-m [MIN:]MAX] [-i ITERS] [-x WARMUP] [-W WINDOW]");
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
                "-i" | "--iterations" => o.iters = num(&value()),
                "-x" | "--warmup" => o.warmup = num(&value()),
                "-W" | "--window-size" => o.window = num(&value()).max(1),
                _ => usage(),
            }
            i += 1;
        }
        if o.min > o.max {
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

    /// (timed iterations, warm-up iterations) for a message size.
    pub fn iters_for(&self, size: usize) -> (usize, usize) {
        if size > LARGE {
            ((self.iters / 10).max(10), (self.warmup / 10).max(2))
        } else {
            (self.iters, self.warmup)
        }
    }

    /// Like [`Options::iters_for`], cut further for large messages as OSU's bandwidth tests do.
    pub fn bw_iters_for(&self, size: usize) -> (usize, usize) {
        let (iters, warmup) = self.iters_for(size);
        let iters = if size > LARGE {
            (iters * 2 / 10).max(10)
        } else {
            iters
        };
        (iters, warmup)
    }
}

/// Prints the OSU-style header lines.
pub fn header(title: &str, column: &str) {
    println!("# {title}");
    println!(
        "# oxmpi {} (OSU-style benchmark)",
        env!("CARGO_PKG_VERSION")
    );
    println!("# Size{column:>24}");
}

/// Prints one result line.
pub fn line(size: usize, value: f64) {
    println!("{size:<10}{value:>18.2}");
}

/// A page-aligned-enough, touched buffer of `n` bytes.
pub fn buffer(n: usize, fill: u8) -> Vec<u8> {
    vec![fill; n.max(1)]
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
