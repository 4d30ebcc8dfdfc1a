//! Protocol selection: each message goes `eager`, `rndv/pipeline` or `rndv/read`, chosen by
//! its size against per-peer thresholds taken from the fabric's capabilities and overridable
//! with `OXMPI_EAGER_MAX`, `OXMPI_RNDV_READ_MIN` and `OXMPI_RNDV_READ_MAX` (sizes accept
//! `k`/`m` suffixes).

use oxmpi_fabric::Caps;

/// A point-to-point protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// Header and payload in one frame; completes locally.
    Eager,
    /// Request-to-send, then the receiver asks for the data to be streamed in chunks.
    RndvPipeline,
    /// Request-to-send carrying a remote key; the receiver reads the data itself.
    RndvRead,
}

impl Protocol {
    /// The name printed by `--fabric-info`-style reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::Eager => "eager",
            Self::RndvPipeline => "rndv/pipeline",
            Self::RndvRead => "rndv/read",
        }
    }
}

/// Thresholds towards one peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProtocolConfig {
    /// Largest eager message.
    pub eager_max: usize,
    /// Smallest message read remotely (`usize::MAX`: never).
    pub read_min: usize,
    /// Largest message read remotely; larger ones use the pipeline.
    pub read_max: usize,
    /// Pipeline chunk size.
    pub chunk: usize,
    /// Smallest eager message handed to the fabric in place ([`Caps::lent_min`]).
    pub lent_min: usize,
    /// Largest eager message of a collective's exchanges: a whole frame, up to
    /// [`EXCHANGE_EAGER_MAX`] (see [`ProtocolConfig::select_exchange`]).
    pub exchange_eager_max: usize,
    /// Largest eager message a collective sends one way (no receive from the same peer in
    /// its round): `exchange_eager_max` unless lowered (see
    /// [`ProtocolConfig::select_collective`]).
    pub oneway_eager_max: usize,
}

/// Upper bound of [`ProtocolConfig::exchange_eager_max`].
pub const EXCHANGE_EAGER_MAX: usize = 64 * 1024;

/// Largest eager message a collective round sends as its only send, when its one-way limit
/// is lower (`Engine::isend_single`). 2-rank bcast, reduce, gather and scatter read 16–32
/// KiB in 0.36–0.73x the time eagerly, but 64 KiB in 1.00–1.14x (interleaved).
pub const SINGLE_EAGER_MAX: usize = 32 * 1024;

fn env_size(name: &str) -> Option<usize> {
    let v = std::env::var(name).ok()?;
    let v = v.trim().to_ascii_lowercase();
    let (n, m) = if let Some(n) = v.strip_suffix('k') {
        (n, 1024)
    } else if let Some(n) = v.strip_suffix('m') {
        (n, 1024 * 1024)
    } else {
        (v.as_str(), 1)
    };
    n.parse::<usize>().ok().map(|n| n.saturating_mul(m))
}

impl ProtocolConfig {
    /// Thresholds for a peer reached with `caps`, with environment overrides applied.
    pub fn from_caps(caps: &Caps) -> Self {
        let eager_max = env_size("OXMPI_EAGER_MAX")
            .unwrap_or(caps.eager_max)
            .min(caps.max_payload);
        let (read_min, read_max) = if caps.rma_read {
            (
                env_size("OXMPI_RNDV_READ_MIN").unwrap_or(caps.rndv_read_min),
                env_size("OXMPI_RNDV_READ_MAX").unwrap_or(caps.rndv_read_max),
            )
        } else {
            (usize::MAX, 0)
        };
        let exchange_eager_max = env_size("OXMPI_COLL_EAGER_MAX")
            .unwrap_or(EXCHANGE_EAGER_MAX)
            .min(caps.max_payload)
            .max(eager_max);
        Self {
            eager_max,
            read_min,
            read_max,
            chunk: caps.pipeline_chunk.min(caps.max_payload).max(1),
            lent_min: caps.lent_min,
            exchange_eager_max,
            oneway_eager_max: exchange_eager_max,
        }
    }

    /// Eager limit of a collective round's only send: [`SINGLE_EAGER_MAX`] or the one-way
    /// limit, whichever is larger, and never above `exchange_eager_max`.
    pub fn single_eager_max(&self) -> usize {
        SINGLE_EAGER_MAX
            .max(self.oneway_eager_max)
            .min(self.exchange_eager_max)
    }

    /// The protocol for a message of `len` bytes sent by a collective: eager up to a whole
    /// frame (no handshake, which costs most when ranks share cores and must be scheduled to
    /// answer), then a remote read from `read_min` up, with no upper limit. The pipeline's
    /// two copies beat one read only when the other direction is idle; in a collective's
    /// exchanges both ranks send, and each one copying once (its reads) costs half as much.
    pub fn select_exchange(&self, len: usize) -> Protocol {
        self.select_collective(len, self.exchange_eager_max)
    }

    /// [`select_exchange`](Self::select_exchange) with eager messages up to `eager_max`:
    /// collectives pass `exchange_eager_max` for a send whose round also receives from the
    /// same peer, `oneway_eager_max` otherwise. A one-way transfer has no reverse traffic to
    /// stall behind a handshake, so with a core per rank it is cheaper read in one copy than
    /// copied twice through the ring.
    pub fn select_collective(&self, len: usize, eager_max: usize) -> Protocol {
        if len <= eager_max {
            Protocol::Eager
        } else if self.read_min <= self.read_max && len >= self.read_min {
            Protocol::RndvRead
        } else {
            Protocol::RndvPipeline
        }
    }

    /// The protocol for a message of `len` bytes.
    pub fn select(&self, len: usize) -> Protocol {
        if len <= self.eager_max {
            Protocol::Eager
        } else if len >= self.read_min && len <= self.read_max {
            Protocol::RndvRead
        } else {
            Protocol::RndvPipeline
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn select_by_size() {
        let c = ProtocolConfig {
            eager_max: 100,
            read_min: 1000,
            read_max: 5000,
            chunk: 10,
            lent_min: usize::MAX,
            exchange_eager_max: 200,
            oneway_eager_max: 200,
        };
        assert_eq!(c.select(0), Protocol::Eager);
        assert_eq!(c.select(100), Protocol::Eager);
        assert_eq!(c.select(101), Protocol::RndvPipeline);
        assert_eq!(c.select(1000), Protocol::RndvRead);
        assert_eq!(c.select(5000), Protocol::RndvRead);
        assert_eq!(c.select(5001), Protocol::RndvPipeline);
        assert_eq!(c.select_exchange(5001), Protocol::RndvRead);
        assert_eq!(c.select_exchange(200), Protocol::Eager);
        assert_eq!(c.select_exchange(999), Protocol::RndvPipeline);
        let no_rma = ProtocolConfig {
            read_min: usize::MAX,
            read_max: 0,
            ..c
        };
        assert_eq!(no_rma.select_exchange(1 << 30), Protocol::RndvPipeline);
        // One-way collective sends with a lowered limit: eager below it, read from read_min.
        let oneway = ProtocolConfig {
            read_min: 150,
            oneway_eager_max: 100,
            ..c
        };
        assert_eq!(
            oneway.select_collective(100, oneway.oneway_eager_max),
            Protocol::Eager
        );
        assert_eq!(
            oneway.select_collective(101, oneway.oneway_eager_max),
            Protocol::RndvPipeline
        );
        assert_eq!(
            oneway.select_collective(150, oneway.oneway_eager_max),
            Protocol::RndvRead
        );
        assert_eq!(
            oneway.select_collective(150, oneway.exchange_eager_max),
            Protocol::Eager
        );
    }
}
