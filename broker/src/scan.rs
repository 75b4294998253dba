//! The unbrokered access scan: logs in to a device with its Postern credential (through
//! `device_admin`) and lists every way in that is not Postern's: entries of the login's
//! `~/.ssh/authorized_keys` other than Postern's current key, keys in further authorized-keys
//! files the operator names (`scan_paths`), and listening TCP ports that should not listen
//! (`scan_ports`). Foreign keys in the login's file can be removed (never Postern's own).

use std::time::Duration;

use approvals::store::FoundPath;
use approvals::{Actions, Actor, CredentialKind, Device};
use russh::keys::PublicKey;

use crate::device_admin::{Admin, AdminError, AuthorizedKeys};
use crate::keys::parse_private;

/// Where the login's own keys are, as stored and shown.
pub const LOGIN_KEYS: &str = "~/.ssh/authorized_keys";

/// Marks the start of each further file in the output of the paths command.
const FILE_MARK: &str = "==> postern-scan-file: ";
const UNREADABLE_MARK: &str = "==> postern-scan-unreadable: ";

#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// Boxed: an SSH error is large, and most of these errors are small.
    #[error(transparent)]
    Admin(Box<AdminError>),
    #[error("the stored credential cannot be read: {0}")]
    Credential(String),
    #[error("cannot read {0} on the device")]
    Unreadable(String),
    #[error("scan path {0:?} is not an absolute path or ~/ path of letters, digits, . _ - / * ?")]
    BadPath(String),
    #[error(
        "cannot list listening ports on the device (neither `ss -ltn` nor `netstat -ltn` worked)"
    )]
    NoPortList,
    #[error("the keys were removed from the device but could not be recorded ({error}); {restore}")]
    NotRecorded { error: String, restore: String },
    #[error("{0}")]
    Store(String),
}

type Result<T> = std::result::Result<T, ScanError>;

impl From<AdminError> for ScanError {
    fn from(e: AdminError) -> ScanError {
        ScanError::Admin(Box::new(e))
    }
}

/// What to look at besides the login's authorized_keys, and how long a step may take.
#[derive(Debug, Clone)]
pub struct ScanConfig {
    pub paths: Vec<String>,
    pub ports: Vec<u16>,
    pub step: Duration,
}

impl ScanConfig {
    /// Refuses patterns the shell would do more with than expand a glob.
    pub fn check(&self) -> Result<()> {
        for p in &self.paths {
            let allowed = |c: char| c.is_ascii_alphanumeric() || "._-/*?".contains(c);
            let rooted = p.starts_with('/') || p.starts_with("~/");
            if !rooted || !p.trim_start_matches('~').chars().all(allowed) {
                return Err(ScanError::BadPath(p.clone()));
            }
        }
        Ok(())
    }
}

/// Postern's current key for the device (a password credential has none).
fn own_key(device: &Device) -> Result<Option<PublicKey>> {
    if device.credential_kind != CredentialKind::Key {
        return Ok(None);
    }
    let key =
        parse_private(&device.credential).map_err(|e| ScanError::Credential(e.to_string()))?;
    Ok(Some(key.public_key().clone()))
}

/// Scans one device; an error means it could not be scanned (not that it is clean).
pub async fn scan_device(device: &Device, cfg: &ScanConfig) -> Result<Vec<FoundPath>> {
    let own = own_key(device)?;
    let admin = Admin::connect(device, cfg.step).await?;
    let found = scan_with(&admin, own.as_ref(), cfg).await;
    admin.close().await;
    let mut found = found?;
    found.sort_by(|a, b| (&a.kind, &a.location, &a.ident).cmp(&(&b.kind, &b.location, &b.ident)));
    found.dedup_by(|a, b| (&a.kind, &a.location, &a.ident) == (&b.kind, &b.location, &b.ident));
    Ok(found)
}

async fn scan_with(
    admin: &Admin,
    own: Option<&PublicKey>,
    cfg: &ScanConfig,
) -> Result<Vec<FoundPath>> {
    let keys = admin.authorized_keys().await?;
    let mut found = foreign(&keys, own, LOGIN_KEYS);
    if !cfg.paths.is_empty() {
        let out = admin
            .run_ok("reading scan_paths", &paths_command(&cfg.paths), &[])
            .await?;
        found.extend(parse_files(&String::from_utf8_lossy(&out.stdout), own)?);
    }
    if !cfg.ports.is_empty() {
        let cmd = "ss -ltnH 2>/dev/null || netstat -ltn 2>/dev/null";
        let out = admin.run("listing listening ports", cmd, &[]).await?;
        if out.status != Some(0) {
            return Err(ScanError::NoPortList);
        }
        found.extend(listening(&String::from_utf8_lossy(&out.stdout), &cfg.ports));
    }
    Ok(found)
}

/// The entries of `keys` other than `own`, as paths found in `location`.
fn foreign(keys: &AuthorizedKeys, own: Option<&PublicKey>, location: &str) -> Vec<FoundPath> {
    keys.entries()
        .filter(|e| own.is_none_or(|o| o.key_data() != e.key.key_data()))
        .map(|e| FoundPath {
            kind: "key".into(),
            location: location.to_owned(),
            ident: e.fingerprint(),
            comment: e.comment.clone(),
            options: e.options.clone(),
        })
        .collect()
}

/// Prints each existing file matching the patterns after a mark line, skipping the login's own
/// file (already read); an unreadable one is marked so the scan can say so.
fn paths_command(paths: &[String]) -> String {
    let mut cmd = String::from("own=\"$HOME/.ssh/authorized_keys\"; ");
    for p in paths {
        cmd.push_str(&format!(
            "for f in {p}; do if [ -f \"$f\" ] && ! [ \"$f\" -ef \"$own\" ]; then \
             if [ -r \"$f\" ]; then echo \"{FILE_MARK}$f\"; cat \"$f\"; echo; \
             else echo \"{UNREADABLE_MARK}$f\"; fi; fi; done; "
        ));
    }
    cmd.push_str("exit 0");
    cmd
}

fn parse_files(out: &str, own: Option<&PublicKey>) -> Result<Vec<FoundPath>> {
    let mut found = Vec::new();
    let mut current: Option<(&str, String)> = None;
    let flush = |c: Option<(&str, String)>, found: &mut Vec<FoundPath>| {
        if let Some((file, text)) = c {
            found.extend(foreign(&AuthorizedKeys::parse(&text), own, file));
        }
    };
    for line in out.lines() {
        if let Some(file) = line.strip_prefix(UNREADABLE_MARK) {
            return Err(ScanError::Unreadable(file.to_owned()));
        }
        if let Some(file) = line.strip_prefix(FILE_MARK) {
            flush(current.take(), &mut found);
            current = Some((file, String::new()));
        } else if let Some((_, text)) = current.as_mut() {
            text.push_str(line);
            text.push('\n');
        }
    }
    flush(current, &mut found);
    Ok(found)
}

/// Configured ports found listening in `ss -ltn`/`netstat -ltn` output (local address: 4th column).
fn listening(out: &str, ports: &[u16]) -> Vec<FoundPath> {
    let mut found: Vec<FoundPath> = Vec::new();
    for line in out.lines() {
        let Some(local) = line.split_whitespace().nth(3) else {
            continue;
        };
        let Some(port) = local
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse::<u16>().ok())
        else {
            continue;
        };
        if ports.contains(&port) && !found.iter().any(|f| f.ident == port.to_string()) {
            found.push(FoundPath {
                kind: "port".into(),
                location: "tcp".into(),
                ident: port.to_string(),
                comment: format!("listening on {local}"),
                options: String::new(),
            });
        }
    }
    found
}

/// Removes foreign keys from a device login's authorized_keys (all of them, or those with the
/// given fingerprints), atomically, then records it (`scan.remove`). Postern's current key is
/// never removed. If the removal cannot be recorded, the old file is written back.
#[derive(Clone)]
pub struct Remover {
    pub actions: Actions,
    pub actor: Actor,
    pub step: Duration,
}

impl Remover {
    pub async fn remove(
        &self,
        device: &Device,
        only: Option<&[String]>,
        now: i64,
    ) -> Result<Vec<FoundPath>> {
        if let Some(edge) = crate::device_admin::behind_edge(self.actions.store(), device)
            .await
            .map_err(|e| ScanError::Store(e.to_string()))?
        {
            return Err(ScanError::Store(crate::device_admin::behind_edge_error(
                &edge,
            )));
        }
        let own = own_key(device)?;
        let admin = Admin::connect(device, self.step).await?;
        let result = self
            .remove_with(&admin, device, own.as_ref(), only, now)
            .await;
        admin.close().await;
        result
    }

    async fn remove_with(
        &self,
        admin: &Admin,
        device: &Device,
        own: Option<&PublicKey>,
        only: Option<&[String]>,
        now: i64,
    ) -> Result<Vec<FoundPath>> {
        let before = admin.authorized_keys().await?;
        let removed: Vec<FoundPath> = foreign(&before, own, LOGIN_KEYS)
            .into_iter()
            .filter(|p| only.is_none_or(|o| o.contains(&p.ident)))
            .collect();
        if removed.is_empty() {
            return Ok(removed);
        }
        let mut after = before.clone();
        after.lines.retain(|l| {
            l.key
                .as_ref()
                .is_none_or(|e| !removed.iter().any(|r| r.ident == e.fingerprint()))
        });
        admin.write_authorized_keys(&after).await?;
        let recorded = self
            .actions
            .foreign_keys_removed(&self.actor, &device.site, &device.name, &removed, now)
            .await;
        if let Err(e) = recorded {
            let restore = match admin.write_authorized_keys(&before).await {
                Ok(()) => "the old file was written back".to_owned(),
                Err(r) => format!("writing the old file back failed too: {r}"),
            };
            return Err(ScanError::NotRecorded {
                error: e.to_string(),
                restore,
            });
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDuCmES19umWyJZTmy0xa/+I9h3lfdR6pzp5R0U/uicD one@x";

    #[test]
    fn foreign_skips_our_key() {
        let ours = crate::keys::generate_ed25519("ours").expect("key");
        let mut keys = AuthorizedKeys::parse(&format!("{K1}\n"));
        keys.add(ours.public_key(), "postern").expect("add");
        let f = foreign(&keys, Some(ours.public_key()), LOGIN_KEYS);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].comment, "one@x");
        assert_eq!(foreign(&keys, None, LOGIN_KEYS).len(), 2);
    }

    #[test]
    fn files_and_ports_are_parsed() {
        let out = format!(
            "{FILE_MARK}/root/.ssh/authorized_keys\n{K1}\n\n{FILE_MARK}/home/a/k\n# none\n"
        );
        let f = parse_files(&out, None).expect("parsed");
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].location, "/root/.ssh/authorized_keys");
        let bad = format!("{UNREADABLE_MARK}/root/x\n");
        assert!(matches!(
            parse_files(&bad, None),
            Err(ScanError::Unreadable(_))
        ));
        let ss = "LISTEN 0 128 0.0.0.0:22 0.0.0.0:*\nLISTEN 0 5 [::]:5900 [::]:*\nLISTEN 0 5 127.0.0.1:80 0.0.0.0:*\n";
        let p = listening(ss, &[5900, 23]);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].ident, "5900");
    }

    #[test]
    fn scan_paths_are_checked() {
        let cfg = |p: &str| ScanConfig {
            paths: vec![p.into()],
            ports: vec![],
            step: Duration::from_secs(1),
        };
        assert!(cfg("/home/*/.ssh/authorized_keys").check().is_ok());
        assert!(cfg("~/.ssh/authorized_keys2").check().is_ok());
        assert!(cfg("/x; rm -rf /").check().is_err());
        assert!(cfg("relative/path").check().is_err());
    }
}
