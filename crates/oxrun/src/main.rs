//! `oxrun`: starts an oxmpi job on this machine.
//!
//! It serves the key-value exchange the ranks wire up through, spawns `-n` copies of the
//! program with the environment contract of `oxmpi_bootstrap::env` (including a fresh random
//! job secret), forwards their output (optionally tagged with the rank) and signals (SIGUSR1 and
//! SIGUSR2 as they are; SIGINT, SIGTERM and SIGHUP end the job with SIGTERM, then SIGKILL), and
//! watches them: the first rank to fail — non-zero exit, death by signal, an
//! abort call, or a bootstrap timeout — brings the job down within a second, is named on
//! stderr, and decides `oxrun`'s exit code.
#![forbid(unsafe_code)]

use clap::{Parser, ValueEnum};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use oxmpi_bootstrap::env as contract;
use oxmpi_bootstrap::kvs::KvsEvent;
use oxmpi_bootstrap::{KvsServer, Secret};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1, SIGUSR2};
use signal_hook::iterator::Signals;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Bind {
    /// Rank r runs on CPU r modulo the CPUs available.
    Core,
    /// Leave placement to the kernel.
    None,
}

/// Start an oxmpi job: N copies of PROGRAM wired together.
#[derive(Parser, Debug)]
#[command(name = "oxrun", version, about, trailing_var_arg = true)]
struct Args {
    /// Number of ranks.
    #[arg(short = 'n', long = "np", default_value_t = 1)]
    n: u32,
    /// Prefix every output line with [1,RANK]<stdout|stderr>:.
    #[arg(long)]
    tag_output: bool,
    /// Pin ranks to cores.
    #[arg(long, value_enum, default_value_t = Bind::None)]
    bind_to: Bind,
    /// Seconds every rank has to reach the key-value service once one has (bootstrap timeout).
    #[arg(long, default_value_t = 60.0)]
    boot_timeout: f64,
    /// Print the collective selection table in effect (OXMPI_COLL_TABLE, OXMPI_COLL_<NAME>)
    /// and the registered algorithms, then exit.
    #[arg(long)]
    coll_table: bool,
    /// Print which fabrics this machine offers (shared memory, RDMA devices, libfabric
    /// providers, TCP) and which `OXMPI_FABRIC=auto` would use, then exit.
    #[arg(long)]
    fabric_info: bool,
    /// The program and its arguments.
    #[arg(
        required_unless_present_any = ["coll_table", "fabric_info"],
        num_args = 1..,
        allow_hyphen_values = true
    )]
    command: Vec<String>,
}

struct Rank {
    child: Child,
    done: Option<ExitStatus>,
}

fn forward(
    rank: u32,
    src: impl Read + Send + 'static,
    to_stderr: bool,
    tag: bool,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(src);
        let mut line = Vec::new();
        let prefix = format!(
            "[1,{rank}]<{}>: ",
            if to_stderr { "stderr" } else { "stdout" }
        );
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            // Write whole lines under the lock so ranks' lines never interleave.
            let res = if to_stderr {
                let mut e = std::io::stderr().lock();
                (if tag {
                    e.write_all(prefix.as_bytes())
                } else {
                    Ok(())
                })
                .and_then(|_| e.write_all(&line))
            } else {
                let mut o = std::io::stdout().lock();
                (if tag {
                    o.write_all(prefix.as_bytes())
                } else {
                    Ok(())
                })
                .and_then(|_| o.write_all(&line))
                .and_then(|_| o.flush())
            };
            if res.is_err() {
                return;
            }
        }
    })
}

fn describe(st: ExitStatus) -> (String, i32) {
    match (st.code(), st.signal()) {
        (Some(c), _) => (format!("exited with code {c}"), c),
        (None, Some(s)) => {
            let name = Signal::try_from(s)
                .map(|s| s.as_str().to_string())
                .unwrap_or_else(|_| s.to_string());
            (format!("was killed by signal {name}"), 128 + s)
        }
        _ => ("ended".to_string(), 1),
    }
}

fn signal_all(ranks: &[Rank], sig: Signal) {
    for r in ranks.iter().filter(|r| r.done.is_none()) {
        let _ = kill(Pid::from_raw(r.child.id() as i32), sig);
    }
}

/// Terminates the ranks still running: SIGTERM, then SIGKILL for those alive after 500 ms.
fn terminate(ranks: &mut [Rank]) {
    signal_all(ranks, Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_millis(500);
    while Instant::now() < deadline && reap(ranks) {
        std::thread::sleep(Duration::from_millis(5));
    }
    signal_all(ranks, Signal::SIGKILL);
    for r in ranks.iter_mut().filter(|r| r.done.is_none()) {
        r.done = r.child.wait().ok();
    }
}

/// Collects exits; true while some rank still runs.
fn reap(ranks: &mut [Rank]) -> bool {
    for r in ranks.iter_mut().filter(|r| r.done.is_none()) {
        if let Ok(Some(st)) = r.child.try_wait() {
            r.done = Some(st);
        }
    }
    ranks.iter().any(|r| r.done.is_none())
}

fn cleanup_segments(job: &str) {
    let prefix = format!("oxmpi-{job}-");
    if let Ok(dir) = std::fs::read_dir("/dev/shm") {
        for e in dir.flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

fn run(args: Args) -> i32 {
    if args.n == 0 {
        eprintln!("oxrun: -n must be at least 1");
        return 2;
    }
    let secret = Secret::random();
    let mut job_bytes = [0u8; 6];
    oxmpi_bootstrap::auth::fill_random(&mut job_bytes);
    let job: String = job_bytes.iter().map(|b| format!("{b:02x}")).collect();
    let kvs = match KvsServer::start(args.n, secret.clone(), "127.0.0.1:0") {
        Ok(k) => k,
        Err(e) => {
            eprintln!("oxrun: cannot start the key-value service: {e}");
            return 1;
        }
    };
    let mut signals = Signals::new([SIGINT, SIGTERM, SIGHUP, SIGUSR1, SIGUSR2]).ok();
    let cpus = allowed_cpus();
    let mut ranks = Vec::new();
    let mut pumps = Vec::new();
    for r in 0..args.n {
        let mut cmd = Command::new(&args.command[0]);
        cmd.args(&args.command[1..])
            .env(contract::RANK, r.to_string())
            .env(contract::SIZE, args.n.to_string())
            .env(contract::KVS, kvs.addr().to_string())
            .env(contract::SECRET, secret.to_hex())
            .env(contract::JOB, &job)
            .env(contract::BOOT_TIMEOUT, args.boot_timeout.to_string())
            .stdin(if r == 0 {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if args.bind_to == Bind::Core {
            cmd.env("OXMPI_BIND_CPU", cpus[r as usize % cpus.len()].to_string());
        }
        match cmd.spawn() {
            Ok(mut child) => {
                pumps.push(forward(
                    r,
                    child.stdout.take().expect("piped"),
                    false,
                    args.tag_output,
                ));
                pumps.push(forward(
                    r,
                    child.stderr.take().expect("piped"),
                    true,
                    args.tag_output,
                ));
                ranks.push(Rank { child, done: None });
            }
            Err(e) => {
                eprintln!(
                    "oxrun: cannot start {:?} for rank {r}: {e}",
                    args.command[0]
                );
                terminate(&mut ranks);
                return 127;
            }
        }
    }

    let start = Instant::now();
    let boot = Duration::from_secs_f64(args.boot_timeout);
    let mut connected = vec![false; args.n as usize];
    let mut code = 0;
    loop {
        while let Ok(ev) = kvs.events().try_recv() {
            report(ev, &mut connected, &mut code);
        }
        let pending: Vec<i32> = signals
            .as_mut()
            .map(|s| s.pending().collect())
            .unwrap_or_default();
        for sig in pending {
            if sig == SIGUSR1 || sig == SIGUSR2 {
                // Forwarded as they are: programs use them for checkpoints and reports.
                if let Ok(s) = Signal::try_from(sig) {
                    signal_all(&ranks, s);
                }
            } else {
                eprintln!("oxrun: received signal {sig}; terminating the job");
                code = 128 + sig;
            }
        }
        if code != 0 {
            break;
        }
        let running = reap(&mut ranks);
        if let Some((r, st)) = ranks
            .iter()
            .enumerate()
            .find_map(|(i, r)| r.done.filter(|s| !s.success()).map(|s| (i, s)))
        {
            let (what, c) = describe(st);
            eprintln!(
                "oxrun: rank {r} (pid {}) {what}; terminating the job",
                ranks[r].child.id()
            );
            code = c;
            break;
        }
        if !running {
            break;
        }
        if connected.iter().any(|c| *c) && !connected.iter().all(|c| *c) && start.elapsed() > boot {
            let missing: Vec<usize> = (0..connected.len()).filter(|&i| !connected[i]).collect();
            eprintln!(
                "oxrun: bootstrap timeout: rank(s) {missing:?} did not reach the key-value service within {:.0} s; terminating the job",
                boot.as_secs_f64()
            );
            code = 1;
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    terminate(&mut ranks);
    // Refusals (or aborts) the service saw just before the ranks ended are still reported.
    while let Ok(ev) = kvs.events().try_recv() {
        report(ev, &mut connected, &mut code);
    }
    // Drain the ranks' last output; a pipe kept open by a stray grandchild is not waited for.
    let deadline = Instant::now() + Duration::from_secs(1);
    while Instant::now() < deadline && !pumps.iter().all(JoinHandle::is_finished) {
        std::thread::sleep(Duration::from_millis(2));
    }
    for p in pumps.into_iter().filter(JoinHandle::is_finished) {
        let _ = p.join();
    }
    cleanup_segments(&job);
    code
}

/// Prints what the key-value service saw and folds an abort into the job's exit `code`.
fn report(ev: KvsEvent, connected: &mut [bool], code: &mut i32) {
    match ev {
        KvsEvent::Connected(r) => connected[r as usize] = true,
        KvsEvent::Refused { peer, why } => {
            eprintln!("oxrun: refused a connection to the key-value service from {peer}: {why}")
        }
        KvsEvent::Abort { rank, code: c, msg } => {
            eprintln!("oxrun: rank {rank} called abort with code {c} ({msg}); terminating the job");
            if *code == 0 {
                *code = if c == 0 { 1 } else { c };
            }
        }
    }
}

/// Runs `oxmpi-fabric-info` (built with the fabric crate, next to `oxrun`) and returns its exit
/// code. `oxrun` itself does not link the fabrics: libfabric's dependencies install signal
/// handlers that would change how `oxrun` ends on SIGTERM.
fn fabric_info() -> i32 {
    const TOOL: &str = "oxmpi-fabric-info";
    let beside = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join(TOOL)))
        .filter(|p| p.exists());
    let program = beside.unwrap_or_else(|| TOOL.into());
    match Command::new(&program).status() {
        Ok(st) => st.code().unwrap_or(1),
        Err(e) => {
            eprintln!(
                "oxrun: --fabric-info runs {TOOL}, which could not be started ({e}); build it \
                 with `cargo build --release -p oxmpi-fabric --bins --features ofi,verbs`"
            );
            2
        }
    }
}

fn main() {
    let args = Args::parse();
    if args.fabric_info {
        std::process::exit(fabric_info());
    }
    if args.coll_table {
        match oxmpi_collectives::Table::from_env() {
            Ok(t) => {
                print!("{}", t.describe());
                std::process::exit(0);
            }
            Err(e) => {
                eprintln!("oxrun: {e}");
                std::process::exit(2);
            }
        }
    }
    std::process::exit(run(args));
}

/// The CPUs this process may run on (its affinity mask, as `taskset` or a container's cpuset
/// leaves it), in order: `--bind-to core` pins rank `r` to the `r mod n`-th of them.
fn allowed_cpus() -> Vec<usize> {
    let cpus: Vec<usize> = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0))
        .map(|set| {
            (0..nix::sched::CpuSet::count())
                .filter(|&c| set.is_set(c).unwrap_or(false))
                .collect()
        })
        .unwrap_or_default();
    if cpus.is_empty() {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        (0..n).collect()
    } else {
        cpus
    }
}
