//! What the link told the edge (its sites, their devices' SSH addresses and web UIs) and the
//! device streams the central asks it to open: only to a device of its own sites, and only to the
//! address the central listed for it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use approvals::AuditLog;
use approvals::audit::AuditEvent;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::wire::{self, EdgeDevice, Message};

use super::agent::record;

/// What the link told the edge: its sites and their devices.
#[derive(Default)]
pub(super) struct Scope {
    pub(super) sites: Vec<String>,
    devices: HashMap<(String, String), String>,
    /// The devices' web UIs (`HOST:PORT`), as the central last listed them.
    webs: HashMap<(String, String), String>,
}

impl Scope {
    /// The central's list of the sites' devices and their web UIs.
    pub(super) fn set_devices(&mut self, devices: Vec<EdgeDevice>) {
        self.webs = (devices.iter())
            .filter(|d| self.sites.contains(&d.site))
            .filter_map(|d| Some(((d.site.clone(), d.device.clone()), d.web.clone()?)))
            .collect();
        self.set_ssh_addrs(devices);
    }

    /// The devices' SSH addresses (a policy bundle's, which holds no web UIs: those of devices
    /// no longer listed are forgotten).
    pub(super) fn set_ssh_addrs(&mut self, devices: Vec<EdgeDevice>) {
        // Only devices of the edge's own sites, whatever the list holds.
        self.devices = devices
            .into_iter()
            .filter(|d| self.sites.contains(&d.site))
            .map(|d| ((d.site, d.device), d.addr))
            .collect();
        let listed = &self.devices;
        self.webs.retain(|key, _| listed.contains_key(key));
    }

    /// Where to connect: the device's SSH address, or its web UI when the central expects it at
    /// `web` (an address the central did not list for the device is never connected to).
    pub(super) fn addr(&self, site: &str, device: &str, web: Option<&str>) -> Option<String> {
        let key = (site.to_owned(), device.to_owned());
        match web {
            Some(want) => self.webs.get(&key).filter(|a| *a == want).cloned(),
            None => self.devices.get(&key).cloned(),
        }
    }
}

/// `Open` or `OpenWeb`: connects the stream to the device, or says why not.
pub(super) async fn open_device<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    scope: &Mutex<Scope>,
    audit: &AuditLog,
    msg: Message,
) {
    let (site, device, web) = match msg {
        Message::Open { site, device } => (site, device, None),
        Message::OpenWeb { site, device, addr } => (site, device, Some(addr)),
        _ => return,
    };
    let addr =
        (scope.lock().unwrap_or_else(|p| p.into_inner())).addr(&site, &device, web.as_deref());
    let Some(addr) = addr else {
        // No open relay: only devices enrolled at this edge's sites (and their UIs).
        let reason = match web {
            Some(want) => format!("{site}/{device} has no web UI at {want} at this edge's sites"),
            None => format!("{site}/{device} is not a device of this edge's sites"),
        };
        tracing::warn!(%site, %device, "edge: refused a stream to a device not of its sites");
        record(
            audit,
            AuditEvent::EdgeRouteRefused,
            json!({"site": site, "device": device, "reason": reason, "by": "edge"}),
        );
        let _ = wire::write(&mut stream, &Message::OpenRefused { reason }).await;
        wire::finish(&mut stream).await;
        return;
    };
    let tcp = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(&addr)).await;
    match tcp {
        Ok(Ok(mut tcp)) => {
            let _ = tcp.set_nodelay(true);
            if wire::write(&mut stream, &Message::Opened).await.is_ok() {
                let size = super::hub::COPY_BUFFER;
                let _ = tokio::io::copy_bidirectional_with_sizes(&mut stream, &mut tcp, size, size)
                    .await;
            }
        }
        Ok(Err(e)) => {
            let reason = format!("{site}/{device} at {addr}: {e}");
            let _ = wire::write(&mut stream, &Message::OpenRefused { reason }).await;
            wire::finish(&mut stream).await;
        }
        Err(_) => {
            let reason = format!("{site}/{device} at {addr}: timed out");
            let _ = wire::write(&mut stream, &Message::OpenRefused { reason }).await;
            wire::finish(&mut stream).await;
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use std::sync::Arc;

    pub(in crate::edge) fn scope() -> Arc<Mutex<Scope>> {
        let mut s = Scope {
            sites: vec!["mine".into()],
            ..Scope::default()
        };
        // A device of another site in the list is dropped: the edge serves its own sites only.
        s.set_devices(vec![
            EdgeDevice {
                site: "mine".into(),
                device: "d".into(),
                addr: "127.0.0.1:1".into(),
                web: None,
            },
            EdgeDevice {
                site: "theirs".into(),
                device: "d".into(),
                addr: "127.0.0.1:2".into(),
                web: Some("127.0.0.1:3".into()),
            },
        ]);
        Arc::new(Mutex::new(s))
    }

    /// The edge connects a web stream only to a web UI the central listed for its own sites.
    #[test]
    fn web_streams_go_only_to_listed_web_uis_of_its_sites() {
        let scope = scope();
        let s = scope.lock().expect("scope");
        assert_eq!(s.addr("mine", "d", None).as_deref(), Some("127.0.0.1:1"));
        assert_eq!(
            s.addr("mine", "d", Some("127.0.0.1:3")),
            None,
            "no web UI listed"
        );
        assert_eq!(
            s.addr("theirs", "d", Some("127.0.0.1:3")),
            None,
            "not its site"
        );
        drop(s);
        // A listed UI is connected to at its listed address, and at no other.
        let mut s = scope.lock().expect("scope");
        s.set_devices(vec![EdgeDevice {
            site: "mine".into(),
            device: "cam".into(),
            addr: "127.0.0.1:22".into(),
            web: Some("127.0.0.1:443".into()),
        }]);
        let web = s.addr("mine", "cam", Some("127.0.0.1:443"));
        assert_eq!(web.as_deref(), Some("127.0.0.1:443"));
        assert_eq!(
            s.addr("mine", "cam", Some("127.0.0.1:8443")),
            None,
            "not that address"
        );
        // A policy bundle that no longer lists the device forgets its UI too.
        s.set_ssh_addrs(Vec::new());
        assert_eq!(s.addr("mine", "cam", Some("127.0.0.1:443")), None);
    }
}
