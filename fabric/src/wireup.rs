//! Builds a rank's [`Router`] from the launcher's environment.
//!
//! Each rank publishes one card through the key-value service — host identity, process id,
//! shared-memory segment address and TCP listener — fences, reads every peer's card, and routes
//! each peer. Under `OXMPI_FABRIC=auto` (the default) peers on the same host (same hostname and
//! boot id; `OXMPI_NODE_SIZE=k` makes every `k` consecutive ranks a host of their own, to try
//! multi-node code on one machine) go through shared memory, and peers on other hosts through
//! the best network fabric every rank with such peers can use: `verbs` (a build with the
//! `verbs` feature and an active RDMA port), then `ofi` (a build with the `ofi` feature and a
//! libfabric provider that is not a software one), then `tcp`. A second exchange settles that
//! choice ([`probe_networks`] says what one rank can use and why not the others);
//! `OXMPI_DEBUG=1` prints it. `OXMPI_FABRIC=shm|tcp|ofi|verbs` forces one backend (`shm` fails
//! for peers on other hosts); `ofi` and `verbs` exchange their endpoint addresses in a further
//! round.

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
    /// InfiniBand verbs only.
    Verbs,
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
            "verbs" if cfg!(feature = "verbs") => Ok(Self::Verbs),
            "verbs" => Err(FabricError::Setup(
                "OXMPI_FABRIC=verbs: this program was built without the `verbs` feature \
                 (build oxmpi with `--features verbs`)"
                    .into(),
            )),
            other => Err(FabricError::Setup(format!(
                "OXMPI_FABRIC={other:?} is not one of auto, shm, tcp, ofi, verbs"
            ))),
        }
    }
}

/// A network fabric between hosts, best first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Network {
    /// InfiniBand verbs.
    Verbs,
    /// libfabric with a hardware provider.
    Ofi,
    /// oxmpi's TCP backend.
    Tcp,
}

impl Network {
    /// The name `OXMPI_FABRIC` uses.
    pub fn name(self) -> &'static str {
        match self {
            Self::Verbs => "verbs",
            Self::Ofi => "ofi",
            Self::Tcp => "tcp",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [Self::Verbs, Self::Ofi, Self::Tcp]
            .into_iter()
            .find(|n| n.name() == s)
    }
}

/// What this rank can use between hosts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkProbe {
    /// Usable networks, best first (`tcp` always).
    pub usable: Vec<Network>,
    /// Each network left out and why.
    pub skipped: Vec<(Network, String)>,
    /// The libfabric provider `ofi` would use.
    pub ofi_provider: Option<String>,
}

impl NetworkProbe {
    /// One line per network: usable, or why not.
    pub fn report(&self) -> String {
        let mut out = String::new();
        for n in [Network::Verbs, Network::Ofi, Network::Tcp] {
            if let Some((_, why)) = self.skipped.iter().find(|(m, _)| *m == n) {
                out.push_str(&format!("{}: not used: {why}\n", n.name()));
            } else if n == Network::Ofi {
                let prov = self.ofi_provider.as_deref().unwrap_or("?");
                out.push_str(&format!("ofi: usable (provider {prov})\n"));
            } else {
                out.push_str(&format!("{}: usable\n", n.name()));
            }
        }
        out
    }
}

/// Finds which network fabrics this rank could use between hosts.
pub fn probe_networks() -> NetworkProbe {
    let mut p = NetworkProbe {
        usable: Vec::new(),
        skipped: Vec::new(),
        ofi_provider: None,
    };
    match probe_verbs() {
        Ok(()) => p.usable.push(Network::Verbs),
        Err(why) => p.skipped.push((Network::Verbs, why)),
    }
    match probe_ofi() {
        Ok(prov) => {
            p.usable.push(Network::Ofi);
            p.ofi_provider = Some(prov);
        }
        Err(why) => p.skipped.push((Network::Ofi, why)),
    }
    p.usable.push(Network::Tcp);
    p
}

#[cfg(feature = "verbs")]
fn probe_verbs() -> Result<(), String> {
    use crate::verbs::ibv::{IbvConfig, IbvDevice};
    IbvDevice::open(&IbvConfig::from_env(), 1, 16, 16)
        .map(drop)
        .map_err(|e| e.to_string())
}

#[cfg(not(feature = "verbs"))]
fn probe_verbs() -> Result<(), String> {
    Err("this build has no verbs backend (cargo feature `verbs`)".into())
}

#[cfg(feature = "ofi")]
fn probe_ofi() -> Result<String, String> {
    crate::ofi::network_provider(&crate::ofi::OfiConfig::from_env(false))
}

#[cfg(not(feature = "ofi"))]
fn probe_ofi() -> Result<String, String> {
    Err("this build has no ofi backend (cargo feature `ofi`)".into())
}

/// What this machine offers each backend and what `auto` would choose: the report of
/// `oxrun --fabric-info`.
pub fn fabric_report() -> String {
    let mut out = String::new();
    let host = host_id();
    out.push_str(&format!(
        "oxmpi {} fabrics on {}\n",
        env!("CARGO_PKG_VERSION"),
        host.split('/').next().unwrap_or("?")
    ));
    let mut built = vec!["shm", "tcp"];
    if cfg!(feature = "ofi") {
        built.push("ofi");
    }
    if cfg!(feature = "verbs") {
        built.push("verbs");
    }
    out.push_str(&format!("built with: {}\n", built.join(", ")));
    match FabricChoice::from_env() {
        Ok(c) => out.push_str(&format!(
            "OXMPI_FABRIC: {}\n",
            std::env::var("OXMPI_FABRIC")
                .unwrap_or_else(|_| format!("{c:?} (default)").to_lowercase())
        )),
        Err(e) => out.push_str(&format!("OXMPI_FABRIC: {e}\n")),
    }
    let shm_ok =
        std::fs::metadata("/dev/shm").is_ok_and(|m| m.is_dir() && !m.permissions().readonly());
    out.push_str(&format!(
        "within a host: shm ({})\n",
        if shm_ok {
            "/dev/shm is writable"
        } else {
            "/dev/shm is missing or read-only: ranks on one host fail to start"
        }
    ));
    let probe = probe_networks();
    out.push_str("between hosts, best first:\n");
    for line in probe.report().lines() {
        out.push_str(&format!("  {line}\n"));
    }
    out.push_str(&format!(
        "auto: shm within a host, {} between hosts (if every rank with peers on other hosts can use it)\n",
        probe.usable.first().map_or("tcp", |n| n.name())
    ));
    #[cfg(feature = "verbs")]
    {
        out.push_str("RDMA devices:\n");
        for line in crate::verbs::ibv::describe().lines() {
            out.push_str(&format!("  {line}\n"));
        }
    }
    out
}

/// Whether `OXMPI_DEBUG` asks for the wire-up's decisions on stderr.
pub(crate) fn debug_enabled() -> bool {
    std::env::var("OXMPI_DEBUG").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// `OXMPI_NODE_SIZE=k`: every `k` consecutive ranks count as one host.
fn node_size() -> Option<u32> {
    std::env::var("OXMPI_NODE_SIZE")
        .ok()?
        .parse()
        .ok()
        .filter(|&k| k > 0)
}

/// Puts `value` under `{prefix}-{rank}`, fences, and returns every rank's value.
fn exchange(
    kvs: &mut KvsClient,
    prefix: &str,
    rank: Rank,
    size: u32,
    value: &str,
) -> Result<Vec<String>, FabricError> {
    kvs.put(&format!("{prefix}-{rank}"), value)?;
    kvs.fence()?;
    (0..size)
        .map(|p| Ok(kvs.get(&format!("{prefix}-{p}"))?))
        .collect()
}

/// The best network every rank that has peers on other hosts can use (`lists[r]` is rank `r`'s
/// comma-separated usable networks, `-` for a rank without such peers).
fn common_network(lists: &[String]) -> Network {
    if lists.iter().all(|l| l == "-") {
        return Network::Tcp;
    }
    [Network::Verbs, Network::Ofi]
        .into_iter()
        .find(|n| {
            lists
                .iter()
                .filter(|l| l.as_str() != "-")
                .all(|l| l.split(',').filter_map(Network::parse).any(|m| m == *n))
        })
        .unwrap_or(Network::Tcp)
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

/// Wires this rank up with its peers through the key-value service. `cores`: how many CPUs
/// the job's ranks on this host share (counted before a rank pins itself), which decides
/// whether shared-memory reads are assisted ([`Shm::new`]).
pub fn wire_up(env: &JobEnv, kvs: &mut KvsClient, cores: usize) -> Result<Router, FabricError> {
    let choice = FabricChoice::from_env()?;
    let (rank, size) = (env.rank, env.size);
    let host = match node_size() {
        Some(k) => format!("{}#node{}", host_id(), rank / k),
        None => host_id(),
    };
    let own = if matches!(choice, FabricChoice::Auto | FabricChoice::Shm) {
        Some(Segment::create(&env.job, rank, size).map_err(|e| {
            FabricError::Setup(format!("creating shared-memory segment in /dev/shm: {e}"))
        })?)
    } else {
        None
    };
    let _own_name = own.as_ref().map(Segment::name_guard);
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
    let nodes = node_numbers(&cards);
    let everyone: Vec<bool> = (0..size).map(|p| p != rank).collect();
    let local_only = cards.iter().all(|c| c.host == host);

    if matches!(choice, FabricChoice::Ofi | FabricChoice::Verbs) {
        let net = if choice == FabricChoice::Ofi {
            Network::Ofi
        } else {
            Network::Verbs
        };
        let fabric = wire_up_network(env, kvs, net, &everyone, local_only, None)?
            .ok_or_else(|| FabricError::Setup("a world of one needs no network".into()))?;
        if debug_enabled() {
            eprintln!("oxmpi[{rank}]: OXMPI_FABRIC={}: every peer", net.name());
        }
        let mut router = Router::single(fabric);
        router.set_nodes(nodes);
        return Ok(router);
    }

    // Peers on other hosts, and the network that reaches them.
    let remote: Vec<bool> = cards
        .iter()
        .enumerate()
        .map(|(p, c)| p as Rank != rank && (c.host != host || own.is_none() || c.seg == 0))
        .collect();
    let has_remote = remote.iter().any(|&r| r);
    let network = if choice == FabricChoice::Auto {
        let probe = has_remote.then(probe_networks);
        let mine = probe.as_ref().map_or("-".to_string(), |p| {
            let names: Vec<&str> = p.usable.iter().map(|n| n.name()).collect();
            names.join(",")
        });
        let lists = exchange(kvs, "net", rank, size, &mine)?;
        let network = common_network(&lists);
        if debug_enabled() {
            if let Some(p) = &probe {
                for line in p.report().lines() {
                    eprintln!("oxmpi[{rank}]: {line}");
                }
                eprintln!(
                    "oxmpi[{rank}]: auto: shm within a host, {} between hosts",
                    network.name()
                );
            } else {
                eprintln!("oxmpi[{rank}]: auto: every peer on this host: shm");
            }
        }
        (network != Network::Tcp).then_some((network, probe.and_then(|p| p.ofi_provider)))
    } else {
        None
    };
    if has_remote && choice == FabricChoice::Shm {
        let p = remote.iter().position(|&r| r).unwrap_or(0);
        return Err(FabricError::Setup(format!(
            "OXMPI_FABRIC=shm, but rank {p} runs on another host ({})",
            cards[p].host
        )));
    }

    let allow_cma = std::env::var("OXMPI_SHM_CMA").map_or(true, |v| v != "0");
    let mut shm_peers = Vec::new();
    let mut tcp_addrs: Vec<Option<SocketAddr>> = vec![None; size as usize];
    for (p, c) in cards.iter().enumerate() {
        let p = p as Rank;
        if p == rank {
            continue;
        }
        if !remote[p as usize] {
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
        } else if network.is_none() {
            tcp_addrs[p as usize] = Some(
                c.tcp
                    .ok_or_else(|| FabricError::Setup(format!("rank {p} has no TCP listener")))?,
            );
        }
    }
    // Everyone has mapped what it needs: names can go; mappings stay until the processes end.
    kvs.fence()?;
    if let Some(s) = &own {
        s.unlink();
    }

    let mut backends: Vec<Box<dyn Fabric>> = Vec::new();
    let has_shm = !shm_peers.is_empty();
    if let Some(own) = own {
        if has_shm {
            backends.push(Box::new(Shm::new(rank, size, own, shm_peers, cores)));
        }
    }
    if let Some((net, provider)) = network {
        // Every rank takes part in the exchange, also those without peers on other hosts.
        if let Some(f) = wire_up_network(env, kvs, net, &remote, false, provider)? {
            backends.push(f);
        }
    } else if tcp_addrs.iter().any(Option::is_some) {
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
    // Backends are pushed shm first, then the network.
    let route = (0..size as usize)
        .map(|p| (p as Rank != rank).then_some(usize::from(remote[p] && has_shm)))
        .collect();
    let mut router = Router::new(rank, size, backends, route);
    router.set_nodes(nodes);
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

/// Sets up `net` towards the peers `reach` marks: opens the endpoint (where this rank reaches
/// anyone), exchanges addresses with every rank, connects. Every rank must call it, in the same
/// order; it returns `None` on a rank that reaches no peer.
fn wire_up_network(
    env: &JobEnv,
    kvs: &mut KvsClient,
    net: Network,
    reach: &[bool],
    local_only: bool,
    ofi_provider: Option<String>,
) -> Result<Option<Box<dyn Fabric>>, FabricError> {
    match net {
        Network::Ofi => wire_up_ofi(env, kvs, reach, local_only, ofi_provider),
        Network::Verbs => wire_up_verbs(env, kvs, reach),
        Network::Tcp => Err(FabricError::Setup(
            "tcp is wired up with the cards, not here".into(),
        )),
    }
}

/// libfabric towards the peers `reach` marks: open an endpoint, exchange addresses, fill the
/// address vector.
#[cfg(feature = "ofi")]
fn wire_up_ofi(
    env: &JobEnv,
    kvs: &mut KvsClient,
    reach: &[bool],
    local_only: bool,
    provider: Option<String>,
) -> Result<Option<Box<dyn Fabric>>, FabricError> {
    use crate::ofi::{Ofi, OfiConfig};
    let mut ofi = if reach.iter().any(|&r| r) {
        let mut config = OfiConfig::from_env(local_only);
        config.job_tag = env.secret.tag32("ofi");
        config.endpoint_name = Some(format!("oxmpi-{}-ofi-{}", env.job, env.rank));
        if config.provider.is_none() {
            config.provider = provider;
        }
        Some(Ofi::open(env.rank, env.size, &config)?)
    } else {
        None
    };
    let hex: String = match &ofi {
        Some(o) => o.address()?.iter().map(|b| format!("{b:02x}")).collect(),
        None => "-".into(),
    };
    let all = exchange(kvs, "ofi", env.rank, env.size, &hex)?;
    if let Some(o) = ofi.as_mut() {
        let addrs = all
            .iter()
            .enumerate()
            .map(|(p, v)| {
                if !reach[p] {
                    return Ok(Vec::new());
                }
                decode_hex(v).filter(|a| !a.is_empty()).ok_or_else(|| {
                    FabricError::Setup(format!("malformed libfabric address of rank {p}: {v:?}"))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        o.connect(&addrs)?;
        if debug_enabled() {
            eprintln!("oxmpi[{}]: ofi provider {}", env.rank, o.provider());
        }
    }
    // Every address vector is filled before anyone sends.
    kvs.fence()?;
    Ok(ofi.map(|o| Box::new(o) as Box<dyn Fabric>))
}

#[cfg(not(feature = "ofi"))]
fn wire_up_ofi(
    _env: &JobEnv,
    _kvs: &mut KvsClient,
    _reach: &[bool],
    _local_only: bool,
    _provider: Option<String>,
) -> Result<Option<Box<dyn Fabric>>, FabricError> {
    Err(FabricError::Setup("this build has no ofi backend".into()))
}

/// Verbs towards the peers `reach` marks: a queue pair each, addresses exchanged, connected.
#[cfg(feature = "verbs")]
fn wire_up_verbs(
    env: &JobEnv,
    kvs: &mut KvsClient,
    reach: &[bool],
) -> Result<Option<Box<dyn Fabric>>, FabricError> {
    use crate::verbs::device::QpAddress;
    use crate::verbs::ibv::{IbvConfig, IbvDevice};
    use crate::verbs::{Verbs, VerbsConfig};
    let (rank, size) = (env.rank, env.size);
    let mut verbs = if reach.iter().any(|&r| r) {
        let config = VerbsConfig::from_env();
        let peers = reach.iter().filter(|&&r| r).count() as u32;
        let dev = IbvDevice::open(
            &IbvConfig::from_env(),
            peers,
            config.srq_slots(peers),
            // Every receive, plus every send queue full, plus reads.
            config.srq_slots(peers) + peers * 256 + 64,
        )
        .map_err(|e| FabricError::Setup(format!("verbs: {e}")))?;
        Some(Verbs::reaching(rank, size, dev, config, reach)?)
    } else {
        None
    };
    let mine = match &verbs {
        Some(v) => {
            let a: Vec<String> = v.addresses().iter().map(QpAddress::encode).collect();
            a.join(",")
        }
        None => "-".into(),
    };
    let all = exchange(kvs, "verbs", rank, size, &mine)?;
    if let Some(v) = verbs.as_mut() {
        let zero = QpAddress {
            lid: 0,
            gid: [0; 16],
            qpn: 0,
            psn: 0,
            mtu: 0,
        };
        let towards_me = all
            .iter()
            .enumerate()
            .map(|(p, list)| {
                if !reach[p] {
                    return Ok(zero);
                }
                list.split(',')
                    .nth(rank as usize)
                    .and_then(QpAddress::decode)
                    .ok_or_else(|| {
                        FabricError::Setup(format!("malformed verbs address of rank {p}: {list:?}"))
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        v.connect(&towards_me)?;
        if debug_enabled() {
            eprintln!(
                "oxmpi[{rank}]: verbs device {}, {} credits per peer",
                v.device_name(),
                v.credits()
            );
        }
    }
    // Every queue pair is ready to receive before anyone sends.
    kvs.fence()?;
    Ok(verbs.map(|v| Box::new(v) as Box<dyn Fabric>))
}

#[cfg(not(feature = "verbs"))]
fn wire_up_verbs(
    _env: &JobEnv,
    _kvs: &mut KvsClient,
    _reach: &[bool],
) -> Result<Option<Box<dyn Fabric>>, FabricError> {
    Err(FabricError::Setup("this build has no verbs backend".into()))
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

    #[test]
    fn the_best_network_every_rank_with_remote_peers_has() {
        let l = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            common_network(&l(&["verbs,ofi,tcp", "-", "verbs,tcp"])),
            Network::Verbs
        );
        assert_eq!(
            common_network(&l(&["verbs,ofi,tcp", "ofi,tcp"])),
            Network::Ofi
        );
        assert_eq!(common_network(&l(&["verbs,tcp", "ofi,tcp"])), Network::Tcp);
        assert_eq!(common_network(&l(&["-", "-"])), Network::Tcp);
    }

    #[test]
    fn probe_always_offers_tcp_and_says_why_not_the_others() {
        let p = probe_networks();
        assert_eq!(p.usable.last(), Some(&Network::Tcp));
        for (n, why) in &p.skipped {
            assert!(!why.is_empty(), "{n:?} skipped without a reason");
        }
        let r = p.report();
        assert!(
            r.contains("verbs: ") && r.contains("ofi: ") && r.contains("tcp: usable"),
            "{r}"
        );
    }
}
