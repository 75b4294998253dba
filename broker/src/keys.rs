//! SSH keys and the vendor certificate authority.

use std::path::{Path, PathBuf};

use russh::keys::ssh_key::certificate::{Builder, CertType};
use russh::keys::ssh_key::private::{Ed25519Keypair, KeypairData};
use russh::keys::ssh_key::{HashAlg, LineEnding};
use russh::keys::{Certificate, PrivateKey, PublicKey};

use approvals::time::fmt_time;
use recorder::keyring::{Entry, KeyId, KeyStatus, Keyring, RootKey, RootPublicKey, Transition};

use crate::config::{DataDir, PrivateFileError, write_private};

// As in `config`, the cause is part of each message, not a `source`: the binary prints an error
// with its chain on one line, which would say the cause twice.

/// Why a key could not be made, read, written or used. `Display` names the file.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("reading OS randomness: {0}")]
    Randomness(String),
    #[error("{what}: {error}")]
    Ssh {
        what: &'static str,
        error: russh::keys::ssh_key::Error,
    },
    #[error("reading {path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("writing {path}: {error}")]
    Write { path: String, error: std::io::Error },
    #[error(transparent)]
    Private(#[from] PrivateFileError),
    #[error("{path} is not {what}: {error}")]
    NotAKey {
        path: String,
        what: &'static str,
        error: String,
    },
    #[error("{0}")]
    Keyring(#[from] recorder::keyring::KeyringError),
    #[error("{0}")]
    Parse(russh::keys::ssh_key::Error),
    #[error("no key in file")]
    NoKey,
    #[error("certificate validity must be positive")]
    EmptyValidity,
    #[error("validity out of range")]
    ValidityOutOfRange,
    #[error(
        "{0} is inside a Postern data directory: keep the root key off the broker (removable media, an offline machine)"
    )]
    RootInsideDataDir(String),
    #[error(
        "{path} already pins another root key ({pinned}); remove it first if this node is to change roots"
    )]
    OtherRootPinned { path: String, pinned: String },
    /// The start-up check failed; the message says what to run.
    #[error("{0}")]
    NotCertified(String),
}

type Result<T, E = KeyError> = std::result::Result<T, E>;

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|error| KeyError::Read {
        path: path.display().to_string(),
        error,
    })
}

fn write(path: &Path, text: String) -> Result<()> {
    std::fs::write(path, text).map_err(|error| KeyError::Write {
        path: path.display().to_string(),
        error,
    })
}

fn ssh(what: &'static str) -> impl FnOnce(russh::keys::ssh_key::Error) -> KeyError {
    move |error| KeyError::Ssh { what, error }
}

/// 32 bytes straight from the operating system's CSPRNG, for long-lived keys (root, seal, host,
/// CA): no user-space generator state that a fork or a snapshot could duplicate.
pub fn os_seed() -> Result<[u8; 32]> {
    use rand::TryRngCore;
    let mut seed = [0u8; 32];
    rand::rngs::OsRng
        .try_fill_bytes(&mut seed)
        .map_err(|e| KeyError::Randomness(e.to_string()))?;
    Ok(seed)
}

/// A fresh Ed25519 key, seeded from [`os_seed`] (ssh-key's own generator wants a different
/// rand_core version than the rest of the tree).
pub fn generate_ed25519(comment: &str) -> Result<PrivateKey> {
    let seed = os_seed()?;
    let mut key = PrivateKey::new(
        KeypairData::Ed25519(Ed25519Keypair::from_seed(&seed)),
        comment,
    )
    .map_err(ssh("generating key"))?;
    key.set_comment(comment);
    Ok(key)
}

/// Writes a private key (0600) and its `.pub` next to it.
pub fn write_keypair(path: &Path, key: &PrivateKey) -> Result<()> {
    let pem = key
        .to_openssh(LineEnding::LF)
        .map_err(ssh("encoding key"))?;
    write_private(path, pem.as_bytes())?;
    let public = key.public_key().to_openssh().map_err(ssh("encoding key"))?;
    write(&path.with_extension("pub"), format!("{public}\n"))?;
    Ok(())
}

pub fn load_private(path: &Path) -> Result<PrivateKey> {
    let text = read(path)?;
    parse_private(&text).map_err(|e| KeyError::NotAKey {
        path: path.display().to_string(),
        what: "an OpenSSH private key",
        error: e.to_string(),
    })
}

pub fn parse_private(text: &str) -> Result<PrivateKey> {
    PrivateKey::from_openssh(text.trim()).map_err(KeyError::Parse)
}

pub fn load_public(path: &Path) -> Result<PublicKey> {
    let text = read(path)?;
    parse_public(&text).map_err(|e| KeyError::NotAKey {
        path: path.display().to_string(),
        what: "an OpenSSH public key",
        error: e.to_string(),
    })
}

/// Parses the first key line of an OpenSSH public key or known_hosts-style file.
pub fn parse_public(text: &str) -> Result<PublicKey> {
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .ok_or(KeyError::NoKey)?;
    // Accept "HOST ssh-ed25519 AAAA..." (ssh-keyscan output) as well as a bare key line.
    let from_alg = line
        .find("ssh-")
        .or_else(|| line.find("ecdsa-"))
        .unwrap_or(0);
    PublicKey::from_openssh(&line[from_alg..]).map_err(KeyError::Parse)
}

/// A public key as one OpenSSH line (`ssh-ed25519 AAAA...`).
pub fn openssh_line(key: &PublicKey) -> Result<String> {
    key.to_openssh().map_err(ssh("encoding key"))
}

pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// What `vendor cert` produced.
pub struct IssuedCert {
    pub cert: Certificate,
    pub serial: u64,
    pub key_id: String,
}

/// What a certificate withholds, as OpenSSH's `ssh-keygen -O no-pty` etc. The broker honours
/// the certificate's extensions as sshd does: no terminal without `permit-pty`, no `ssh -L`
/// without `permit-port-forwarding`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Restrictions {
    pub no_pty: bool,
    pub no_port_forwarding: bool,
}

/// Signs an OpenSSH user certificate for `vendor` with the vendor CA.
pub fn sign_user_cert(
    ca: &PrivateKey,
    subject: &PublicKey,
    vendor: &str,
    valid_after: u64,
    valid_before: u64,
    restrict: Restrictions,
) -> Result<IssuedCert> {
    if valid_before <= valid_after {
        return Err(KeyError::EmptyValidity);
    }
    let nonce: [u8; 32] = rand::random();
    let serial: u64 = rand::random::<u64>() >> 1;
    let key_id = format!("postern:{vendor}:{serial}");
    let mut b = Builder::new(
        nonce.to_vec(),
        subject.key_data().clone(),
        valid_after,
        valid_before,
    )
    .map_err(ssh("certificate"))?;
    b.serial(serial)
        .and_then(|b| b.cert_type(CertType::User))
        .and_then(|b| b.key_id(key_id.clone()))
        .and_then(|b| b.valid_principal(vendor))
        .map_err(ssh("certificate"))?;
    if !restrict.no_pty {
        b.extension("permit-pty", "").map_err(ssh("certificate"))?;
    }
    if !restrict.no_port_forwarding {
        b.extension("permit-port-forwarding", "")
            .map_err(ssh("certificate"))?;
    }
    let cert = b.sign(ca).map_err(ssh("signing certificate"))?;
    Ok(IssuedCert {
        cert,
        serial,
        key_id,
    })
}

/// Loads the seal key, creating it (and its `.pub`) on first use. A new key seals nothing the
/// broker will use until the operator's root key certifies it (see [`require_certified`]).
pub fn seal_key(path: &Path) -> Result<recorder::SealKey> {
    Ok(recorder::SealKey::from_seed(&seal_seed(path)?))
}

/// The seal key's seed, creating a new key on first use.
pub fn seal_seed(path: &Path) -> Result<[u8; 32]> {
    if !path.exists() {
        let seed = os_seed()?;
        write_private(path, hex::encode(seed).as_bytes())?;
        let key = recorder::SealKey::from_seed(&seed);
        write(
            &path.with_extension("pub"),
            format!("{}\n", key.public().export()),
        )?;
    }
    read_seal_seed(path)
}

fn read_seal_seed(path: &Path) -> Result<[u8; 32]> {
    let text = read(path)?;
    hex::decode(text.trim())
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| KeyError::NotAKey {
            path: path.display().to_string(),
            what: "a seal key",
            error: "not 32 bytes of hex".into(),
        })
}

// ---- seal-key trust: the operator's root key and the keyring ----

/// The signed keyring in the data directory: certificates, revocations, transitions.
pub fn keyring_path(data: &DataDir) -> PathBuf {
    data.keys().join("keyring")
}

/// The data directory's copy of the root public key. A convenience for the broker's own start-up
/// check only: whoever can write the data directory can replace it, so auditors use their own.
pub fn root_pub_path(data: &DataDir) -> PathBuf {
    data.keys().join("root.pub")
}

/// `FILE.pub` next to a root key file.
pub fn root_pub_beside(key: &Path) -> PathBuf {
    let mut name = key.as_os_str().to_owned();
    name.push(".pub");
    PathBuf::from(name)
}

/// Makes an operator root key at `out` (0600) and its public key at `out.pub`. Refuses a place
/// inside `data` or inside any Postern data directory: the root key must not live on a broker.
pub fn root_init(out: &Path, data: &DataDir) -> Result<RootPublicKey> {
    let target = resolved(out)?;
    let data_root = resolved(&data.root)?;
    let inside_data_dir = target.starts_with(&data_root)
        || target
            .ancestors()
            .skip(1)
            .any(|d| d.join("postern.toml").is_file() && d.join("keys").is_dir());
    if inside_data_dir {
        return Err(KeyError::RootInsideDataDir(out.display().to_string()));
    }
    let key = RootKey::from_seed(&os_seed()?);
    let public = key.public();
    write_private(out, key.export_secret().as_bytes())?;
    let pub_path = root_pub_beside(out);
    write(&pub_path, format!("{}\n", public.export()))?;
    Ok(public)
}

/// An absolute path with symlinks resolved as far as the path exists.
fn resolved(p: &Path) -> Result<PathBuf> {
    let abs = std::path::absolute(p).map_err(|error| KeyError::Read {
        path: p.display().to_string(),
        error,
    })?;
    // Resolve the deepest existing ancestor, then re-append the rest.
    let mut existing = abs.as_path();
    let mut rest = Vec::new();
    while !existing.exists() {
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_owned());
                existing = parent;
            }
            _ => break,
        }
    }
    let mut out = existing
        .canonicalize()
        .unwrap_or_else(|_| existing.to_owned());
    out.extend(rest.iter().rev());
    Ok(out)
}

pub fn load_root_key(path: &Path) -> Result<RootKey> {
    let text = read(path)?;
    RootKey::parse_secret(&text).map_err(|e| KeyError::NotAKey {
        path: path.display().to_string(),
        what: "a root key",
        error: e.to_string(),
    })
}

pub fn load_root_public(path: &Path) -> Result<RootPublicKey> {
    let text = read(path)?;
    RootPublicKey::parse(&text).map_err(|e| KeyError::NotAKey {
        path: path.display().to_string(),
        what: "a root public key",
        error: e.to_string(),
    })
}

/// The root public key pinned in the data directory, if any.
pub fn pinned_root(data: &DataDir) -> Result<Option<RootPublicKey>> {
    let path = root_pub_path(data);
    if !path.exists() {
        return Ok(None);
    }
    load_root_public(&path).map(Some)
}

/// Pins `root` in the data directory. The same key again is a no-op (`false`); another key is
/// refused: changing roots is a deliberate act (delete the file first).
pub fn pin_root(data: &DataDir, root: &RootPublicKey) -> Result<bool> {
    match pinned_root(data)? {
        Some(p) if p == *root => Ok(false),
        Some(p) => Err(KeyError::OtherRootPinned {
            path: root_pub_path(data).display().to_string(),
            pinned: p.fingerprint(),
        }),
        None => {
            let path = root_pub_path(data);
            write(&path, format!("{}\n", root.export()))?;
            Ok(true)
        }
    }
}

/// The start-up check: the seal key must be certified by the pinned root and valid `now`. The
/// error is one line saying what to run.
pub fn require_certified(data: &DataDir, key: &recorder::SealPublicKey, now: i64) -> Result<KeyId> {
    let certify = "run `postern keys certify --root ROOT_KEY_FILE` with the operator's root key";
    let refuse = |m: String| Err(KeyError::NotCertified(m));
    let Some(root) = pinned_root(data)? else {
        return refuse(format!(
            "refusing to seal with an uncertified key: no root public key is pinned in {}; {certify}",
            root_pub_path(data).display()
        ));
    };
    let ring = Keyring::load(&keyring_path(data))?;
    let fp = root.fingerprint();
    let status = match ring.status(&root, key, now) {
        Ok(s) => s,
        Err(e) => {
            return refuse(format!(
                "refusing to start: {} does not check against the pinned root {fp}: {e}",
                keyring_path(data).display()
            ));
        }
    };
    match status {
        KeyStatus::Trusted(id) => Ok(id),
        KeyStatus::NotCertified(id) => refuse(format!(
            "refusing to seal with an uncertified key: seal key {id} is not certified by the root {fp}; {certify}"
        )),
        KeyStatus::NotYetValid { key_id, from } => refuse(format!(
            "refusing to start: seal key {key_id} is certified only from {}; wait, or {certify}",
            fmt_time(from)
        )),
        KeyStatus::Expired { key_id, at } => refuse(format!(
            "refusing to start: the certificate of seal key {key_id} ended at {}; {certify}",
            fmt_time(at)
        )),
        KeyStatus::Revoked { key_id, at } => refuse(format!(
            "refusing to start: seal key {key_id} was revoked from {}; run `postern keys rotate --root ROOT_KEY_FILE`",
            fmt_time(at)
        )),
    }
}

/// Certifies this node's seal key with `root` for `[from, from + valid_for)`: returns the entry
/// (not yet written).
pub fn certify_entry(
    root: &RootKey,
    key: &recorder::SealPublicKey,
    node: &str,
    from: i64,
    valid_for: i64,
    now: i64,
) -> Result<Entry> {
    let until = from
        .checked_add(valid_for)
        .ok_or(KeyError::ValidityOutOfRange)?;
    Ok(Entry::Certify(root.certify(key, node, from, until, now)))
}

/// A rotation: a new seal key (seed returned, not yet written), certified from `now`; the
/// transition signed by the old and the new key; the old key's certificate ended at
/// `now + overlap` (time to restart brokers still holding it).
pub struct Rotation {
    pub new_seed: [u8; 32],
    pub from: KeyId,
    pub to: KeyId,
    pub entries: Vec<Entry>,
}

pub fn rotation(
    root: &RootKey,
    old_seed: &[u8; 32],
    node: &str,
    valid_for: i64,
    overlap: i64,
    now: i64,
) -> Result<Rotation> {
    let new_seed = os_seed()?;
    let old = recorder::SealKey::from_seed(old_seed).public();
    let new = recorder::SealKey::from_seed(&new_seed).public();
    let (from, to) = (KeyId::of(&old), KeyId::of(&new));
    let certify = certify_entry(root, &new, node, now, valid_for, now)?;
    let transition = Entry::Transition(Transition::sign(node, old_seed, &new_seed, now));
    let retire = Entry::Revoke(root.revoke(
        &from,
        now.saturating_add(overlap),
        now,
        &format!("rotated to {to}"),
    ));
    Ok(Rotation {
        new_seed,
        from,
        to,
        entries: vec![certify, transition, retire],
    })
}

/// Puts a rotated-in seal key in place: written beside the old one, then renamed over it, so the
/// file is always one whole key. The old private key is gone; its public key stays in the
/// keyring, which is all a verifier needs.
pub fn install_seal_seed(path: &Path, seed: &[u8; 32]) -> Result<()> {
    let staging = path.with_extension("new");
    let _ = std::fs::remove_file(&staging);
    write_private(&staging, hex::encode(seed).as_bytes())?;
    std::fs::rename(&staging, path).map_err(|error| KeyError::Write {
        path: path.display().to_string(),
        error,
    })?;
    let public = recorder::SealKey::from_seed(seed).public();
    write(
        &path.with_extension("pub"),
        format!("{}\n", public.export()),
    )?;
    Ok(())
}
