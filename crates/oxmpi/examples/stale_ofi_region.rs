//! Test helper for the `ofi` backend: leaves a libfabric shm-provider region under the
//! provider's default, pid-derived name (`/dev/shm/<pid>:<uid>:0`), as a process killed
//! before closing its endpoint leaves it, and then replaces itself (exec, same pid) with the
//! program its arguments name. That program starts as a process given a dead one's pid
//! would: with a region under its own pid's name that a live process (itself) seems to own.
//! It reports `pid <pid> left <name>` on stderr, so the test can remove the region after.

#[cfg(feature = "ofi")]
fn main() {
    use oxmpi_fabric::ofi::{Ofi, OfiConfig};
    use std::os::unix::process::CommandExt;

    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((program, rest)) = args.split_first() else {
        eprintln!("usage: stale_ofi_region PROGRAM [ARGS...]");
        std::process::exit(2);
    };
    let config = OfiConfig {
        provider: Some("shm".into()),
        domain: None,
        local_only: true,
        job_tag: 0,
        rma: false,
        endpoint_name: None,
    };
    let ep = match Ofi::open(0, 1, &config) {
        Ok(ep) => ep,
        Err(e) => {
            eprintln!("stale_ofi_region: {e}");
            std::process::exit(1);
        }
    };
    let name = ep.address().unwrap_or_default();
    eprintln!(
        "pid {} left {}",
        std::process::id(),
        String::from_utf8_lossy(&name).trim_end_matches('\0')
    );
    // Never closed: exec replaces the process without running destructors.
    let err = std::process::Command::new(program).args(rest).exec();
    eprintln!("stale_ofi_region: cannot run {program}: {err}");
    std::process::exit(127);
}

#[cfg(not(feature = "ofi"))]
fn main() {
    eprintln!("stale_ofi_region: this build has no ofi backend");
    std::process::exit(2);
}
