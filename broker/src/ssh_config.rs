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
    disambiguate(&mut hosts);
    Ok(hosts)
}

/// `SITE-DEVICE` reads well but is ambiguous (site `a-b` with device `c`, site `a` with device
/// `b-c`): OpenSSH would take the first block and copy to the wrong device. Aliases that collide
/// take the login's `+` spelling instead, which no name can contain.
fn disambiguate(hosts: &mut [GrantedHost]) {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for h in hosts.iter() {
        *seen.entry(h.alias.clone()).or_default() += 1;
    }
    for h in hosts.iter_mut().filter(|h| seen[&h.alias] > 1) {
        let t = &h.target;
        h.alias = match &t.function {
            Some(f) => format!("{}+{}+{f}", t.site, t.device),
            None => format!("{}+{}", t.site, t.device),
        };
    }
}

/// A key file name that can go into the block as it is: no whitespace, quotes, comment or control
/// characters (a newline would add directives of the caller's choosing).
pub fn safe_identity(identity: &str) -> bool {
    !identity.is_empty()
        && identity.len() <= 1024
        && !identity
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '"' | '\'' | '#' | '\\'))
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

    #[test]
    fn colliding_aliases_take_the_plus_spelling() {
        let host = |login: &str, alias: &str| GrantedHost {
            alias: alias.into(),
            target: crate::login::parse(login).unwrap(),
        };
        let mut hosts = [
            host("alice+a-b+c", "a-b-c"),
            host("alice+a+b-c", "a-b-c"),
            host("alice+x+y", "x-y"),
        ];
        disambiguate(&mut hosts);
        let aliases: Vec<&str> = hosts.iter().map(|h| h.alias.as_str()).collect();
        assert_eq!(aliases, ["a-b+c", "a+b-c", "x-y"]);
        assert!(safe_identity("~/.ssh/postern"));
        assert!(!safe_identity("k\n    ProxyCommand evil"));
        assert!(!safe_identity("my key"));
    }
}
