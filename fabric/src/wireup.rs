//! Builds a rank's [`Router`] from the launcher's environment.
//!
//! Each rank publishes one card through the key-value service — host identity, process id,
//! shared-memory segment address and TCP listener — fences, reads every peer's card, and routes
//! each peer: shared memory when both run on the same host (same hostname and boot id), TCP
//! otherwise. `OXMPI_FABRIC=shm|tcp` forces one backend (`shm` fails for peers on other hosts).

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
}

impl FabricChoice {
    /// Reads `OXMPI_FABRIC` (default `auto`).
    pub fn from_env() -> Result<Self, FabricError> {
        match std::env::var("OXMPI_FABRIC").as_deref().unwrap_or("auto") {
            "" | "auto" => Ok(Self::Auto),
            "shm" => Ok(Self::Shm),
            "tcp" => Ok(Self::Tcp),
            other @ ("ofi" | "verbs") => Err(FabricError::Setup(format!(
                "OXMPI_FABRIC={other}: this build has no {other} backend yet (use auto, shm or tcp)"
            ))),
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
    let own = if choice != FabricChoice::Tcp {
        Some(Segment::create(&env.job, rank, size).map_err(|e| {
            FabricError::Setup(format!("creating shared-memory segment in /dev/shm: {e}"))
        })?)
    } else {
        None
    };
    let listener = if choice != FabricChoice::Shm {
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
    let mut hosts: Vec<&str> = Vec::new();
    let nodes = cards
        .iter()
        .map(|c| match hosts.iter().position(|h| *h == c.host) {
            Some(i) => i as u32,
            None => {
                hosts.push(&c.host);
                (hosts.len() - 1) as u32
            }
        })
        .collect();
    let mut router = Router::new(rank, size, backends, route);
    router.set_nodes(nodes);
    Ok(router)
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
