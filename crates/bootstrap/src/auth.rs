//! The job-secret handshake.
//!
//! Every connection inside a job (rank to key-value service, rank to rank) starts with a
//! mutual challenge-response: each side sends a fresh nonce and answers the other's with
//! HMAC-SHA256 keyed by the job secret, so the secret itself never crosses the wire.
//!
//! ```text
//! client -> server  "OXMPI\x01" | nonce_c[16] | id u32
//! server -> client  nonce_s[16] | HMAC(secret, "srv" | nonce_c | nonce_s)
//! client -> server  HMAC(secret, "cli" | nonce_s | nonce_c | id)
//! server -> client  "K"
//! ```

use crate::BootstrapError;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::io::{Read, Write};

const MAGIC: &[u8; 6] = b"OXMPI\x01";
const NONCE: usize = 16;
const MAC: usize = 32;

/// A 32-byte job secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret([u8; 32]);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret {
    /// A fresh random secret from the operating system.
    pub fn random() -> Self {
        let mut b = [0u8; 32];
        fill_random(&mut b);
        Self(b)
    }

    /// Parses 64 hex digits.
    pub fn from_hex(s: &str) -> Result<Self, BootstrapError> {
        let s = s.trim();
        if s.len() != 64 || !s.is_ascii() {
            return Err(BootstrapError::BadEnv(
                "secret must be 64 hex digits".into(),
            ));
        }
        let mut b = [0u8; 32];
        for (i, byte) in b.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16)
                .map_err(|_| BootstrapError::BadEnv("secret must be 64 hex digits".into()))?;
        }
        Ok(Self(b))
    }

    /// The secret as 64 hex digits (for the launcher's environment).
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// A 32-bit value only holders of the secret can compute, for fabrics that have no
    /// per-connection handshake (libfabric RDM endpoints): every frame carries it, and frames
    /// without it are dropped. `label` separates its uses.
    pub fn tag32(&self, label: &str) -> u32 {
        let m = self.mac(&[b"oxmpi-fabric-tag", label.as_bytes()]);
        u32::from_le_bytes([m[0], m[1], m[2], m[3]])
    }

    /// A job id the ranks of one job agree on without being told one: 12 hex digits (48
    /// bits, as `oxrun`'s random ids) derived from the secret, which they share and which is
    /// fresh per launch. It names shared-memory segments, so it reveals nothing of the secret.
    pub fn job_id(&self) -> String {
        let m = self.mac(&[b"oxmpi-job-id"]);
        m[..6].iter().map(|b| format!("{b:02x}")).collect()
    }

    fn mac(&self, parts: &[&[u8]]) -> [u8; MAC] {
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("any key length");
        for p in parts {
            m.update(p);
        }
        m.finalize().into_bytes().into()
    }
}

/// Fills `buf` with operating-system randomness.
pub fn fill_random(buf: &mut [u8]) {
    getrandom::getrandom(buf).expect("the operating system's random source failed");
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Client side: proves the secret to the server and checks the server's proof.
/// `id` identifies the client (its rank). The stream should have read/write timeouts set.
pub fn client_handshake<S: Read + Write>(
    s: &mut S,
    secret: &Secret,
    id: u32,
) -> Result<(), BootstrapError> {
    let mut nonce_c = [0u8; NONCE];
    fill_random(&mut nonce_c);
    let mut hello = Vec::with_capacity(MAGIC.len() + NONCE + 4);
    hello.extend_from_slice(MAGIC);
    hello.extend_from_slice(&nonce_c);
    hello.extend_from_slice(&id.to_le_bytes());
    s.write_all(&hello)?;
    let mut reply = [0u8; NONCE + MAC];
    s.read_exact(&mut reply)
        .map_err(|e| BootstrapError::Auth(format!("no handshake reply: {e}")))?;
    let (nonce_s, mac_s) = reply.split_at(NONCE);
    if !ct_eq(mac_s, &secret.mac(&[b"srv", &nonce_c, nonce_s])) {
        return Err(BootstrapError::Auth(
            "the server does not hold the job secret".into(),
        ));
    }
    s.write_all(&secret.mac(&[b"cli", nonce_s, &nonce_c, &id.to_le_bytes()]))?;
    let mut ok = [0u8; 1];
    s.read_exact(&mut ok).map_err(|_| {
        BootstrapError::Auth("the server refused our proof of the job secret".into())
    })?;
    if ok[0] != b'K' {
        return Err(BootstrapError::Auth(
            "the server refused our proof of the job secret".into(),
        ));
    }
    Ok(())
}

/// Server side: checks the client's proof of the secret; returns the client's id.
pub fn server_handshake<S: Read + Write>(
    s: &mut S,
    secret: &Secret,
) -> Result<u32, BootstrapError> {
    let mut hello = [0u8; 6 + NONCE + 4];
    s.read_exact(&mut hello)
        .map_err(|e| BootstrapError::Auth(format!("incomplete hello: {e}")))?;
    if &hello[..6] != MAGIC {
        return Err(BootstrapError::Auth(
            "not an oxmpi connection (bad magic)".into(),
        ));
    }
    let nonce_c = &hello[6..6 + NONCE];
    let id_bytes = &hello[6 + NONCE..];
    let mut nonce_s = [0u8; NONCE];
    fill_random(&mut nonce_s);
    let mut reply = Vec::with_capacity(NONCE + MAC);
    reply.extend_from_slice(&nonce_s);
    reply.extend_from_slice(&secret.mac(&[b"srv", nonce_c, &nonce_s]));
    s.write_all(&reply)?;
    let mut mac_c = [0u8; MAC];
    s.read_exact(&mut mac_c)
        .map_err(|e| BootstrapError::Auth(format!("no proof of the job secret: {e}")))?;
    if !ct_eq(&mac_c, &secret.mac(&[b"cli", &nonce_s, nonce_c, id_bytes])) {
        return Err(BootstrapError::Auth(
            "the client does not hold the job secret".into(),
        ));
    }
    s.write_all(b"K")?;
    Ok(u32::from_le_bytes(id_bytes.try_into().expect("4 bytes")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    fn run(
        server_secret: Secret,
        client_secret: Secret,
    ) -> (Result<u32, String>, Result<(), String>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            server_handshake(&mut s, &server_secret).map_err(|e| e.to_string())
        });
        let mut c = TcpStream::connect(addr).unwrap();
        let cr = client_handshake(&mut c, &client_secret, 7).map_err(|e| e.to_string());
        drop(c);
        (t.join().unwrap(), cr)
    }

    #[test]
    fn same_secret_accepts() {
        let s = Secret::random();
        let (srv, cli) = run(s.clone(), s);
        assert_eq!(srv.unwrap(), 7);
        cli.unwrap();
    }

    #[test]
    fn wrong_secret_refused_both_ways() {
        let (srv, cli) = run(Secret::random(), Secret::random());
        assert!(cli.unwrap_err().contains("server does not hold"));
        assert!(srv.is_err());
    }

    #[test]
    fn hex_round_trip() {
        let s = Secret::random();
        assert_eq!(Secret::from_hex(&s.to_hex()).unwrap(), s);
        assert!(Secret::from_hex("zz").is_err());
    }

    #[test]
    fn job_ids_agree_per_secret_and_differ_between_secrets() {
        let s = Secret::random();
        let again = Secret::from_hex(&s.to_hex()).unwrap();
        let id = s.job_id();
        assert_eq!(id, again.job_id());
        assert_eq!(id.len(), 12);
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
        assert!(
            !s.to_hex().contains(&id),
            "the id is not a piece of the secret"
        );
        assert_ne!(id, Secret::random().job_id());
    }
}
