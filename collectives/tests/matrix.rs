//! The Gloo-style matrix: every algorithm x 1..=15 ranks x counts including 0 and
//! non-multiples of the rank count x every op x several types, against naive references.
//!
//! Each case runs real p2p engines over the real loopback fabric (small eager and frame limits,
//! so the rendezvous and pipelined protocols are exercised), all ranks driven round-robin from
//! this thread: deterministic, and a hang shows up as a bounded loop running out.

use bytemuck::Pod;
use oxmpi_collectives::algorithms::Blocks;
use oxmpi_collectives::ops::{LocF64, LocI32};
use oxmpi_collectives::registry::{algorithms, build, Coll, Spec};
use oxmpi_collectives::{
    CollError, Kernel, Op, ReduceOp, Route, Run, Topology, TypedKernel, UserOp,
};
use oxmpi_fabric::loopback;
use oxmpi_fabric::{Event, Fabric, Region};
use oxmpi_p2p::Engine;
use std::rc::Rc;

const MAX_RANKS: u32 = 15;

/// Runs one collective on `p` ranks: `spec(r)`, `send[r]` bytes in, `recv[r]` bytes out
/// (pre-filled as given). Returns each rank's receive buffer.
fn run(
    p: u32,
    topo: &Topology,
    algo: &str,
    spec: &dyn Fn(u32) -> Spec,
    send: &[Vec<u8>],
    recv: &[Vec<u8>],
    kernel: Option<Rc<dyn Kernel>>,
) -> Result<Vec<Vec<u8>>, (u32, CollError)> {
    let mut fabrics = loopback::world_with(p, 48, 200, 512);
    let mut engines: Vec<Engine> = fabrics.iter().map(|f| Engine::for_fabric(f)).collect();
    let mut runs = Vec::new();
    let mut pool = oxmpi_collectives::exec::TempPool::default();
    let mut outs = Vec::new();
    for r in 0..p {
        let s = spec(r);
        let info = algorithms(s.coll())
            .find(|a| a.name == algo)
            .expect("algorithm exists");
        assert!(info.refuses(&s).is_none(), "{algo} refuses {s:?}");
        let sched = Rc::new(build(&s, info, r, p, topo));
        let sr = Region::alloc(send[r as usize].len());
        sr.write(0..sr.len(), |b| b.copy_from_slice(&send[r as usize]))
            .unwrap();
        let rr = Region::alloc(recv[r as usize].len());
        rr.write(0..rr.len(), |b| b.copy_from_slice(&recv[r as usize]))
            .unwrap();
        outs.push(rr.clone());
        let route = Route {
            ctx: 1,
            tag: 77,
            world: Rc::from(Vec::new()),
        };
        runs.push(Run::new(sched, sr, rr, kernel.clone(), route, &mut pool));
    }
    let mut done = vec![false; p as usize];
    for _ in 0..200_000 {
        for r in 0..p as usize {
            let (f, e) = (&mut fabrics[r], &mut engines[r]);
            let _ = e.progress_tx(f);
            f.poll(&mut |ev| match ev {
                Event::Frame {
                    peer,
                    header,
                    payload,
                } => e.handle_frame(peer, header, payload),
                Event::SendDone { peer, token } => e.on_lent_send_done(peer, token),
            })
            .unwrap();
            let _ = e.progress_tx(f);
            if !done[r] {
                done[r] = runs[r].advance(e, f);
            }
        }
        if done.iter().all(|&d| d) {
            for (r, run) in runs.iter().enumerate() {
                run.result().map_err(|e| (r as u32, e))?;
            }
            drop(runs);
            return Ok(outs
                .iter()
                .map(|o| o.read(0..o.len(), |b| b.to_vec()).unwrap())
                .collect());
        }
    }
    panic!("{algo} on {p} ranks did not finish: done = {done:?}");
}

fn bytes<T: Pod>(v: &[T]) -> Vec<u8> {
    bytemuck::cast_slice(v).to_vec()
}

fn typed<T: Pod>(v: &[u8]) -> Vec<T> {
    bytemuck::pod_collect_to_vec(v)
}

/// Topologies to try for `p` ranks: flat, and blocks of 2 and 3 ranks per node.
fn topologies(p: u32) -> Vec<Topology> {
    vec![
        Topology::flat(p),
        Topology::blocks(p, 2),
        Topology::blocks(p, 3),
    ]
}

fn algos(c: Coll) -> Vec<&'static str> {
    algorithms(c).map(|a| a.name).collect()
}

/// Element counts to try on `p` ranks: zero, one, non-multiples of `p`, and large enough for
/// rendezvous.
fn counts(p: u32) -> Vec<usize> {
    let p = p as usize;
    vec![0, 1, p + 1, 3 * p - 1, 97]
}

/// An associative, non-commutative op: composition of affine maps x -> a x + b (mod 2^64),
/// "apply the lower rank's map first".
fn affine() -> UserOp<[u64; 2]> {
    UserOp::non_commutative(|l: &[u64; 2], r: &[u64; 2]| {
        [
            l[0].wrapping_mul(r[0]),
            l[1].wrapping_mul(r[0]).wrapping_add(r[1]),
        ]
    })
}

/// Folds `xs` in rank order: x0 op x1 op ... (element-wise).
fn fold<T: Pod, O: ReduceOp<T>>(op: &O, xs: &[Vec<T>]) -> Vec<T> {
    let mut acc = xs[0].clone();
    for x in &xs[1..] {
        op.apply(x, &mut acc, false);
    }
    acc
}

/// Every reducing collective for one type and op, checked against the reference.
fn check_reductions<T: Pod + PartialEq + std::fmt::Debug, O: ReduceOp<T>>(
    op: O,
    what: &str,
    gen: impl Fn(u32, usize) -> T,
) {
    let elem = std::mem::size_of::<T>();
    let comm = op.is_commutative();
    let kernel: Rc<dyn Kernel> = Rc::new(TypedKernel::<T, O>::new(op.clone()));
    let sentinel = 0xA5u8;
    for p in 1..=MAX_RANKS {
        for topo in topologies(p) {
            for n in counts(p) {
                let input: Vec<Vec<T>> = (0..p)
                    .map(|r| (0..n).map(|i| gen(r, i)).collect())
                    .collect();
                let send: Vec<Vec<u8>> = input.iter().map(|v| bytes(v)).collect();
                let total = fold(&op, &input);
                let nb = n * elem;
                let fill = |len: usize| vec![sentinel; len];
                let usable = |c: Coll, a: &str, spec: &Spec| {
                    let info = algorithms(c).find(|x| x.name == a).unwrap();
                    info.refuses(spec).is_none()
                };
                // allreduce
                for a in algos(Coll::Allreduce) {
                    let spec = |_| Spec::Allreduce {
                        bytes: nb,
                        elem,
                        commutative: comm,
                    };
                    if !usable(Coll::Allreduce, a, &spec(0)) {
                        continue;
                    }
                    let out = run(
                        p,
                        &topo,
                        a,
                        &spec,
                        &send,
                        &vec![fill(nb); p as usize],
                        Some(kernel.clone()),
                    )
                    .unwrap();
                    for (r, o) in out.iter().enumerate() {
                        assert_eq!(
                            typed::<T>(o),
                            total,
                            "allreduce/{a} {what} p={p} n={n} rank {r} topo {topo:?}"
                        );
                    }
                }
                // reduce, to several roots
                for root in [0, p / 2, p - 1] {
                    for a in algos(Coll::Reduce) {
                        let spec = |_| Spec::Reduce {
                            root,
                            bytes: nb,
                            elem,
                            commutative: comm,
                        };
                        if !usable(Coll::Reduce, a, &spec(0)) {
                            continue;
                        }
                        let out = run(
                            p,
                            &topo,
                            a,
                            &spec,
                            &send,
                            &vec![fill(nb); p as usize],
                            Some(kernel.clone()),
                        )
                        .unwrap();
                        assert_eq!(
                            typed::<T>(&out[root as usize]),
                            total,
                            "reduce/{a} {what} p={p} n={n} root {root}"
                        );
                    }
                }
                // scan and exscan
                for a in algos(Coll::Scan) {
                    let out = run(
                        p,
                        &topo,
                        a,
                        &|_| Spec::Scan {
                            bytes: nb,
                            elem,
                            commutative: comm,
                        },
                        &send,
                        &vec![fill(nb); p as usize],
                        Some(kernel.clone()),
                    )
                    .unwrap();
                    for r in 0..p as usize {
                        assert_eq!(
                            typed::<T>(&out[r]),
                            fold(&op, &input[..=r]),
                            "scan/{a} {what} p={p} n={n} rank {r}"
                        );
                    }
                    let out = run(
                        p,
                        &topo,
                        a,
                        &|_| Spec::Exscan {
                            bytes: nb,
                            elem,
                            commutative: comm,
                        },
                        &send,
                        &vec![fill(nb); p as usize],
                        Some(kernel.clone()),
                    )
                    .unwrap();
                    assert_eq!(out[0], fill(nb), "exscan/{a} leaves rank 0 alone");
                    for r in 1..p as usize {
                        assert_eq!(
                            typed::<T>(&out[r]),
                            fold(&op, &input[..r]),
                            "exscan/{a} {what} p={p} n={n} rank {r}"
                        );
                    }
                }
                // reduce_scatter_block: n elements per rank
                let big: Vec<Vec<T>> = (0..p)
                    .map(|r| (0..n * p as usize).map(|i| gen(r, i)).collect())
                    .collect();
                let big_total = fold(&op, &big);
                let big_send: Vec<Vec<u8>> = big.iter().map(|v| bytes(v)).collect();
                for a in algos(Coll::ReduceScatterBlock) {
                    let spec = |_| Spec::ReduceScatterBlock {
                        block: nb,
                        elem,
                        commutative: comm,
                    };
                    if !usable(Coll::ReduceScatterBlock, a, &spec(0)) {
                        continue;
                    }
                    let out = run(
                        p,
                        &topo,
                        a,
                        &spec,
                        &big_send,
                        &vec![fill(nb); p as usize],
                        Some(kernel.clone()),
                    )
                    .unwrap();
                    for r in 0..p as usize {
                        assert_eq!(
                            typed::<T>(&out[r]),
                            big_total[r * n..(r + 1) * n].to_vec(),
                            "reduce_scatter_block/{a} {what} p={p} n={n} rank {r}"
                        );
                    }
                }
                // reduce_scatter with uneven counts (some zero)
                let rc: Vec<usize> = (0..p as usize).map(|i| (i * n + 1) % 4).collect();
                let tot: usize = rc.iter().sum();
                let v: Vec<Vec<T>> = (0..p)
                    .map(|r| (0..tot).map(|i| gen(r, i + 3)).collect())
                    .collect();
                let vt = fold(&op, &v);
                let vs: Vec<Vec<u8>> = v.iter().map(|x| bytes(x)).collect();
                let blocks = Blocks::packed(rc.iter().map(|c| c * elem).collect());
                for a in algos(Coll::ReduceScatter) {
                    let spec = |_| Spec::ReduceScatter {
                        blocks: blocks.clone(),
                        elem,
                        commutative: comm,
                    };
                    if !usable(Coll::ReduceScatter, a, &spec(0)) {
                        continue;
                    }
                    let recv: Vec<Vec<u8>> = rc.iter().map(|c| fill(c * elem)).collect();
                    let out = run(p, &topo, a, &spec, &vs, &recv, Some(kernel.clone())).unwrap();
                    let mut off = 0;
                    for r in 0..p as usize {
                        assert_eq!(
                            typed::<T>(&out[r]),
                            vt[off..off + rc[r]].to_vec(),
                            "reduce_scatter/{a} {what} p={p} counts {rc:?} rank {r}"
                        );
                        off += rc[r];
                    }
                }
            }
        }
    }
}

#[test]
fn reductions_on_integers_every_op() {
    for op in [
        Op::Sum,
        Op::Prod,
        Op::Max,
        Op::Min,
        Op::Land,
        Op::Lor,
        Op::Lxor,
        Op::Band,
        Op::Bor,
        Op::Bxor,
    ] {
        check_reductions::<u32, Op>(op, op.name(), |r, i| {
            ((r as usize * 31 + i * 17) % 11) as u32
        });
    }
    check_reductions::<i64, Op>(Op::Sum, "i64 sum", |r, i| r as i64 * 1000 - i as i64);
    check_reductions::<u8, Op>(Op::Max, "u8 max", |r, i| (r as usize * 7 + i) as u8);
}

#[test]
fn reductions_on_floats_and_locations() {
    for op in [Op::Sum, Op::Prod, Op::Max, Op::Min] {
        check_reductions::<f64, Op>(op, op.name(), |r, i| {
            ((r as usize * 3 + i) % 5) as f64 - 2.0
        });
        check_reductions::<f32, Op>(op, op.name(), |r, i| ((r as usize + i) % 3) as f32);
    }
    for op in [Op::MinLoc, Op::MaxLoc] {
        check_reductions::<LocF64, Op>(op, op.name(), |r, i| {
            LocF64::new(((r as usize * 7 + i) % 4) as f64, r as i64)
        });
        check_reductions::<LocI32, Op>(op, op.name(), |r, i| {
            LocI32::new(((r as usize + i) % 3) as i32, r as i32)
        });
    }
}

#[test]
fn reductions_with_user_ops_commutative_or_not() {
    check_reductions::<[u64; 2], UserOp<[u64; 2]>>(affine(), "affine (non-commutative)", |r, i| {
        [(r as u64 * 2 + i as u64) | 1, r as u64 * 5 + i as u64]
    });
    check_reductions::<u64, UserOp<u64>>(
        UserOp::commutative(|a: &u64, b: &u64| a ^ b.rotate_left(0)),
        "user xor",
        |r, i| (r as u64) << (i % 60),
    );
}

fn payload(r: u32, len: usize, salt: u32) -> Vec<u8> {
    (0..len)
        .map(|i| (r as usize * 131 + i * 7 + salt as usize) as u8)
        .collect()
}

#[test]
fn data_movement_collectives() {
    for p in 1..=MAX_RANKS {
        let pu = p as usize;
        for topo in topologies(p) {
            for n in counts(p) {
                let send: Vec<Vec<u8>> = (0..p).map(|r| payload(r, n, 1)).collect();
                // barrier
                for a in algos(Coll::Barrier) {
                    run(
                        p,
                        &topo,
                        a,
                        &|_| Spec::Barrier,
                        &vec![vec![]; pu],
                        &vec![vec![]; pu],
                        None,
                    )
                    .unwrap();
                }
                for root in [0, p / 2, p - 1] {
                    // bcast: the root's buffer everywhere
                    for a in algos(Coll::Bcast) {
                        let recv: Vec<Vec<u8>> = (0..p)
                            .map(|r| {
                                if r == root {
                                    payload(r, n, 9)
                                } else {
                                    vec![0; n]
                                }
                            })
                            .collect();
                        let out = run(
                            p,
                            &topo,
                            a,
                            &|_| Spec::Bcast { root, bytes: n },
                            &vec![vec![]; pu],
                            &recv,
                            None,
                        )
                        .unwrap();
                        for (r, o) in out.iter().enumerate() {
                            assert_eq!(
                                o,
                                &payload(root, n, 9),
                                "bcast/{a} p={p} n={n} root {root} rank {r}"
                            );
                        }
                    }
                    // gather / scatter
                    let all: Vec<u8> = send.concat();
                    for a in algos(Coll::Gather) {
                        let recv: Vec<Vec<u8>> = (0..p)
                            .map(|r| vec![0; if r == root { n * pu } else { 0 }])
                            .collect();
                        let out = run(
                            p,
                            &topo,
                            a,
                            &|_| Spec::Gather { root, block: n },
                            &send,
                            &recv,
                            None,
                        )
                        .unwrap();
                        assert_eq!(
                            out[root as usize], all,
                            "gather/{a} p={p} n={n} root {root}"
                        );
                    }
                    for a in algos(Coll::Scatter) {
                        let s: Vec<Vec<u8>> = (0..p)
                            .map(|r| if r == root { all.clone() } else { vec![] })
                            .collect();
                        let out = run(
                            p,
                            &topo,
                            a,
                            &|_| Spec::Scatter { root, block: n },
                            &s,
                            &vec![vec![0; n]; pu],
                            None,
                        )
                        .unwrap();
                        for r in 0..pu {
                            assert_eq!(
                                out[r], send[r],
                                "scatter/{a} p={p} n={n} root {root} rank {r}"
                            );
                        }
                    }
                    // gatherv / scatterv: uneven counts, blocks stored in reverse rank order
                    let vc: Vec<usize> = (0..pu).map(|i| (i * 3 + n) % 5).collect();
                    let vsend: Vec<Vec<u8>> =
                        (0..p).map(|r| payload(r, vc[r as usize], 4)).collect();
                    let rev = reversed(&vc);
                    let gv = |r: u32| Spec::Gatherv {
                        root,
                        send: vc[r as usize],
                        recv: if r == root {
                            rev.clone()
                        } else {
                            Blocks::equal(p, 0)
                        },
                    };
                    let recv: Vec<Vec<u8>> = (0..p)
                        .map(|r| vec![0; if r == root { rev.total() } else { 0 }])
                        .collect();
                    let out = run(p, &topo, "linear", &gv, &vsend, &recv, None).unwrap();
                    for i in 0..pu {
                        let d = rev.displs[i];
                        assert_eq!(
                            out[root as usize][d..d + vc[i]],
                            vsend[i][..],
                            "gatherv p={p} root {root} block {i}"
                        );
                    }
                    let sv = |r: u32| Spec::Scatterv {
                        root,
                        send: if r == root {
                            rev.clone()
                        } else {
                            Blocks::equal(p, 0)
                        },
                        recv: vc[r as usize],
                    };
                    let mut packed = vec![0u8; rev.total()];
                    for i in 0..pu {
                        packed[rev.displs[i]..rev.displs[i] + vc[i]].copy_from_slice(&vsend[i]);
                    }
                    let s: Vec<Vec<u8>> = (0..p)
                        .map(|r| if r == root { packed.clone() } else { vec![] })
                        .collect();
                    let recv: Vec<Vec<u8>> = vc.iter().map(|&c| vec![0; c]).collect();
                    let out = run(p, &topo, "linear", &sv, &s, &recv, None).unwrap();
                    assert_eq!(out, vsend, "scatterv p={p} root {root}");
                }
                // allgather, allgatherv (uneven, reversed layout)
                let all: Vec<u8> = send.concat();
                for a in algos(Coll::Allgather) {
                    let out = run(
                        p,
                        &topo,
                        a,
                        &|_| Spec::Allgather { block: n },
                        &send,
                        &vec![vec![0; n * pu]; pu],
                        None,
                    )
                    .unwrap();
                    for (r, o) in out.iter().enumerate() {
                        assert_eq!(o, &all, "allgather/{a} p={p} n={n} rank {r}");
                    }
                }
                let vc: Vec<usize> = (0..pu).map(|i| (i * 5 + n) % 4).collect();
                let vsend: Vec<Vec<u8>> = (0..p).map(|r| payload(r, vc[r as usize], 2)).collect();
                for layout in [Blocks::packed(vc.clone()), reversed(&vc)] {
                    for a in algos(Coll::Allgatherv) {
                        let spec = |r: u32| Spec::Allgatherv {
                            send: vc[r as usize],
                            recv: layout.clone(),
                        };
                        let out = run(
                            p,
                            &topo,
                            a,
                            &spec,
                            &vsend,
                            &vec![vec![0; layout.total()]; pu],
                            None,
                        )
                        .unwrap();
                        for (r, o) in out.iter().enumerate() {
                            for i in 0..pu {
                                let d = layout.displs[i];
                                assert_eq!(
                                    o[d..d + vc[i]],
                                    vsend[i][..],
                                    "allgatherv/{a} p={p} rank {r} block {i}"
                                );
                            }
                        }
                    }
                }
                // alltoall, alltoallv
                let blocks: Vec<Vec<u8>> = (0..p).map(|r| payload(r, n * pu, 3)).collect();
                for a in algos(Coll::Alltoall) {
                    let out = run(
                        p,
                        &topo,
                        a,
                        &|_| Spec::Alltoall { block: n },
                        &blocks,
                        &vec![vec![0; n * pu]; pu],
                        None,
                    )
                    .unwrap();
                    for r in 0..pu {
                        for s in 0..pu {
                            assert_eq!(
                                out[r][s * n..(s + 1) * n],
                                blocks[s][r * n..(r + 1) * n],
                                "alltoall/{a} p={p} n={n} rank {r} from {s}"
                            );
                        }
                    }
                }
                // alltoallv: rank s sends (s + d + n) % 3 bytes to d; receive layouts reversed.
                let cnt = |s: usize, d: usize| (s + d + n) % 3;
                let sl: Vec<Blocks> = (0..pu)
                    .map(|s| Blocks::packed((0..pu).map(|d| cnt(s, d)).collect()))
                    .collect();
                let rl: Vec<Blocks> = (0..pu)
                    .map(|d| reversed(&(0..pu).map(|s| cnt(s, d)).collect::<Vec<_>>()))
                    .collect();
                let sbuf: Vec<Vec<u8>> = (0..p)
                    .map(|s| payload(s, sl[s as usize].total(), 5))
                    .collect();
                for a in algos(Coll::Alltoallv) {
                    let spec = |r: u32| Spec::Alltoallv {
                        send: sl[r as usize].clone(),
                        recv: rl[r as usize].clone(),
                    };
                    let recv: Vec<Vec<u8>> = rl.iter().map(|l| vec![0; l.total()]).collect();
                    let out = run(p, &topo, a, &spec, &sbuf, &recv, None).unwrap();
                    for d in 0..pu {
                        for s in 0..pu {
                            let (so, ro, c) = (sl[s].displs[d], rl[d].displs[s], cnt(s, d));
                            assert_eq!(
                                out[d][ro..ro + c],
                                sbuf[s][so..so + c],
                                "alltoallv/{a} p={p} rank {d} from {s}"
                            );
                        }
                    }
                }
            }
        }
    }
}

/// Blocks of `counts` stored in reverse rank order (a non-packed layout).
fn reversed(counts: &[usize]) -> Blocks {
    let mut displs = vec![0; counts.len()];
    let mut off = 0;
    for i in (0..counts.len()).rev() {
        displs[i] = off;
        off += counts[i];
    }
    Blocks {
        counts: counts.to_vec(),
        displs,
    }
}

#[test]
fn mismatched_counts_are_errors_not_corruption() {
    // Rank 1 expects fewer bytes than the root sends: truncation on rank 1.
    let topo = Topology::flat(2);
    let spec = |r: u32| Spec::Bcast {
        root: 0,
        bytes: if r == 0 { 8 } else { 4 },
    };
    let recv = vec![vec![1u8; 8], vec![0u8; 4]];
    let e = run(2, &topo, "binomial", &spec, &[vec![], vec![]], &recv, None).unwrap_err();
    assert_eq!(e.0, 1);
    assert!(matches!(e.1, CollError::P2p(_)), "{e:?}");
    // Rank 1 expects more: a count mismatch on rank 1.
    let spec = |r: u32| Spec::Bcast {
        root: 0,
        bytes: if r == 0 { 4 } else { 8 },
    };
    let recv = vec![vec![1u8; 4], vec![0u8; 8]];
    let e = run(2, &topo, "binomial", &spec, &[vec![], vec![]], &recv, None).unwrap_err();
    assert_eq!(
        e,
        (
            1,
            CollError::Count {
                peer: 0,
                expected: 8,
                got: 4
            }
        )
    );
}
