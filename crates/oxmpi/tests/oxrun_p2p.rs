//! End-to-end point-to-point tests: real processes started by `oxrun`, over shared memory and
//! over TCP, with 2, 3, 4 and 8 ranks. The rank program is `examples/suite.rs`, which checks
//! every message's order and content itself.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent()
        .and_then(|d| d.parent())
        .expect("target/<profile>")
        .to_path_buf()
}

fn bin(name: &str) -> PathBuf {
    let p = target_dir().join(name);
    assert!(
        p.exists(),
        "{} is missing: build the workspace first (scripts/test.sh does)",
        p.display()
    );
    p
}

fn oxrun(n: u32, fabric: &str, args: &[&str]) -> Output {
    oxrun_env(n, &[("OXMPI_FABRIC", fabric)], args)
}

fn oxrun_env(n: u32, env: &[(&str, &str)], args: &[&str]) -> Output {
    Command::new(bin("oxrun"))
        .arg("-n")
        .arg(n.to_string())
        .arg(bin("examples/suite"))
        .args(args)
        .envs(env.iter().copied())
        .env("OXMPI_BOOT_TIMEOUT", "60")
        .output()
        .expect("oxrun runs")
}

fn check(out: &Output, what: &str) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
}

fn all_scenarios(fabric: &str) {
    all_scenarios_env(&[("OXMPI_FABRIC", fabric)]);
}

fn all_scenarios_env(env: &[(&str, &str)]) {
    for n in [2, 3, 4, 8] {
        let out = oxrun_env(n, env, &["all"]);
        check(&out, &format!("{env:?} with {n} ranks"));
        let stdout = String::from_utf8_lossy(&out.stdout);
        for s in [
            "flood",
            "wildcard",
            "zero_self",
            "truncate",
            "invalid",
            "big",
        ] {
            assert!(
                stdout.contains(&format!("{s}: ok on {n} rank(s)"))
                    || stdout.contains(&format!("all: ok on {n} rank(s)")),
                "{stdout}"
            );
        }
    }
}

/// The same scenarios over libfabric's tcp (with ofi_rxm) and shm providers.
#[cfg(feature = "ofi")]
#[test]
fn ofi_all_scenarios_over_tcp_and_shm_providers() {
    for provider in ["tcp;ofi_rxm", "shm"] {
        all_scenarios_env(&[("OXMPI_FABRIC", "ofi"), ("OXMPI_OFI_PROVIDER", provider)]);
    }
}

#[test]
fn shm_all_scenarios_2_3_4_8_ranks() {
    all_scenarios("shm");
}

#[test]
fn tcp_all_scenarios_2_3_4_8_ranks() {
    all_scenarios("tcp");
}

#[test]
fn shm_pipeline_and_remote_read_both_carry_large_messages() {
    // Force each rendezvous protocol in turn over shared memory.
    for read_min in ["1", "1000000000"] {
        let out = Command::new(bin("oxrun"))
            .args(["-n", "2"])
            .arg(bin("examples/suite"))
            .args(["big", "truncate"])
            .env("OXMPI_FABRIC", "shm")
            .env("OXMPI_RNDV_READ_MIN", read_min)
            .env("SUITE_BIG_MIB", "32")
            .output()
            .unwrap();
        check(&out, &format!("shm with OXMPI_RNDV_READ_MIN={read_min}"));
    }
}

#[test]
fn a_client_without_the_secret_is_refused_and_the_job_goes_on() {
    for fabric in ["shm", "tcp"] {
        let out = oxrun(3, fabric, &["secret"]);
        check(&out, &format!("secret over {fabric}"));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stdout.contains("refused as expected by the key-value service"),
            "{stdout}"
        );
        assert!(
            stderr.contains("oxrun: refused a connection to the key-value service"),
            "{stderr}"
        );
        if fabric == "tcp" {
            assert!(
                stdout.contains("refused as expected by the listener of rank 2"),
                "{stdout}"
            );
            assert!(
                stderr.contains("rank 2: refused connection from"),
                "{stderr}"
            );
        }
    }
}

#[test]
fn a_rank_exiting_with_code_3_brings_the_job_down_and_is_named() {
    for fabric in ["shm", "tcp"] {
        let t = Instant::now();
        let out = oxrun(4, fabric, &["exit3"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{stderr}");
        assert!(stderr.contains("oxrun: rank 3 (pid"), "{stderr}");
        assert!(stderr.contains("exited with code 3"), "{stderr}");
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "took {:?}",
            t.elapsed()
        );
    }
}

#[test]
fn abort_brings_the_job_down_with_its_code() {
    let out = oxrun(3, "shm", &["abort"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{stderr}");
    assert!(
        stderr.contains("rank 0 called abort with code 5"),
        "{stderr}"
    );
}

#[test]
fn singleton_start_without_oxrun() {
    let out = Command::new(bin("examples/suite"))
        .args(["zero_self", "invalid", "truncate", "flood"])
        .env_remove("OXMPI_RANK")
        .output()
        .unwrap();
    check(&out, "singleton");
    assert!(String::from_utf8_lossy(&out.stdout).contains("zero_self: ok on 1 rank(s)"));
}

#[test]
fn no_segments_are_left_in_dev_shm() {
    let out = oxrun(3, "shm", &["exit3"]);
    assert_eq!(out.status.code(), Some(3));
    let leftovers: Vec<_> = std::fs::read_dir("/dev/shm")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("oxmpi-"))
        .collect();
    // Other tests may be running jobs right now; their segments live only during wire-up.
    // A segment of a finished job would stay forever, so wait a little and look again.
    if !leftovers.is_empty() {
        std::thread::sleep(Duration::from_secs(3));
        let still: Vec<_> = leftovers
            .iter()
            .filter(|n| std::path::Path::new("/dev/shm").join(n).exists())
            .collect();
        assert!(still.is_empty(), "segments left behind: {still:?}");
    }
}
