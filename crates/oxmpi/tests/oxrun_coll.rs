//! End-to-end collective tests: real processes started by `oxrun`, over shared memory and
//! over TCP, with 1 to 8 ranks. The rank program is `examples/coll_suite.rs`, which forces
//! each algorithm of each collective in turn and checks every result itself.

use std::path::PathBuf;
use std::process::{Command, Output};

fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let p = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target/<profile>")
        .join(name);
    assert!(
        p.exists(),
        "{} is missing: build the workspace first (scripts/test.sh does)",
        p.display()
    );
    p
}

fn oxrun(n: u32, env: &[(&str, &str)], args: &[&str]) -> Output {
    Command::new(bin("oxrun"))
        .arg("-n")
        .arg(n.to_string())
        .arg(bin("examples/coll_suite"))
        .args(args)
        .envs(env.iter().copied())
        .env("OXMPI_BOOT_TIMEOUT", "60")
        .output()
        .expect("oxrun runs")
}

fn expect_ok(out: &Output, what: &str, sections: &[&str]) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    for s in sections {
        assert!(
            stdout.contains(&format!("coll_suite: {s} ok")),
            "{what}: section {s} did not report:\n{stdout}\n{stderr}"
        );
    }
}

fn every_algorithm(fabric: &str) {
    for n in 1..=8 {
        let out = oxrun(n, &[("OXMPI_FABRIC", fabric)], &[]);
        expect_ok(
            &out,
            &format!("{fabric} with {n} ranks"),
            &["algorithms", "concurrent", "persistent", "in_place"],
        );
    }
}

#[test]
fn every_collective_and_algorithm_over_shm() {
    every_algorithm("shm");
}

/// Shared-memory reads assisted by their senders (forced, in small chunks) under every
/// collective and algorithm, with as many ranks as cores and oversubscribed.
#[test]
fn every_collective_and_algorithm_over_shm_with_assisted_reads() {
    for n in [2, 3, 4] {
        let out = oxrun(
            n,
            &[
                ("OXMPI_FABRIC", "shm"),
                ("OXMPI_SHM_ASSIST_MIN", "9000"),
                ("OXMPI_SHM_ASSIST_CHUNK", "4096"),
            ],
            &[],
        );
        expect_ok(
            &out,
            &format!("shm with assisted reads, {n} ranks"),
            &["algorithms", "concurrent", "persistent", "in_place"],
        );
    }
}

#[test]
fn every_collective_and_algorithm_over_tcp() {
    every_algorithm("tcp");
}

/// Every algorithm over libfabric: its shm provider at every size 1..=8, its tcp provider
/// (slower to set up, so fewer sizes) at 2, 3, 5 and 8 ranks.
#[cfg(feature = "ofi")]
#[test]
fn every_collective_and_algorithm_over_ofi() {
    for (provider, sizes) in [
        ("shm", &[1, 2, 3, 4, 5, 6, 7, 8][..]),
        ("tcp;ofi_rxm", &[2, 3, 5, 8][..]),
    ] {
        for &n in sizes {
            let env = [("OXMPI_FABRIC", "ofi"), ("OXMPI_OFI_PROVIDER", provider)];
            let out = oxrun(n, &env, &[]);
            expect_ok(
                &out,
                &format!("ofi provider {provider} with {n} ranks"),
                &["algorithms", "concurrent", "persistent", "in_place"],
            );
        }
    }
}

#[test]
fn hierarchical_algorithms_with_several_nodes() {
    // Blocks of consecutive ranks act as nodes, so the hierarchical algorithms have several
    // nodes of several ranks (and uneven ones: 7 ranks in nodes of 3) to work with.
    for (n, k) in [(5, 2), (7, 3), (8, 4)] {
        let out = oxrun(n, &[("OXMPI_NODE_SIZE", &k.to_string())], &[]);
        expect_ok(
            &out,
            &format!("{n} ranks in nodes of {k}"),
            &["algorithms", "concurrent", "persistent", "in_place"],
        );
    }
}

#[test]
fn environment_forces_algorithms_and_rejects_unknown_ones() {
    for algo in ["ring", "rabenseifner", "recursive_doubling"] {
        let env = [("OXMPI_COLL_ALLREDUCE", algo), ("OXMPI_COLL_BCAST", "nope")];
        expect_ok(
            &oxrun(3, &env, &["env"]),
            &format!("OXMPI_COLL_ALLREDUCE={algo}"),
            &["env"],
        );
    }
    let env = [
        ("OXMPI_NODE_SIZE", "2"),
        ("OXMPI_COLL_ALLREDUCE", "hierarchical"),
        ("OXMPI_COLL_BCAST", "nope"),
    ];
    expect_ok(&oxrun(4, &env, &["env"]), "hierarchical forced", &["env"]);
}

/// `OXMPI_COLL_CHECK=1`: ranks that disagree on a root all get an error, and every algorithm
/// of every collective still runs with the check in front of each call.
#[test]
fn the_collective_check_runs_through_oxrun() {
    for n in [1, 3] {
        let env = [("OXMPI_FABRIC", "shm"), ("OXMPI_COLL_CHECK", "1")];
        expect_ok(
            &oxrun(n, &env, &["check"]),
            &format!("OXMPI_COLL_CHECK=1 on {n} ranks"),
            &["check"],
        );
    }
}

#[test]
fn oxrun_prints_the_selection_table() {
    let out = Command::new(bin("oxrun"))
        .arg("--coll-table")
        .env("OXMPI_COLL_ALLREDUCE", "ring")
        .output()
        .expect("oxrun runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        text.contains("allreduce") && text.contains("recursive_doubling"),
        "{text}"
    );
    assert!(
        text.contains("# forced: OXMPI_COLL_ALLREDUCE=ring"),
        "{text}"
    );
    let dir = std::env::temp_dir().join(format!("oxmpi-table-{}", std::process::id()));
    std::fs::write(&dir, "allreduce * * * * tree\n").unwrap();
    let out = Command::new(bin("oxrun"))
        .arg("--coll-table")
        .env("OXMPI_COLL_TABLE", &dir)
        .output()
        .expect("oxrun runs");
    std::fs::remove_file(&dir).ok();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("has no algorithm 'tree'"));
}
