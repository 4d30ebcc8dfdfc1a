//! The algorithm registry and the selection table.
//!
//! Every algorithm is registered with the collective it implements and its restrictions
//! ([`AlgoInfo`]). Which one runs is decided by a data-driven [`Table`] of rules keyed by
//! communicator size, message bytes, node count and ranks per node — the first matching rule
//! whose algorithm accepts the call wins — unless `OXMPI_COLL_<NAME>=<algorithm>` (or a
//! per-communicator choice) forces one; a forced algorithm that cannot run the call is an
//! error, not a silent substitute. `OXMPI_COLL_TABLE=<file>` replaces the built-in table;
//! `oxrun --coll-table` prints the table in effect.

use crate::algorithms::{
    allgather, allreduce, alltoall, barrier, bcast, gather, reduce, reduce_scatter, scan, scatter,
    Blocks,
};
use crate::schedule::{Buf, Builder, Group, Schedule, Span};
use crate::topology::Topology;

/// The collectives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Coll {
    Barrier,
    Bcast,
    Reduce,
    Allreduce,
    Gather,
    Gatherv,
    Scatter,
    Scatterv,
    Allgather,
    Allgatherv,
    Alltoall,
    Alltoallv,
    ReduceScatter,
    ReduceScatterBlock,
    Scan,
    Exscan,
}

impl Coll {
    pub const ALL: [Coll; 16] = [
        Coll::Barrier,
        Coll::Bcast,
        Coll::Reduce,
        Coll::Allreduce,
        Coll::Gather,
        Coll::Gatherv,
        Coll::Scatter,
        Coll::Scatterv,
        Coll::Allgather,
        Coll::Allgatherv,
        Coll::Alltoall,
        Coll::Alltoallv,
        Coll::ReduceScatter,
        Coll::ReduceScatterBlock,
        Coll::Scan,
        Coll::Exscan,
    ];

    /// Lower-case name, as in the table and `OXMPI_COLL_<NAME>` (upper-cased).
    pub fn name(self) -> &'static str {
        match self {
            Coll::Barrier => "barrier",
            Coll::Bcast => "bcast",
            Coll::Reduce => "reduce",
            Coll::Allreduce => "allreduce",
            Coll::Gather => "gather",
            Coll::Gatherv => "gatherv",
            Coll::Scatter => "scatter",
            Coll::Scatterv => "scatterv",
            Coll::Allgather => "allgather",
            Coll::Allgatherv => "allgatherv",
            Coll::Alltoall => "alltoall",
            Coll::Alltoallv => "alltoallv",
            Coll::ReduceScatter => "reduce_scatter",
            Coll::ReduceScatterBlock => "reduce_scatter_block",
            Coll::Scan => "scan",
            Coll::Exscan => "exscan",
        }
    }

    /// Small number identifying the collective in message tags.
    pub fn code(self) -> u8 {
        Coll::ALL.iter().position(|&c| c == self).expect("listed") as u8 + 1
    }

    pub fn from_name(s: &str) -> Option<Coll> {
        Coll::ALL.into_iter().find(|c| c.name() == s)
    }
}

/// A collective call as the algorithms see it: sizes in bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Spec {
    Barrier,
    Bcast {
        root: u32,
        bytes: usize,
    },
    Reduce {
        root: u32,
        bytes: usize,
        elem: usize,
        commutative: bool,
    },
    Allreduce {
        bytes: usize,
        elem: usize,
        commutative: bool,
    },
    /// `block` bytes from every rank.
    Gather {
        root: u32,
        block: usize,
    },
    /// `send` bytes from this rank; `recv` the root's layout (empty elsewhere).
    Gatherv {
        root: u32,
        send: usize,
        recv: Blocks,
    },
    Scatter {
        root: u32,
        block: usize,
    },
    Scatterv {
        root: u32,
        send: Blocks,
        recv: usize,
    },
    Allgather {
        block: usize,
    },
    Allgatherv {
        send: usize,
        recv: Blocks,
    },
    Alltoall {
        block: usize,
    },
    Alltoallv {
        send: Blocks,
        recv: Blocks,
    },
    /// `blocks`: the packed layout of the input, block `i` reduced onto rank `i`.
    ReduceScatter {
        blocks: Blocks,
        elem: usize,
        commutative: bool,
    },
    ReduceScatterBlock {
        block: usize,
        elem: usize,
        commutative: bool,
    },
    Scan {
        bytes: usize,
        elem: usize,
        commutative: bool,
    },
    Exscan {
        bytes: usize,
        elem: usize,
        commutative: bool,
    },
}

/// Which field of [`Spec::agreement`] is which: what the ranks disagreed on.
pub const AGREEMENT_FIELDS: [&str; 4] = [
    "collective",
    "root",
    "count (bytes per rank, or the counts every rank passes)",
    "reduction (element size, commutativity)",
];

/// No such field for this collective.
const NONE: u64 = u64::MAX;

/// FNV-1a over `counts`: a fingerprint of a counts array every rank must pass alike.
fn fingerprint(counts: &[usize]) -> u64 {
    counts.iter().fold(0xcbf2_9ce4_8422_2325, |h, &c| {
        (h ^ c as u64).wrapping_mul(0x0000_0100_0000_01b3)
    }) & (NONE >> 1)
}

impl Spec {
    /// What every rank calling this collective must agree on, as numbers to compare across
    /// the ranks (the checking mode, `OXMPI_COLL_CHECK=1`, compares them before each blocking
    /// collective): the collective, its root, the bytes per rank where the collective fixes
    /// them (the counts array, fingerprinted, where every rank passes the same one), and a
    /// reduction's element size and commutativity. `u64::MAX` marks a field the collective
    /// does not have; see [`AGREEMENT_FIELDS`].
    pub fn agreement(&self) -> [u64; 4] {
        let code = self.coll().code() as u64;
        let op = |elem: &usize, commutative: &bool| (*elem as u64) << 1 | *commutative as u64;
        let (root, bytes, red) = match self {
            Spec::Barrier => (NONE, NONE, NONE),
            Spec::Bcast { root, bytes } => (*root as u64, *bytes as u64, NONE),
            Spec::Reduce {
                root,
                bytes,
                elem,
                commutative,
            } => (*root as u64, *bytes as u64, op(elem, commutative)),
            Spec::Allreduce {
                bytes,
                elem,
                commutative,
            }
            | Spec::Scan {
                bytes,
                elem,
                commutative,
            }
            | Spec::Exscan {
                bytes,
                elem,
                commutative,
            } => (NONE, *bytes as u64, op(elem, commutative)),
            Spec::Gather { root, block } | Spec::Scatter { root, block } => {
                (*root as u64, *block as u64, NONE)
            }
            // The layouts are the root's alone; only the root must agree.
            Spec::Gatherv { root, .. } | Spec::Scatterv { root, .. } => (*root as u64, NONE, NONE),
            Spec::Allgather { block } | Spec::Alltoall { block } => (NONE, *block as u64, NONE),
            // Every rank passes the same counts (the displacements are its own).
            Spec::Allgatherv { recv, .. } => (NONE, fingerprint(&recv.counts), NONE),
            Spec::Alltoallv { .. } => (NONE, NONE, NONE),
            Spec::ReduceScatter {
                blocks,
                elem,
                commutative,
            } => (NONE, fingerprint(&blocks.counts), op(elem, commutative)),
            Spec::ReduceScatterBlock {
                block,
                elem,
                commutative,
            } => (NONE, *block as u64, op(elem, commutative)),
        };
        [code, root, bytes, red]
    }

    pub fn coll(&self) -> Coll {
        match self {
            Spec::Barrier => Coll::Barrier,
            Spec::Bcast { .. } => Coll::Bcast,
            Spec::Reduce { .. } => Coll::Reduce,
            Spec::Allreduce { .. } => Coll::Allreduce,
            Spec::Gather { .. } => Coll::Gather,
            Spec::Gatherv { .. } => Coll::Gatherv,
            Spec::Scatter { .. } => Coll::Scatter,
            Spec::Scatterv { .. } => Coll::Scatterv,
            Spec::Allgather { .. } => Coll::Allgather,
            Spec::Allgatherv { .. } => Coll::Allgatherv,
            Spec::Alltoall { .. } => Coll::Alltoall,
            Spec::Alltoallv { .. } => Coll::Alltoallv,
            Spec::ReduceScatter { .. } => Coll::ReduceScatter,
            Spec::ReduceScatterBlock { .. } => Coll::ReduceScatterBlock,
            Spec::Scan { .. } => Coll::Scan,
            Spec::Exscan { .. } => Coll::Exscan,
        }
    }

    /// The size the selection table keys on: the message for rooted and reducing
    /// collectives, one rank's block for gathers, scatters and exchanges.
    pub fn bytes(&self) -> usize {
        match self {
            Spec::Barrier => 0,
            Spec::Bcast { bytes, .. }
            | Spec::Reduce { bytes, .. }
            | Spec::Allreduce { bytes, .. }
            | Spec::Scan { bytes, .. }
            | Spec::Exscan { bytes, .. } => *bytes,
            Spec::Gather { block, .. }
            | Spec::Scatter { block, .. }
            | Spec::Allgather { block }
            | Spec::Alltoall { block } => *block,
            Spec::Gatherv { send, .. } | Spec::Allgatherv { send, .. } => *send,
            Spec::Scatterv { recv, .. } => *recv,
            Spec::Alltoallv { send, .. } => send.total() / send.counts.len().max(1),
            Spec::ReduceScatter { blocks, .. } => blocks.total(),
            Spec::ReduceScatterBlock { block, .. } => *block,
        }
    }

    fn commutative(&self) -> bool {
        match self {
            Spec::Reduce { commutative, .. }
            | Spec::Allreduce { commutative, .. }
            | Spec::ReduceScatter { commutative, .. }
            | Spec::ReduceScatterBlock { commutative, .. }
            | Spec::Scan { commutative, .. }
            | Spec::Exscan { commutative, .. } => *commutative,
            _ => true,
        }
    }
}

/// A registered algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AlgoInfo {
    pub coll: Coll,
    pub name: &'static str,
    /// Refuses non-commutative ops.
    pub commutative_only: bool,
    pub summary: &'static str,
}

impl AlgoInfo {
    /// Why this algorithm cannot run `spec`, if it cannot.
    pub fn refuses(&self, spec: &Spec) -> Option<String> {
        if self.coll != spec.coll() {
            return Some(format!(
                "{} is not a {} algorithm",
                self.name,
                spec.coll().name()
            ));
        }
        if self.commutative_only && !spec.commutative() {
            return Some(format!(
                "{} algorithm {} needs a commutative op",
                self.coll.name(),
                self.name
            ));
        }
        None
    }
}

const fn algo(
    coll: Coll,
    name: &'static str,
    commutative_only: bool,
    summary: &'static str,
) -> AlgoInfo {
    AlgoInfo {
        coll,
        name,
        commutative_only,
        summary,
    }
}

/// Every algorithm, by collective.
#[rustfmt::skip]
pub static ALGORITHMS: &[AlgoInfo] = &[
    algo(Coll::Barrier, "dissemination", false, "ceil(log2 p) rounds of signals"),
    algo(Coll::Barrier, "recursive_doubling", false, "pairwise token exchanges (log2 rounds; folds a non-power of two)"),
    algo(Coll::Barrier, "linear", false, "fan-in to rank 0, fan-out (fewest hand-offs when ranks share cores)"),
    algo(Coll::Barrier, "hierarchical", false, "node fan-in, leaders' dissemination, fan-out"),
    algo(Coll::Bcast, "binomial", false, "binomial tree, whole message per edge"),
    algo(Coll::Bcast, "scatter_allgather", false, "binomial scatter + ring allgather (van de Geijn)"),
    algo(Coll::Bcast, "linear", false, "root sends to every rank (one hop deep)"),
    algo(Coll::Bcast, "pipelined", false, "binomial tree in 64 KiB segments, forwarded as they arrive"),
    algo(Coll::Bcast, "hierarchical", false, "binomial among node leaders, then within nodes"),
    algo(Coll::Reduce, "binomial", false, "binomial tree (rank order kept via rank 0)"),
    algo(Coll::Reduce, "rabenseifner", true, "recursive-halving reduce-scatter + binomial gather"),
    algo(Coll::Reduce, "hierarchical", true, "binomial within nodes, then among leaders"),
    algo(Coll::Allreduce, "recursive_doubling", false, "log2 p full-vector exchanges"),
    algo(Coll::Allreduce, "rabenseifner", true, "recursive halving + recursive doubling"),
    algo(Coll::Allreduce, "ring", true, "ring reduce-scatter + ring allgather"),
    algo(Coll::Allreduce, "hierarchical", true, "reduce to node leaders, leaders' allreduce, node bcast"),
    algo(Coll::Gather, "binomial", false, "binomial tree, subtrees' blocks in one message"),
    algo(Coll::Gather, "linear", false, "root receives from each rank"),
    algo(Coll::Gatherv, "linear", false, "root receives from each rank"),
    algo(Coll::Scatter, "binomial", false, "binomial tree, subtrees' blocks in one message"),
    algo(Coll::Scatter, "linear", false, "root sends to each rank"),
    algo(Coll::Scatterv, "linear", false, "root sends to each rank"),
    algo(Coll::Allgather, "recursive_doubling", false, "log2 p doubling exchanges (folded)"),
    algo(Coll::Allgather, "bruck", false, "ceil(log2 p) rounds, rotated blocks"),
    algo(Coll::Allgather, "ring", false, "p - 1 steps around a ring"),
    algo(Coll::Allgatherv, "ring", false, "p - 1 steps around a ring"),
    algo(Coll::Allgatherv, "recursive_doubling", false, "log2 p doubling exchanges (folded)"),
    algo(Coll::Allgatherv, "bruck", false, "ceil(log2 p) rounds, rotated blocks"),
    algo(Coll::Alltoall, "bruck", false, "ceil(log2 p) rounds of packed blocks"),
    algo(Coll::Alltoall, "pairwise", false, "p - 1 exchange steps"),
    algo(Coll::Alltoall, "linear", false, "every exchange posted at once"),
    algo(Coll::Alltoallv, "pairwise", false, "p - 1 exchange steps"),
    algo(Coll::Alltoallv, "linear", false, "every exchange posted at once"),
    algo(Coll::ReduceScatter, "recursive_halving", true, "recursive halving (folded)"),
    algo(Coll::ReduceScatter, "pairwise", true, "p - 1 exchange-and-reduce steps"),
    algo(Coll::ReduceScatter, "reduce_scatter", false, "binomial reduce to rank 0, then scatter"),
    algo(Coll::ReduceScatterBlock, "recursive_halving", true, "recursive halving (folded)"),
    algo(Coll::ReduceScatterBlock, "pairwise", true, "p - 1 exchange-and-reduce steps"),
    algo(Coll::ReduceScatterBlock, "reduce_scatter", false, "binomial reduce to rank 0, then scatter"),
    algo(Coll::Scan, "recursive_doubling", false, "log2 p exchanges (MPICH's)"),
    algo(Coll::Scan, "linear", false, "chain through the ranks"),
    algo(Coll::Exscan, "recursive_doubling", false, "log2 p exchanges (MPICH's)"),
    algo(Coll::Exscan, "linear", false, "chain through the ranks"),
];

/// The algorithms of `coll`, in registry order.
pub fn algorithms(coll: Coll) -> impl Iterator<Item = &'static AlgoInfo> {
    ALGORITHMS.iter().filter(move |a| a.coll == coll)
}

/// Looks up `coll`'s algorithm `name`.
pub fn find(coll: Coll, name: &str) -> Option<&'static AlgoInfo> {
    algorithms(coll).find(|a| a.name == name)
}

/// A numeric condition in a table rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cond {
    Any,
    AtMost(u64),
    AtLeast(u64),
    Exactly(u64),
}

impl Cond {
    fn holds(self, v: u64) -> bool {
        match self {
            Cond::Any => true,
            Cond::AtMost(n) => v <= n,
            Cond::AtLeast(n) => v >= n,
            Cond::Exactly(n) => v == n,
        }
    }

    fn parse(s: &str) -> Result<Self, String> {
        let num = |t: &str| {
            t.parse::<u64>()
                .map_err(|_| format!("'{s}' is not *, N, <=N or >=N"))
        };
        Ok(if s == "*" {
            Cond::Any
        } else if let Some(t) = s.strip_prefix("<=") {
            Cond::AtMost(num(t)?)
        } else if let Some(t) = s.strip_prefix(">=") {
            Cond::AtLeast(num(t)?)
        } else {
            Cond::Exactly(num(s)?)
        })
    }
}

impl std::fmt::Display for Cond {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cond::Any => write!(f, "*"),
            Cond::AtMost(n) => write!(f, "<={n}"),
            Cond::AtLeast(n) => write!(f, ">={n}"),
            Cond::Exactly(n) => write!(f, "{n}"),
        }
    }
}

/// One rule: when all conditions hold, use `algo`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub coll: Coll,
    pub size: Cond,
    pub bytes: Cond,
    pub nodes: Cond,
    pub ppn: Cond,
    pub algo: &'static AlgoInfo,
}

/// The built-in selection table (measured on shared memory and TCP loopback; see
/// docs/benchmarks.md). Columns: collective, communicator size, bytes (the message, or one
/// rank's block), nodes, ranks per node, algorithm.
pub const DEFAULT_TABLE: &str = "\
# collective          size   bytes      nodes  ppn   algorithm
barrier               *      *          >=2    >=2   hierarchical
barrier               <=2    *          *      *     dissemination
barrier               <=4    *          1      *     linear
barrier               *      *          *      *     dissemination
bcast                 *      *          >=2    >=2   hierarchical
bcast                 <=4    *          1      *     linear
bcast                 <=8    <=524288   1      *     linear
bcast                 <=8    *          *      *     binomial
bcast                 *      <=65536    *      *     binomial
bcast                 *      *          *      *     scatter_allgather
reduce                *      *          >=2    >=2   hierarchical
reduce                <=8    *          *      *     binomial
reduce                *      <=65536    *      *     binomial
reduce                *      *          *      *     rabenseifner
allreduce             *      *          >=2    >=2   hierarchical
allreduce             *      <=8192     *      *     recursive_doubling
allreduce             <=8    *          *      *     rabenseifner
allreduce             *      <=1048576  *      *     rabenseifner
allreduce             *      *          *      *     ring
gather                *      *          *      *     binomial
gatherv               *      *          *      *     linear
scatter               *      *          *      *     binomial
scatterv              *      *          *      *     linear
allgather             >=16   <=1024     *      *     bruck
allgather             *      <=4096     *      *     recursive_doubling
allgather             *      *          *      *     ring
allgatherv            *      *          *      *     ring
alltoall              >=16   <=256      *      *     bruck
alltoall              <=8    *          *      *     linear
alltoall              *      *          *      *     pairwise
alltoallv             <=8    *          *      *     linear
alltoallv             *      *          *      *     pairwise
reduce_scatter        *      *          *      *     recursive_halving
reduce_scatter_block  *      *          *      *     recursive_halving
scan                  *      *          *      *     recursive_doubling
exscan                *      *          *      *     recursive_doubling
";

/// The selection table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Table {
    pub rules: Vec<Rule>,
    /// Where the table came from (for printing).
    pub source: String,
}

impl Table {
    /// Parses a table in [`DEFAULT_TABLE`]'s format.
    pub fn parse(text: &str, source: &str) -> Result<Self, String> {
        let mut rules = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let at = |m: String| format!("{source}:{}: {m}", i + 1);
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() != 6 {
                return Err(at(format!("expected 6 columns, found {}", f.len())));
            }
            let coll = Coll::from_name(f[0])
                .ok_or_else(|| at(format!("unknown collective '{}'", f[0])))?;
            let algo = find(coll, f[5])
                .ok_or_else(|| at(format!("{} has no algorithm '{}'", f[0], f[5])))?;
            rules.push(Rule {
                coll,
                size: Cond::parse(f[1]).map_err(at)?,
                bytes: Cond::parse(f[2]).map_err(at)?,
                nodes: Cond::parse(f[3]).map_err(at)?,
                ppn: Cond::parse(f[4]).map_err(at)?,
                algo,
            });
        }
        Ok(Self {
            rules,
            source: source.to_string(),
        })
    }

    /// The built-in table.
    pub fn builtin() -> Self {
        Self::parse(DEFAULT_TABLE, "built-in").expect("the built-in table parses")
    }

    /// `OXMPI_COLL_TABLE`'s file if set, else the built-in table.
    pub fn from_env() -> Result<Self, String> {
        match std::env::var("OXMPI_COLL_TABLE") {
            Ok(path) => {
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| format!("OXMPI_COLL_TABLE={path}: {e}"))?;
                Self::parse(&text, &path)
            }
            Err(_) => Ok(Self::builtin()),
        }
    }

    /// Chooses the algorithm for `spec` on a communicator of `size` ranks over `topo`.
    /// The first matching rule whose algorithm accepts the call wins; otherwise the first
    /// registered algorithm that accepts it.
    pub fn select(&self, spec: &Spec, size: u32, topo: &Topology) -> &'static AlgoInfo {
        let coll = spec.coll();
        let (bytes, nodes, ppn) = (
            spec.bytes() as u64,
            topo.nodes() as u64,
            topo.max_ppn() as u64,
        );
        self.rules
            .iter()
            .filter(|r| {
                r.coll == coll
                    && r.size.holds(size as u64)
                    && r.bytes.holds(bytes)
                    && r.nodes.holds(nodes)
                    && r.ppn.holds(ppn)
            })
            .map(|r| r.algo)
            .chain(algorithms(coll))
            .find(|a| a.refuses(spec).is_none())
            .expect("every collective has an algorithm for every call")
    }

    /// The table as text, with the algorithms forced by `OXMPI_COLL_<NAME>`.
    pub fn describe(&self) -> String {
        let mut s = format!("# oxmpi collective selection table ({})\n", self.source);
        s.push_str("# collective          size   bytes      nodes  ppn   algorithm\n");
        for r in &self.rules {
            s.push_str(&format!(
                "{:<21} {:<6} {:<10} {:<6} {:<5} {}\n",
                r.coll.name(),
                r.size.to_string(),
                r.bytes.to_string(),
                r.nodes.to_string(),
                r.ppn.to_string(),
                r.algo.name
            ));
        }
        for c in Coll::ALL {
            if let Some(a) = forced_from_env(c) {
                s.push_str(&format!("# forced: {}={a}\n", env_name(c)));
            }
        }
        s.push_str("# algorithms (* = commutative ops only):\n");
        for a in ALGORITHMS {
            s.push_str(&format!(
                "#   {:<21} {:<19}{} {}\n",
                a.coll.name(),
                a.name,
                if a.commutative_only { "*" } else { " " },
                a.summary
            ));
        }
        s
    }
}

/// `OXMPI_COLL_<NAME>` for `coll`.
pub fn env_name(coll: Coll) -> String {
    format!("OXMPI_COLL_{}", coll.name().to_uppercase())
}

/// The algorithm `OXMPI_COLL_<NAME>` forces for `coll`, if set.
pub fn forced_from_env(coll: Coll) -> Option<String> {
    std::env::var(env_name(coll)).ok().filter(|v| !v.is_empty())
}

/// Resolves a forced algorithm name for `spec`: an error names the variable and why.
pub fn forced(spec: &Spec, name: &str) -> Result<&'static AlgoInfo, String> {
    let coll = spec.coll();
    let a = find(coll, name).ok_or_else(|| {
        let known: Vec<&str> = algorithms(coll).map(|a| a.name).collect();
        format!(
            "{} has no algorithm '{name}' (known: {})",
            coll.name(),
            known.join(", ")
        )
    })?;
    match a.refuses(spec) {
        Some(why) => Err(why),
        None => Ok(a),
    }
}

/// Segment size of the pipelined broadcast.
pub const BCAST_SEGMENT: usize = 64 * 1024;

/// Builds `algo`'s schedule for `spec` on rank `rank` of `size`.
pub fn build(spec: &Spec, algo: &AlgoInfo, rank: u32, size: u32, topo: &Topology) -> Schedule {
    let mut b = Builder::new();
    let g = Group::all(rank, size);
    let full = |buf: Buf, n: usize| Span::new(buf, 0, n);
    let name = algo.name;
    match spec {
        Spec::Barrier => match name {
            "hierarchical" => barrier::hierarchical(&mut b, rank, topo),
            "recursive_doubling" => barrier::recursive_doubling(&mut b, &g),
            "linear" => barrier::linear(&mut b, &g),
            _ => barrier::dissemination(&mut b, &g),
        },
        Spec::Bcast { root, bytes } => {
            let d = full(Buf::Recv, *bytes);
            match name {
                "scatter_allgather" => bcast::scatter_allgather(&mut b, &g, *root, d),
                "pipelined" => bcast::pipelined(&mut b, &g, *root, d, BCAST_SEGMENT),
                "linear" => bcast::linear(&mut b, &g, *root, d),
                "hierarchical" => bcast::hierarchical(&mut b, rank, *root, topo, d),
                _ => bcast::binomial(&mut b, &g, *root, d),
            }
        }
        Spec::Reduce {
            root,
            bytes,
            elem,
            commutative,
        } => {
            let (i, o) = (full(Buf::Send, *bytes), full(Buf::Recv, *bytes));
            match name {
                "rabenseifner" => reduce::rabenseifner(&mut b, &g, *root, i, o, *elem),
                "hierarchical" => reduce::hierarchical(&mut b, rank, *root, topo, i, o),
                _ => reduce::binomial(&mut b, &g, *root, i, o, *commutative),
            }
        }
        Spec::Allreduce { bytes, elem, .. } => {
            let (i, o) = (full(Buf::Send, *bytes), full(Buf::Recv, *bytes));
            match name {
                "rabenseifner" => allreduce::rabenseifner(&mut b, &g, i, o, *elem),
                "ring" => allreduce::ring(&mut b, &g, i, o, *elem),
                "hierarchical" => allreduce::hierarchical(&mut b, rank, topo, i, o),
                _ => allreduce::recursive_doubling(&mut b, &g, i, o),
            }
        }
        Spec::Gather { root, block } => {
            let layout = Blocks::equal(size, *block);
            let i = full(Buf::Send, *block);
            match name {
                "linear" => gather::linear(&mut b, &g, *root, i, (Buf::Recv, &layout)),
                _ => gather::binomial(&mut b, &g, *root, i, (Buf::Recv, &layout), *block),
            }
        }
        Spec::Gatherv { root, send, recv } => {
            let empty = Blocks::equal(size, 0);
            let layout = if rank == *root { recv } else { &empty };
            gather::linear(
                &mut b,
                &g,
                *root,
                full(Buf::Send, *send),
                (Buf::Recv, layout),
            );
        }
        Spec::Scatter { root, block } => {
            let layout = Blocks::equal(size, *block);
            let o = full(Buf::Recv, *block);
            match name {
                "linear" => scatter::linear(&mut b, &g, *root, Buf::Send, &layout, o),
                _ => scatter::binomial(&mut b, &g, *root, (Buf::Send, &layout), o, *block),
            }
        }
        Spec::Scatterv { root, send, recv } => {
            let empty = Blocks::equal(size, 0);
            let layout = if rank == *root { send } else { &empty };
            scatter::linear(&mut b, &g, *root, Buf::Send, layout, full(Buf::Recv, *recv));
        }
        Spec::Allgather { block } => {
            let layout = Blocks::equal(size, *block);
            allgather_into(&mut b, &g, name, full(Buf::Send, *block), &layout);
        }
        Spec::Allgatherv { send, recv } => {
            allgather_into(&mut b, &g, name, full(Buf::Send, *send), recv);
        }
        Spec::Alltoall { block } => {
            let layout = Blocks::equal(size, *block);
            let (s, r) = ((Buf::Send, &layout), (Buf::Recv, &layout));
            match name {
                "bruck" => alltoall::bruck(&mut b, &g, s, r, *block),
                "linear" => alltoall::linear(&mut b, &g, s, r),
                _ => alltoall::pairwise(&mut b, &g, s, r),
            }
        }
        Spec::Alltoallv { send, recv } => {
            let (s, r) = ((Buf::Send, send), (Buf::Recv, recv));
            match name {
                "linear" => alltoall::linear(&mut b, &g, s, r),
                _ => alltoall::pairwise(&mut b, &g, s, r),
            }
        }
        Spec::ReduceScatter {
            blocks,
            commutative,
            ..
        } => reduce_scatter_with(&mut b, &g, name, blocks, *commutative),
        Spec::ReduceScatterBlock {
            block, commutative, ..
        } => reduce_scatter_with(&mut b, &g, name, &Blocks::equal(size, *block), *commutative),
        Spec::Scan { bytes, .. } | Spec::Exscan { bytes, .. } => {
            let ex = matches!(spec, Spec::Exscan { .. });
            let (i, o) = (full(Buf::Send, *bytes), full(Buf::Recv, *bytes));
            match name {
                "linear" => scan::linear(&mut b, &g, i, o, ex),
                _ => scan::recursive_doubling(&mut b, &g, i, o, ex),
            }
        }
    }
    b.finish()
}

/// Allgather into `Recv` laid out as `layout`: through a packed temporary when the layout is
/// not packed.
fn allgather_into(b: &mut Builder, g: &Group, name: &str, input: Span, layout: &Blocks) {
    let packed = Blocks::packed(layout.counts.clone());
    let out = if layout.is_packed() {
        Buf::Recv
    } else {
        b.tmp(packed.total())
    };
    let target = if out == Buf::Recv { layout } else { &packed };
    match name {
        "recursive_doubling" if out == Buf::Recv => {
            allgather::recursive_doubling(b, g, input, out, target)
        }
        "recursive_doubling" => allgather::recursive_doubling(b, g, input, out, &packed),
        "bruck" => allgather::bruck(b, g, input, out, target),
        _ => allgather::ring(b, g, input, out, target),
    }
    if out != Buf::Recv {
        for i in 0..g.size() {
            b.copy(packed.span(out, i), layout.span(Buf::Recv, i));
        }
        b.round();
    }
}

fn reduce_scatter_with(b: &mut Builder, g: &Group, name: &str, blocks: &Blocks, commutative: bool) {
    let input = Span::new(Buf::Send, 0, blocks.total());
    let output = Span::new(Buf::Recv, 0, blocks.counts[g.rank as usize]);
    match name {
        "pairwise" => reduce_scatter::pairwise(b, g, input, output, blocks),
        "reduce_scatter" => {
            reduce_scatter::reduce_scatter(b, g, input, output, blocks, commutative)
        }
        _ => reduce_scatter::recursive_halving(b, g, input, output, blocks),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agreement_separates_what_ranks_must_share_from_what_is_their_own() {
        let bcast = |root, bytes| Spec::Bcast { root, bytes }.agreement();
        assert_eq!(bcast(1, 8), bcast(1, 8));
        assert_ne!(bcast(0, 8)[1], bcast(1, 8)[1], "root");
        assert_ne!(bcast(0, 8)[2], bcast(0, 16)[2], "bytes");
        let ar = |elem, commutative| Spec::Allreduce {
            bytes: 8,
            elem,
            commutative,
        };
        assert_ne!(ar(4, true).agreement()[0], bcast(0, 8)[0], "collective");
        assert_ne!(ar(4, true).agreement()[3], ar(8, true).agreement()[3]);
        assert_ne!(ar(4, true).agreement()[3], ar(4, false).agreement()[3]);
        // A gatherv's layout is the root's: other ranks pass none, and still agree.
        let gv = |counts: Vec<usize>| {
            Spec::Gatherv {
                root: 0,
                send: 4,
                recv: Blocks {
                    displs: vec![0; counts.len()],
                    counts,
                },
            }
            .agreement()
        };
        assert_eq!(gv(vec![1, 2]), gv(vec![]));
        // An allgatherv's counts are everyone's; the displacements are each rank's own.
        let agv = |counts: Vec<usize>, displs: Vec<usize>| {
            Spec::Allgatherv {
                send: 4,
                recv: Blocks { counts, displs },
            }
            .agreement()
        };
        assert_eq!(agv(vec![1, 2], vec![0, 1]), agv(vec![1, 2], vec![5, 0]));
        assert_ne!(agv(vec![1, 2], vec![0, 1]), agv(vec![2, 1], vec![0, 2]));
        assert!(AGREEMENT_FIELDS.len() == bcast(0, 0).len());
    }

    #[test]
    fn builtin_table_parses_and_selects_by_size() {
        let t = Table::builtin();
        let flat = Topology::flat(4);
        let ar = |bytes, commutative| Spec::Allreduce {
            bytes,
            elem: 4,
            commutative,
        };
        assert_eq!(t.select(&ar(8, true), 4, &flat).name, "recursive_doubling");
        assert_eq!(t.select(&ar(1 << 16, true), 4, &flat).name, "rabenseifner");
        assert_eq!(t.select(&ar(4 << 20, true), 4, &flat).name, "rabenseifner");
        assert_eq!(
            t.select(&ar(4 << 20, true), 32, &Topology::flat(32)).name,
            "ring"
        );
        // Non-commutative ops fall through to an algorithm that keeps rank order.
        assert_eq!(
            t.select(&ar(4 << 20, false), 4, &flat).name,
            "recursive_doubling"
        );
        let two_nodes = Topology::blocks(4, 2);
        assert_eq!(t.select(&ar(8, true), 4, &two_nodes).name, "hierarchical");
        assert!(forced(&ar(8, false), "ring").is_err());
        assert!(forced(&ar(8, true), "nonesuch")
            .unwrap_err()
            .contains("known: "));
        assert!(t.describe().contains("allreduce"));
    }

    #[test]
    fn table_errors_name_the_line() {
        let e = Table::parse("bcast * * * * tree\n", "t.txt").unwrap_err();
        assert!(e.starts_with("t.txt:1:"), "{e}");
        assert!(Table::parse("bcast * <=x * * binomial", "t").is_err());
        assert!(Table::parse("bcast * * *", "t").is_err());
    }
}
