//! The messages of the edge protocol: JSON, each framed by a 4-byte big-endian length, at most
//! [`MAX_MESSAGE`] bytes. Garbage, an oversized frame or an unexpected message ends the
//! exchange with an error, never a panic.

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// A policy bundle for a site with thousands of devices is a few MiB.
pub const MAX_MESSAGE: usize = 16 << 20;

/// A device the central may ask the edge to connect to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct EdgeDevice {
    pub site: String,
    pub device: String,
    pub addr: String,
    /// Where the device serves its web UI (`HOST:PORT`), if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub web: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    /// Edge to central, without a client certificate: join with the token's secret.
    Join {
        edge: String,
        secret: String,
        csr: String,
    },
    /// Central to edge: the certificate and the CA to trust from now on.
    Joined { certificate: String, ca: String },
    /// Central to edge: the link is refused (and why).
    Refused { reason: String },
    /// Central to edge, first on a link: who the edge is, its sites and their devices.
    Welcome {
        edge: String,
        sites: Vec<String>,
        devices: Vec<EdgeDevice>,
    },
    /// Central to edge, on a stream of its own: the sites' devices changed.
    Devices { devices: Vec<EdgeDevice> },
    /// Central to edge, first on a device stream: connect this stream to the device's SSH
    /// address.
    Open { site: String, device: String },
    /// Central to edge, first on a device stream: connect this stream to the device's web UI,
    /// which the central expects at `addr`. An edge of an older version cannot read this
    /// message and drops the stream (the central reports a link error), rather than connecting
    /// to the device's SSH address.
    OpenWeb {
        site: String,
        device: String,
        addr: String,
    },
    /// Edge to central: the stream is now the device's TCP connection.
    Opened,
    /// Edge to central: refused (not a device of the edge's sites, or unreachable).
    OpenRefused { reason: String },
    /// Edge to central, on a stream of its own: a new certificate for this CSR.
    Renew { csr: String },
    /// Central to edge: the renewed certificate.
    Renewed { certificate: String },
    /// Edge to central, on a stream of its own once the link is up: the X25519 key secrets in
    /// its bundles are to be sealed to.
    Announce { box_key: String },
    /// Central to edge: the key its policy bundles are signed with.
    Announced { signer: String },
    /// Central to edge, on a stream of its own: a new signed policy bundle.
    Policy {
        bundle: approvals::bundle::SignedBundle,
    },
    /// Edge to central: the edge checked and holds this version.
    PolicyHeld { version: i64 },
    /// Edge to central: the bundle was not taken (and why).
    PolicyRefused { reason: String },
    /// Edge to central, on a stream of its own: a session recorded at the site, then `size` raw
    /// bytes of its recording; `keyring` is the site node's seal keyring (root-signed).
    Ship {
        session: Box<ShippedSession>,
        /// The break-glass opening the session came from, for the central's review queue.
        breakglass: Option<Box<approvals::BreakGlass>>,
        keyring: String,
        size: u64,
    },
    /// Central to edge: checked and kept (or kept already).
    Shipped { id: String },
    /// Central to edge: it failed the checks, and is kept aside at the central.
    ShipRefused { id: String, reason: String },
    /// Edge to central: evidence waiting at the edge.
    Backlog { sessions: i64, bytes: i64 },
    /// Edge to central, on a stream of its own: the site node's audit log from byte `offset`,
    /// `size` raw bytes (whole records) following.
    AuditShip { offset: u64, size: u64 },
    /// Central to edge: it holds the edge's audit log up to `size` bytes (checked); a shipment
    /// that did not start there is answered with this too, for the edge to resume from it.
    AuditHeld { size: u64 },
    /// Edge to central: each vendor's last TOTP step used at the site (spent at the central too).
    TotpSteps { steps: Vec<(String, i64)> },
}

/// A session recorded at an edge's site node, as shipped (its node is the edge's, from its
/// certificate, never from this).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShippedSession {
    pub id: String,
    pub vendor: String,
    pub site: String,
    pub device: String,
    pub function: String,
    pub grant_id: String,
    pub source: String,
    pub recording: String,
    pub started: i64,
    pub ended: Option<i64>,
    pub end_reason: Option<String>,
    pub records: Option<i64>,
    pub final_hash: Option<String>,
    pub breakglass: Option<String>,
}

impl ShippedSession {
    pub fn of(s: &approvals::Session) -> ShippedSession {
        ShippedSession {
            id: s.id.clone(),
            vendor: s.vendor.clone(),
            site: s.site.clone(),
            device: s.device.clone(),
            function: s.function.clone(),
            grant_id: s.grant_id.clone(),
            source: s.source.clone(),
            recording: s.recording.clone(),
            started: s.started,
            ended: s.ended,
            end_reason: s.end_reason.clone(),
            records: s.records,
            final_hash: s.final_hash.clone(),
            breakglass: s.breakglass.clone(),
        }
    }

    /// The session row, recorded on `node`.
    pub fn session(&self, node: &str) -> approvals::Session {
        approvals::Session {
            id: self.id.clone(),
            vendor: self.vendor.clone(),
            site: self.site.clone(),
            device: self.device.clone(),
            function: self.function.clone(),
            grant_id: self.grant_id.clone(),
            node: node.to_owned(),
            source: self.source.clone(),
            recording: self.recording.clone(),
            started: self.started,
            ended: self.ended,
            end_reason: self.end_reason.clone(),
            kill_requested: false,
            records: self.records,
            final_hash: self.final_hash.clone(),
            breakglass: self.breakglass.clone(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("a message of {0} bytes is over the limit")]
    TooLong(usize),
    #[error("not a message: {0}")]
    Garbage(#[from] serde_json::Error),
    #[error("unexpected message: {0}")]
    Unexpected(String),
}

pub async fn write<W: AsyncWrite + Unpin>(w: &mut W, m: &Message) -> Result<(), WireError> {
    let body = serde_json::to_vec(m)?;
    if body.len() > MAX_MESSAGE {
        return Err(WireError::TooLong(body.len()));
    }
    w.write_all(&(body.len() as u32).to_be_bytes()).await?;
    w.write_all(&body).await?;
    w.flush().await?;
    Ok(())
}

pub async fn read<R: AsyncRead + Unpin>(r: &mut R) -> Result<Message, WireError> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_MESSAGE {
        return Err(WireError::TooLong(len));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    Ok(serde_json::from_slice(&body)?)
}

/// Ends an exchange on a stream politely: our half is closed (FIN), then the peer's is awaited
/// (at most 5 s). A yamux stream dropped while open is reset, and a reset can overtake the last
/// message still buffered at the other end.
pub async fn finish<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S) {
    let _ = s.shutdown().await;
    let drain = async {
        let mut buf = [0u8; 512];
        while let Ok(n) = s.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), drain).await;
}

impl Message {
    /// For errors: the message's kind, not its contents (which may hold a secret).
    pub fn kind(&self) -> String {
        serde_json::to_value(self)
            .ok()
            .and_then(|v| v["type"].as_str().map(str::to_owned))
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_garbage_is_an_error() {
        let (mut a, mut b) = tokio::io::duplex(4096);
        let m = Message::OpenWeb {
            site: "s".into(),
            device: "d".into(),
            addr: "10.0.0.1:443".into(),
        };
        write(&mut a, &m).await.unwrap();
        assert_eq!(read(&mut b).await.unwrap(), m);
        a.write_all(&[0, 0, 0, 3, b'x', b'y', b'z']).await.unwrap();
        assert!(matches!(read(&mut b).await, Err(WireError::Garbage(_))));
        a.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        assert!(matches!(read(&mut b).await, Err(WireError::TooLong(_))));
    }
}
