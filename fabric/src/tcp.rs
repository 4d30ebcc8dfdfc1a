//! The TCP backend: one non-blocking, `TCP_NODELAY` connection per peer, watched with epoll.
//!
//! Frames go out with one vectored write (prefix + header, payload); whatever the socket does
//! not take is copied to a per-peer backlog flushed on later polls, and a backlog over
//! [`BACKLOG_MAX`] turns further sends into back-pressure. Arrivals are read into a per-peer
//! buffer and handed out as frames. Every connection starts with the job-secret handshake of
//! [`oxmpi_bootstrap::auth`]; one that fails it is logged and dropped, and nothing else is
//! disturbed — also after wire-up, when a background thread keeps answering the listener.
//!
//! Rendezvous over TCP is the engine's receiver-driven pipeline: TCP offers no remote reads.

use crate::sys::{cvt, cvt_retry};
use crate::{
    Caps, Event, Fabric, FabricError, Header, PerfModel, Rank, RemoteKey, Sent, HEADER_LEN,
};
use oxmpi_bootstrap::{auth, Secret};
use std::io::{self, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

const PREFIX: usize = 8;
const FRAME_MAGIC: u32 = 0x4f58_5446; // "OXTF"
/// Largest payload of one TCP frame.
pub const MAX_PAYLOAD: usize = 256 * 1024;
/// Default largest eager message over TCP.
pub const EAGER_MAX: usize = 64 * 1024;
/// Backlog size above which sends report back-pressure.
pub const BACKLOG_MAX: usize = 4 * 1024 * 1024;
/// Up to this many peers, `poll` reads each socket directly instead of asking epoll.
const DIRECT_POLL_MAX: usize = 4;
const RX_CAPACITY: usize = 4 * (PREFIX + HEADER_LEN + MAX_PAYLOAD);

/// Capabilities of a TCP link.
pub fn caps() -> Caps {
    Caps {
        name: "tcp",
        rma_read: false,
        max_payload: MAX_PAYLOAD,
        eager_max: crate::shm::env_usize("OXMPI_TCP_EAGER_MAX")
            .unwrap_or(EAGER_MAX)
            .min(MAX_PAYLOAD),
        rndv_read_min: usize::MAX,
        rndv_read_max: 0,
        pipeline_chunk: MAX_PAYLOAD,
        lent_min: usize::MAX,
        model: PerfModel {
            latency_us: 10.0,
            bandwidth_gbs: 3.0,
        },
    }
}

struct Conn {
    stream: TcpStream,
    rx: Vec<u8>,
    rx_start: usize,
    rx_end: usize,
    backlog: Vec<u8>,
    backlog_off: usize,
    want_out: bool,
    lost: Option<String>,
}

/// The TCP fabric of one rank.
pub struct Tcp {
    rank: Rank,
    size: u32,
    conns: Vec<Option<Conn>>,
    /// Ranks with a connection, in order.
    peers: Vec<Rank>,
    epoll: RawFd,
    caps: Caps,
    events: Vec<libc::epoll_event>,
}

fn prefix_and_header(payload_len: usize, header: &Header) -> [u8; PREFIX + HEADER_LEN] {
    let mut b = [0u8; PREFIX + HEADER_LEN];
    b[..4].copy_from_slice(&(payload_len as u32).to_le_bytes());
    b[4..8].copy_from_slice(&FRAME_MAGIC.to_le_bytes());
    b[PREFIX..].copy_from_slice(header);
    b
}

fn tune(s: &TcpStream) -> io::Result<()> {
    s.set_nodelay(true)?;
    let size: libc::c_int = 4 * 1024 * 1024;
    for opt in [libc::SO_SNDBUF, libc::SO_RCVBUF] {
        // SAFETY: setsockopt with a valid fd, option and pointer to a c_int of the given size.
        let _ = cvt(unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        });
    }
    Ok(())
}

/// Binds this rank's listener.
pub fn listen(bind: &str) -> io::Result<TcpListener> {
    TcpListener::bind(bind)
}

/// Keeps answering `listener` after wire-up: every connection is handshaken; failures are
/// logged, and even valid members are dropped (all peers are already connected).
fn serve_stray_connections(listener: TcpListener, rank: Rank, secret: Secret) {
    let _ = std::thread::Builder::new()
        .name("oxmpi-tcp-listen".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut s) = conn else { continue };
                let peer = s.peer_addr().map(|a| a.to_string()).unwrap_or_default();
                let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                match auth::server_handshake(&mut s, &secret) {
                    Err(e) => eprintln!("oxmpi: rank {rank}: refused connection from {peer}: {e}"),
                    Ok(id) => eprintln!(
                        "oxmpi: rank {rank}: dropped late connection from rank {id} ({peer})"
                    ),
                }
            }
        });
}

impl Tcp {
    /// Connects to every peer in `addrs` (`None` = not over TCP): to lower ranks by connecting,
    /// from higher ranks by accepting on `listener`, each with the job-secret handshake.
    pub fn wire_up(
        rank: Rank,
        size: u32,
        listener: TcpListener,
        addrs: &[Option<SocketAddr>],
        secret: &Secret,
        timeout: Duration,
    ) -> Result<Self, FabricError> {
        let deadline = Instant::now() + timeout;
        let expected: Vec<Rank> = (rank + 1..size)
            .filter(|&p| addrs[p as usize].is_some())
            .collect();
        let accept_secret = secret.clone();
        let accepter = std::thread::Builder::new().name("oxmpi-tcp-accept".into()).spawn(
            move || -> Result<(Vec<(Rank, TcpStream)>, TcpListener), FabricError> {
                listener.set_nonblocking(true)?;
                let mut got: Vec<(Rank, TcpStream)> = Vec::new();
                while got.len() < expected.len() {
                    match listener.accept() {
                        Ok((mut s, from)) => {
                            s.set_nonblocking(false)?;
                            s.set_read_timeout(Some(Duration::from_secs(5)))?;
                            match auth::server_handshake(&mut s, &accept_secret) {
                                Ok(id) if expected.contains(&id) && !got.iter().any(|(r, _)| *r == id) => {
                                    got.push((id, s))
                                }
                                Ok(id) => eprintln!("oxmpi: rank {rank}: unexpected connection claiming rank {id} from {from}; dropped"),
                                Err(e) => eprintln!("oxmpi: rank {rank}: refused connection from {from}: {e}"),
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            if Instant::now() > deadline {
                                let missing: Vec<_> = expected.iter().filter(|r| !got.iter().any(|(g, _)| g == *r)).collect();
                                return Err(FabricError::Setup(format!(
                                    "timed out waiting for TCP connections from ranks {missing:?}"
                                )));
                            }
                            std::thread::sleep(Duration::from_millis(1));
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
                listener.set_nonblocking(false)?;
                Ok((got, listener))
            },
        )?;
        let mut streams: Vec<(Rank, TcpStream)> = Vec::new();
        for p in 0..rank {
            let Some(addr) = addrs[p as usize] else {
                continue;
            };
            let mut s = loop {
                match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
                    Ok(s) => break s,
                    Err(e) if Instant::now() < deadline => {
                        let _ = e;
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(e) => {
                        return Err(FabricError::Setup(format!(
                            "connecting to rank {p} at {addr}: {e}"
                        )))
                    }
                }
            };
            s.set_read_timeout(Some(timeout))?;
            auth::client_handshake(&mut s, secret, rank)
                .map_err(|e| FabricError::Setup(format!("handshake with rank {p}: {e}")))?;
            streams.push((p, s));
        }
        let (accepted, listener) = accepter
            .join()
            .map_err(|_| FabricError::Setup("TCP accept thread panicked".into()))??;
        streams.extend(accepted);
        serve_stray_connections(listener, rank, secret.clone());
        Self::from_streams(rank, size, streams)
    }

    /// Builds the fabric over already authenticated streams.
    pub fn from_streams(
        rank: Rank,
        size: u32,
        streams: Vec<(Rank, TcpStream)>,
    ) -> Result<Self, FabricError> {
        // SAFETY: epoll_create1 has no memory-safety preconditions; the result is checked.
        let epoll = cvt(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        let mut conns: Vec<Option<Conn>> = (0..size).map(|_| None).collect();
        for (peer, s) in streams {
            s.set_read_timeout(None)?;
            s.set_nonblocking(true)?;
            tune(&s)?;
            let mut ev = libc::epoll_event {
                events: libc::EPOLLIN as u32,
                u64: peer as u64,
            };
            // SAFETY: registering a valid socket fd with a valid epoll fd and event struct.
            cvt(unsafe { libc::epoll_ctl(epoll, libc::EPOLL_CTL_ADD, s.as_raw_fd(), &mut ev) })?;
            conns[peer as usize] = Some(Conn {
                stream: s,
                rx: vec![0; RX_CAPACITY],
                rx_start: 0,
                rx_end: 0,
                backlog: Vec::new(),
                backlog_off: 0,
                want_out: false,
                lost: None,
            });
        }
        let peers = (0..size).filter(|&p| conns[p as usize].is_some()).collect();
        Ok(Self {
            rank,
            size,
            conns,
            peers,
            epoll,
            caps: caps(),
            events: vec![libc::epoll_event { events: 0, u64: 0 }; size.max(1) as usize],
        })
    }

    fn conn(&mut self, peer: Rank) -> Result<&mut Conn, FabricError> {
        let c = self.conns[peer as usize]
            .as_mut()
            .expect("peer routed to tcp has a connection");
        if let Some(why) = &c.lost {
            return Err(FabricError::PeerLost {
                peer,
                why: why.clone(),
            });
        }
        Ok(c)
    }

    fn set_out_interest(epoll: RawFd, peer: Rank, c: &mut Conn, want: bool) {
        if c.want_out == want {
            return;
        }
        c.want_out = want;
        let bits = libc::EPOLLIN as u32 | if want { libc::EPOLLOUT as u32 } else { 0 };
        let mut ev = libc::epoll_event {
            events: bits,
            u64: peer as u64,
        };
        // SAFETY: modifying the registration of a socket fd registered in `from_streams`.
        let _ = cvt(unsafe {
            libc::epoll_ctl(epoll, libc::EPOLL_CTL_MOD, c.stream.as_raw_fd(), &mut ev)
        });
    }

    /// Writes as much of the backlog as the socket takes.
    fn flush(epoll: RawFd, peer: Rank, c: &mut Conn) -> Result<(), FabricError> {
        while c.backlog_off < c.backlog.len() {
            // SAFETY: writing from the initialized bytes of the backlog to a valid socket.
            let n = unsafe {
                libc::send(
                    c.stream.as_raw_fd(),
                    c.backlog[c.backlog_off..].as_ptr().cast(),
                    c.backlog.len() - c.backlog_off,
                    libc::MSG_NOSIGNAL,
                )
            };
            match cvt(n) {
                Ok(n) => c.backlog_off += n as usize,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    c.lost = Some(e.to_string());
                    return Err(FabricError::PeerLost {
                        peer,
                        why: e.to_string(),
                    });
                }
            }
        }
        if c.backlog_off == c.backlog.len() {
            c.backlog.clear();
            c.backlog_off = 0;
            Self::set_out_interest(epoll, peer, c, false);
        } else {
            Self::set_out_interest(epoll, peer, c, true);
        }
        Ok(())
    }

    /// Reads what is available from `peer` and hands out complete frames.
    fn read_peer(
        &mut self,
        peer: Rank,
        on: &mut dyn FnMut(Event<'_>),
    ) -> Result<usize, FabricError> {
        let c = self.conns[peer as usize].as_mut().expect("registered peer");
        if c.lost.is_some() {
            return Ok(0);
        }
        let mut events = 0;
        for _ in 0..16 {
            if c.rx_end == c.rx.len() {
                c.rx.copy_within(c.rx_start..c.rx_end, 0);
                c.rx_end -= c.rx_start;
                c.rx_start = 0;
            }
            let n = match c.stream.read(&mut c.rx[c.rx_end..]) {
                Ok(0) => {
                    c.lost = Some("connection closed".into());
                    return Err(FabricError::PeerLost {
                        peer,
                        why: "connection closed by peer".into(),
                    });
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    c.lost = Some(e.to_string());
                    return Err(FabricError::PeerLost {
                        peer,
                        why: e.to_string(),
                    });
                }
            };
            c.rx_end += n;
            loop {
                let avail = c.rx_end - c.rx_start;
                if avail < PREFIX + HEADER_LEN {
                    break;
                }
                let p = &c.rx[c.rx_start..];
                let len = u32::from_le_bytes(p[..4].try_into().expect("4")) as usize;
                let magic = u32::from_le_bytes(p[4..8].try_into().expect("4"));
                if magic != FRAME_MAGIC || len > MAX_PAYLOAD {
                    let why = format!("frame magic {magic:#x}, payload length {len}");
                    c.lost = Some(why.clone());
                    let _ = c.stream.shutdown(std::net::Shutdown::Both);
                    return Err(FabricError::BadFrame { peer, why });
                }
                if avail < PREFIX + HEADER_LEN + len {
                    break;
                }
                let header: &Header = p[PREFIX..PREFIX + HEADER_LEN].try_into().expect("48");
                let payload = &p[PREFIX + HEADER_LEN..PREFIX + HEADER_LEN + len];
                on(Event::Frame {
                    peer,
                    header,
                    payload,
                });
                events += 1;
                c.rx_start += PREFIX + HEADER_LEN + len;
            }
            if c.rx_start == c.rx_end {
                c.rx_start = 0;
                c.rx_end = 0;
            } else if c.rx_start > c.rx.len() / 2 {
                c.rx.copy_within(c.rx_start..c.rx_end, 0);
                c.rx_end -= c.rx_start;
                c.rx_start = 0;
            }
            if n < c.rx.len() / 4 {
                break;
            }
        }
        Ok(events)
    }

    /// Polling a few peers: one non-blocking read per peer costs one syscall when idle, where
    /// epoll costs one for the readiness list plus one per read.
    fn poll_direct(&mut self, on: &mut dyn FnMut(Event<'_>)) -> Result<usize, FabricError> {
        let mut events = 0;
        for i in 0..self.peers.len() {
            let peer = self.peers[i];
            let c = self.conns[peer as usize]
                .as_ref()
                .expect("listed peer has a connection");
            if c.lost.is_some() {
                continue;
            }
            if !c.backlog.is_empty() {
                self.flush_peer(peer)?;
            }
            events += self.read_peer(peer, on)?;
        }
        Ok(events)
    }

    fn flush_peer(&mut self, peer: Rank) -> Result<(), FabricError> {
        let epoll = self.epoll;
        match self.conns[peer as usize].as_mut() {
            Some(c) if c.lost.is_none() => Self::flush(epoll, peer, c),
            _ => Ok(()),
        }
    }

    fn epoll_wait(&mut self, timeout_ms: i32) -> usize {
        let cap = self.events.len() as i32;
        // SAFETY: the events buffer holds `cap` entries; epoll fd is valid.
        cvt_retry(|| unsafe {
            libc::epoll_wait(self.epoll, self.events.as_mut_ptr(), cap, timeout_ms)
        })
        .unwrap_or(0) as usize
    }
}

impl Fabric for Tcp {
    fn rank(&self) -> Rank {
        self.rank
    }

    fn size(&self) -> u32 {
        self.size
    }

    fn caps(&self, _peer: Rank) -> &Caps {
        &self.caps
    }

    fn send(&mut self, peer: Rank, header: &Header, payload: &[u8]) -> Result<Sent, FabricError> {
        let epoll = self.epoll;
        let c = self.conn(peer)?;
        if !c.backlog.is_empty() {
            Self::flush(epoll, peer, c)?;
        }
        let head = prefix_and_header(payload.len(), header);
        let total = head.len() + payload.len();
        let mut written = 0;
        if c.backlog.is_empty() {
            let iov = [
                libc::iovec {
                    iov_base: head.as_ptr() as *mut _,
                    iov_len: head.len(),
                },
                libc::iovec {
                    iov_base: payload.as_ptr() as *mut _,
                    iov_len: payload.len(),
                },
            ];
            let msg = libc::msghdr {
                msg_name: std::ptr::null_mut(),
                msg_namelen: 0,
                msg_iov: iov.as_ptr() as *mut _,
                msg_iovlen: 2,
                msg_control: std::ptr::null_mut(),
                msg_controllen: 0,
                msg_flags: 0,
            };
            // SAFETY: both iovecs describe live, initialized buffers for the call's duration.
            match cvt_retry(|| unsafe {
                libc::sendmsg(c.stream.as_raw_fd(), &msg, libc::MSG_NOSIGNAL)
            }) {
                Ok(n) => written = n as usize,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    c.lost = Some(e.to_string());
                    return Err(FabricError::PeerLost {
                        peer,
                        why: e.to_string(),
                    });
                }
            }
            if written == total {
                return Ok(Sent::Done);
            }
        } else if c.backlog.len() - c.backlog_off + total > BACKLOG_MAX {
            return Ok(Sent::WouldBlock);
        }
        if written < head.len() {
            c.backlog.extend_from_slice(&head[written..]);
            c.backlog.extend_from_slice(payload);
        } else {
            c.backlog
                .extend_from_slice(&payload[written - head.len()..]);
        }
        Self::set_out_interest(epoll, peer, c, true);
        Ok(Sent::Done)
    }

    fn read(
        &mut self,
        peer: Rank,
        _remote: RemoteKey,
        _offset: u64,
        _dst: &mut [u8],
    ) -> Result<(), FabricError> {
        Err(FabricError::Rma(format!(
            "tcp offers no remote reads (rank {peer})"
        )))
    }

    fn poll(&mut self, on: &mut dyn FnMut(Event<'_>)) -> Result<usize, FabricError> {
        if self.peers.len() <= DIRECT_POLL_MAX {
            return self.poll_direct(on);
        }
        let n = self.epoll_wait(0);
        let mut events = 0;
        for i in 0..n {
            let ev = self.events[i];
            let peer = ev.u64 as Rank;
            if ev.events & libc::EPOLLOUT as u32 != 0 {
                self.flush_peer(peer)?;
            }
            if ev.events & (libc::EPOLLIN | libc::EPOLLHUP | libc::EPOLLERR) as u32 != 0 {
                events += self.read_peer(peer, on)?;
            }
        }
        Ok(events)
    }

    fn wait(&mut self, timeout: Duration) {
        // Leave the events for the next poll to collect: a readiness report is not consumed by
        // level-triggered epoll until the data is read.
        let ms = timeout.as_millis().clamp(0, i32::MAX as u128) as i32;
        let _ = self.epoll_wait(ms);
    }
}

impl Drop for Tcp {
    fn drop(&mut self) {
        // Flush what is still queued, briefly, so a finalizing rank's last frames go out.
        let deadline = Instant::now() + Duration::from_secs(2);
        let epoll = self.epoll;
        for (peer, c) in self.conns.iter_mut().enumerate() {
            if let Some(c) = c {
                while c.lost.is_none() && !c.backlog.is_empty() && Instant::now() < deadline {
                    if Self::flush(epoll, peer as Rank, c).is_err() {
                        break;
                    }
                    std::thread::sleep(Duration::from_micros(100));
                }
            }
        }
        // SAFETY: closing the epoll fd this fabric created and owns.
        unsafe { libc::close(self.epoll) };
    }
}
