//! The environment contract between `oxrun` (or another launcher) and the ranks it starts.
//!
//! | variable | meaning |
//! |---|---|
//! | `OXMPI_RANK` | this process's rank in the world communicator |
//! | `OXMPI_SIZE` | number of ranks in the world |
//! | `OXMPI_KVS` | `host:port` of the key-value service |
//! | `OXMPI_SECRET` | the job secret, 64 hex digits |
//! | `OXMPI_JOB` | the job id, used to name shared-memory segments (unset: derived from the secret) |
//! | `OXMPI_BOOT_TIMEOUT` | seconds to wait for wire-up (default 60) |
//!
//! A process started without `OXMPI_RANK` is a singleton: a world of one.

use crate::{BootstrapError, Secret};
use std::time::Duration;

/// Variable names of the contract.
pub const RANK: &str = "OXMPI_RANK";
/// See the module table.
pub const SIZE: &str = "OXMPI_SIZE";
/// See the module table.
pub const KVS: &str = "OXMPI_KVS";
/// See the module table.
pub const SECRET: &str = "OXMPI_SECRET";
/// See the module table.
pub const JOB: &str = "OXMPI_JOB";
/// See the module table.
pub const BOOT_TIMEOUT: &str = "OXMPI_BOOT_TIMEOUT";

/// What a rank learns from its launcher.
#[derive(Clone, Debug)]
pub struct JobEnv {
    /// This process's world rank.
    pub rank: u32,
    /// Number of ranks.
    pub size: u32,
    /// Address of the key-value service (`None` for a singleton).
    pub kvs: Option<String>,
    /// The job secret.
    pub secret: Secret,
    /// Job id (hex), unique per launch.
    pub job: String,
    /// Wire-up deadline.
    pub boot_timeout: Duration,
}

/// A job id from the environment names files in `/dev/shm` (`oxmpi-<job>-<rank>`): letters,
/// digits, `-` and `_` only, 1 to 64 of them, so no launcher's typo reaches another directory.
fn check_job_id(job: String) -> Result<String, BootstrapError> {
    let ok = !job.is_empty()
        && job.len() <= 64
        && job
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(job)
    } else {
        Err(BootstrapError::BadEnv(format!(
            "{JOB}={job:?}: a job id is 1 to 64 letters, digits, '-' or '_'"
        )))
    }
}

impl JobEnv {
    /// Reads the contract from the process environment; a singleton if `OXMPI_RANK` is unset.
    pub fn from_env() -> Result<Self, BootstrapError> {
        let get = |k: &str| std::env::var(k).ok();
        let boot_timeout = match get(BOOT_TIMEOUT) {
            Some(s) => Duration::from_secs_f64(
                s.parse::<f64>()
                    .map_err(|_| BootstrapError::BadEnv(format!("{BOOT_TIMEOUT}={s}")))?,
            ),
            None => Duration::from_secs(60),
        };
        let Some(rank) = get(RANK) else {
            return Ok(Self::singleton());
        };
        let parse = |k: &str, v: Option<String>| -> Result<u32, BootstrapError> {
            v.ok_or_else(|| BootstrapError::BadEnv(format!("{k} is not set")))?
                .parse()
                .map_err(|_| BootstrapError::BadEnv(format!("{k} is not a number")))
        };
        let rank = parse(RANK, Some(rank))?;
        let size = parse(SIZE, get(SIZE))?;
        if size == 0 || rank >= size {
            return Err(BootstrapError::BadEnv(format!(
                "rank {rank} with size {size}"
            )));
        }
        let secret = Secret::from_hex(
            &get(SECRET).ok_or_else(|| BootstrapError::BadEnv(format!("{SECRET} is not set")))?,
        )?;
        // Without `OXMPI_JOB` (a launcher other than `oxrun`) every rank derives the same id
        // from the job's secret: segment names must agree between ranks.
        let job = match get(JOB) {
            Some(job) => check_job_id(job)?,
            None => secret.job_id(),
        };
        let kvs = get(KVS);
        if size > 1 && kvs.is_none() {
            return Err(BootstrapError::BadEnv(format!("{KVS} is not set")));
        }
        Ok(Self {
            rank,
            size,
            kvs,
            secret,
            job,
            boot_timeout,
        })
    }

    /// A world of one, as for a program started without a launcher.
    pub fn singleton() -> Self {
        Self {
            rank: 0,
            size: 1,
            kvs: None,
            secret: Secret::random(),
            job: format!("s{}", std::process::id()),
            boot_timeout: Duration::from_secs(60),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids_that_would_leave_dev_shm_are_refused() {
        for good in ["0a1b2c3d4e5f", "p123", "my_job-7"] {
            assert_eq!(check_job_id(good.into()).unwrap(), good);
        }
        for bad in ["", "../etc", "a/b", "x y", "nul\0", &"j".repeat(65)] {
            let e = check_job_id(bad.into()).unwrap_err().to_string();
            assert!(e.contains("OXMPI_JOB"), "{e}");
        }
    }
}
