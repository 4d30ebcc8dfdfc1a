//! The point-to-point API through the public API, ranks being threads of the test process; included by
//! one test file per fabric (see `loopback_api.rs`).

use super::threads;
use oxmpi::{
    test_all, test_any, test_some, wait_all, wait_any, wait_some, Error, ANY_SOURCE, ANY_TAG,
};
use std::time::{Duration, Instant};

#[test]
fn ring_of_sendrecv_on_every_protocol() {
    threads(3, |u| {
        let w = u.world();
        let (me, n) = (w.rank(), w.size());
        for len in [0usize, 5, 4096, 5000, 20_000, 300_000] {
            let send: Vec<u16> = (0..len).map(|i| (i as u16) ^ me as u16).collect();
            let mut recv = vec![0u16; len];
            let left = (me + n - 1) % n;
            let st = w
                .sendrecv(&send, (me + 1) % n, 1, &mut recv, left, 1)
                .unwrap();
            assert_eq!((st.source, st.tag, st.bytes), (left, 1, 2 * len as u64));
            assert!(recv
                .iter()
                .enumerate()
                .all(|(i, &x)| x == (i as u16) ^ left as u16));
        }
        w.barrier().unwrap();
    });
}

#[test]
fn scoped_requests_wait_any_and_test_all() {
    threads(2, |u| {
        let w = u.world();
        let peer = 1 - w.rank();
        let data: Vec<f64> = (0..1000).map(f64::from).collect();
        let mut a = vec![0f64; 1000];
        let mut b = vec![0f64; 10];
        w.scope(|s| {
            let mut reqs = vec![
                s.irecv(&mut a, peer, 1).unwrap(),
                s.irecv(&mut b, peer, 2).unwrap(),
                s.isend(&data, peer, 1).unwrap(),
                s.isend(&data[..10], peer, 2).unwrap(),
            ];
            let mut seen = 0;
            while let Some((i, _)) = wait_any(&mut reqs).unwrap() {
                assert!(!reqs[i].is_active());
                seen += 1;
            }
            assert_eq!(seen, 4);
            assert!(test_all(&mut reqs).unwrap());
        });
        assert_eq!(a, data);
        assert_eq!(b, data[..10]);
        // A request dropped without waiting still completes before the scope ends.
        let mut c = [0u8; 3];
        w.scope(|s| {
            let _ = s.irecv(&mut c, peer, 3).unwrap();
            let r = s.isend(&[1u8, 2, 3], peer, 3).unwrap();
            drop(r);
        });
        assert_eq!(c, [1, 2, 3]);
    });
}

/// `MPI_Waitsome`, `MPI_Testsome` and `MPI_Testany`: only what has arrived is collected, and
/// nothing before it arrives. Rank 1 sends tag 2, waits for rank 0's go, then sends tags 1, 3
/// and 4.
#[test]
fn wait_some_test_some_and_test_any_collect_what_arrived() {
    threads(2, |u| {
        let w = u.world();
        if w.rank() == 1 {
            w.send(&[2u32], 0, 2).unwrap();
            w.recv_into(&mut [0u8; 0], 0, 9).unwrap();
            for tag in [1, 3, 4] {
                w.send(&[tag as u32], 0, tag).unwrap();
            }
            return;
        }
        let mut bufs = [[0u32; 1]; 4];
        let mut done = Vec::new();
        w.scope(|s| {
            let mut reqs: Vec<_> = bufs
                .iter_mut()
                .zip(1..)
                .map(|(b, tag)| s.irecv(b, 1, tag).unwrap())
                .collect();
            assert_eq!(wait_some(&mut reqs, &mut done).unwrap(), 1);
            assert_eq!((done[0].0, done[0].1.tag), (1, 2));
            // Nothing else is sent before the go.
            assert_eq!(test_any(&mut reqs).unwrap(), None);
            assert_eq!(test_some(&mut reqs, &mut done).unwrap(), 0);
            assert!(done.is_empty());
            w.send(&[0u8; 0], 1, 9).unwrap();
            let mut got = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(30);
            while got.len() < 2 {
                assert!(Instant::now() < deadline, "only {got:?} arrived");
                if let Some((i, st)) = test_any(&mut reqs).unwrap() {
                    assert!(!reqs[i].is_active());
                    assert_eq!(st.tag, i as i32 + 1);
                    got.push(i);
                }
            }
            while wait_some(&mut reqs, &mut done).unwrap() > 0 {
                got.extend(done.iter().map(|&(i, _)| i));
            }
            got.sort();
            assert_eq!(got, [0, 2, 3]);
            // No active request left: nothing to wait for or test.
            assert_eq!(test_any(&mut reqs).unwrap(), None);
            assert_eq!(test_some(&mut reqs, &mut done).unwrap(), 0);
        });
        assert_eq!(bufs, [[1], [2], [3], [4]]);
    });
}

/// `MPI_Sendrecv_replace` around a ring, on every protocol's sizes and to itself.
#[test]
fn sendrecv_replace_around_a_ring() {
    threads(3, |u| {
        let w = u.world();
        let (me, n) = (w.rank(), w.size());
        let (right, left) = ((me + 1) % n, (me + n - 1) % n);
        for len in [0usize, 3, 5000, 300_000] {
            let mut buf: Vec<u64> = (0..len as u64).map(|i| i * 10 + me as u64).collect();
            let st = w.sendrecv_replace(&mut buf, right, 7, left, 7).unwrap();
            assert_eq!((st.source, st.bytes), (left, 8 * len as u64));
            assert!(buf
                .iter()
                .enumerate()
                .all(|(i, &x)| x == i as u64 * 10 + left as u64));
        }
        let mut mine = [me; 4];
        w.sendrecv_replace(&mut mine, me, 8, me, 8).unwrap();
        assert_eq!(mine, [me; 4]);
        // Rank r's buffer holds 2 + r bytes: a shorter message fills its front, a longer one
        // (rank 0's, from rank n - 1) is the truncation error, and the send went out anyway.
        let mut varied = vec![me as u8; 2 + me as usize];
        match w.sendrecv_replace(&mut varied, right, 9, left, ANY_TAG) {
            Ok(st) => {
                assert!(me > 0);
                assert_eq!((st.tag, st.bytes), (9, 2 + left as u64));
                assert!(varied[..2 + left as usize].iter().all(|&x| x == left as u8));
            }
            Err(e) => {
                assert_eq!(me, 0);
                assert!(matches!(e, Error::Truncated { .. }), "{e:?}");
            }
        }
        w.barrier().unwrap();
    });
}

#[test]
fn objects_wildcards_and_truncation() {
    threads(3, |u| {
        let w = u.world();
        if w.rank() == 0 {
            let mut got = Vec::new();
            for _ in 0..4 {
                let (v, st): (Vec<String>, _) = w.recv_obj(ANY_SOURCE, ANY_TAG).unwrap();
                assert_eq!(v[0], format!("from {}", st.source));
                got.push((st.source, st.tag));
            }
            got.sort();
            assert_eq!(got, [(1, 10), (1, 11), (2, 10), (2, 11)]);
            w.barrier().unwrap();
            let mut small = [0u32; 2];
            let e = w.recv_into(&mut small, 1, 5).unwrap_err();
            assert!(
                matches!(
                    e,
                    Error::Truncated {
                        source: 1,
                        tag: 5,
                        len: 16,
                        capacity: 8
                    }
                ),
                "{e}"
            );
            assert_eq!(small, [1, 2]);
            let (v, _) = w.recv_vec::<u32>(1, 5).unwrap();
            assert_eq!(v, [9]);
        } else {
            let msg = vec![format!("from {}", w.rank())];
            w.send_obj(&msg, 0, 10).unwrap();
            let r = w.isend_obj(&msg, 0, 11).unwrap();
            r.wait().unwrap();
            w.barrier().unwrap();
            if w.rank() == 1 {
                w.send(&[1u32, 2, 3, 4], 0, 5).unwrap();
                w.send(&[9u32], 0, 5).unwrap();
            }
        }
        assert!(matches!(
            w.send(&[0u8], 3, 0),
            Err(Error::InvalidRank { rank: 3, size: 3 })
        ));
        w.barrier().unwrap();
    });
}

/// Values passed around a ring with `sendrecv_obj` (every rank sends before it receives, so
/// this would deadlock if the two did not overlap), and to oneself.
#[test]
fn sendrecv_obj_around_a_ring() {
    for n in [1, 2, 3, 5] {
        threads(n, |u| {
            let w = u.world();
            let (me, p) = (w.rank(), w.size());
            let (right, left) = ((me + 1) % p, (me + p - 1) % p);
            let mine = (format!("rank {me}"), vec![me; me as usize]);
            let (got, st): ((String, Vec<u32>), _) =
                w.sendrecv_obj(&mine, right, 3, left, 3).unwrap();
            assert_eq!(got, (format!("rank {left}"), vec![left; left as usize]));
            assert_eq!((st.source, st.tag), (left, 3));
            let (echo, _): (String, _) = w.sendrecv_obj("self", me, 4, me, 4).unwrap();
            assert_eq!(echo, "self");
            w.barrier().unwrap();
        });
    }
}

/// A receive no message has matched is cancelled: its scope ends, its buffer is untouched,
/// and the message sent afterwards goes to the next receive. A receive already matched, and a
/// send, complete as usual instead.
#[test]
fn cancelled_receives_leave_their_messages_to_later_receives() {
    for n in [1, 2, 3] {
        threads(n, |u| {
            let w = u.world();
            let (me, p) = (w.rank(), w.size());
            let right = (me + 1) % p;
            let mut untouched = [7u32; 4];
            w.scope(|s| {
                let wildcard = s.irecv(&mut untouched, ANY_SOURCE, 90).unwrap();
                assert_eq!(wildcard.cancel().unwrap(), None);
            });
            let obj = w.irecv_obj::<String>(ANY_SOURCE, 91).unwrap();
            assert!(obj.cancel().unwrap().is_none());
            assert_eq!(untouched, [7; 4]);
            w.barrier().unwrap();
            // Messages with those tags, sent after the cancels, reach the next receives.
            w.send(&[me; 4], right, 90).unwrap();
            w.send_obj(&format!("from {me}"), right, 91).unwrap();
            let mut got = [0u32; 4];
            let st = w.recv_into(&mut got, ANY_SOURCE, 90).unwrap();
            let left = (me + p - 1) % p;
            assert_eq!((got, st.source), ([left; 4], left));
            let (text, _): (String, _) = w.recv_obj(ANY_SOURCE, 91).unwrap();
            assert_eq!(text, format!("from {left}"));

            // A receive a message has already matched completes with it; a send completes.
            let (mut got, out) = ([0u32; 2], [me, me]);
            w.scope(|s| {
                let r = s.irecv(&mut got, left, 92).unwrap();
                let sent = s.isend(&out, right, 92).unwrap();
                w.barrier().unwrap(); // every send has gone out
                let mut r = r;
                while r.test().unwrap().is_none() {}
                assert!(!r.is_active());
                assert!(sent.cancel().unwrap().is_some());
            });
            assert_eq!(got, [left; 2]);
            let mut got = [0u32; 2];
            w.scope(|s| {
                let r = s.irecv(&mut got, left, 93).unwrap();
                w.send(&[me, 1], right, 93).unwrap();
                w.barrier().unwrap();
                // Matched by now (the barrier's messages came after it from `left`), or not:
                // either way the cancel gives it back whole or not at all.
                match r.cancel().unwrap() {
                    Some(st) => assert_eq!((st.source, st.tag), (left, 93)),
                    None => {
                        let st = w.recv_into(&mut [0u32; 2], left, 93).unwrap();
                        assert_eq!(st.source, left);
                    }
                }
            });
            w.barrier().unwrap();
        });
    }
}

#[test]
fn ssend_and_probe() {
    threads(2, |u| {
        let w = u.world();
        if w.rank() == 0 {
            w.ssend(&[7u64; 3], 1, 4).unwrap();
            w.ssend_obj(&"done", 1, 5).unwrap();
        } else {
            let st = w.probe(0, ANY_TAG).unwrap();
            assert_eq!((st.tag, st.bytes, st.count::<u64>().unwrap()), (4, 24, 3));
            let (v, _) = w.recv_vec::<u64>(0, 4).unwrap();
            assert_eq!(v, [7; 3]);
            let (s, _): (String, _) = w.recv_obj(0, 5).unwrap();
            assert_eq!(s, "done");
        }
        let sc = u.self_comm();
        assert_eq!((sc.rank(), sc.size()), (0, 1));
        sc.send(&[5u8], 0, 0).unwrap();
        assert_eq!(sc.recv_vec::<u8>(0, 0).unwrap().0, [5]);
        wait_all(&mut []).unwrap();
    });
}

/// Matched probes: the probed message is out of matching (a later probe sees the next one),
/// only its handle receives it (buffer, vector, object, scoped nonblocking; eager and
/// rendezvous sizes), a dropped handle discards it without leaving its sender waiting, and a
/// short buffer is a truncation error. Messages to self too.
#[test]
fn matched_probes_take_their_message_out_of_matching() {
    threads(2, |u| {
        let w = u.world();
        let big: Vec<u16> = (0..150_000).map(|i| i as u16).collect();
        if w.rank() == 1 {
            w.send(&[1u16, 2, 3, 4, 5], 0, 1).unwrap();
            w.send(&big, 0, 1).unwrap();
            w.send_obj(&"probed", 0, 2).unwrap();
            w.send(&big, 0, 3).unwrap();
            w.send(&[9u8; 3], 0, 3).unwrap();
            w.send(&[1u32; 25], 0, 4).unwrap();
        } else {
            let m = w.mprobe(ANY_SOURCE, 1).unwrap();
            assert_eq!((m.status().source, m.status().bytes), (1, 10));
            // Out of matching: the next probe sees the large message behind it.
            assert_eq!(w.probe(ANY_SOURCE, ANY_TAG).unwrap().bytes, 300_000);
            assert_eq!(m.recv_vec::<u16>().unwrap().0, [1, 2, 3, 4, 5]);
            let m = w.mprobe(1, 1).unwrap();
            let mut got = vec![0u16; big.len()];
            w.scope(|s| s.imrecv(m, &mut got).unwrap().wait().unwrap());
            assert_eq!(got, big);
            let m = loop {
                if let Some(m) = w.improbe(ANY_SOURCE, 2).unwrap() {
                    break m;
                }
            };
            let (text, st): (String, _) = m.recv_obj().unwrap();
            assert_eq!((text.as_str(), st.tag), ("probed", 2));
            // Dropped unreceived: discarded, and its (rendezvous) sender goes on.
            drop(w.mprobe(1, 3).unwrap());
            assert_eq!(w.recv_vec::<u8>(1, 3).unwrap().0, [9; 3]);
            let m = w.mprobe(1, 4).unwrap();
            let mut short = [0u32; 10];
            assert!(matches!(
                m.recv_into(&mut short),
                Err(Error::Truncated {
                    len: 100,
                    capacity: 40,
                    ..
                })
            ));
        }
        let sc = u.self_comm();
        sc.send(&[5u8, 6], 0, 7).unwrap();
        assert!(sc.improbe(0, 8).unwrap().is_none());
        let m = sc.improbe(0, 7).unwrap().expect("a message to self");
        assert_eq!(m.recv_vec::<u8>().unwrap().0, [5, 6]);
        w.barrier().unwrap();
    });
}

#[test]
fn fabric_info_and_counts() {
    threads(2, |u| {
        let info = u.fabric_info();
        let me = u.world().rank();
        assert!(
            info.contains(&format!("rank {me} -> {}: {}", 1 - me, super::NAME)),
            "{info}"
        );
        assert!(info.contains(&format!("rank {me} -> {me}: self")), "{info}");
        let st = oxmpi::Status {
            source: 0,
            tag: 0,
            bytes: 10,
        };
        assert_eq!(st.count::<u8>().unwrap(), 10);
        assert!(matches!(
            st.count::<u32>(),
            Err(Error::Count { bytes: 10, elem: 4 })
        ));
    });
}
