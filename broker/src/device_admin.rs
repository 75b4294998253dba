//! Administering a device through the broker's own upstream connection (pinned host key, stored
//! credential): run a command, read the login's `~/.ssh/authorized_keys`, replace it atomically.
//! Every step is bounded in time, so a device that stops answering fails the step instead of
//! holding a rotation or a scan for ever.

use std::sync::Arc;
use std::time::Duration;

use approvals::Device;
use russh::ChannelMsg;
use russh::keys::PublicKey;

use crate::keys::fingerprint;
use crate::upstream::{self, Upstream, UpstreamError};

/// The edge serving the device's site, if any. Administration (rotation, scans) connects from
/// the node directly, so it must never be pointed at a device behind an edge: its address is on
/// the site's LAN, and the same address on the node's own network is someone else.
pub async fn behind_edge(
    store: &approvals::Store,
    device: &Device,
) -> std::result::Result<Option<String>, approvals::StoreError> {
    store.edge_name_of_site(&device.site).await
}

/// What administration says of a device behind an edge.
pub fn behind_edge_error(edge: &str) -> String {
    format!(
        "the device is behind site edge {edge}: administration through edges is not supported \
         yet, nothing was changed"
    )
}

/// How long one step (a login, one command) may take.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error("device {device}: {what} did not finish within {secs} s")]
    TimedOut {
        device: String,
        what: &'static str,
        secs: u64,
    },
    #[error("device {device}: {what}: {error}")]
    Ssh {
        device: String,
        what: &'static str,
        error: russh::Error,
    },
    #[error("device {device}: {what} failed (exit status {status}): {stderr}")]
    Failed {
        device: String,
        what: &'static str,
        status: String,
        stderr: String,
    },
}

type Result<T> = std::result::Result<T, AdminError>;

/// What a command printed and how it ended (`None`: no exit status was sent).
#[derive(Debug, Default)]
pub struct Output {
    pub status: Option<u32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// A logged-in administrative connection to one device.
pub struct Admin {
    handle: Upstream,
    device: String,
    step: Duration,
}

/// Reads the file if it exists (a login without one has no keys: an empty file).
const READ_KEYS: &str = "f=\"$HOME/.ssh/authorized_keys\"; if [ -e \"$f\" ]; then cat \"$f\"; fi";

/// The new file is written next to the old one and moved over it, so sshd reads either the whole
/// old file or the whole new one; `umask` keeps it 0600 as sshd's StrictModes wants.
const WRITE_KEYS: &str = "umask 077; d=\"$HOME/.ssh\"; mkdir -p \"$d\" || exit 1; \
     t=\"$d/.authorized_keys.postern.$$\"; \
     if cat > \"$t\" && mv -f \"$t\" \"$d/authorized_keys\"; then exit 0; fi; rm -f \"$t\"; exit 1";

impl Admin {
    /// Logs in to the device as its login with its stored credential.
    pub async fn connect(device: &Device, step: Duration) -> Result<Admin> {
        let name = format!("{}/{}", device.site, device.name);
        let config = upstream::client_config(Duration::from_secs(15));
        let login = upstream::connect(config, device, &device.login);
        let (handle, _ended) =
            tokio::time::timeout(step, login)
                .await
                .map_err(|_| AdminError::TimedOut {
                    device: name.clone(),
                    what: "login",
                    secs: step.as_secs(),
                })??;
        Ok(Admin {
            handle,
            device: name,
            step,
        })
    }

    /// Runs `command` with `stdin` as its input; bounded by the step timeout.
    pub async fn run(&self, what: &'static str, command: &str, stdin: &[u8]) -> Result<Output> {
        tokio::time::timeout(self.step, self.run_unbounded(what, command, stdin))
            .await
            .map_err(|_| AdminError::TimedOut {
                device: self.device.clone(),
                what,
                secs: self.step.as_secs(),
            })?
    }

    /// Runs `command` and fails unless it exits with status 0.
    pub async fn run_ok(&self, what: &'static str, command: &str, stdin: &[u8]) -> Result<Output> {
        let out = self.run(what, command, stdin).await?;
        if out.status == Some(0) {
            return Ok(out);
        }
        Err(AdminError::Failed {
            device: self.device.clone(),
            what,
            status: out.status.map_or("none".into(), |s| s.to_string()),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }

    async fn run_unbounded(
        &self,
        what: &'static str,
        command: &str,
        stdin: &[u8],
    ) -> Result<Output> {
        let ssh = |error| AdminError::Ssh {
            device: self.device.clone(),
            what,
            error,
        };
        let mut channel = self.handle.channel_open_session().await.map_err(ssh)?;
        channel.exec(true, command).await.map_err(ssh)?;
        if !stdin.is_empty() {
            channel.data(stdin).await.map_err(ssh)?;
        }
        channel.eof().await.map_err(ssh)?;
        let mut out = Output::default();
        while let Some(msg) = channel.wait().await {
            match msg {
                ChannelMsg::Data { data } => out.stdout.extend_from_slice(&data),
                ChannelMsg::ExtendedData { data, .. } => out.stderr.extend_from_slice(&data),
                ChannelMsg::ExitStatus { exit_status } => out.status = Some(exit_status),
                ChannelMsg::Close => break,
                _ => {}
            }
        }
        Ok(out)
    }

    /// The login's `~/.ssh/authorized_keys`.
    pub async fn authorized_keys(&self) -> Result<AuthorizedKeys> {
        let out = self
            .run_ok("reading authorized_keys", READ_KEYS, &[])
            .await?;
        Ok(AuthorizedKeys::parse(&String::from_utf8_lossy(&out.stdout)))
    }

    /// Replaces the login's `~/.ssh/authorized_keys` with `keys`, atomically.
    pub async fn write_authorized_keys(&self, keys: &AuthorizedKeys) -> Result<()> {
        let text = keys.to_text();
        self.run_ok("writing authorized_keys", WRITE_KEYS, text.as_bytes())
            .await?;
        Ok(())
    }

    /// Ends the connection politely (a device that has gone away is no error here).
    pub async fn close(self) {
        let bye = self
            .handle
            .disconnect(russh::Disconnect::ByApplication, "", "en");
        let _ = tokio::time::timeout(Duration::from_secs(2), bye).await;
    }
}

/// One line of an authorized_keys file: the key it names (if it names one) and the line as is,
/// so lines Postern does not understand are written back unchanged.
#[derive(Debug, Clone)]
pub struct KeyLine {
    pub line: String,
    pub key: Option<Arc<KeyEntry>>,
}

/// A key entry: its options (`from="..."`, `command="..."`), key and comment.
#[derive(Debug, Clone)]
pub struct KeyEntry {
    pub options: String,
    pub key: PublicKey,
    pub comment: String,
}

impl KeyEntry {
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.key)
    }
}

/// An authorized_keys file, line by line.
#[derive(Debug, Clone, Default)]
pub struct AuthorizedKeys {
    pub lines: Vec<KeyLine>,
}

impl AuthorizedKeys {
    pub fn parse(text: &str) -> AuthorizedKeys {
        let lines = text
            .lines()
            .map(|l| KeyLine {
                line: l.to_owned(),
                key: parse_entry(l).map(Arc::new),
            })
            .collect();
        AuthorizedKeys { lines }
    }

    pub fn to_text(&self) -> String {
        self.lines.iter().map(|l| format!("{}\n", l.line)).collect()
    }

    /// The entries that name a key.
    pub fn entries(&self) -> impl Iterator<Item = &KeyEntry> {
        self.lines.iter().filter_map(|l| l.key.as_deref())
    }

    pub fn contains(&self, key: &PublicKey) -> bool {
        self.entries().any(|e| e.key.key_data() == key.key_data())
    }

    /// Adds `key` with `comment` as a line of its own.
    pub fn add(&mut self, key: &PublicKey, comment: &str) -> std::result::Result<(), String> {
        let mut k = key.clone();
        k.set_comment(comment);
        let line = k.to_openssh().map_err(|e| e.to_string())?;
        self.lines.push(KeyLine {
            key: parse_entry(&line).map(Arc::new),
            line,
        });
        Ok(())
    }

    /// Removes every line naming `key`; returns how many.
    pub fn remove(&mut self, key: &PublicKey) -> usize {
        let before = self.lines.len();
        self.lines.retain(|l| {
            l.key
                .as_ref()
                .is_none_or(|e| e.key.key_data() != key.key_data())
        });
        before - self.lines.len()
    }
}

/// The key types sshd accepts start like this; what comes before the first of them is options.
const KEY_TYPE_PREFIXES: [&str; 4] = ["ssh-", "ecdsa-", "sk-", "rsa-"];

fn parse_entry(line: &str) -> Option<KeyEntry> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    // Try each word that could start the key: options may hold quoted spaces.
    let starts = std::iter::once(0).chain(line.match_indices(' ').map(|(i, _)| i + 1));
    for at in starts {
        let rest = &line[at..];
        if !KEY_TYPE_PREFIXES.iter().any(|p| rest.starts_with(p)) {
            continue;
        }
        if let Ok(key) = PublicKey::from_openssh(rest) {
            return Some(KeyEntry {
                options: line[..at].trim().to_owned(),
                comment: key.comment().to_string(),
                key,
            });
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDuCmES19umWyJZTmy0xa/+I9h3lfdR6pzp5R0U/uicD one@x";

    #[test]
    fn parses_options_comments_and_keeps_unknown_lines() {
        let text = format!(
            "# a comment\n{K1}\nfrom=\"10.0.0.1\",command=\"echo hi there\" {}\ngarbage line\n",
            K1.replace("one@x", "two")
        );
        let keys = AuthorizedKeys::parse(&text);
        let entries: Vec<_> = keys.entries().collect();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].comment, "one@x");
        assert_eq!(entries[0].options, "");
        assert_eq!(
            entries[1].options,
            "from=\"10.0.0.1\",command=\"echo hi there\""
        );
        assert_eq!(entries[1].comment, "two");
        assert_eq!(keys.to_text(), text);
    }

    #[test]
    fn add_and_remove_by_key() {
        let mut keys = AuthorizedKeys::parse(&format!("{K1}\n# keep\n"));
        let old = keys.entries().next().map(|e| e.key.clone()).expect("a key");
        let new = crate::keys::generate_ed25519("n").expect("key");
        keys.add(new.public_key(), "postern:s/d").expect("add");
        assert!(keys.contains(new.public_key()) && keys.contains(&old));
        assert_eq!(keys.remove(&old), 1);
        assert!(!keys.contains(&old));
        assert!(keys.to_text().contains("# keep\n"));
        assert!(keys.to_text().contains("postern:s/d"));
    }
}
