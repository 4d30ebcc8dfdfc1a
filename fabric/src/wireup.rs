//! Builds a rank's [`Router`] from the launcher's environment.
//!
//! Each rank publishes one card through the key-value service — host identity, process id,
//! shared-memory segment address and TCP listener — fences, reads every peer's card, and routes
//! each peer: shared memory when both run on the same host (same hostname and boot id), TCP
//! otherwise. `OXMPI_FABRIC=shm|tcp` forces one backend (`shm` fails for peers on other hosts);
//! `OXMPI_FABRIC=ofi` (builds with the `ofi` feature) reaches every peer through libfabric, whose
//! endpoint addresses go through a second exchange.

use crate::shm::{self, segment::Segment, Shm, ShmPeer};
use crate::tcp::{self, Tcp};
use crate::{Fabric, FabricError, Rank, Router};
use oxmpi_bootstrap::{JobEnv, KvsClient};
use std::net::SocketAddr;

/// Which backends `OXMPI_FABRIC` allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FabricChoice {
    /// Shared memory on the host, TCP between hosts.
    Auto,
    /// Shared memory only.
    Shm,
    /// TCP only.
    Tcp,
    /// libfabric only.
    Ofi,
}

impl FabricChoice {
    /// Reads `OXMPI_FABRIC` (default `auto`).
    pub fn from_env() -> Result<Self, FabricError> {
        match std::env::var("OXMPI_FABRIC").as_deref().unwrap_or("auto") {
            "" | "auto" => Ok(Self::Auto),
            "shm" => Ok(Self::Shm),
            "tcp" => Ok(Self::Tcp),
            "ofi" if cfg!(feature = "ofi") => Ok(Self::Ofi),
            "ofi" => Err(FabricError::Setup(
                "OXMPI_FABRIC=ofi: this program was built without the `ofi` feature \
                 (build oxmpi with `--features ofi`)"
                    .into(),
            )),
            "verbs" => Err(FabricError::Setup(
                "OXMPI_FABRIC=verbs: this build has no verbs backend yet (use auto, shm, tcp or ofi)"
                    .into(),
            )),
            other => Err(FabricError::Setup(format!(
                "OXMPI_FABRIC={other:?} is not one of auto, shm, tcp, ofi, verbs"
            ))),
        }
    }
}

/// This host's identity: hostname and kernel boot id.
pub fn host_id() -> String {
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    };
    format!(
        "{}/{}",
        read("/proc/sys/kernel/hostname"),
        read("/proc/sys/kernel/random/boot_id")
    )
}

struct Card {
    host: String,
    pid: i32,
    seg: u64,
    tcp: Option<SocketAddr>,
}

impl Card {
    fn encode(&self) -> String {
        let tcp = self
            .tcp
            .map(|a| a.to_string())
            .unwrap_or_else(|| "-".into());
        format!(
            "host={};pid={};seg={:x};tcp={}",
            self.host, self.pid, self.seg, tcp
        )
    }

    fn decode(s: &str) -> Result<Self, FabricError> {
        let bad = || FabricError::Setup(format!("malformed wire-up card {s:?}"));
        let mut c = Card {
            host: String::new(),
            pid: 0,
            seg: 0,
            tcp: None,
        };
        for kv in s.split(';') {
            let (k, v) = kv.split_once('=').ok_or_else(bad)?;
            match k {
                "host" => c.host = v.to_string(),
                "pid" => c.pid = v.parse().map_err(|_| bad())?,
                "seg" => c.seg = u64::from_str_radix(v, 16).map_err(|_| bad())?,
                "tcp" if v == "-" => c.tcp = None,
                "tcp" => c.tcp = Some(v.parse().map_err(|_| bad())?),
                _ => return Err(bad()),
            }
        }
        Ok(c)
    }
}

/// Wires this rank up with its peers through the key-value service.
pub fn wire_up(env: &JobEnv, kvs: &mut KvsClient) -> Result<Router, FabricError> {
    let choice = FabricChoice::from_env()?;
    let (rank, size) = (env.rank, env.size);
    let host = host_id();
    let own = if matches!(choice, FabricChoice::Auto | FabricChoice::Shm) {
        Some(Segment::create(&env.job, rank, size).map_err(|e| {
            FabricError::Setup(format!("creating shared-memory segment in /dev/shm: {e}"))
        })?)
    } else {
        None
    };
    let listener = if matches!(choice, FabricChoice::Auto | FabricChoice::Tcp) {
        let bind = std::env::var("OXMPI_TCP_BIND").unwrap_or_else(|_| "127.0.0.1:0".into());
        Some(
            tcp::listen(&bind)
                .map_err(|e| FabricError::Setup(format!("TCP listen on {bind}: {e}")))?,
        )
    } else {
        None
    };
    let card = Card {
        host: host.clone(),
        pid: std::process::id() as i32,
        seg: own.as_ref().map_or(0, Segment::base_addr),
        tcp: listener.as_ref().map(|l| l.local_addr()).transpose()?,
    };
    kvs.put(&format!("card-{rank}"), &card.encode())?;
    kvs.fence()?;
    let cards: Vec<Card> = (0..size)
        .map(|p| Card::decode(&kvs.get(&format!("card-{p}"))?))
        .collect::<Result<_, _>>()?;

    if choice == FabricChoice::Ofi {
        return wire_up_ofi(env, kvs, &cards, &host);
    }

    let allow_cma = std::env::var("OXMPI_SHM_CMA").map_or(true, |v| v != "0");
    let mut shm_peers = Vec::new();
    let mut tcp_addrs: Vec<Option<SocketAddr>> = vec![None; size as usize];
    let mut route_kind: Vec<Option<&'static str>> = vec![None; size as usize];
    for (p, c) in cards.iter().enumerate() {
        let p = p as Rank;
        if p == rank {
            continue;
        }
        let local = c.host == host && c.seg != 0 && own.is_some();
        if local {
            let segment = Segment::open(&env.job, p, size)
                .map_err(|e| FabricError::Setup(format!("mapping rank {p}'s segment: {e}")))?;
            let mut probe = [0u8; 8];
            let cma = allow_cma
                && shm::cma_read(c.pid, c.seg, &mut probe).is_ok()
                && u64::from_ne_bytes(probe) == Segment::magic();
            shm_peers.push(ShmPeer {
                rank: p,
                pid: c.pid,
                cma,
                segment,
            });
            route_kind[p as usize] = Some("shm");
        } else if choice == FabricChoice::Shm {
            return Err(FabricError::Setup(format!(
                "OXMPI_FABRIC=shm, but rank {p} runs on another host ({})",
                c.host
            )));
        } else {
            tcp_addrs[p as usize] = Some(
                c.tcp
                    .ok_or_else(|| FabricError::Setup(format!("rank {p} has no TCP listener")))?,
            );
            route_kind[p as usize] = Some("tcp");
        }
    }
    // Everyone has mapped what it needs: names can go; mappings stay until the processes end.
    kvs.fence()?;
    if let Some(s) = &own {
        s.unlink();
    }

    let mut backends: Vec<Box<dyn Fabric>> = Vec::new();
    let has_shm = !shm_peers.is_empty();
    let has_tcp = tcp_addrs.iter().any(Option::is_some);
    if let Some(own) = own {
        if has_shm {
            backends.push(Box::new(Shm::new(rank, size, own, shm_peers)));
        }
    }
    if has_tcp {
        let listener = listener.expect("tcp addresses imply a listener");
        backends.push(Box::new(Tcp::wire_up(
            rank,
            size,
            listener,
            &tcp_addrs,
            &env.secret,
            env.boot_timeout,
        )?));
    }
    // Backends are pushed shm first, then tcp.
    let route = route_kind
        .into_iter()
        .map(|k| k.map(|k| usize::from(k == "tcp" && has_shm)))
        .collect();
    let mut router = Router::new(rank, size, backends, route);
    router.set_nodes(node_numbers(&cards));
    Ok(router)
}

/// Node of each rank, numbered by first appearance of its host.
fn node_numbers(cards: &[Card]) -> Vec<u32> {
    let mut hosts: Vec<&str> = Vec::new();
    cards
        .iter()
        .map(|c| match hosts.iter().position(|h| *h == c.host) {
            Some(i) => i as u32,
            None => {
                hosts.push(&c.host);
                (hosts.len() - 1) as u32
            }
        })
        .collect()
}

/// Every peer through one libfabric endpoint: open it, exchange addresses, fill the AV.
#[cfg(feature = "ofi")]
fn wire_up_ofi(
    env: &JobEnv,
    kvs: &mut KvsClient,
    cards: &[Card],
    host: &str,
) -> Result<Router, FabricError> {
    use crate::ofi::{Ofi, OfiConfig};
    let local_only = cards.iter().all(|c| c.host == host);
    let mut ofi = Ofi::open(env.rank, env.size, &OfiConfig::from_env(local_only))?;
    let hex: String = ofi.address()?.iter().map(|b| format!("{b:02x}")).collect();
    kvs.put(&format!("ofi-{}", env.rank), &hex)?;
    kvs.fence()?;
    let addrs = (0..env.size)
        .map(|p| {
            let v = kvs.get(&format!("ofi-{p}"))?;
            decode_hex(&v).ok_or_else(|| {
                FabricError::Setup(format!("malformed libfabric address of rank {p}: {v:?}"))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    ofi.connect(&addrs)?;
    // Every address vector is filled before anyone sends.
    kvs.fence()?;
    let mut router = Router::single(Box::new(ofi));
    router.set_nodes(node_numbers(cards));
    Ok(router)
}

#[cfg(not(feature = "ofi"))]
fn wire_up_ofi(
    _env: &JobEnv,
    _kvs: &mut KvsClient,
    _cards: &[Card],
    _host: &str,
) -> Result<Router, FabricError> {
    Err(FabricError::Setup("this build has no ofi backend".into()))
}

#[cfg(feature = "ofi")]
fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn card_round_trip() {
        let c = Card {
            host: "h/b".into(),
            pid: 42,
            seg: 0xdead_beef,
            tcp: Some("127.0.0.1:5".parse().unwrap()),
        };
        let d = Card::decode(&c.encode()).unwrap();
        assert_eq!(
            (d.host.as_str(), d.pid, d.seg, d.tcp),
            ("h/b", 42, 0xdead_beef, c.tcp)
        );
        assert!(Card::decode("host=x;bogus").is_err());
    }
}
