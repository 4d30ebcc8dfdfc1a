//! The rank program of the end-to-end tests (`crates/oxmpi/tests/oxrun_p2p.rs`): each scenario
//! checks its own results and exits non-zero (panics) on any mismatch, so a test passes only if
//! `oxrun` exits 0.
//!
//! Usage: `oxrun -n N suite SCENARIO...` with scenarios `flood`, `wildcard`, `zero_self`,
//! `sizes`, `matched_probe`, `shared_send`, `truncate`, `invalid`, `big`, `secret`, `libraries`
//! (prints whether
//! libfabric is loaded), the failures `exit3`, `die_in_copy`, `sigabrt`, `panic_in_scope` and
//! `abort`, or `all`
//! (every checking scenario).

use oxmpi::{Communicator, Error, ANY_SOURCE, ANY_TAG};

const FLOOD_TOTAL: u32 = 100_000;

fn word(src: u32, k: u32) -> u64 {
    ((src as u64) << 32) | k as u64
}

/// Message k from src: small most of the time, sometimes past the eager limit.
fn flood_len(k: u32) -> usize {
    match k % 997 {
        0 => 100_000,
        1 => 20_000,
        _ => 1 + (k % 7) as usize,
    }
}

fn flood(w: &Communicator) -> Result<(), Error> {
    let n = w.size();
    if n < 2 {
        return Ok(());
    }
    let per = FLOOD_TOTAL / (n - 1);
    if w.rank() != 0 {
        for k in 0..per {
            let v = vec![word(w.rank(), k); flood_len(k)];
            w.send(&v, 0, (k % 5) as i32)?;
        }
    } else {
        let mut buf = vec![0u64; 100_000];
        for k in 0..per {
            for s in 1..n {
                let st = w.recv_into(&mut buf, s, (k % 5) as i32)?;
                let got = st.count::<u64>()? as usize;
                assert_eq!(got, flood_len(k), "length of message {k} from {s}");
                assert!(
                    buf[..got].iter().all(|&x| x == word(s, k)),
                    "content of message {k} from {s}"
                );
            }
        }
    }
    w.barrier()
}

fn wildcard(w: &Communicator) -> Result<(), Error> {
    let n = w.size();
    let per = 2000;
    if w.rank() != 0 {
        for k in 0..per {
            w.send(&[word(w.rank(), k)], 0, (k % 3) as i32)?;
        }
        // After everyone's stream is drained: ANY_TAG with a specific source, then
        // ANY_SOURCE with a specific tag.
        w.barrier()?;
        w.send(&[1u8], 0, 100)?;
        w.send(&[2u8], 0, 200)?;
    } else {
        let mut next = vec![0u32; n as usize];
        for _ in 0..per * (n - 1) {
            let mut x = [0u64];
            let st = w.recv_into(&mut x, ANY_SOURCE, ANY_TAG)?;
            let k = next[st.source as usize];
            assert_eq!(
                x[0],
                word(st.source, k),
                "non-overtaking order from {}",
                st.source
            );
            assert_eq!(st.tag, (k % 3) as i32);
            next[st.source as usize] += 1;
        }
        w.barrier()?;
        for s in 1..n {
            let (v, st) = w.recv_vec::<u8>(s, ANY_TAG)?;
            assert_eq!((v, st.tag), (vec![1u8], 100));
        }
        for _ in 1..n {
            let (v, st) = w.recv_vec::<u8>(ANY_SOURCE, 200)?;
            assert_eq!((v, st.tag), (vec![2u8], 200));
        }
        assert!(w.iprobe(ANY_SOURCE, ANY_TAG)?.is_none());
    }
    w.barrier()
}

/// Message lengths in bytes around the fabrics' limits: frame heads, inject sizes (the ofi
/// backend's 4 KiB cap and the shm provider's 4 KiB, with the split frames just within it), the
/// eager limits (16 and 64 KiB), frame payloads and rendezvous.
const SIZES: &[usize] = &[
    0, 1, 55, 56, 57, 1023, 1024, 1025, 1080, 4039, 4040, 4041, 4095, 4096, 4097, 8191, 8192,
    16383, 16384, 16385, 32768, 65535, 65536, 65537, 200_000,
];

fn sized(src: u32, k: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i * 31 + k * 7 + src as usize * 13) as u8)
        .collect()
}

/// Every rank sends every length in [`SIZES`] to every other rank, all in flight at once,
/// and receives theirs in order, checking each byte.
fn sizes(w: &Communicator) -> Result<(), Error> {
    let (me, n) = (w.rank(), w.size());
    let out: Vec<Vec<u8>> = (0..SIZES.len()).map(|k| sized(me, k, SIZES[k])).collect();
    let mut inbox = vec![0u8; *SIZES.iter().max().expect("sizes")];
    w.scope(|s| -> Result<(), Error> {
        let mut reqs = Vec::new();
        for p in (0..n).filter(|&p| p != me) {
            for (k, m) in out.iter().enumerate() {
                reqs.push(s.isend(m, p, 20 + (k % 3) as i32)?);
            }
        }
        for p in (0..n).filter(|&p| p != me) {
            for (k, &len) in SIZES.iter().enumerate() {
                let st = w.recv_into(&mut inbox, p, 20 + (k % 3) as i32)?;
                assert_eq!(st.bytes, len as u64, "length of message {k} from {p}");
                assert!(
                    inbox[..len] == sized(p, k, len)[..],
                    "content of the {len}-byte message from {p}"
                );
            }
        }
        oxmpi::wait_all(&mut reqs)?;
        Ok(())
    })?;
    w.barrier()
}

/// Every other rank sends every length in [`SIZES`] to rank 0, which takes them with matched
/// probes on wildcards: per sender in order, each received into a vector of exactly its
/// probed length, every fifth dropped unreceived (discarded; its sender still completes).
fn matched_probe(w: &Communicator) -> Result<(), Error> {
    let (me, n) = (w.rank(), w.size());
    if me != 0 {
        for (k, &len) in SIZES.iter().enumerate() {
            w.send(&sized(me, k, len), 0, k as i32)?;
        }
    } else {
        let mut next = vec![0usize; n as usize];
        for _ in 0..SIZES.len() * (n as usize - 1) {
            let m = w.mprobe(ANY_SOURCE, ANY_TAG)?;
            let st = m.status();
            let k = next[st.source as usize];
            next[st.source as usize] += 1;
            assert_eq!(
                (st.tag, st.bytes),
                (k as i32, SIZES[k] as u64),
                "from {}",
                st.source
            );
            if k % 5 == 4 {
                drop(m);
                continue;
            }
            let (v, got) = m.recv_vec::<u8>()?;
            assert_eq!((got.source, got.tag), (st.source, st.tag));
            assert!(
                v == sized(st.source, k, SIZES[k]),
                "message {k} from {}",
                st.source
            );
        }
        assert!(w.improbe(ANY_SOURCE, ANY_TAG)?.is_none());
    }
    w.barrier()
}

/// The bandwidth benchmarks' pattern: one buffer sent several times at once to the same peer
/// (shared borrows overlap), received into separate buffers, at every protocol's sizes.
fn shared_send(w: &Communicator) -> Result<(), Error> {
    const COPIES: usize = 8;
    let (me, n) = (w.rank(), w.size());
    for (k, &len) in [1usize, 4096, 4096 + 1, 16384, 65536, 1 << 20]
        .iter()
        .enumerate()
    {
        let out = sized(me, k, len);
        let mut inbox = vec![vec![0u8; len]; COPIES];
        let (to, from) = ((me + 1) % n, (me + n - 1) % n);
        w.scope(|s| -> Result<(), Error> {
            let mut reqs = Vec::new();
            for b in inbox.iter_mut() {
                reqs.push(s.irecv(&mut b[..], from, 30)?);
            }
            for _ in 0..COPIES {
                reqs.push(s.isend(&out, to, 30)?);
            }
            oxmpi::wait_all(&mut reqs)?;
            Ok(())
        })?;
        let want = sized(from, k, len);
        for (c, b) in inbox.iter().enumerate() {
            assert!(*b == want, "copy {c} of the {len}-byte message from {from}");
        }
    }
    w.barrier()
}

fn zero_self(w: &Communicator) -> Result<(), Error> {
    let (me, n) = (w.rank(), w.size());
    // Zero-byte messages to every rank, self included.
    let empty: [u32; 0] = [];
    w.scope(|s| -> Result<(), Error> {
        let mut reqs = Vec::new();
        for p in 0..n {
            reqs.push(s.isend(&empty, p, 7)?);
        }
        for _ in 0..n {
            let st = w.recv_into::<u32>(&mut [], ANY_SOURCE, 7)?;
            assert_eq!(st.bytes, 0);
        }
        oxmpi::wait_all(&mut reqs)?;
        Ok(())
    })?;
    // Blocking send to self, then receive.
    w.send(&[me, 42], me, 8)?;
    let mut got = [0u32; 2];
    w.recv_into(&mut got, me, 8)?;
    assert_eq!(got, [me, 42]);
    // A large self message needs the receive posted: nonblocking.
    let big: Vec<u32> = (0..1_000_000).collect();
    let mut back = vec![0u32; big.len()];
    w.scope(|s| -> Result<(), Error> {
        let r = s.irecv(&mut back, me, 9)?;
        let q = s.isend(&big, me, 9)?;
        q.wait()?;
        r.wait()?;
        Ok(())
    })?;
    assert_eq!(back, big);
    // Objects through self and the self communicator.
    let sc = w.clone();
    sc.send_obj(&("self", me), me, 10)?;
    let ((text, r), _): ((String, u32), _) = sc.recv_obj(me, 10)?;
    assert_eq!((text.as_str(), r), ("self", me));
    w.barrier()
}

fn truncate(w: &Communicator) -> Result<(), Error> {
    let n = w.size();
    if n < 2 {
        return Ok(());
    }
    for len in [100usize, 1 << 20] {
        if w.rank() == 0 {
            w.send(&vec![5u8; len], 1, 1)?;
            w.send(&[6u8; 10], 1, 1)?;
        } else if w.rank() == 1 {
            let mut small = [0u8; 50];
            match w.recv_into(&mut small, 0, 1) {
                Err(Error::Truncated {
                    source: 0,
                    tag: 1,
                    len: l,
                    capacity: 50,
                }) => assert_eq!(l, len as u64),
                other => panic!("expected a truncation error, got {other:?}"),
            }
            assert!(
                small.iter().all(|&b| b == 5),
                "the buffer holds the message's first bytes"
            );
            let mut next = [0u8; 10];
            w.recv_into(&mut next, 0, 1)?;
            assert_eq!(next, [6u8; 10]);
        }
    }
    w.barrier()
}

fn invalid(w: &Communicator) -> Result<(), Error> {
    let n = w.size();
    assert!(
        matches!(w.send(&[1u8], n, 0), Err(Error::InvalidRank { rank, size }) if rank == n && size == n)
    );
    assert!(matches!(
        w.recv_into(&mut [0u8], n + 5, 0),
        Err(Error::InvalidRank { .. })
    ));
    assert!(matches!(w.send(&[1u8], 0, -3), Err(Error::InvalidTag(-3))));
    assert!(matches!(
        w.send_obj(&1u8, n, 0),
        Err(Error::InvalidRank { .. })
    ));
    // Nothing was disturbed: a normal exchange still works.
    let right = (w.rank() + 1) % n;
    let left = (w.rank() + n - 1) % n;
    let mut got = [0u32];
    w.sendrecv(&[w.rank()], right, 3, &mut got, left, 3)?;
    assert_eq!(got[0], left);
    w.barrier()
}

fn big(w: &Communicator, mib: usize) -> Result<(), Error> {
    let n = w.size();
    let words = mib * 1024 * 1024 / 4;
    let me = w.rank();
    let right = (me + 1) % n;
    let left = (me + n - 1) % n;
    let send: Vec<u32> = (0..words as u32)
        .map(|i| i.wrapping_mul(2_654_435_761) ^ me)
        .collect();
    let mut recv = vec![0u32; words];
    let st = w.sendrecv(&send, right, 4, &mut recv, left, 4)?;
    assert_eq!(st.bytes, (words * 4) as u64);
    drop(send);
    for (i, x) in recv.iter().enumerate() {
        assert_eq!(
            *x,
            (i as u32).wrapping_mul(2_654_435_761) ^ left,
            "word {i} of the message from {left}"
        );
    }
    w.barrier()
}

fn secret(w: &Communicator) -> Result<(), Error> {
    use oxmpi_bootstrap::{JobEnv, KvsClient};
    if w.rank() == 0 {
        let env = JobEnv::from_env().expect("launched by oxrun");
        // The key-value service refuses a client that does not hold the secret.
        refused_without_the_secret(env.kvs.as_deref().unwrap(), "the key-value service");
        // So does a rank's TCP listener, if this job has one.
        let mut kvs = KvsClient::connect(&env).unwrap();
        let card = kvs.get(&format!("card-{}", n_minus_one(w))).unwrap();
        if let Some(addr) = card
            .split(';')
            .find_map(|kv| kv.strip_prefix("tcp="))
            .filter(|a| *a != "-")
        {
            refused_without_the_secret(addr, "a rank's listener");
            println!(
                "refused as expected by the listener of rank {}",
                n_minus_one(w)
            );
        }
        println!("refused as expected by the key-value service");
    }
    // The job goes on undisturbed.
    invalid(w)
}

/// Connects to `addr` with a wrong secret and checks the handshake fails. Then waits for the
/// server to close the connection: the client gives up first (the server's proof does not
/// match), and the server logs its refusal only once our missing proof ends in EOF, so a job
/// ending at once could otherwise take the log line with it.
fn refused_without_the_secret(addr: &str, who: &str) {
    use oxmpi_bootstrap::{auth, Secret};
    use std::io::Read;
    use std::net::{Shutdown, TcpStream};
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let r = auth::client_handshake(&mut s, &Secret::random(), 0);
    assert!(r.is_err(), "{who} accepted a client without the secret");
    s.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    let closed = s.read_to_end(&mut rest);
    assert!(
        closed.is_ok(),
        "{who} did not close a refused connection: {closed:?}"
    );
}

fn n_minus_one(w: &Communicator) -> u32 {
    w.size() - 1
}

fn main() -> Result<(), Error> {
    let universe = oxmpi::init()?;
    let w = universe.world();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mib = std::env::var("SUITE_BIG_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    for a in &args {
        match a.as_str() {
            "flood" => flood(&w)?,
            "wildcard" => wildcard(&w)?,
            "zero_self" => zero_self(&w)?,
            "sizes" => sizes(&w)?,
            "matched_probe" => matched_probe(&w)?,
            "shared_send" => shared_send(&w)?,
            "truncate" => truncate(&w)?,
            "invalid" => invalid(&w)?,
            "big" => big(&w, mib)?,
            "secret" => secret(&w)?,
            "exit3" => {
                if w.rank() == w.size() - 1 {
                    std::process::exit(3);
                }
                // The others wait for a message that never comes; oxrun must end them.
                let _ = w.recv_vec::<u8>(w.size() - 1, 0);
            }
            "die_in_copy" => {
                // The last rank dies (SIGKILL: no handler a library installs can catch it)
                // while rank 0 is reading a 256 MiB message from it, which over shared memory
                // it helps to copy: oxrun must end the job.
                let last = w.size() - 1;
                let big = vec![7u8; 256 << 20];
                if w.rank() == last {
                    std::thread::spawn(|| {
                        std::thread::sleep(std::time::Duration::from_millis(20));
                        // The shell's built-in kill: no extra package needed.
                        let _ = std::process::Command::new("sh")
                            .arg("-c")
                            .arg(format!("kill -9 {}", std::process::id()))
                            .status();
                    });
                    w.send(&big[..], 0, 9)?;
                } else if w.rank() == 0 {
                    let mut buf = vec![0u8; 256 << 20];
                    let _ = w.recv_into(&mut buf[..], last, 9);
                }
                let _ = w.recv_vec::<u8>(last, 0);
            }
            "sigkill" => {
                // Each rank says whether libfabric's shm provider holds its region under the
                // job's name (over that provider it must); then the last rank is killed,
                // which leaves its region behind for oxrun to remove.
                let job = std::env::var("OXMPI_JOB").unwrap_or_default();
                let region = format!("/dev/shm/oxmpi-{job}-ofi-{}", w.rank());
                let held = std::path::Path::new(&region).exists();
                println!(
                    "rank {}: job {job}: ofi region {}",
                    w.rank(),
                    if held { "held" } else { "absent" }
                );
                w.barrier()?;
                if w.rank() == w.size() - 1 {
                    // The shell's built-in kill: no extra package needed.
                    let _ = std::process::Command::new("sh")
                        .arg("-c")
                        .arg(format!("kill -9 {}", std::process::id()))
                        .status();
                }
                let _ = w.recv_vec::<u8>(w.size() - 1, 0);
            }
            "sigabrt" => {
                // The last rank dies of SIGABRT, as a failed C assertion or a Rust
                // `process::abort` would: oxrun must name the signal.
                w.barrier()?;
                if w.rank() == w.size() - 1 {
                    std::process::abort();
                }
                let _ = w.recv_vec::<u8>(w.size() - 1, 0);
            }
            "panic_in_scope" => {
                // Rank 0 panics with a receive in flight that no rank will ever match, while
                // the others wait for rank 0: it must not hang unwinding its scope.
                w.barrier()?;
                if w.rank() == 0 {
                    let mut buf = [0u8; 8];
                    w.scope(|s| {
                        let _r = s.irecv(&mut buf, ANY_SOURCE, 77);
                        panic!("deliberate panic with a receive in flight");
                    });
                }
                let _ = w.recv_vec::<u8>(0, 0);
            }
            "libraries" => {
                // Whether this rank has libfabric mapped: only ranks using the ofi fabric should.
                let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
                let loaded = maps.contains("libfabric.so");
                println!(
                    "rank {}: libfabric loaded: {}",
                    w.rank(),
                    if loaded { "yes" } else { "no" }
                );
                w.barrier()?;
            }
            "abort" => {
                if w.rank() == 0 {
                    universe.abort(5);
                }
                let _ = w.recv_vec::<u8>(0, 0);
            }
            "all" => {
                flood(&w)?;
                wildcard(&w)?;
                zero_self(&w)?;
                sizes(&w)?;
                matched_probe(&w)?;
                shared_send(&w)?;
                truncate(&w)?;
                invalid(&w)?;
                big(&w, mib)?;
            }
            other => panic!("unknown scenario {other}"),
        }
        if w.rank() == 0 {
            println!("{a}: ok on {} rank(s)", w.size());
        }
    }
    Ok(())
}
