//! The frame header: 48 little-endian bytes at the front of every frame.
//!
//! ```text
//! 0 kind u8 | 1 flags u8 | 2 reserved u16 | 4 ctx u32 | 8 src u32 | 12 tag i32 | 16 seq u32
//! 20 reserved u32 | 24 len u64 | 32 req u64 | 40 arg u64
//! ```
//! `req` and `arg` depend on the kind: the sender's request id (EAGER with SYNC, RTS, FIN, ACK),
//! the receiver's (CTS carries both: `req` = sender's, `arg` = receiver's; DATA carries the
//! receiver's in `req` and the offset in `arg`); RTS with RMA carries the address in `arg`.

use oxmpi_fabric::{Header, HEADER_LEN};

/// Frame kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// A whole message.
    Eager = 1,
    /// Request to send a large message (rendezvous).
    Rts = 2,
    /// Clear to send: the receiver matched an RTS and wants the data streamed.
    Cts = 3,
    /// A chunk of rendezvous data.
    Data = 4,
    /// The receiver finished reading a rendezvous message.
    Fin = 5,
    /// A synchronous eager message was matched.
    Ack = 6,
}

/// EAGER: the sender waits for an ACK (synchronous mode).
pub const FLAG_SYNC: u8 = 1;
/// RTS: the receiver may read the data remotely at `arg`.
pub const FLAG_RMA: u8 = 2;
/// RTS with [`FLAG_RMA`]: a collective's send from a round that receives nothing, so its
/// sender only waits for its sends (it may help copy them: `Fabric::read_from_idle`).
pub const FLAG_SENDER_IDLE: u8 = 4;

/// A decoded header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// Kind.
    pub kind: Kind,
    /// Flags.
    pub flags: u8,
    /// Communicator context.
    pub ctx: u32,
    /// Sender's world rank.
    pub src: u32,
    /// Tag.
    pub tag: i32,
    /// Per-peer sequence number of matching frames (EAGER, RTS).
    pub seq: u32,
    /// Message length.
    pub len: u64,
    /// A request id (see the module doc).
    pub req: u64,
    /// Kind-specific argument.
    pub arg: u64,
}

impl FrameHeader {
    /// Encodes into the fabric's header bytes.
    pub fn encode(&self) -> Header {
        let mut h = [0u8; HEADER_LEN];
        h[0] = self.kind as u8;
        h[1] = self.flags;
        h[4..8].copy_from_slice(&self.ctx.to_le_bytes());
        h[8..12].copy_from_slice(&self.src.to_le_bytes());
        h[12..16].copy_from_slice(&self.tag.to_le_bytes());
        h[16..20].copy_from_slice(&self.seq.to_le_bytes());
        h[24..32].copy_from_slice(&self.len.to_le_bytes());
        h[32..40].copy_from_slice(&self.req.to_le_bytes());
        h[40..48].copy_from_slice(&self.arg.to_le_bytes());
        h
    }

    /// Decodes, rejecting unknown kinds.
    pub fn decode(h: &Header) -> Result<Self, String> {
        let u32_at = |i: usize| u32::from_le_bytes(h[i..i + 4].try_into().expect("4 bytes"));
        let u64_at = |i: usize| u64::from_le_bytes(h[i..i + 8].try_into().expect("8 bytes"));
        let kind = match h[0] {
            1 => Kind::Eager,
            2 => Kind::Rts,
            3 => Kind::Cts,
            4 => Kind::Data,
            5 => Kind::Fin,
            6 => Kind::Ack,
            k => return Err(format!("unknown frame kind {k}")),
        };
        Ok(Self {
            kind,
            flags: h[1],
            ctx: u32_at(4),
            src: u32_at(8),
            tag: u32_at(12) as i32,
            seq: u32_at(16),
            len: u64_at(24),
            req: u64_at(32),
            arg: u64_at(40),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let f = FrameHeader {
            kind: Kind::Rts,
            flags: FLAG_RMA,
            ctx: 7,
            src: 3,
            tag: -5,
            seq: u32::MAX,
            len: 1 << 40,
            req: 99,
            arg: 0xdead_beef,
        };
        assert_eq!(FrameHeader::decode(&f.encode()).unwrap(), f);
        let mut bad = f.encode();
        bad[0] = 77;
        assert!(FrameHeader::decode(&bad).is_err());
    }
}
