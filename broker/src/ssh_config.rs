//! The `~/.ssh/config` block `ssh VENDOR:config@broker` prints: one `Host` per granted device,
//! with the `+` spelling of the login as `User`, so `scp`, `sftp` and `rsync -e ssh` work with a
//! plain host alias.

use std::collections::BTreeMap;
use std::fmt::Write;

use approvals::Store;
use approvals::StoreError;
use approvals::model::split_devices;

use crate::login::Target;

/// One host alias: the device and, where several functions are granted there, which one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantedHost {
    pub alias: String,
    pub target: Target,
}

/// The devices `vendor` holds a grant for, now or later (not revoked, not ended), sorted.
pub async fn granted_hosts(
    store: &Store,
    vendor: &str,
    now: i64,
) -> Result<Vec<GrantedHost>, StoreError> {
    let grants = store.grants().await?;
    let devices = store.devices().await?;
    // (site, device) -> the functions granted on it.
    let mut granted: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for g in grants
        .iter()
        .filter(|g| g.vendor == vendor && g.revoked_at.is_none() && g.valid_until > now)
    {
        let named: Vec<&str> = split_devices(&g.devices).collect();
        for d in devices
            .iter()
            .filter(|d| d.site == g.site && (named.is_empty() || named.contains(&d.name.as_str())))
        {
            let functions = granted.entry((d.site.clone(), d.name.clone())).or_default();
            if !functions.contains(&g.function) {
                functions.push(g.function.clone());
            }
        }
    }
    let mut hosts = Vec::new();
    for ((site, device), functions) in granted {
        let several = functions.len() > 1;
        for f in functions {
            let alias = if several {
                format!("{site}-{device}-{f}")
            } else {
                format!("{site}-{device}")
            };
            hosts.push(GrantedHost {
                alias,
                target: Target {
                    vendor: vendor.to_owned(),
                    site: site.clone(),
                    device: device.clone(),
                    function: several.then_some(f),
                    service: None,
                },
            });
        }
    }
    Ok(hosts)
}

/// `HOST[:PORT]` (or `[V6]:PORT`), the port 22 when absent.
pub fn split_address(address: &str) -> (String, u16) {
    if let Ok(sa) = address.parse::<std::net::SocketAddr>() {
        return (sa.ip().to_string(), sa.port());
    }
    match address.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => match p.parse() {
            Ok(port) => (h.to_owned(), port),
            Err(_) => (address.to_owned(), 22),
        },
        _ => (address.to_owned(), 22),
    }
}

/// The block itself. `identity` is the vendor's private key file (its certificate is
/// `IDENTITY-cert.pub`); without it, `~/.ssh/id_ed25519` is assumed.
pub fn render(
    vendor: &str,
    hosts: &[GrantedHost],
    host: &str,
    port: u16,
    identity: Option<&str>,
) -> String {
    let identity = identity.unwrap_or("~/.ssh/id_ed25519");
    let mut out = format!(
        "# Postern: {} granted device(s) for {vendor}. Add to ~/.ssh/config; every login asks for a TOTP code.\n",
        hosts.len()
    );
    for h in hosts {
        let _ = write!(
            out,
            "\nHost {}\n    HostName {host}\n    Port {port}\n    User {}\n    IdentityFile {identity}\n    CertificateFile {identity}-cert.pub\n    IdentitiesOnly yes\n",
            h.alias,
            h.target.plus_spelling()
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_one_host_per_device() {
        let t = crate::login::parse("alice+store-0421+cam-01").unwrap();
        let hosts = [GrantedHost {
            alias: "store-0421-cam-01".into(),
            target: t,
        }];
        let block = render("alice", &hosts, "127.0.0.1", 2222, Some("/k/id"));
        assert!(block.contains("Host store-0421-cam-01\n"), "{block}");
        assert!(block.contains("User alice+store-0421+cam-01\n"), "{block}");
        assert!(
            block.contains("CertificateFile /k/id-cert.pub\n"),
            "{block}"
        );
        assert_eq!(split_address("b.example:2200"), ("b.example".into(), 2200));
        assert_eq!(split_address("b.example"), ("b.example".into(), 22));
        assert_eq!(split_address("[::1]:2222"), ("::1".into(), 2222));
    }
}
