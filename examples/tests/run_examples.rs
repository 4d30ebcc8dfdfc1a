//! Every example, run through `oxrun` over shared memory and TCP, prints what the mpi4py
//! tutorial it comes from prints.

use std::path::PathBuf;
use std::process::Command;

fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().and_then(|d| d.parent()).unwrap().to_path_buf()
}

/// Runs `example` on `n` ranks; returns its stdout lines, sorted (ranks print concurrently).
fn run(example: &str, n: u32, fabric: &str) -> Vec<String> {
    let oxrun = target_dir().join("oxrun");
    let prog = target_dir().join("examples").join(example);
    assert!(
        oxrun.exists() && prog.exists(),
        "build the workspace first (scripts/test.sh does)"
    );
    let out = Command::new(oxrun)
        .arg("-n")
        .arg(n.to_string())
        .arg(prog)
        .env("OXMPI_FABRIC", fabric)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{example}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    lines.sort();
    lines
}

fn for_each_fabric(f: impl Fn(&str)) {
    for fabric in ["shm", "tcp"] {
        f(fabric);
    }
}

#[test]
fn hello_prints_every_rank() {
    for_each_fabric(|fabric| {
        let expected: Vec<String> = (0..4)
            .map(|r| format!("Rank {r} out of 4 processes"))
            .collect();
        assert_eq!(run("hello", 4, fabric), expected);
    });
}

#[test]
fn p2p_dict_prints_the_dictionary() {
    for_each_fabric(|fabric| {
        assert_eq!(
            run("p2p_dict", 2, fabric),
            vec!["On process 1, data is  {'a': 7, 'b': 3.14}"]
        );
    });
}

#[test]
fn p2p_array_prints_both_sides() {
    for_each_fabric(|fabric| {
        assert_eq!(
            run("p2p_array", 2, fabric),
            vec![
                "process 0 Send buffer-like array [0 1 2 3 4 5 6 7 8 9]...",
                "process 1 recv buffer-like array [0 1 2 3 4 5 6 7 8 9]...",
            ]
        );
    });
}

#[test]
fn nonblocking_prints_both_sides() {
    for_each_fabric(|fabric| {
        assert_eq!(
            run("nonblocking", 2, fabric),
            vec![
                "process 0 immediate send [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]...",
                "process 1 recv [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]...",
            ]
        );
    });
}

#[test]
fn fabric_info_names_the_fabric_of_every_peer() {
    for fabric in ["shm", "tcp"] {
        let lines = run("fabric_info", 3, fabric);
        assert_eq!(lines.len(), 9, "{lines:?}");
        for me in 0..3 {
            for peer in 0..3 {
                let name = if me == peer { "self" } else { fabric };
                let prefix = format!("rank {me} -> {peer}: {name} (");
                // e.g. "rank 0 -> 1: shm (eager <= 8192 B, rndv/read 8193..=524288 B, ...)"
                assert!(
                    lines.iter().any(|l| l.starts_with(&prefix)),
                    "{prefix} missing in {lines:?}"
                );
            }
        }
    }
}
