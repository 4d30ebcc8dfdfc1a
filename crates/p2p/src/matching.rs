//! Posted-receive and unexpected-message queues, one pair per communicator context.
//!
//! Matching is on (context, source, tag) with [`ANY_SOURCE`] and
//! [`ANY_TAG`]; both queues are searched front to back, so the oldest
//! candidate wins, which with in-order arrival per sender gives MPI's non-overtaking rule.

use crate::{ReqId, ANY_SOURCE, ANY_TAG};
use std::collections::VecDeque;

/// A receive waiting for a message.
#[derive(Clone, Copy, Debug)]
pub struct Posted {
    /// The receive request.
    pub id: ReqId,
    /// Wanted source (or `ANY_SOURCE`).
    pub src: i32,
    /// Wanted tag (or `ANY_TAG`).
    pub tag: i32,
}

/// What an RTS offering a remote read says of the sender's memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Remote {
    /// Address of the message in the sender.
    pub addr: u64,
    /// The fabric's protection key.
    pub key: u64,
    /// Its sender only waits for its sends ([`crate::frame::FLAG_SENDER_IDLE`]).
    pub sender_idle: bool,
}

/// What an unexpected message holds until a receive matches it.
#[derive(Debug)]
pub enum Body {
    /// An eager message's bytes (and the sender's request, if it waits for an ACK).
    Eager {
        /// The payload.
        data: Vec<u8>,
        /// Sender's request id for synchronous mode.
        sync_req: Option<u64>,
    },
    /// A rendezvous announcement.
    Rts {
        /// Sender's request id.
        sreq: u64,
        /// Where the receiver may read it directly, if it may.
        remote: Option<Remote>,
    },
    /// A send to this same rank, waiting in place.
    SelfSend {
        /// The local send request.
        sreq: ReqId,
    },
}

/// A message that arrived before its receive.
#[derive(Debug)]
pub struct Unexpected {
    /// Sender's world rank.
    pub src: u32,
    /// Tag.
    pub tag: i32,
    /// Length in bytes.
    pub len: u64,
    /// Contents.
    pub body: Body,
}

/// Whether a receive for (`want_src`, `want_tag`) takes a message from `src` with `tag`.
#[inline]
pub fn matches(want_src: i32, want_tag: i32, src: u32, tag: i32) -> bool {
    (want_src == ANY_SOURCE || want_src as u32 == src) && (want_tag == ANY_TAG || want_tag == tag)
}

/// The queues of one context.
#[derive(Default, Debug)]
pub struct Queues {
    posted: VecDeque<Posted>,
    unexpected: VecDeque<Unexpected>,
}

impl Queues {
    /// Removes and returns the oldest posted receive that takes (`src`, `tag`).
    pub fn take_posted(&mut self, src: u32, tag: i32) -> Option<Posted> {
        let i = self
            .posted
            .iter()
            .position(|p| matches(p.src, p.tag, src, tag))?;
        self.posted.remove(i)
    }

    /// Removes and returns the oldest unexpected message a receive for (`src`, `tag`) takes.
    pub fn take_unexpected(&mut self, src: i32, tag: i32) -> Option<Unexpected> {
        let i = self
            .unexpected
            .iter()
            .position(|u| matches(src, tag, u.src, u.tag))?;
        self.unexpected.remove(i)
    }

    /// The oldest unexpected message a receive for (`src`, `tag`) would take.
    pub fn peek_unexpected(&self, src: i32, tag: i32) -> Option<&Unexpected> {
        self.unexpected
            .iter()
            .find(|u| matches(src, tag, u.src, u.tag))
    }

    /// Queues a posted receive.
    pub fn post(&mut self, p: Posted) {
        self.posted.push_back(p);
    }

    /// Queues an unexpected message.
    pub fn push_unexpected(&mut self, u: Unexpected) {
        self.unexpected.push_back(u);
    }

    /// Removes a posted receive by id (cancellation, failure); true if it was there.
    pub fn remove_posted(&mut self, id: ReqId) -> bool {
        match self.posted.iter().position(|p| p.id == id) {
            Some(i) => {
                self.posted.remove(i);
                true
            }
            None => false,
        }
    }

    /// Posted receives (for failing those aimed at a lost peer).
    pub fn posted(&self) -> impl Iterator<Item = &Posted> {
        self.posted.iter()
    }

    /// Number of unexpected messages held.
    pub fn unexpected_len(&self) -> usize {
        self.unexpected.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oldest_match_wins_and_wildcards_apply() {
        let mut q = Queues::default();
        q.post(Posted {
            id: 1,
            src: 2,
            tag: 5,
        });
        q.post(Posted {
            id: 2,
            src: ANY_SOURCE,
            tag: 5,
        });
        q.post(Posted {
            id: 3,
            src: ANY_SOURCE,
            tag: ANY_TAG,
        });
        assert_eq!(q.take_posted(3, 5).unwrap().id, 2);
        assert_eq!(q.take_posted(2, 5).unwrap().id, 1);
        assert_eq!(q.take_posted(9, 9).unwrap().id, 3);
        assert!(q.take_posted(2, 5).is_none());
        for (src, tag) in [(1, 1), (2, 1), (1, 2)] {
            q.push_unexpected(Unexpected {
                src,
                tag,
                len: 0,
                body: Body::SelfSend { sreq: 0 },
            });
        }
        assert_eq!(
            q.take_unexpected(ANY_SOURCE, 2).map(|u| (u.src, u.tag)),
            Some((1, 2))
        );
        assert_eq!(
            q.take_unexpected(2, ANY_TAG).map(|u| (u.src, u.tag)),
            Some((2, 1))
        );
        assert_eq!(
            q.peek_unexpected(ANY_SOURCE, ANY_TAG).map(|u| u.src),
            Some(1)
        );
    }
}
