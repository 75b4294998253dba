//! The device side: a russh client that logs in with the broker-held credential after checking the
//! device's host key against the pinned one.

use approvals::CredentialKind;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use approvals::Device;
use russh::client;
use russh::keys::{PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};

use crate::keys::{fingerprint, parse_private, parse_public};

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("device {0} is unreachable: {1}")]
    Unreachable(String, String),
    #[error(
        "device {device} presented host key {got}, which does not match the pinned key {pinned}: refusing to connect"
    )]
    HostKeyMismatch {
        device: String,
        pinned: String,
        got: String,
    },
    #[error("the broker's credential for device {0} was refused by the device")]
    AuthFailed(String),
    #[error("the broker's credential for device {0} is unusable: {1}")]
    BadCredential(String, String),
    /// The site is served by an edge, and it cannot take the connection now.
    #[error(transparent)]
    Edge(#[from] crate::edge::hub::RouteError),
}

/// Why the connection to a device ended without the broker ending it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceEnd {
    /// The device closed the connection (its sshd stopped, it rebooted, it sent a disconnect).
    Disconnected,
    /// The device stopped answering keepalives (powered off, cable pulled, link down).
    StoppedAnswering,
}

/// Checks the device's host key; remembers what it saw so a mismatch can be reported, and says
/// when the connection ends.
pub struct DeviceHandler {
    pinned: PublicKey,
    seen: Arc<Mutex<Option<String>>>,
    ended: tokio::sync::watch::Sender<Option<DeviceEnd>>,
}

impl client::Handler for DeviceHandler {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let presented = match key {
            PublicKeyOrCertificate::PublicKey { key, .. } => key.clone(),
            // A device host certificate is judged by the key it certifies, against the pin.
            PublicKeyOrCertificate::Certificate(cert) => {
                PublicKey::new(cert.public_key().clone(), "")
            }
        };
        *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = Some(fingerprint(&presented));
        Ok(presented.key_data() == self.pinned.key_data())
    }

    async fn disconnected(
        &mut self,
        reason: client::DisconnectReason<Self::Error>,
    ) -> Result<(), Self::Error> {
        let end = match &reason {
            client::DisconnectReason::Error(russh::Error::KeepaliveTimeout) => {
                DeviceEnd::StoppedAnswering
            }
            _ => DeviceEnd::Disconnected,
        };
        self.ended.send_replace(Some(end));
        match reason {
            client::DisconnectReason::ReceivedDisconnect(_) => Ok(()),
            client::DisconnectReason::Error(e) => Err(e),
        }
    }
}

pub type Upstream = client::Handle<DeviceHandler>;

/// Keepalives to the device: one every `device_keepalive` (15 s by default), and a device that
/// misses `KEEPALIVE_MAX` in a row has stopped answering (found within about a minute).
pub const KEEPALIVE_MAX: usize = 3;

pub fn client_config(keepalive: Duration) -> Arc<client::Config> {
    Arc::new(client::Config {
        inactivity_timeout: None,
        keepalive_interval: Some(keepalive),
        keepalive_max: KEEPALIVE_MAX,
        nodelay: true,
        ..Default::default()
    })
}

/// Connects to the device and logs in as `login`. The receiver says when (and why) the device
/// ended the connection.
pub async fn connect(
    config: Arc<client::Config>,
    device: &Device,
    login: &str,
) -> Result<(Upstream, tokio::sync::watch::Receiver<Option<DeviceEnd>>), UpstreamError> {
    connect_via(config, device, login, None).await
}

/// As [`connect`], over `via` (a stream through the site's edge) instead of a TCP connection.
pub async fn connect_via(
    config: Arc<client::Config>,
    device: &Device,
    login: &str,
    via: Option<tokio::io::DuplexStream>,
) -> Result<(Upstream, tokio::sync::watch::Receiver<Option<DeviceEnd>>), UpstreamError> {
    let name = format!("{}/{}", device.site, device.name);
    let pinned = parse_public(&device.host_key)
        .map_err(|e| UpstreamError::BadCredential(name.clone(), format!("pinned host key: {e}")))?;
    let seen = Arc::new(Mutex::new(None));
    let (ended, ended_rx) = tokio::sync::watch::channel(None);
    let handler = DeviceHandler {
        pinned: pinned.clone(),
        seen: seen.clone(),
        ended,
    };
    let connecting = async {
        match via {
            Some(stream) => client::connect_stream(config, stream, handler).await,
            None => client::connect(config, device.addr.as_str(), handler).await,
        }
    };
    let mut handle = match tokio::time::timeout(Duration::from_secs(10), connecting).await {
        Err(_) => {
            return Err(UpstreamError::Unreachable(
                name,
                "timed out after 10s".into(),
            ));
        }
        Ok(Err(e)) => {
            let got = seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
            return Err(match (e, got) {
                (russh::Error::UnknownKey, Some(got)) => UpstreamError::HostKeyMismatch {
                    device: name,
                    pinned: fingerprint(&pinned),
                    got,
                },
                (e, _) => UpstreamError::Unreachable(name, e.to_string()),
            });
        }
        Ok(Ok(h)) => h,
    };
    let result = match device.credential_kind {
        CredentialKind::Key => {
            let key = parse_private(&device.credential)
                .map_err(|e| UpstreamError::BadCredential(name.clone(), e.to_string()))?;
            let hash = handle
                .best_supported_rsa_hash()
                .await
                .ok()
                .flatten()
                .flatten();
            handle
                .authenticate_publickey(login, PrivateKeyWithHashAlg::new(Arc::new(key), hash))
                .await
        }
        CredentialKind::Password => {
            handle
                .authenticate_password(login, device.credential.trim_end_matches(['\n', '\r']))
                .await
        }
    };
    match result {
        Ok(r) if r.success() => Ok((handle, ended_rx)),
        Ok(_) => Err(UpstreamError::AuthFailed(name)),
        Err(e) => Err(UpstreamError::Unreachable(name, e.to_string())),
    }
}
