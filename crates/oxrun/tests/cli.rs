//! `oxrun` as a user runs it: exit codes, naming the failing rank, output forwarding,
//! signals and the bootstrap timeout.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn oxrun(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_oxrun"))
        .args(args)
        .output()
        .expect("oxrun runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn runs_n_copies_with_the_environment_contract() {
    let o = oxrun(&[
        "-n",
        "3",
        "sh",
        "-c",
        "echo rank=$OXMPI_RANK size=$OXMPI_SIZE",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let mut lines: Vec<String> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(String::from)
        .collect();
    lines.sort();
    assert_eq!(lines, ["rank=0 size=3", "rank=1 size=3", "rank=2 size=3"]);
}

#[test]
fn tag_output_prefixes_each_line_with_the_rank() {
    let o = oxrun(&[
        "-n",
        "2",
        "--tag-output",
        "sh",
        "-c",
        "echo out; echo err >&2",
    ]);
    assert!(o.status.success());
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("[1,0]<stdout>: out") && out.contains("[1,1]<stdout>: out"),
        "{out}"
    );
    assert!(stderr(&o).contains("[1,1]<stderr>: err"), "{}", stderr(&o));
}

#[test]
fn first_failing_rank_decides_the_exit_code_and_the_rest_are_killed() {
    let t = Instant::now();
    let o = oxrun(&[
        "-n",
        "4",
        "sh",
        "-c",
        "if [ \"$OXMPI_RANK\" = 2 ]; then exit 7; fi; sleep 60",
    ]);
    assert_eq!(o.status.code(), Some(7), "{}", stderr(&o));
    assert!(stderr(&o).contains("oxrun: rank 2 (pid"), "{}", stderr(&o));
    assert!(stderr(&o).contains("exited with code 7"));
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "the sleeping ranks were not killed promptly"
    );
}

#[test]
fn a_rank_killed_by_a_signal_is_named() {
    let o = oxrun(&[
        "-n",
        "2",
        "sh",
        "-c",
        "if [ \"$OXMPI_RANK\" = 0 ]; then kill -9 $$; fi; sleep 60",
    ]);
    assert_eq!(o.status.code(), Some(128 + 9));
    assert!(
        stderr(&o).contains("rank 0 (pid") && stderr(&o).contains("SIGKILL"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_missing_program_is_reported() {
    let o = oxrun(&["-n", "2", "/nonexistent/program"]);
    assert_eq!(o.status.code(), Some(127));
    assert!(stderr(&o).contains("cannot start"), "{}", stderr(&o));
}

#[test]
fn a_rank_that_never_connects_gives_a_bootstrap_timeout() {
    let hello = PathBuf::from(env!("CARGO_BIN_EXE_oxrun"))
        .with_file_name("examples")
        .join("hello");
    assert!(
        hello.exists(),
        "build the examples first (scripts/test.sh does)"
    );
    let script = format!(
        "if [ \"$OXMPI_RANK\" = 0 ]; then exec {}; else sleep 60; fi",
        hello.display()
    );
    let t = Instant::now();
    let o = oxrun(&["-n", "2", "--boot-timeout", "2", "sh", "-c", &script]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("bootstrap timeout") && e.contains("[1]"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(20));
}

#[test]
fn sigterm_to_oxrun_ends_the_job() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_oxrun"))
        .args(["-n", "2", "sleep", "60"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let t = Instant::now();
    let st = child.wait().unwrap();
    assert_eq!(st.code(), Some(128 + 15));
    assert!(t.elapsed() < Duration::from_secs(5));
}

#[test]
fn fabric_info_reports_every_backend_and_the_auto_choice() {
    let tool = PathBuf::from(env!("CARGO_BIN_EXE_oxrun")).with_file_name("oxmpi-fabric-info");
    let o = oxrun(&["--fabric-info"]);
    if !tool.exists() {
        // `cargo test -p oxrun` alone does not build the fabric crate's tool.
        assert!(stderr(&o).contains("oxmpi-fabric-info"), "{}", stderr(&o));
        return;
    }
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("within a host: shm"), "{out}");
    assert!(out.contains("  tcp: usable"), "{out}");
    for net in ["verbs", "ofi"] {
        // Usable, or left out with a reason.
        assert!(
            out.contains(&format!("  {net}: usable"))
                || out.contains(&format!("  {net}: not used: ")),
            "{out}"
        );
    }
    assert!(out.contains("auto: shm within a host, "), "{out}");
    let bad = Command::new(&tool)
        .arg("--fabric-info")
        .env("OXMPI_FABRIC", "carrier-pigeon")
        .output()
        .expect("oxrun runs");
    let out = String::from_utf8_lossy(&bad.stdout);
    assert!(
        out.contains("is not one of auto, shm, tcp, ofi, verbs"),
        "{out}"
    );
}
