//! The key-value exchange: a small line protocol over TCP, served by the launcher.
//!
//! Ranks `put` their endpoint descriptions, `fence` (a barrier over all ranks that also
//! publishes every earlier put) and `get` their peers' descriptions. Every connection first
//! passes the job-secret handshake of [`crate::auth`].
//!
//! ```text
//! PUT <key> <value>   -> OK
//! GET <key>           -> VAL <value>      (waits until the key is present)
//! FENCE               -> OK               (once every rank has reached the same fence)
//! ABORT <code> <msg>  -> OK               (the launcher brings the job down)
//! ```
//! Keys and values are single words of printable ASCII.

use crate::{auth, BootstrapError, JobEnv, Secret};
use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// What the key-value service tells the launcher.
#[derive(Debug, Clone, PartialEq)]
pub enum KvsEvent {
    /// A rank passed the handshake.
    Connected(u32),
    /// A rank asked for the job to be aborted.
    Abort {
        /// The rank that called abort.
        rank: u32,
        /// Exit code it asked for.
        code: i32,
        /// Its message.
        msg: String,
    },
    /// A connection failed the handshake and was dropped.
    Refused {
        /// Who connected.
        peer: String,
        /// Why it was refused.
        why: String,
    },
}

#[derive(Default)]
struct State {
    kv: HashMap<String, String>,
    fence_gen: u64,
    fence_count: u32,
    connected: HashSet<u32>,
}

struct Shared {
    size: u32,
    state: Mutex<State>,
    cv: Condvar,
}

/// The key-value server run by `oxrun`.
pub struct KvsServer {
    addr: SocketAddr,
    events: mpsc::Receiver<KvsEvent>,
}

impl KvsServer {
    /// Starts serving `size` ranks on `bind` (e.g. `127.0.0.1:0`) in background threads.
    pub fn start(size: u32, secret: Secret, bind: &str) -> std::io::Result<Self> {
        let listener = TcpListener::bind(bind)?;
        let addr = listener.local_addr()?;
        let (tx, events) = mpsc::channel();
        let shared = Arc::new(Shared {
            size,
            state: Mutex::default(),
            cv: Condvar::new(),
        });
        std::thread::Builder::new()
            .name("oxrun-kvs".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    let Ok(stream) = conn else { continue };
                    let (shared, secret, tx) = (shared.clone(), secret.clone(), tx.clone());
                    let _ = std::thread::Builder::new()
                        .name("oxrun-kvs-conn".into())
                        .spawn(move || serve(stream, &shared, &secret, &tx));
                }
            })?;
        Ok(Self { addr, events })
    }

    /// The address ranks connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Events for the launcher (connections, aborts, refusals).
    pub fn events(&self) -> &mpsc::Receiver<KvsEvent> {
        &self.events
    }
}

fn serve(mut stream: TcpStream, sh: &Shared, secret: &Secret, tx: &mpsc::Sender<KvsEvent>) {
    let peer = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(10)));
    let rank = match auth::server_handshake(&mut stream, secret) {
        Ok(r) if r < sh.size => r,
        Ok(r) => {
            let _ = tx.send(KvsEvent::Refused {
                peer,
                why: format!("rank {r} out of range"),
            });
            return;
        }
        Err(e) => {
            let _ = tx.send(KvsEvent::Refused {
                peer,
                why: e.to_string(),
            });
            return;
        }
    };
    let _ = stream.set_read_timeout(None);
    sh.state.lock().unwrap().connected.insert(rank);
    let _ = tx.send(KvsEvent::Connected(rank));
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut lines = BufReader::new(read_half);
    let mut line = String::new();
    loop {
        line.clear();
        match lines.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let mut words = line.trim_end().splitn(3, ' ');
        let reply = match (words.next(), words.next(), words.next()) {
            (Some("PUT"), Some(k), Some(v)) => {
                sh.state
                    .lock()
                    .unwrap()
                    .kv
                    .insert(k.to_string(), v.to_string());
                "OK".to_string()
            }
            (Some("GET"), Some(k), None) => {
                let mut st = sh.state.lock().unwrap();
                loop {
                    if let Some(v) = st.kv.get(k) {
                        break format!("VAL {v}");
                    }
                    st = sh.cv.wait(st).unwrap();
                }
            }
            (Some("FENCE"), None, None) => {
                let mut st = sh.state.lock().unwrap();
                let gen = st.fence_gen;
                st.fence_count += 1;
                if st.fence_count == sh.size {
                    st.fence_count = 0;
                    st.fence_gen += 1;
                    sh.cv.notify_all();
                } else {
                    while st.fence_gen == gen {
                        st = sh.cv.wait(st).unwrap();
                    }
                }
                "OK".to_string()
            }
            (Some("ABORT"), Some(code), msg) => {
                let _ = tx.send(KvsEvent::Abort {
                    rank,
                    code: code.parse().unwrap_or(1),
                    msg: msg.unwrap_or("").to_string(),
                });
                "OK".to_string()
            }
            _ => format!("ERR bad request {:?}", line.trim_end()),
        };
        // Wake GET waiters after any PUT.
        sh.cv.notify_all();
        if stream.write_all(format!("{reply}\n").as_bytes()).is_err() {
            return;
        }
    }
}

/// A rank's connection to the key-value service.
pub struct KvsClient {
    stream: BufReader<TcpStream>,
    timeout: Duration,
}

impl KvsClient {
    /// Connects and authenticates, retrying until the job's boot timeout.
    pub fn connect(env: &JobEnv) -> Result<Self, BootstrapError> {
        let addr = env
            .kvs
            .as_deref()
            .ok_or_else(|| BootstrapError::BadEnv("no KVS address".into()))?;
        let deadline = Instant::now() + env.boot_timeout;
        let mut stream = loop {
            match TcpStream::connect(addr) {
                Ok(s) => break s,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => {
                    return Err(BootstrapError::Timeout(format!(
                        "could not reach the key-value service at {addr}: {e}"
                    )))
                }
            }
        };
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(env.boot_timeout))?;
        stream.set_write_timeout(Some(env.boot_timeout))?;
        auth::client_handshake(&mut stream, &env.secret, env.rank)?;
        Ok(Self {
            stream: BufReader::new(stream),
            timeout: env.boot_timeout,
        })
    }

    fn call(&mut self, req: &str) -> Result<String, BootstrapError> {
        self.stream
            .get_mut()
            .write_all(format!("{req}\n").as_bytes())?;
        let mut line = String::new();
        match self.stream.read_line(&mut line) {
            Ok(0) => Err(BootstrapError::Kvs(
                "the key-value service closed the connection".into(),
            )),
            Ok(_) => Ok(line.trim_end().to_string()),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                Err(BootstrapError::Timeout(format!(
                    "no answer to {} within {:?}: some rank has not reached wire-up",
                    req.split(' ').next().unwrap_or(""),
                    self.timeout
                )))
            }
            Err(e) => Err(e.into()),
        }
    }

    fn check_word(s: &str) -> Result<(), BootstrapError> {
        if s.is_empty() || s.bytes().any(|b| !(0x21..0x7f).contains(&b)) {
            return Err(BootstrapError::Kvs(format!(
                "{s:?} is not a single printable word"
            )));
        }
        Ok(())
    }

    /// Publishes `key = value` (visible to all after the next fence).
    pub fn put(&mut self, key: &str, value: &str) -> Result<(), BootstrapError> {
        Self::check_word(key)?;
        Self::check_word(value)?;
        self.expect_ok(&format!("PUT {key} {value}"))
    }

    /// Waits for every rank to reach the fence.
    pub fn fence(&mut self) -> Result<(), BootstrapError> {
        self.expect_ok("FENCE")
    }

    /// Reads a key, waiting until some rank has put it.
    pub fn get(&mut self, key: &str) -> Result<String, BootstrapError> {
        Self::check_word(key)?;
        let r = self.call(&format!("GET {key}"))?;
        r.strip_prefix("VAL ")
            .map(str::to_string)
            .ok_or_else(|| BootstrapError::Kvs(format!("unexpected reply {r:?}")))
    }

    /// Asks the launcher to bring the job down with `code`.
    pub fn abort(&mut self, code: i32, msg: &str) -> Result<(), BootstrapError> {
        let msg: String = msg
            .chars()
            .map(|c| if c == '\n' { ' ' } else { c })
            .collect();
        self.expect_ok(&format!("ABORT {code} {msg}"))
    }

    fn expect_ok(&mut self, req: &str) -> Result<(), BootstrapError> {
        match self.call(req)?.as_str() {
            "OK" => Ok(()),
            other => Err(BootstrapError::Kvs(format!("unexpected reply {other:?}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(rank: u32, size: u32, addr: SocketAddr, secret: &Secret) -> JobEnv {
        JobEnv {
            rank,
            size,
            kvs: Some(addr.to_string()),
            secret: secret.clone(),
            job: "t".into(),
            boot_timeout: Duration::from_secs(5),
        }
    }

    #[test]
    fn put_fence_get_across_ranks() {
        let secret = Secret::random();
        let srv = KvsServer::start(3, secret.clone(), "127.0.0.1:0").unwrap();
        let addr = srv.addr();
        let handles: Vec<_> = (0..3)
            .map(|r| {
                let secret = secret.clone();
                std::thread::spawn(move || {
                    let mut c = KvsClient::connect(&env(r, 3, addr, &secret)).unwrap();
                    c.put(&format!("k{r}"), &format!("v{r}")).unwrap();
                    c.fence().unwrap();
                    (0..3)
                        .map(|p| c.get(&format!("k{p}")).unwrap())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for h in handles {
            assert_eq!(h.join().unwrap(), vec!["v0", "v1", "v2"]);
        }
    }

    #[test]
    fn wrong_secret_is_refused_and_reported() {
        let srv = KvsServer::start(1, Secret::random(), "127.0.0.1:0").unwrap();
        let r = KvsClient::connect(&env(0, 1, srv.addr(), &Secret::random()));
        assert!(matches!(r, Err(BootstrapError::Auth(_))));
        let ev = srv.events().recv_timeout(Duration::from_secs(5)).unwrap();
        assert!(matches!(ev, KvsEvent::Refused { .. }), "{ev:?}");
    }

    #[test]
    fn fence_times_out_when_a_rank_is_missing() {
        let secret = Secret::random();
        let srv = KvsServer::start(2, secret.clone(), "127.0.0.1:0").unwrap();
        let mut e = env(0, 2, srv.addr(), &secret);
        e.boot_timeout = Duration::from_millis(300);
        let mut c = KvsClient::connect(&e).unwrap();
        assert!(matches!(c.fence(), Err(BootstrapError::Timeout(_))));
    }
}
