//! Collectives, communicators and topologies through the public API, ranks being threads of the test process; included by
//! one test file per fabric (see `loopback_api.rs`).

use super::{fabrics, threads};
use oxmpi::{dims_create, Error, GroupRelation, LocF64, Op, Universe, UserOp};

#[test]
fn buffer_collectives_blocking_and_in_place() {
    for n in [1, 2, 3, 5] {
        threads(n, |u| {
            let w = u.world();
            let (me, p) = (w.rank(), w.size() as usize);
            let mut v = if me == 1 % w.size() {
                vec![7u32, 8, 9]
            } else {
                vec![0; 3]
            };
            w.bcast(&mut v, 1 % w.size()).unwrap();
            assert_eq!(v, [7, 8, 9]);

            let mut sum = [0.0f64; 2];
            w.allreduce(&[me as f64, 1.0], &mut sum, Op::Sum).unwrap();
            assert_eq!(sum, [(p * (p - 1) / 2) as f64, p as f64]);
            let mut buf = [me as i64];
            w.allreduce_in_place(&mut buf, Op::Max).unwrap();
            assert_eq!(buf, [p as i64 - 1]);

            let mut loc = [LocF64::default()];
            let val = [LocF64::new((me as f64 - 1.0).abs(), me as i64)];
            w.allreduce(&val, &mut loc, Op::MinLoc).unwrap();
            let want = if p == 1 {
                LocF64::new(1.0, 0)
            } else {
                LocF64::new(0.0, 1)
            };
            assert_eq!(loc[0], want);

            let mut red = vec![0u64; if me == 0 { 1 } else { 0 }];
            w.reduce(&[me as u64 + 1], &mut red, Op::Prod, 0).unwrap();
            if me == 0 {
                assert_eq!(red[0], (1..=p as u64).product::<u64>());
            }

            let mut all = vec![0u32; p];
            w.allgather(&[me * 10], &mut all).unwrap();
            assert_eq!(all, (0..p as u32).map(|r| r * 10).collect::<Vec<_>>());
            let mut ip: Vec<u32> = (0..p as u32)
                .map(|r| if r == me { r + 100 } else { 0 })
                .collect();
            w.allgather_in_place(&mut ip).unwrap();
            assert_eq!(ip, (0..p as u32).map(|r| r + 100).collect::<Vec<_>>());

            let send: Vec<u32> = (0..p as u32).map(|d| me * 100 + d).collect();
            let mut recv = vec![0u32; p];
            w.alltoall(&send, &mut recv).unwrap();
            assert_eq!(
                recv,
                (0..p as u32).map(|s| s * 100 + me).collect::<Vec<_>>()
            );

            let mut g = vec![0u8; if me == 0 { 2 * p } else { 0 }];
            w.gather(&[me as u8, 1], &mut g, 0).unwrap();
            let mut s = [0u8; 2];
            let src: Vec<u8> = if me == 0 {
                (0..2 * p as u8).collect()
            } else {
                vec![]
            };
            w.scatter(&src, &mut s, 0).unwrap();
            assert_eq!(s, [2 * me as u8, 2 * me as u8 + 1]);

            let mut pre = [0i32];
            w.scan(&[1], &mut pre, Op::Sum).unwrap();
            assert_eq!(pre, [me as i32 + 1]);
            let mut ex = [-1i32];
            w.exscan(&[1], &mut ex, Op::Sum).unwrap();
            assert_eq!(ex, [if me == 0 { -1 } else { me as i32 }]);

            let mut rs = [0u32; 2];
            w.reduce_scatter_block(&vec![1u32; 2 * p], &mut rs, Op::Sum)
                .unwrap();
            assert_eq!(rs, [p as u32; 2]);

            // A non-commutative user op keeps rank order: decimal concatenation of
            // (number, 10^digits) pairs, associative but not commutative.
            let concat = UserOp::non_commutative(|a: &[u64; 2], b: &[u64; 2]| {
                [a[0] * b[1] + b[0], a[1] * b[1]]
            });
            let mut c = [[0u64; 2]];
            w.allreduce(&[[me as u64 + 1, 10]], &mut c, concat).unwrap();
            let want = (1..=p as u64).fold(0, |acc, d| acc * 10 + d);
            assert_eq!(c[0][0], want);
            w.barrier().unwrap();
        });
    }
}

/// A v-form layout for `p` ranks: rank `r` has `(r + 1) % 3` elements (some none), stored in
/// reverse rank order. Returns the counts, the displacements and the total.
fn uneven_blocks_in_reverse(p: usize) -> (Vec<usize>, Vec<usize>, usize) {
    let counts: Vec<usize> = (0..p).map(|r| (r + 1) % 3).collect();
    let mut displs = vec![0; p];
    let mut off = 0;
    for r in (0..p).rev() {
        displs[r] = off;
        off += counts[r];
    }
    (counts, displs, off)
}

/// Every persistent in-place plan (`*_init_in_place`) leaves in its buffer what the blocking
/// in-place form leaves, run blocking and started on a scope, over rounds with new inputs;
/// a plan started again before its last start completed is refused.
#[test]
fn persistent_in_place_form_of_every_collective() {
    for n in [1, 2, 3, 5] {
        threads(n, |u| {
            let w = u.world();
            let (me, p) = (w.rank(), w.size() as usize);
            let root = (p / 2) as u32;
            let (counts, displs, off) = uneven_blocks_in_reverse(p);
            let mine = counts[me as usize];
            let pair: Vec<usize> = (0..p).map(|r| (r + me as usize) % 3).collect();
            let pdispl: Vec<usize> = (0..p).map(|r| pair[..r].iter().sum()).collect();
            let start = |len: usize, salt: i64| -> Vec<i64> {
                (0..len as i64)
                    .map(|i| me as i64 * 1000 + salt * 100 + i)
                    .collect()
            };
            // The buffer each collective takes on this rank (k numbers them as below).
            let len = |k: usize| -> usize {
                match k {
                    4 | 6 if me != root => 3,
                    5 | 7 if me != root => mine,
                    4 | 6 | 8 | 10 => 3 * p,
                    5 | 7 | 9 => off + 1,
                    11 => pair.iter().sum(),
                    12 => 2 * p,
                    13 => off,
                    _ => 4,
                }
            };
            let plans = [
                w.reduce_init_in_place::<i64, _>(4, Op::Sum, root).unwrap(),
                w.allreduce_init_in_place::<i64, _>(4, Op::Max).unwrap(),
                w.scan_init_in_place::<i64, _>(4, Op::Sum).unwrap(),
                w.exscan_init_in_place::<i64, _>(4, Op::Sum).unwrap(),
                w.gather_init_in_place::<i64>(3, root).unwrap(),
                w.gatherv_init_in_place::<i64>(mine, &counts, &displs, root)
                    .unwrap(),
                w.scatter_init_in_place::<i64>(3, root).unwrap(),
                w.scatterv_init_in_place::<i64>(&counts, &displs, mine, root)
                    .unwrap(),
                w.allgather_init_in_place::<i64>(3).unwrap(),
                w.allgatherv_init_in_place::<i64>(&counts, &displs).unwrap(),
                w.alltoall_init_in_place::<i64>(3).unwrap(),
                w.alltoallv_init_in_place::<i64>(&pair, &pdispl).unwrap(),
                w.reduce_scatter_block_init_in_place::<i64, _>(2, Op::Sum)
                    .unwrap(),
                w.reduce_scatter_init_in_place::<i64, _>(&counts, Op::Sum)
                    .unwrap(),
            ];
            for round in 0..3i64 {
                let inputs: Vec<Vec<i64>> = (0..14)
                    .map(|k| start(len(k), 20 * round + k as i64))
                    .collect();
                let mut want = inputs.clone();
                {
                    let [a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13] =
                        &mut want[..]
                    else {
                        unreachable!()
                    };
                    w.reduce_in_place(a0, Op::Sum, root).unwrap();
                    w.allreduce_in_place(a1, Op::Max).unwrap();
                    w.scan_in_place(a2, Op::Sum).unwrap();
                    w.exscan_in_place(a3, Op::Sum).unwrap();
                    w.gather_in_place(a4, root).unwrap();
                    w.gatherv_in_place(a5, &counts, &displs, root).unwrap();
                    w.scatter_in_place(a6, root).unwrap();
                    w.scatterv_in_place(a7, &counts, &displs, root).unwrap();
                    w.allgather_in_place(a8).unwrap();
                    w.allgatherv_in_place(a9, &counts, &displs).unwrap();
                    w.alltoall_in_place(a10).unwrap();
                    w.alltoallv_in_place(a11, &pair, &pdispl).unwrap();
                    w.reduce_scatter_block_in_place(a12, 2, Op::Sum).unwrap();
                    w.reduce_scatter_in_place(a13, &counts, Op::Sum).unwrap();
                }
                let mut ran = inputs.clone();
                for (k, (plan, buf)) in plans.iter().zip(&mut ran).enumerate() {
                    plan.run(buf).unwrap();
                    assert_eq!(
                        *buf, want[k],
                        "run: collective {k}, round {round}, {p} ranks"
                    );
                }
                let mut started = inputs.clone();
                w.scope(|s| {
                    let mut reqs = Vec::new();
                    for (plan, buf) in plans.iter().zip(&mut started) {
                        reqs.push(s.start_persistent_in_place(plan, buf).unwrap());
                    }
                    while let Some(r) = reqs.pop() {
                        r.wait().unwrap();
                    }
                });
                for k in 0..14 {
                    assert_eq!(started[k], want[k], "start: collective {k}, round {round}");
                }
            }

            // A buffer of the wrong length is refused before anything is sent.
            let mut short = vec![0i64; 3];
            assert!(matches!(
                plans[1].run(&mut short),
                Err(Error::BufferSize {
                    expected: 4,
                    got: 3,
                    ..
                })
            ));

            // Past the eager limit (rendezvous): the plan's copy of the input is what the
            // peers read while the buffer is overwritten; a second start before the first
            // completes is refused and disturbs nothing.
            let big = 40_000 * p;
            let plan = w.allreduce_init_in_place::<i64, _>(big, Op::Sum).unwrap();
            for round in 0..2 {
                let mut a = start(big, 30 + round);
                let mut wa = a.clone();
                w.allreduce_in_place(&mut wa, Op::Sum).unwrap();
                let mut again = start(big, 40);
                w.scope(|s| {
                    let x = s.start_persistent_in_place(&plan, &mut a).unwrap();
                    // With peers the first start cannot finish before this rank polls again
                    // (it needs their data); alone it finished at once and gave the copy back.
                    match s.start_persistent_in_place(&plan, &mut again) {
                        Err(Error::InvalidArgument(_)) if p > 1 => {}
                        Ok(y) if p == 1 => y.wait().unwrap(),
                        other => panic!("a second start on {p} ranks: {other:?}"),
                    }
                    x.wait().unwrap();
                });
                assert_eq!(a, wa, "large allreduce_init_in_place, round {round}");
            }
        });
    }
}

/// Every `MPI_IN_PLACE` form leaves in its buffer what the ordinary form leaves in its
/// receive buffer (where the in-place form defines the rest, that too), on 1, 2, 3 and 5
/// ranks; blocks outside the buffer are errors, not panics.
#[test]
fn every_in_place_form_matches_its_ordinary_form() {
    for n in [1, 2, 3, 5] {
        threads(n, |u| {
            let w = u.world();
            let (me, p) = (w.rank(), w.size() as usize);
            let root = (p / 2) as u32;
            let mine =
                |len: usize| -> Vec<i64> { (0..len as i64).map(|i| me as i64 * 100 + i).collect() };
            // Blocks in reverse rank order, one spare element at the end.
            let (counts, displs, off) = uneven_blocks_in_reverse(p);
            let len = off + 1;
            let my_block = |buf: &[i64]| buf[displs[me as usize]..][..counts[me as usize]].to_vec();

            let mut want = vec![0; 4];
            w.reduce(&mine(4), &mut want, Op::Sum, root).unwrap();
            let mut buf = mine(4);
            w.reduce_in_place(&mut buf, Op::Sum, root).unwrap();
            if me == root {
                assert_eq!(buf, want, "reduce");
            }
            w.allreduce(&mine(4), &mut want, Op::Max).unwrap();
            let mut buf = mine(4);
            w.allreduce_in_place(&mut buf, Op::Max).unwrap();
            assert_eq!(buf, want, "allreduce");
            w.scan(&mine(4), &mut want, Op::Sum).unwrap();
            let mut buf = mine(4);
            w.scan_in_place(&mut buf, Op::Sum).unwrap();
            assert_eq!(buf, want, "scan");
            let mut want = mine(4);
            w.exscan(&mine(4), &mut want, Op::Sum).unwrap();
            let mut buf = mine(4);
            w.exscan_in_place(&mut buf, Op::Sum).unwrap();
            assert_eq!(buf, want, "exscan");

            // gather / gatherv: the root's block is already in place.
            let mut want = vec![-1; if me == root { 3 * p } else { 0 }];
            w.gather(&mine(3), &mut want, root).unwrap();
            let mut buf = if me == root {
                let mut b = vec![-1; 3 * p];
                b[3 * me as usize..][..3].copy_from_slice(&mine(3));
                b
            } else {
                mine(3)
            };
            w.gather_in_place(&mut buf, root).unwrap();
            if me == root {
                assert_eq!(buf, want, "gather");
            }
            let sent = mine(counts[me as usize]);
            let mut want = vec![-1; if me == root { len } else { 0 }];
            w.gatherv(&sent, &mut want, &counts, &displs, root).unwrap();
            let mut buf = if me == root {
                let mut b = vec![-1; len];
                b[displs[me as usize]..][..counts[me as usize]].copy_from_slice(&sent);
                b
            } else {
                sent.clone()
            };
            w.gatherv_in_place(&mut buf, &counts, &displs, root)
                .unwrap();
            if me == root {
                assert_eq!(buf, want, "gatherv");
            }

            // scatter / scatterv: the root keeps its block where it is.
            let whole = |len: usize| -> Vec<i64> { (0..len as i64).map(|i| i * 7 + 1).collect() };
            let src = if me == root { whole(2 * p) } else { vec![] };
            let mut want = vec![0; 2];
            w.scatter(&src, &mut want, root).unwrap();
            let mut buf = if me == root { whole(2 * p) } else { vec![0; 2] };
            w.scatter_in_place(&mut buf, root).unwrap();
            let got = if me == root {
                buf[2 * me as usize..][..2].to_vec()
            } else {
                buf
            };
            assert_eq!(got, want, "scatter");
            let src = if me == root { whole(len) } else { vec![] };
            let mut want = vec![0; counts[me as usize]];
            w.scatterv(&src, &counts, &displs, &mut want, root).unwrap();
            let mut buf = if me == root {
                whole(len)
            } else {
                vec![0; counts[me as usize]]
            };
            w.scatterv_in_place(&mut buf, &counts, &displs, root)
                .unwrap();
            let got = if me == root { my_block(&buf) } else { buf };
            assert_eq!(got, want, "scatterv");

            // allgatherv: each rank's block already at its displacement.
            let mut want = vec![-1; len];
            w.allgatherv(&mine(counts[me as usize]), &mut want, &counts, &displs)
                .unwrap();
            let mut buf = vec![-1; len];
            buf[displs[me as usize]..][..counts[me as usize]]
                .copy_from_slice(&mine(counts[me as usize]));
            w.allgatherv_in_place(&mut buf, &counts, &displs).unwrap();
            assert_eq!(buf, want, "allgatherv");

            // alltoallv with one layout: i and j exchange (i + j) % 3 elements.
            let pair: Vec<usize> = (0..p).map(|r| (r + me as usize) % 3).collect();
            let pdispl: Vec<usize> = pair
                .iter()
                .scan(0, |o, &c| {
                    let d = *o;
                    *o += c;
                    Some(d)
                })
                .collect();
            let total: usize = pair.iter().sum();
            let mut want = vec![0; total];
            w.alltoallv(&mine(total), &pair, &pdispl, &mut want, &pair, &pdispl)
                .unwrap();
            let mut buf = mine(total);
            w.alltoallv_in_place(&mut buf, &pair, &pdispl).unwrap();
            assert_eq!(buf, want, "alltoallv");
            let mut want = vec![0; 2 * p];
            w.alltoall(&mine(2 * p), &mut want).unwrap();
            let mut buf = mine(2 * p);
            w.alltoall_in_place(&mut buf).unwrap();
            assert_eq!(buf, want, "alltoall");

            // reduce_scatter(_block): the result in the buffer's first elements, the rest kept.
            let mut want = vec![0; 2];
            w.reduce_scatter_block(&mine(2 * p), &mut want, Op::Sum)
                .unwrap();
            let mut buf = mine(2 * p);
            w.reduce_scatter_block_in_place(&mut buf, 2, Op::Sum)
                .unwrap();
            assert_eq!(buf[..2], want[..], "reduce_scatter_block");
            assert_eq!(buf[2..], mine(2 * p)[2..], "reduce_scatter_block: the rest");
            let mut want = vec![0; counts[me as usize]];
            w.reduce_scatter(&mine(off), &mut want, &counts, Op::Sum)
                .unwrap();
            let mut buf = mine(off);
            w.reduce_scatter_in_place(&mut buf, &counts, Op::Sum)
                .unwrap();
            assert_eq!(buf[..counts[me as usize]], want[..], "reduce_scatter");
            assert_eq!(
                buf[counts[me as usize]..],
                mine(off)[counts[me as usize]..],
                "reduce_scatter: the rest"
            );

            // An empty buffer is a collective of nothing; a length that is not a multiple of
            // the size is refused (on every rank, so no rank is left waiting).
            w.allgather_in_place::<i64>(&mut []).unwrap();
            assert!(
                matches!(
                    w.allgather_in_place(&mut vec![0i64; 2 * p + 1]),
                    Err(Error::BufferSize { .. })
                ) || p == 1
            );
            assert!(
                matches!(
                    w.alltoall_in_place(&mut vec![0i64; 2 * p + 1]),
                    Err(Error::BufferSize { .. })
                ) || p == 1
            );

            // A block reaching past the buffer, or too few counts: an error, not a panic.
            let far = vec![usize::MAX; p];
            assert!(matches!(
                w.allgatherv_in_place(&mut [0i64; 2], &counts, &far),
                Err(Error::BufferSize { .. })
            ));
            assert!(matches!(
                w.allgatherv_in_place(&mut [0i64; 2], &[], &[]),
                Err(Error::BufferSize { .. })
            ));
            assert!(matches!(
                w.reduce_scatter_block_in_place(&mut [0i64; 1], 2, Op::Sum),
                Err(Error::BufferSize { .. })
            ));
            w.barrier().unwrap();
        });
    }
}

/// Every nonblocking in-place form (`Scope::i*_in_place`), all started on one scope and
/// completed in the reverse order, leaves what the blocking in-place form leaves.
#[test]
fn nonblocking_in_place_forms_match_the_blocking_ones() {
    for n in [1, 2, 3, 5] {
        threads(n, |u| {
            let w = u.world();
            let (me, p) = (w.rank(), w.size() as usize);
            let root = (p / 2) as u32;
            let (counts, displs, off) = uneven_blocks_in_reverse(p);
            let pair: Vec<usize> = (0..p).map(|r| (r + me as usize) % 3).collect();
            let pdispl: Vec<usize> = (0..p).map(|r| pair[..r].iter().sum()).collect();
            let start = |len: usize, salt: i64| -> Vec<i64> {
                (0..len as i64)
                    .map(|i| me as i64 * 1000 + salt * 100 + i)
                    .collect()
            };
            let len = |k: usize| -> usize {
                match k {
                    4 | 6 | 8 | 10 => 3 * p,
                    5 | 7 | 9 => off + 1,
                    11 => pair.iter().sum(),
                    12 => 2 * p,
                    13 => off,
                    _ => 4,
                }
            };
            let mut want: Vec<Vec<i64>> = (0..14).map(|k| start(len(k), k as i64)).collect();
            let mut got = want.clone();
            {
                let [a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13] = &mut want[..]
                else {
                    unreachable!()
                };
                w.reduce_in_place(a0, Op::Sum, root).unwrap();
                w.allreduce_in_place(a1, Op::Max).unwrap();
                w.scan_in_place(a2, Op::Sum).unwrap();
                w.exscan_in_place(a3, Op::Sum).unwrap();
                w.gather_in_place(if me == root { a4 } else { &mut a4[..3] }, root)
                    .unwrap();
                let mine = counts[me as usize];
                w.gatherv_in_place(
                    if me == root { a5 } else { &mut a5[..mine] },
                    &counts,
                    &displs,
                    root,
                )
                .unwrap();
                w.scatter_in_place(if me == root { a6 } else { &mut a6[..3] }, root)
                    .unwrap();
                w.scatterv_in_place(
                    if me == root { a7 } else { &mut a7[..mine] },
                    &counts,
                    &displs,
                    root,
                )
                .unwrap();
                w.allgather_in_place(a8).unwrap();
                w.allgatherv_in_place(a9, &counts, &displs).unwrap();
                w.alltoall_in_place(a10).unwrap();
                w.alltoallv_in_place(a11, &pair, &pdispl).unwrap();
                w.reduce_scatter_block_in_place(a12, 2, Op::Sum).unwrap();
                w.reduce_scatter_in_place(a13, &counts, Op::Sum).unwrap();
            }
            w.scope(|s| {
                let [a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13] = &mut got[..]
                else {
                    unreachable!()
                };
                let mine = counts[me as usize];
                let mut reqs = vec![
                    s.ireduce_in_place(a0, Op::Sum, root).unwrap(),
                    s.iallreduce_in_place(a1, Op::Max).unwrap(),
                    s.iscan_in_place(a2, Op::Sum).unwrap(),
                    s.iexscan_in_place(a3, Op::Sum).unwrap(),
                    s.igather_in_place(if me == root { a4 } else { &mut a4[..3] }, root)
                        .unwrap(),
                    s.igatherv_in_place(
                        if me == root { a5 } else { &mut a5[..mine] },
                        &counts,
                        &displs,
                        root,
                    )
                    .unwrap(),
                    s.iscatter_in_place(if me == root { a6 } else { &mut a6[..3] }, root)
                        .unwrap(),
                    s.iscatterv_in_place(
                        if me == root { a7 } else { &mut a7[..mine] },
                        &counts,
                        &displs,
                        root,
                    )
                    .unwrap(),
                    s.iallgather_in_place(a8).unwrap(),
                    s.iallgatherv_in_place(a9, &counts, &displs).unwrap(),
                    s.ialltoall_in_place(a10).unwrap(),
                    s.ialltoallv_in_place(a11, &pair, &pdispl).unwrap(),
                    s.ireduce_scatter_block_in_place(a12, 2, Op::Sum).unwrap(),
                    s.ireduce_scatter_in_place(a13, &counts, Op::Sum).unwrap(),
                ];
                while let Some(r) = reqs.pop() {
                    r.wait().unwrap();
                }
            });
            for k in 0..14 {
                assert_eq!(got[k], want[k], "collective {k} on {p} ranks");
            }

            // Past the eager limit (rendezvous): the request's copy of the input is what the
            // peers read while the buffer is being overwritten.
            let big = 40_000 * p;
            let (mut a, mut b) = (start(big, 20), start(big, 21));
            let (mut wa, mut wb) = (a.clone(), b.clone());
            w.allreduce_in_place(&mut wa, Op::Sum).unwrap();
            w.alltoall_in_place(&mut wb).unwrap();
            w.scope(|s| {
                let x = s.iallreduce_in_place(&mut a, Op::Sum).unwrap();
                let y = s.ialltoall_in_place(&mut b).unwrap();
                y.wait().unwrap();
                x.wait().unwrap();
            });
            assert_eq!(a, wa, "large iallreduce_in_place");
            assert_eq!(b, wb, "large ialltoall_in_place");
        });
    }
}

/// With the collective check on, ranks that disagree on a blocking collective's root, count,
/// kind or reduction all get `CollectiveDisagreement` and none runs it; agreeing calls run,
/// and the communicator goes on working.
#[test]
fn the_collective_check_catches_disagreeing_ranks() {
    threads(3, |u| {
        let w = u.world();
        let me = w.rank();
        w.set_collective_check(true);
        let field = |e: Error| match e {
            Error::CollectiveDisagreement { field } => field,
            other => panic!("expected a disagreement, got {other}"),
        };
        // Rank 2 takes itself for the root.
        let mut b = [me; 2];
        let e = w.bcast(&mut b, if me == 2 { 2 } else { 0 }).unwrap_err();
        assert_eq!(field(e), "root");
        assert_eq!(b, [me; 2], "no rank ran the bcast");
        // Rank 1 passes one element more.
        let n = if me == 1 { 3 } else { 2 };
        let e = w
            .allreduce(&vec![1u32; n], &mut vec![0u32; n], Op::Sum)
            .unwrap_err();
        assert!(field(e).starts_with("count"));
        // The same bytes, different element types.
        let e = if me == 0 {
            w.allreduce(&[1u64], &mut [0u64], Op::Sum)
        } else {
            w.allreduce(&[1u32, 1], &mut [0u32; 2], Op::Sum)
        }
        .unwrap_err();
        assert!(field(e).starts_with("reduction"));
        // The same types, different builtin ops.
        let op = if me == 2 { Op::Max } else { Op::Sum };
        let e = w.allreduce(&[1u32], &mut [0u32], op).unwrap_err();
        assert_eq!(field(e), "reduction operation");
        // Different collectives.
        let e = if me == 0 {
            w.barrier()
        } else {
            w.allreduce(&[1u8], &mut [0u8], Op::Sum)
        }
        .unwrap_err();
        assert_eq!(field(e), "collective");
        // A gatherv's layout is the root's alone: no disagreement there.
        let counts = [1, 1, 1];
        let mut g = vec![0u32; if me == 0 { 3 } else { 0 }];
        let (c, d): (&[usize], &[usize]) = if me == 0 {
            (&counts, &[0, 1, 2])
        } else {
            (&[], &[])
        };
        w.gatherv(&[me], &mut g, c, d, 0).unwrap();
        if me == 0 {
            assert_eq!(g, [0, 1, 2]);
        }
        let mut x = [0u32];
        w.allreduce(&[1], &mut x, Op::Sum).unwrap();
        assert_eq!(x, [3]);
        w.set_collective_check(false);
        w.allreduce(&[2], &mut x, Op::Sum).unwrap();
        assert_eq!(x, [6]);
    });
}

#[test]
fn misuse_is_an_error_on_the_rank_that_made_it() {
    threads(2, |u| {
        let w = u.world();
        let mut short = [0u32; 1];
        assert!(matches!(
            w.allreduce(&[1u32, 2], &mut short, Op::Sum),
            Err(Error::BufferSize {
                what: "allreduce",
                ..
            })
        ));
        assert!(matches!(
            w.bcast(&mut short, 2),
            Err(Error::InvalidRank { rank: 2, size: 2 })
        ));
        let mut f = [0.0f64];
        assert!(matches!(
            w.allreduce(&[1.0f64], &mut f, Op::Band),
            Err(Error::InvalidOp(_))
        ));
        assert!(matches!(
            w.force_algorithm("allreduce", "nope"),
            Err(Error::Algorithm(_))
        ));
        w.force_algorithm("allreduce", "ring").unwrap();
        let nc = UserOp::non_commutative(|a: &u32, b: &u32| a + b);
        let mut r = [0u32];
        assert!(matches!(
            w.allreduce(&[1u32], &mut r, nc),
            Err(Error::Algorithm(_))
        ));
        w.clear_forced_algorithms();
        // Mismatched counts: rank 1 expects more than the root sends.
        let mut b = vec![0u8; if w.rank() == 0 { 4 } else { 8 }];
        let r = w.bcast(&mut b, 0);
        if w.rank() == 1 {
            assert!(
                matches!(
                    r,
                    Err(Error::CollectiveMismatch {
                        rank: 0,
                        expected: 8,
                        got: 4
                    })
                ),
                "{r:?}"
            );
        } else {
            r.unwrap();
        }
        // Longer than the receiver expects: its truncation error, whether the message is taken
        // straight from its frame or, having arrived first, from the unexpected queue.
        w.force_algorithm("gather", "linear").unwrap();
        for early in [false, true] {
            let mine = vec![1u8; if w.rank() == 1 { 4 } else { 2 }];
            let mut all = vec![0u8; if w.rank() == 0 { 4 } else { 0 }];
            if w.rank() == 1 {
                w.gather(&mine, &mut all, 0).unwrap();
                if early {
                    w.send(&[1u8], 0, 77).unwrap();
                }
            } else {
                if early {
                    // Polling for this message queues the gather's, sent before it.
                    w.recv_into(&mut [0u8], 1, 77).unwrap();
                }
                let r = w.gather(&mine, &mut all, 0);
                assert!(
                    matches!(r, Err(Error::Truncated { len: 4, .. })),
                    "arrived first: {early}: {r:?}"
                );
            }
        }
        w.clear_forced_algorithms();
        // The communicator still works afterwards.
        let mut s = [0u32];
        w.allreduce(&[1u32], &mut s, Op::Sum).unwrap();
        assert_eq!(s, [2]);
    });
}

#[test]
fn nonblocking_and_persistent_collectives_overlap() {
    threads(4, |u| {
        let w = u.world();
        let me = w.rank();
        let a = [me as u64; 1000];
        let b = [1u32; 3];
        let (mut ra, mut rb) = ([0u64; 1000], [0u32; 3]);
        let mut bc = if me == 2 { [5u8; 10] } else { [0u8; 10] };
        w.scope(|s| {
            // Three collectives in flight at once, completed in another order than started.
            let x = s.iallreduce(&a, &mut ra, Op::Sum).unwrap();
            let mut y = s.iallreduce(&b, &mut rb, Op::Max).unwrap();
            let z = s.ibcast(&mut bc, 2).unwrap();
            z.wait().unwrap();
            while !y.test().unwrap() {}
            x.wait().unwrap();
        });
        assert!(ra.iter().all(|&v| v == 6));
        assert_eq!(rb, [1; 3]);
        assert_eq!(bc, [5; 10]);

        let plan = w.allreduce_init::<i32, _>(2, Op::Sum).unwrap();
        for i in 0..5 {
            let mut out = [0i32; 2];
            plan.run(&[i, me as i32], &mut out).unwrap();
            assert_eq!(out, [4 * i, 6]);
        }
        let mut out = [0i32; 2];
        let inp = [1, 1];
        w.scope(|s| {
            s.start_persistent(&plan, &inp, &mut out)
                .unwrap()
                .wait()
                .unwrap()
        });
        assert_eq!(out, [4, 4]);
    });
}

/// Every persistent form (`*_init`) gives what its blocking form gives, run after run with
/// new inputs, blocking and started on a scope (two plans in flight at once), on 1, 2, 3 and
/// 5 ranks; wrong buffer lengths are refused and leave the plan usable.
#[test]
fn persistent_form_of_every_collective() {
    for n in [1, 2, 3, 5] {
        threads(n, |u| {
            let w = u.world();
            let (me, p) = (w.rank(), w.size() as usize);
            let root = p as u32 - 1;
            let at_root = |len: usize| if me == root { len } else { 0 };
            let input = |round: u32, len: usize| -> Vec<u32> {
                (0..len as u32)
                    .map(|i| me * 1000 + round * 100 + i)
                    .collect()
            };
            let (counts, displs, extent) = uneven_blocks_in_reverse(p);
            let a2a_counts: Vec<usize> = (0..p).map(|r| (r + me as usize) % 2 + 1).collect();
            let a2a_displs: Vec<usize> = (0..p).map(|r| 2 * r).collect();
            let a2a_recv: Vec<usize> = (0..p).map(|r| (r + me as usize) % 2 + 1).collect();

            let barrier = w.barrier_init().unwrap();
            let bcast = w.bcast_init::<u32>(4, root).unwrap();
            let reduce = w.reduce_init::<u32, _>(3, Op::Sum, root).unwrap();
            let allreduce = w.allreduce_init::<u32, _>(3, Op::Max).unwrap();
            let gather = w.gather_init::<u32>(2, root).unwrap();
            let gatherv = w
                .gatherv_init::<u32>(counts[me as usize], &counts, &displs, root)
                .unwrap();
            let scatter = w.scatter_init::<u32>(2, root).unwrap();
            let scatterv = w
                .scatterv_init::<u32>(&counts, &displs, counts[me as usize], root)
                .unwrap();
            let allgather = w.allgather_init::<u32>(2).unwrap();
            let allgatherv = w.allgatherv_init::<u32>(&counts, &displs).unwrap();
            let alltoall = w.alltoall_init::<u32>(2).unwrap();
            let alltoallv = w
                .alltoallv_init::<u32>(&a2a_counts, &a2a_displs, &a2a_recv, &a2a_displs)
                .unwrap();
            let rsb = w.reduce_scatter_block_init::<u32, _>(2, Op::Sum).unwrap();
            let rs = w.reduce_scatter_init::<u32, _>(&counts, Op::Sum).unwrap();
            let scan = w.scan_init::<u32, _>(3, Op::Sum).unwrap();
            let exscan = w.exscan_init::<u32, _>(3, Op::Sum).unwrap();

            for round in 0..3 {
                barrier.run(&[], &mut []).unwrap();

                let mut want = if me == root {
                    input(round, 4)
                } else {
                    vec![0; 4]
                };
                w.bcast(&mut want, root).unwrap();
                let mut got = if me == root {
                    input(round, 4)
                } else {
                    vec![0; 4]
                };
                bcast.run(&[], &mut got).unwrap();
                assert_eq!(got, want, "bcast round {round}");
                let roots: Vec<u32> = (0..4).map(|i| root * 1000 + round * 100 + i).collect();
                assert_eq!(got, roots, "bcast round {round}: the root's values");

                let same = |plan: &oxmpi::Persistent<u32>,
                            blocking: &dyn Fn(&[u32], &mut [u32]),
                            send: Vec<u32>,
                            recv_len: usize,
                            what: &str| {
                    let mut want = vec![9u32; recv_len];
                    blocking(&send, &mut want);
                    let mut got = vec![9u32; recv_len];
                    plan.run(&send, &mut got).unwrap();
                    assert_eq!(got, want, "{what} round {round} on {p} ranks");
                };
                same(
                    &reduce,
                    &|s, r| w.reduce(s, r, Op::Sum, root).unwrap(),
                    input(round, 3),
                    at_root(3),
                    "reduce",
                );
                same(
                    &allreduce,
                    &|s, r| w.allreduce(s, r, Op::Max).unwrap(),
                    input(round, 3),
                    3,
                    "allreduce",
                );
                same(
                    &gather,
                    &|s, r| w.gather(s, r, root).unwrap(),
                    input(round, 2),
                    at_root(2 * p),
                    "gather",
                );
                same(
                    &gatherv,
                    &|s, r| w.gatherv(s, r, &counts, &displs, root).unwrap(),
                    input(round, counts[me as usize]),
                    at_root(extent + 2),
                    "gatherv (a longer receive buffer)",
                );
                same(
                    &scatter,
                    &|s, r| w.scatter(s, r, root).unwrap(),
                    input(round, at_root(2 * p)),
                    2,
                    "scatter",
                );
                same(
                    &scatterv,
                    &|s, r| w.scatterv(s, &counts, &displs, r, root).unwrap(),
                    input(round, at_root(extent)),
                    counts[me as usize],
                    "scatterv",
                );
                same(
                    &allgather,
                    &|s, r| w.allgather(s, r).unwrap(),
                    input(round, 2),
                    2 * p,
                    "allgather",
                );
                same(
                    &allgatherv,
                    &|s, r| w.allgatherv(s, r, &counts, &displs).unwrap(),
                    input(round, counts[me as usize]),
                    extent,
                    "allgatherv",
                );
                same(
                    &alltoall,
                    &|s, r| w.alltoall(s, r).unwrap(),
                    input(round, 2 * p),
                    2 * p,
                    "alltoall",
                );
                same(
                    &alltoallv,
                    &|s, r| {
                        w.alltoallv(s, &a2a_counts, &a2a_displs, r, &a2a_recv, &a2a_displs)
                            .unwrap()
                    },
                    input(round, 2 * p),
                    2 * p,
                    "alltoallv",
                );
                same(
                    &rsb,
                    &|s, r| w.reduce_scatter_block(s, r, Op::Sum).unwrap(),
                    input(round, 2 * p),
                    2,
                    "reduce_scatter_block",
                );
                same(
                    &rs,
                    &|s, r| w.reduce_scatter(s, r, &counts, Op::Sum).unwrap(),
                    input(round, extent),
                    counts[me as usize],
                    "reduce_scatter",
                );
                same(
                    &scan,
                    &|s, r| w.scan(s, r, Op::Sum).unwrap(),
                    input(round, 3),
                    3,
                    "scan",
                );
                same(
                    &exscan,
                    &|s, r| w.exscan(s, r, Op::Sum).unwrap(),
                    input(round, 3),
                    3,
                    "exscan",
                );
            }

            // Two plans in flight on a scope, completed in the other order.
            let (s1, s2) = (input(7, 2 * p), input(8, 2));
            let (mut r1, mut r2) = (vec![0u32; 2 * p], vec![0u32; 2 * p]);
            w.scope(|s| {
                let x = s.start_persistent(&alltoall, &s1, &mut r1).unwrap();
                let y = s.start_persistent(&allgather, &s2, &mut r2).unwrap();
                y.wait().unwrap();
                x.wait().unwrap();
            });
            let (mut w1, mut w2) = (vec![0u32; 2 * p], vec![0u32; 2 * p]);
            w.alltoall(&s1, &mut w1).unwrap();
            w.allgather(&s2, &mut w2).unwrap();
            assert_eq!((r1, r2), (w1, w2), "started on a scope");

            // A v-form plan on a longer buffer, started on a scope.
            let sent = input(9, counts[me as usize]);
            let mut longer = vec![5u32; at_root(extent + 3)];
            w.scope(|s| {
                s.start_persistent(&gatherv, &sent, &mut longer)
                    .unwrap()
                    .wait()
                    .unwrap()
            });
            let mut want = vec![5u32; at_root(extent + 3)];
            w.gatherv(&sent, &mut want, &counts, &displs, root).unwrap();
            assert_eq!(longer, want, "gatherv plan on a longer buffer, on a scope");

            // Off the root, buffers only the root uses are ignored whatever their length, as
            // the blocking forms ignore them.
            if me != root {
                let mut ignored = vec![3u32; 7];
                reduce.run(&input(0, 3), &mut ignored).unwrap();
                gather.run(&input(0, 2), &mut ignored).unwrap();
                scatter.run(&[1, 2, 3], &mut ignored[..2]).unwrap();
                assert_eq!(ignored[2..], [3; 5], "an unused buffer is not written");
            } else {
                let mut r = vec![0u32; 3];
                reduce.run(&input(0, 3), &mut r).unwrap();
                let mut g = vec![0u32; 2 * p];
                gather.run(&input(0, 2), &mut g).unwrap();
                let mut mine = vec![0u32; 2];
                scatter.run(&input(0, 2 * p), &mut mine).unwrap();
            }

            // A plan made on a split communicator runs there, also when a scope of the world
            // starts it; both communicators go on working afterwards.
            let half = w.split(Some(me % 2), me as i32).unwrap().unwrap();
            let hp = half.allreduce_init::<u32, _>(2, Op::Sum).unwrap();
            let mut hr = vec![0u32; 2];
            let hs = [me, 1];
            w.scope(|s| {
                s.start_persistent(&hp, &hs, &mut hr)
                    .unwrap()
                    .wait()
                    .unwrap()
            });
            let same_parity: u32 = (0..p as u32).filter(|r| r % 2 == me % 2).sum();
            assert_eq!(
                hr,
                [same_parity, half.size()],
                "split plan on the world's scope"
            );
            let mut x = [0u32];
            half.allreduce(&[1], &mut x, Op::Sum).unwrap();
            assert_eq!(x, [half.size()]);
            w.allreduce(&[1], &mut x, Op::Sum).unwrap();
            assert_eq!(x, [p as u32]);

            // Wrong lengths are refused, and the plan still runs afterwards.
            let mut short = vec![0u32; 2 * p - 1];
            assert!(matches!(
                alltoall.run(&input(0, 2 * p), &mut short),
                Err(Error::BufferSize { .. })
            ));
            if me == root && extent > 0 {
                let mut short = vec![0u32; extent - 1];
                assert!(matches!(
                    gatherv.run(&input(0, counts[me as usize]), &mut short),
                    Err(Error::BufferSize { .. })
                ));
            }
            let mut fine = vec![0u32; 2 * p];
            alltoall.run(&input(0, 2 * p), &mut fine).unwrap();
            // Counts no buffer could hold are refused when the plan is made.
            assert!(matches!(
                w.allgather_init::<u64>(usize::MAX / 2),
                Err(Error::InvalidArgument(_))
            ));
            assert!(matches!(
                w.alltoallv_init::<u8>(&vec![1; p], &vec![usize::MAX; p], &vec![0; p], &vec![0; p]),
                Err(Error::InvalidArgument(_))
            ));
        });
    }
}

#[test]
fn object_collectives() {
    threads(3, |u| {
        let w = u.world();
        let me = w.rank();
        let d = w
            .bcast_obj((me == 0).then(|| ("key".to_string(), vec![1.5f64, 2.5])), 0)
            .unwrap();
        assert_eq!(d.0, "key");
        let s: String = w
            .scatter_obj(
                (me == 1).then(|| vec!["a".into(), "bb".into(), "ccc".into()]),
                1,
            )
            .unwrap();
        assert_eq!(s.len(), me as usize + 1);
        let g = w.gather_obj(&format!("r{me}"), 2).unwrap();
        assert_eq!(g.is_some(), me == 2);
        if let Some(g) = g {
            assert_eq!(g, ["r0", "r1", "r2"]);
        }
        assert_eq!(w.allgather_obj(&me).unwrap(), vec![0, 1, 2]);
        let t: Vec<(u32, u32)> = w.alltoall_obj((0..3).map(|j| (me, j)).collect()).unwrap();
        assert_eq!(t, (0..3).map(|i| (i, me)).collect::<Vec<_>>());
        let cat = w.allreduce_obj(&me.to_string(), |a, b| a + &b).unwrap();
        assert_eq!(cat, "012");
        assert_eq!(
            w.reduce_obj(&me, |a, b| a.max(b), 0).unwrap(),
            (me == 0).then_some(2)
        );
        assert_eq!(w.scan_obj(&1u32, |a, b| a + b).unwrap(), me + 1);
        assert_eq!(
            w.exscan_obj(&1u32, |a, b| a + b).unwrap(),
            (me > 0).then_some(me)
        );
    });
}

#[test]
fn split_dup_create_and_groups() {
    threads(6, |u| {
        let w = u.world();
        let me = w.rank();
        // Colour by parity, key reverses the order.
        let c = w.split(Some(me % 2), -(me as i32)).unwrap().unwrap();
        assert_eq!(c.size(), 3);
        assert_eq!(c.rank(), 2 - me / 2);
        // Concurrent collectives on the split and on a dup of the world.
        let d = w.dup().unwrap();
        let (mut x, mut y) = ([0u32], [0u32]);
        c.allreduce(&[me], &mut x, Op::Sum).unwrap();
        d.allreduce(&[me], &mut y, Op::Sum).unwrap();
        assert_eq!(x, [if me % 2 == 0 { 6 } else { 9 }]);
        assert_eq!(y, [15]);
        // Undefined colour gets no communicator.
        assert!(w.split((me < 4).then_some(0), 0).unwrap().is_some() == (me < 4));
        // Groups and create.
        let g = w.group().incl(&[5, 0, 3]).unwrap();
        let sub = w.create(&g).unwrap();
        assert_eq!(sub.is_some(), [0, 3, 5].contains(&me));
        if let Some(sub) = &sub {
            assert_eq!(sub.size(), 3);
            let mut r = [0u32];
            sub.allreduce(&[me], &mut r, Op::Sum).unwrap();
            assert_eq!(r, [8]);
            assert_eq!(sub.group().compare(&g), GroupRelation::Identical);
        }
        assert_eq!(
            g.translate_ranks(&[0, 1], &w.group()).unwrap(),
            vec![Some(5), Some(0)]
        );
        // Many communicators created and dropped: ids are recycled.
        for _ in 0..1500 {
            let t = w.dup().unwrap();
            drop(t);
        }
        let shared = w.split_shared(0).unwrap();
        assert_eq!(shared.size(), 6);
    });
}

#[test]
fn intercommunicator_create_and_merge() {
    threads(5, |u| {
        let w = u.world();
        let me = w.rank();
        let low = me < 2;
        let local = w.split(Some(u32::from(!low)), 0).unwrap().unwrap();
        let remote_leader = if low { 2 } else { 0 };
        let inter = local.intercomm_create(0, &w, remote_leader, 99).unwrap();
        assert_eq!(inter.remote_size(), if low { 3 } else { 2 });
        if low && local.rank() == 0 {
            inter.send(&[42u32], 2, 5).unwrap();
        }
        if !low && local.rank() == 2 {
            let mut b = [0u32];
            let st = inter.recv_into(&mut b, 0, 5).unwrap();
            assert_eq!((b[0], st.source), (42, 0));
        }
        // The high group passes true: the low group's ranks come first.
        let merged = inter.merge(!low).unwrap();
        assert_eq!(merged.size(), 5);
        assert_eq!(merged.rank(), me);
        let mut s = [0u32];
        merged.allreduce(&[me], &mut s, Op::Sum).unwrap();
        assert_eq!(s, [10]);
    });
}

#[test]
fn cartesian_grid_shift_and_neighbor_exchange() {
    assert_eq!(dims_create(12, 2), vec![4, 3]);
    assert_eq!(dims_create(7, 3), vec![7, 1, 1]);
    threads(7, |u| {
        let w = u.world();
        let me = w.rank();
        let cart = w.cart_create(&[3, 2], &[true, false], false).unwrap();
        assert_eq!(cart.is_some(), me < 6);
        let Some(cart) = cart else { return };
        assert_eq!(cart.coords(), vec![me / 2, me % 2]);
        assert_eq!(cart.rank_of(&[-1, 1]).unwrap(), 5);
        assert!(cart.rank_of(&[0, 2]).is_err());
        let (src, dst) = cart.shift(0, 1).unwrap();
        assert_eq!((src, dst), (Some((me + 4) % 6), Some((me + 2) % 6)));
        let (lo, hi) = cart.shift(1, 1).unwrap();
        assert_eq!(
            (lo, hi),
            if me % 2 == 0 {
                (None, Some(me + 1))
            } else {
                (Some(me - 1), None)
            }
        );
        // Each rank sends its rank to every neighbour; block i comes from neighbour i.
        let nb = cart.neighbors();
        let mut got = [u32::MAX; 4];
        cart.neighbor_allgather(&[me], &mut got).unwrap();
        for i in 0..4 {
            assert_eq!(got[i], nb[i].unwrap_or(u32::MAX), "block {i}");
        }
        // alltoall: the block for direction i carries (me, i).
        let send: Vec<u32> = (0..4).map(|i| me * 10 + i).collect();
        let mut recv = [u32::MAX; 4];
        cart.neighbor_alltoall(&send, &mut recv).unwrap();
        for i in 0..4usize {
            // What comes from the neighbour below was sent up by it (its block i + 1).
            let want = nb[i].map(|n| {
                n * 10
                    + if i % 2 == 0 {
                        i as u32 + 1
                    } else {
                        i as u32 - 1
                    }
            });
            assert_eq!(Some(recv[i]).filter(|&x| x != u32::MAX), want, "block {i}");
        }
    });
}

/// The object collectives on 1..=15 thread-ranks, with values whose encoded sizes differ
/// per rank (empty, small, and past the eager limit), against what each must return.
#[test]
fn object_collectives_matrix() {
    for p in 1..=15u32 {
        let handles: Vec<_> = fabrics(p)
            .into_iter()
            .map(|fab| {
                std::thread::spawn(move || {
                    let u = Universe::from_fabric(fab);
                    let w = u.world();
                    let (me, n) = (w.rank(), w.size());
                    let item =
                        |r: u32| -> Vec<u32> { (0..(r * 1237) % 3000).map(|i| i ^ r).collect() };
                    for root in [0, n / 2, n - 1] {
                        let b = w.bcast_obj((me == root).then(|| item(root)), root).unwrap();
                        assert_eq!(b, item(root), "bcast_obj p={n} root {root}");
                        let g = w.gather_obj(&item(me), root).unwrap();
                        if me == root {
                            assert_eq!(g.unwrap(), (0..n).map(item).collect::<Vec<_>>());
                        }
                        let s = w
                            .scatter_obj((me == root).then(|| (0..n).map(item).collect()), root)
                            .unwrap();
                        assert_eq!(s, item(me), "scatter_obj p={n}");
                        let r = w
                            .reduce_obj(
                                &vec![me],
                                |mut a, b| {
                                    a.extend(b);
                                    a
                                },
                                root,
                            )
                            .unwrap();
                        if me == root {
                            assert_eq!(r.unwrap(), (0..n).collect::<Vec<_>>());
                        }
                    }
                    assert_eq!(
                        w.allgather_obj(&item(me)).unwrap(),
                        (0..n).map(item).collect::<Vec<_>>()
                    );
                    let t = w
                        .alltoall_obj((0..n).map(|d| (me, d, item(me + d))).collect())
                        .unwrap();
                    assert_eq!(t, (0..n).map(|s| (s, me, item(s + me))).collect::<Vec<_>>());
                    let order = w
                        .allreduce_obj(&me.to_string(), |a, b| format!("{a},{b}"))
                        .unwrap();
                    assert_eq!(
                        order,
                        (0..n).map(|r| r.to_string()).collect::<Vec<_>>().join(",")
                    );
                    assert_eq!(
                        w.scan_obj(&vec![me], |mut a, b| {
                            a.extend(b);
                            a
                        })
                        .unwrap(),
                        (0..=me).collect::<Vec<_>>()
                    );
                    let ex = w
                        .exscan_obj(&vec![me], |mut a, b| {
                            a.extend(b);
                            a
                        })
                        .unwrap();
                    assert_eq!(ex, (me > 0).then(|| (0..me).collect::<Vec<_>>()));
                })
            })
            .collect();
        for h in handles {
            h.join().expect("thread-rank panicked");
        }
    }
}
