//! The one-time join token `edge add` prints: `PEJ1:NAME:SECRET:PIN`. SECRET is 32 random bytes
//! (hex; the central keeps only its SHA-256), PIN the SHA-256 of the edge CA certificate, which the
//! joining edge checks the central's chain against before it sends anything (as kubeadm's
//! `--discovery-token-ca-cert-hash`).

use sha2::{Digest, Sha256};

const PREFIX: &str = "PEJ1";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinToken {
    pub edge: String,
    pub secret: String,
    pub pin: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "not a Postern join token (expected PEJ1:NAME:SECRET:CA-SHA256, as `postern edge add` prints)"
)]
pub struct NotAToken;

impl JoinToken {
    pub fn new(edge: &str, pin: &str) -> JoinToken {
        JoinToken {
            edge: edge.to_owned(),
            secret: hex::encode(rand::random::<[u8; 32]>()),
            pin: pin.to_owned(),
        }
    }

    pub fn parse(text: &str) -> Result<JoinToken, NotAToken> {
        let mut parts = text.trim().split(':');
        let (Some(PREFIX), Some(edge), Some(secret), Some(pin), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(NotAToken);
        };
        let hex64 = |s: &str| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit());
        if edge.is_empty() || !hex64(secret) || !hex64(pin) {
            return Err(NotAToken);
        }
        Ok(JoinToken {
            edge: edge.to_owned(),
            secret: secret.to_ascii_lowercase(),
            pin: pin.to_ascii_lowercase(),
        })
    }

    /// What the central stores and compares.
    pub fn secret_hash(secret: &str) -> String {
        hex::encode(Sha256::digest(secret.as_bytes()))
    }
}

impl std::fmt::Display for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{PREFIX}:{}:{}:{}", self.edge, self.secret, self.pin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_garbage() {
        let t = JoinToken::new("edge-1", &"ab".repeat(32));
        assert_eq!(JoinToken::parse(&t.to_string()), Ok(t.clone()));
        for bad in ["", "PEJ1:e:x:y", "PEJ2:e:00:00", &format!("{t}:more")] {
            assert_eq!(JoinToken::parse(bad), Err(NotAToken), "{bad}");
        }
    }
}
