//! End-to-end collective checks, run by `tests/oxrun_coll.rs` through `oxrun` over shared
//! memory and TCP: every collective, forced to each of its algorithms in turn, with counts
//! including 0 and non-multiples of the rank count, every result checked against what it must
//! be; then concurrent nonblocking collectives on overlapping communicators, and persistent
//! and in-place ones on large buffers.
//!
//! Usage: `coll_suite [SECTION...]` with sections `algorithms`, `concurrent`, `persistent`,
//! `in_place`, `env`, `check` (default: all but `env` and `check`, which need their
//! environment variables). Rank 0 prints `coll_suite: <section> ok (<n> checks)`.

use oxmpi::{Communicator, Error, Op, UserOp};
use oxmpi_collectives::registry::{algorithms, Coll};

type R<T = ()> = Result<T, Error>;

/// Value rank `r` contributes at index `i`: small integers, so every sum is exact in f64.
fn val(r: u32, i: usize) -> u32 {
    ((r as usize * 7 + i * 3) % 13) as u32
}

fn check(ok: bool, what: impl FnOnce() -> String) {
    if !ok {
        eprintln!("coll_suite: FAILED: {}", what());
        std::process::exit(1);
    }
}

/// Runs every collective once with the currently forced algorithms; returns checks made.
fn every_collective(w: &Communicator, n: usize) -> R<usize> {
    let (me, p) = (w.rank(), w.size());
    let pu = p as usize;
    let mut checks = 0;
    let mine: Vec<u32> = (0..n).map(|i| val(me, i)).collect();
    let sum = |i: usize| (0..p).map(|r| val(r, i)).sum::<u32>();
    let concat = UserOp::non_commutative(|a: &[u64; 2], b: &[u64; 2]| {
        [
            a[0].wrapping_mul(b[1]).wrapping_add(b[0]),
            a[1].wrapping_mul(b[1]),
        ]
    });

    w.barrier()?;
    for root in [0, p - 1] {
        let mut b: Vec<u32> = if me == root { mine.clone() } else { vec![0; n] };
        w.bcast(&mut b, root)?;
        check(
            b == (0..n).map(|i| val(root, i)).collect::<Vec<_>>(),
            || format!("bcast n={n} root {root}"),
        );

        let mut r = vec![0u32; n];
        w.reduce(&mine, &mut r, Op::Sum, root)?;
        if me == root {
            check(r == (0..n).map(sum).collect::<Vec<_>>(), || {
                format!("reduce n={n} root {root}")
            });
        }
        let mut g = vec![0u32; if me == root { n * pu } else { 0 }];
        w.gather(&mine, &mut g, root)?;
        if me == root {
            check(
                (0..pu * n).all(|k| g[k] == val((k / n.max(1)) as u32, k % n.max(1))),
                || format!("gather n={n}"),
            );
        }
        let src: Vec<u32> = if me == root {
            (0..n * pu).map(|k| k as u32).collect()
        } else {
            vec![]
        };
        let mut s = vec![0u32; n];
        w.scatter(&src, &mut s, root)?;
        check(
            s.iter()
                .enumerate()
                .all(|(i, &x)| x as usize == me as usize * n + i),
            || format!("scatter n={n}"),
        );
        // gatherv / scatterv: rank r has (r + n) % 4 elements, stored in reverse order.
        let cnt: Vec<usize> = (0..pu).map(|r| (r + n) % 4).collect();
        let mut displs = vec![0; pu];
        let mut off = 0;
        for r in (0..pu).rev() {
            displs[r] = off;
            off += cnt[r];
        }
        let part: Vec<u32> = (0..cnt[me as usize]).map(|i| val(me, i)).collect();
        let mut gv = vec![0u32; if me == root { off } else { 0 }];
        w.gatherv(&part, &mut gv, &cnt, &displs, root)?;
        if me == root {
            check(
                (0..pu).all(|r| (0..cnt[r]).all(|i| gv[displs[r] + i] == val(r as u32, i))),
                || "gatherv".into(),
            );
        }
        let mut sv = vec![0u32; cnt[me as usize]];
        w.scatterv(&gv, &cnt, &displs, &mut sv, root)?;
        check(sv == part, || "scatterv".into());
        checks += 6;
    }
    let mut ar = vec![0u32; n];
    w.allreduce(&mine, &mut ar, Op::Sum)?;
    check(ar == (0..n).map(sum).collect::<Vec<_>>(), || {
        format!("allreduce n={n}")
    });
    let mut fmax = vec![0f64; n];
    let fm: Vec<f64> = mine.iter().map(|&x| x as f64).collect();
    w.allreduce(&fm, &mut fmax, Op::Max)?;
    check(
        (0..n).all(|i| fmax[i] == (0..p).map(|r| val(r, i)).max().unwrap() as f64),
        || "allreduce max".into(),
    );
    let digits: Vec<[u64; 2]> = vec![[me as u64 + 1, 10]; n];
    let mut cat = vec![[0u64; 2]; n];
    if let Err(e) = w.allreduce(&digits, &mut cat, concat) {
        // A forced commutative-only algorithm refuses: that is the contract.
        check(matches!(e, Error::Algorithm(_)), || {
            format!("non-commutative allreduce: {e}")
        });
    } else {
        let want = (1..=p as u64).fold(0u64, |a, d| a.wrapping_mul(10).wrapping_add(d));
        check(cat.iter().all(|c| c[0] == want), || {
            "non-commutative allreduce order".into()
        });
    }
    let mut ag = vec![0u32; n * pu];
    w.allgather(&mine, &mut ag)?;
    check(
        (0..pu * n).all(|k| ag[k] == val((k / n.max(1)) as u32, k % n.max(1))),
        || "allgather".into(),
    );
    let cnt: Vec<usize> = (0..pu).map(|r| (r * 3 + n) % 5).collect();
    let displs: Vec<usize> = cnt
        .iter()
        .scan(0, |o, &c| {
            let d = *o;
            *o += c;
            Some(d)
        })
        .collect();
    let part: Vec<u32> = (0..cnt[me as usize]).map(|i| val(me, i)).collect();
    let mut agv = vec![0u32; cnt.iter().sum()];
    w.allgatherv(&part, &mut agv, &cnt, &displs)?;
    check(
        (0..pu).all(|r| (0..cnt[r]).all(|i| agv[displs[r] + i] == val(r as u32, i))),
        || "allgatherv".into(),
    );
    let a2a: Vec<u32> = (0..n * pu).map(|k| me * 1000 + k as u32).collect();
    let mut a2r = vec![0u32; n * pu];
    w.alltoall(&a2a, &mut a2r)?;
    check(
        (0..pu).all(|s| {
            (0..n).all(|i| a2r[s * n + i] == s as u32 * 1000 + (me as usize * n + i) as u32)
        }),
        || format!("alltoall n={n}"),
    );
    // alltoallv: s sends (s + d) % 3 elements to d.
    let sc: Vec<usize> = (0..pu).map(|d| (me as usize + d) % 3).collect();
    let sd: Vec<usize> = sc
        .iter()
        .scan(0, |o, &c| {
            let d = *o;
            *o += c;
            Some(d)
        })
        .collect();
    let rc: Vec<usize> = (0..pu).map(|s| (s + me as usize) % 3).collect();
    let rd: Vec<usize> = rc
        .iter()
        .scan(0, |o, &c| {
            let d = *o;
            *o += c;
            Some(d)
        })
        .collect();
    let sbuf: Vec<u32> = (0..pu)
        .flat_map(|d| (0..sc[d]).map(move |i| (me * 100 + d as u32) * 10 + i as u32))
        .collect();
    let mut rbuf = vec![0u32; rc.iter().sum()];
    w.alltoallv(&sbuf, &sc, &sd, &mut rbuf, &rc, &rd)?;
    check(
        (0..pu)
            .all(|s| (0..rc[s]).all(|i| rbuf[rd[s] + i] == (s as u32 * 100 + me) * 10 + i as u32)),
        || "alltoallv".into(),
    );
    let big: Vec<u32> = (0..n * pu).map(|k| val(me, k)).collect();
    let mut rsb = vec![0u32; n];
    w.reduce_scatter_block(&big, &mut rsb, Op::Sum)?;
    check((0..n).all(|i| rsb[i] == sum(me as usize * n + i)), || {
        "reduce_scatter_block".into()
    });
    let rcnt: Vec<usize> = (0..pu).map(|r| (r + n) % 3).collect();
    let tot: usize = rcnt.iter().sum();
    let start: usize = rcnt[..me as usize].iter().sum();
    let vin: Vec<u32> = (0..tot).map(|k| val(me, k)).collect();
    let mut rs = vec![0u32; rcnt[me as usize]];
    w.reduce_scatter(&vin, &mut rs, &rcnt, Op::Sum)?;
    check((0..rs.len()).all(|i| rs[i] == sum(start + i)), || {
        "reduce_scatter".into()
    });
    let mut sc_ = vec![0u32; n];
    w.scan(&mine, &mut sc_, Op::Sum)?;
    check(
        (0..n).all(|i| sc_[i] == (0..=me).map(|r| val(r, i)).sum::<u32>()),
        || "scan".into(),
    );
    let mut ex = vec![7u32; n];
    w.exscan(&mine, &mut ex, Op::Sum)?;
    check(
        (0..n).all(|i| {
            ex[i]
                == if me == 0 {
                    7
                } else {
                    (0..me).map(|r| val(r, i)).sum::<u32>()
                }
        }),
        || "exscan".into(),
    );
    Ok(checks + 12)
}

/// Every algorithm of every collective, forced in turn.
fn algorithms_section(w: &Communicator) -> R<usize> {
    let mut checks = 0;
    let colls = [
        Coll::Barrier,
        Coll::Bcast,
        Coll::Reduce,
        Coll::Allreduce,
        Coll::Gather,
        Coll::Scatter,
        Coll::Allgather,
        Coll::Allgatherv,
        Coll::Alltoall,
        Coll::Alltoallv,
        Coll::ReduceScatter,
        Coll::ReduceScatterBlock,
        Coll::Scan,
        Coll::Exscan,
    ];
    let p = w.size() as usize;
    for c in colls {
        for a in algorithms(c) {
            w.clear_forced_algorithms();
            w.force_algorithm(c.name(), a.name)?;
            for n in [0, 1, p + 1, 1000, 40_000] {
                checks += every_collective(w, n)?;
            }
        }
    }
    w.clear_forced_algorithms();
    Ok(checks)
}

/// Nonblocking collectives in flight on the world, a split and a dup at once, completed out
/// of order; then blocking ones on the split while the world's are in flight.
fn concurrent_section(w: &Communicator) -> R<usize> {
    let me = w.rank();
    let half = w.split(Some(me % 2), 0)?.expect("a colour was given");
    let dup = w.dup()?;
    let mut checks = 0;
    for round in 0..20u32 {
        let a = vec![me + round; 300];
        let b = [me];
        let c = vec![1u64; 5000];
        let (mut ra, mut rb, mut rc) = (vec![0u32; 300], [0u32], vec![0u64; 5000]);
        let mut hb = [0u32];
        w.scope(|s| -> R {
            let x = s.iallreduce(&a, &mut ra, Op::Sum)?;
            let y = s.iallreduce(&b, &mut rb, Op::Max)?;
            let hsend = [me];
            half.allreduce(&hsend, &mut hb, Op::Sum)?;
            let z = s.iallreduce(&c, &mut rc, Op::Sum)?;
            z.wait()?;
            y.wait()?;
            x.wait()
        })?;
        let _ = &dup;
        let p = w.size();
        let want_a: u32 = (0..p).map(|r| r + round).sum();
        check(ra.iter().all(|&v| v == want_a), || {
            "concurrent iallreduce a".into()
        });
        check(rb == [p - 1], || "concurrent iallreduce b".into());
        check(rc.iter().all(|&v| v == p as u64), || {
            "concurrent iallreduce c".into()
        });
        let want_h: u32 = (0..p).filter(|r| r % 2 == me % 2).sum();
        check(hb == [want_h], || "allreduce on the split".into());
        let mut d = [0u32];
        dup.allreduce(&[1], &mut d, Op::Sum)?;
        check(d == [p], || "allreduce on the dup".into());
        checks += 5;
    }
    Ok(checks)
}

/// Persistent collectives on large buffers (past the eager limit, so the rendezvous paths
/// run), several started on one scope at once, each run against its blocking form.
fn persistent_section(w: &Communicator) -> R<usize> {
    let (me, p) = (w.rank(), w.size() as usize);
    let n = 40_000;
    let root = w.size() - 1;
    let input = |round: u32, len: usize| -> Vec<u32> {
        (0..len as u32)
            .map(|i| val(me, i as usize) + round)
            .collect()
    };
    // alltoallv: rank d gets n + d elements from every rank, at a stride of 2n + p.
    let counts: Vec<usize> = (0..p).map(|d| n + d).collect();
    let sdispl: Vec<usize> = (0..p).map(|d| d * (2 * n + p)).collect();
    let rcounts = vec![n + me as usize; p];
    let rdispl: Vec<usize> = (0..p).map(|s| s * (n + me as usize)).collect();
    let (slen, rlen) = (p * (2 * n + p), p * (n + me as usize));
    // gatherv: rank r sends n + r elements, packed in rank order at the root.
    let gdispl: Vec<usize> = (0..p)
        .map(|r| r * n + r * (r.saturating_sub(1)) / 2)
        .collect();
    let glen = if me == root {
        p * n + p * (p - 1) / 2
    } else {
        0
    };

    let allreduce = w.allreduce_init::<u32, _>(n, Op::Sum)?;
    let alltoallv = w.alltoallv_init::<u32>(&counts, &sdispl, &rcounts, &rdispl)?;
    let gatherv = w.gatherv_init::<u32>(n + me as usize, &counts, &gdispl, root)?;
    let scan = w.scan_init::<u32, _>(n, Op::Sum)?;
    let mut checks = 0;
    for round in 0..5 {
        let (a, b, c, d) = (
            input(round, n),
            input(round, slen),
            input(round, n + me as usize),
            input(round, n),
        );
        let (mut ra, mut rb, mut rc, mut rd) =
            (vec![0; n], vec![0; rlen], vec![0; glen], vec![0; n]);
        w.scope(|s| -> R {
            let x = s.start_persistent(&allreduce, &a, &mut ra)?;
            let y = s.start_persistent(&alltoallv, &b, &mut rb)?;
            let z = s.start_persistent(&gatherv, &c, &mut rc)?;
            scan.run(&d, &mut rd)?;
            z.wait()?;
            x.wait()?;
            y.wait()
        })?;
        let (mut wa, mut wb, mut wc, mut wd) =
            (vec![0; n], vec![0; rlen], vec![0; glen], vec![0; n]);
        w.allreduce(&a, &mut wa, Op::Sum)?;
        w.alltoallv(&b, &counts, &sdispl, &mut wb, &rcounts, &rdispl)?;
        w.gatherv(&c, &mut wc, &counts, &gdispl, root)?;
        w.scan(&d, &mut wd, Op::Sum)?;
        check(ra == wa, || format!("persistent allreduce round {round}"));
        check(rb == wb, || format!("persistent alltoallv round {round}"));
        check(rc == wc, || format!("persistent gatherv round {round}"));
        check(rd == wd, || format!("persistent scan round {round}"));
        let sum0: u32 = (0..w.size()).map(|r| val(r, 0) + round).sum();
        check(ra[0] == sum0, || {
            format!("persistent allreduce value, round {round}")
        });
        checks += 5;
    }
    Ok(checks)
}

/// In-place collectives, blocking, nonblocking and persistent, on buffers past the eager
/// limit, each against its ordinary (or blocking in-place) form.
fn in_place_section(w: &Communicator) -> R<usize> {
    let (me, p) = (w.rank(), w.size() as usize);
    let n = 30_000;
    let root = w.size() - 1;
    let input =
        |round: u32, len: usize| -> Vec<u32> { (0..len).map(|i| val(me, i) + round).collect() };
    let allreduce_plan = w.allreduce_init_in_place::<u32, _>(n, Op::Sum)?;
    let alltoall_plan = w.alltoall_init_in_place::<u32>(n)?;
    let gather_plan = w.gather_init_in_place::<u32>(n, root)?;
    let mut checks = 0;
    for round in 0..3 {
        let mut want = vec![0; n];
        w.allreduce(&input(round, n), &mut want, Op::Sum)?;
        let mut buf = input(round, n);
        w.allreduce_in_place(&mut buf, Op::Sum)?;
        check(buf == want, || format!("allreduce_in_place round {round}"));
        let mut want = vec![0; n * p];
        w.alltoall(&input(round, n * p), &mut want)?;
        let mut buf = input(round, n * p);
        w.alltoall_in_place(&mut buf)?;
        check(buf == want, || format!("alltoall_in_place round {round}"));
        let mut want = vec![0; if me == root { n * p } else { 0 }];
        w.gather(&input(round, n), &mut want, root)?;
        let mut buf = if me == root {
            let mut b = vec![0; n * p];
            b[me as usize * n..][..n].copy_from_slice(&input(round, n));
            b
        } else {
            input(round, n)
        };
        w.gather_in_place(&mut buf, root)?;
        check(me != root || buf == want, || {
            format!("gather_in_place round {round}")
        });
        let (mut a, mut b) = (input(round, n), input(round, n * p));
        w.scope(|s| -> R {
            let x = s.iallreduce_in_place(&mut a, Op::Max)?;
            let y = s.ireduce_scatter_block_in_place(&mut b, n, Op::Sum)?;
            y.wait()?;
            x.wait()
        })?;
        let mut want = vec![0; n];
        w.allreduce(&input(round, n), &mut want, Op::Max)?;
        check(a == want, || format!("iallreduce_in_place round {round}"));
        w.reduce_scatter_block(&input(round, n * p), &mut want, Op::Sum)?;
        check(b[..n] == want[..], || {
            format!("ireduce_scatter_block_in_place round {round}")
        });

        // The persistent in-place plans, made once, against the blocking in-place forms.
        let (mut a, mut b) = (input(round, n), input(round, n * p));
        let mut g = input(round, if me == root { n * p } else { n });
        w.scope(|s| -> R {
            let x = s.start_persistent_in_place(&allreduce_plan, &mut a)?;
            let y = s.start_persistent_in_place(&gather_plan, &mut g)?;
            alltoall_plan.run(&mut b)?;
            y.wait()?;
            x.wait()
        })?;
        let (mut wa, mut wb) = (input(round, n), input(round, n * p));
        let mut wg = input(round, if me == root { n * p } else { n });
        w.allreduce_in_place(&mut wa, Op::Sum)?;
        w.alltoall_in_place(&mut wb)?;
        w.gather_in_place(&mut wg, root)?;
        check(a == wa, || format!("allreduce_init_in_place round {round}"));
        check(b == wb, || format!("alltoall_init_in_place round {round}"));
        check(g == wg, || format!("gather_init_in_place round {round}"));
        checks += 8;
    }
    Ok(checks)
}

/// The algorithm forced by `OXMPI_COLL_ALLREDUCE` is used; `OXMPI_COLL_BCAST=nope` errors.
fn env_section(w: &Communicator) -> R<usize> {
    let forced = std::env::var("OXMPI_COLL_ALLREDUCE").unwrap_or_default();
    check(w.algorithm_for("allreduce", 8)? == forced, || {
        format!("OXMPI_COLL_ALLREDUCE={forced} not used")
    });
    let mut b = [1u8];
    let e = w.bcast(&mut b, 0).unwrap_err();
    check(
        matches!(e, Error::Algorithm(ref m) if m.contains("OXMPI_COLL_BCAST")),
        || format!("bad OXMPI_COLL_BCAST: {e}"),
    );
    let mut r = [0u32];
    w.allreduce(&[1], &mut r, Op::Sum)?;
    check(r == [w.size()], || {
        "allreduce under OXMPI_COLL_ALLREDUCE".into()
    });
    Ok(3)
}

/// Run with `OXMPI_COLL_CHECK=1`: the check is on, catches a root only the last rank believes
/// in on every rank, and leaves agreeing collectives alone (the algorithms section runs too).
fn check_section(w: &Communicator) -> R<usize> {
    let (me, last) = (w.rank(), w.size() - 1);
    let mut b = [me; 3];
    let root = if me == last { last } else { 0 };
    match w.bcast(&mut b, root) {
        Err(Error::CollectiveDisagreement { field: "root" }) => {}
        other if last == 0 => other?,
        other => check(false, || format!("disagreeing roots gave {other:?}")),
    }
    check(last == 0 || b == [me; 3], || {
        "a checked bcast ran anyway".into()
    });
    Ok(1 + algorithms_section(w)?)
}

fn main() -> R {
    let u = oxmpi::init()?;
    let w = u.world();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let sections: Vec<&str> = if args.is_empty() {
        vec!["algorithms", "concurrent", "persistent", "in_place"]
    } else {
        args.iter().map(String::as_str).collect()
    };
    for s in sections {
        let n = match s {
            "algorithms" => algorithms_section(&w)?,
            "concurrent" => concurrent_section(&w)?,
            "persistent" => persistent_section(&w)?,
            "in_place" => in_place_section(&w)?,
            "check" => check_section(&w)?,
            "env" => env_section(&w)?,
            other => {
                eprintln!("coll_suite: unknown section {other}");
                std::process::exit(2);
            }
        };
        if w.rank() == 0 {
            println!("coll_suite: {s} ok ({n} checks)");
        }
    }
    Ok(())
}
