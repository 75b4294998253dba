//! The device side: a russh client that logs in with the broker-held credential after checking the
//! device's host key against the pinned one.

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
}

/// Checks the device's host key; remembers what it saw so a mismatch can be reported.
pub struct DeviceHandler {
    pinned: PublicKey,
    seen: Arc<Mutex<Option<String>>>,
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
}

pub type Upstream = client::Handle<DeviceHandler>;

pub fn client_config() -> Arc<client::Config> {
    Arc::new(client::Config {
        inactivity_timeout: None,
        keepalive_interval: Some(Duration::from_secs(30)),
        nodelay: true,
        ..Default::default()
    })
}

/// Connects to the device and logs in as `login`.
pub async fn connect(
    config: Arc<client::Config>,
    device: &Device,
    login: &str,
) -> Result<Upstream, UpstreamError> {
    let name = format!("{}/{}", device.site, device.name);
    let pinned = parse_public(&device.host_key)
        .map_err(|e| UpstreamError::BadCredential(name.clone(), format!("pinned host key: {e}")))?;
    let seen = Arc::new(Mutex::new(None));
    let handler = DeviceHandler {
        pinned: pinned.clone(),
        seen: seen.clone(),
    };
    let connecting = client::connect(config, device.addr.as_str(), handler);
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
    let result = match device.credential_kind.as_str() {
        "key" => {
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
        "password" => {
            handle
                .authenticate_password(login, device.credential.trim_end_matches(['\n', '\r']))
                .await
        }
        other => {
            return Err(UpstreamError::BadCredential(
                name,
                format!("unknown credential kind {other}"),
            ));
        }
    };
    match result {
        Ok(r) if r.success() => Ok(handle),
        Ok(_) => Err(UpstreamError::AuthFailed(name)),
        Err(e) => Err(UpstreamError::Unreachable(name, e.to_string())),
    }
}
