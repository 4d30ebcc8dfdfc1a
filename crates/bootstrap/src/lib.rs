//! Wire-up for oxmpi jobs.
//!
//! This crate owns everything a rank needs before it can talk to its peers:
//! - [`env`]: the environment contract between `oxrun` and the ranks it starts;
//! - [`auth`]: the handshake in which both ends of a connection prove they hold the job secret;
//! - [`kvs`]: the key-value exchange (put / fence / get) served by the launcher.
#![forbid(unsafe_code)]

pub mod auth;
pub mod env;
pub mod kvs;

pub use auth::Secret;
pub use env::JobEnv;
pub use kvs::{KvsClient, KvsServer};

/// Errors raised while wiring a job up.
#[derive(Debug)]
#[non_exhaustive]
pub enum BootstrapError {
    /// The environment set by the launcher is malformed.
    BadEnv(String),
    /// The peer did not prove it holds the job secret.
    Auth(String),
    /// The key-value service could not be reached or answered badly.
    Kvs(String),
    /// A wait on the key-value service ran past its deadline.
    Timeout(String),
    /// An I/O error on a bootstrap connection.
    Io(std::io::Error),
}

impl std::fmt::Display for BootstrapError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::BadEnv(m) => write!(f, "bad launcher environment: {m}"),
            Self::Auth(m) => write!(f, "authentication failed: {m}"),
            Self::Kvs(m) => write!(f, "key-value service: {m}"),
            Self::Timeout(m) => write!(f, "bootstrap timeout: {m}"),
            Self::Io(e) => write!(f, "bootstrap I/O: {e}"),
        }
    }
}

impl std::error::Error for BootstrapError {}

impl From<std::io::Error> for BootstrapError {
    fn from(e: std::io::Error) -> Self {
        if matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ) {
            Self::Timeout(e.to_string())
        } else {
            Self::Io(e)
        }
    }
}
