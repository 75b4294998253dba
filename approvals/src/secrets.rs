//! Secrets at rest: device credentials and TOTP secrets are stored sealed with XChaCha20-Poly1305
//! under a data key, and the data key is stored wrapped by the master key (a file outside the
//! database). A sealed value reads `enc:v1:<data key id>:<base64(nonce ‖ ciphertext)>`; the row
//! it belongs to is the associated data, so a ciphertext copied into another row does not open.
//! A reader of the database alone learns no secret; a reader of the master key file alone has
//! nothing to open.

use std::collections::HashMap;
use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use chacha20poly1305::aead::{Aead, Generate, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// The prefix of a sealed value; anything else in a secret column is a plain (legacy) value.
pub const SEALED_PREFIX: &str = "enc:v1:";
const WRAPPED_PREFIX: &str = "wrap:v1:";
const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 24;

/// Why a secret could not be sealed or opened.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("the master key file is not a Postern master key (64 hex digits expected)")]
    MasterKeyFormat,
    #[error(
        "the master key {given} does not open the data key {data_key} (wrapped under master key {wrapped_under}): this node needs the current master key file"
    )]
    WrongMaster {
        given: String,
        data_key: String,
        wrapped_under: String,
    },
    #[error("a stored secret names data key {0}, which this node does not hold")]
    UnknownKey(String),
    #[error("a stored secret is malformed")]
    Malformed,
    #[error("a stored secret does not open: it was altered or belongs to another row")]
    Tampered,
    #[error("the secrets store is locked: no master key was given")]
    Locked,
}

type Result<T> = std::result::Result<T, SecretError>;

/// The row a secret belongs to: its identity is bound to the ciphertext.
#[derive(Debug, Clone, Copy)]
pub enum Owner<'a> {
    Device {
        site: &'a str,
        name: &'a str,
    },
    /// A new device password set aside during a rotation (`device_pending_credentials`).
    PendingDevice {
        site: &'a str,
        name: &'a str,
    },
    Vendor(&'a str),
    Approver(&'a str),
    /// The password Postern signs in to a device's web UI with (HTTP basic auth).
    DeviceWeb {
        site: &'a str,
        name: &'a str,
    },
}

impl Owner<'_> {
    fn aad(&self) -> Vec<u8> {
        // NUL separates the parts: names cannot hold it, so no two rows share an AAD.
        match self {
            Owner::Device { site, name } => format!("devices.credential\0{site}\0{name}"),
            Owner::PendingDevice { site, name } => {
                format!("device_pending_credentials.credential\0{site}\0{name}")
            }
            Owner::Vendor(name) => format!("vendors.totp_secret\0{name}"),
            Owner::Approver(name) => format!("approvers.totp_secret\0{name}"),
            Owner::DeviceWeb { site, name } => {
                format!("device_web.basic_password\0{site}\0{name}")
            }
        }
        .into_bytes()
    }
}

/// The master key: 32 random bytes kept in a file (`DATA/keys/master.key`, or the file named
/// by `master_key_file`), never in the database.
pub struct MasterKey {
    key: Zeroizing<[u8; KEY_LEN]>,
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MasterKey({})", self.id())
    }
}

impl MasterKey {
    pub fn generate() -> MasterKey {
        MasterKey {
            key: Zeroizing::new(rand::random()),
        }
    }

    /// Reads the file's text: 64 hex digits, surrounding whitespace ignored.
    pub fn parse(text: &str) -> Result<MasterKey> {
        let bytes =
            Zeroizing::new(hex::decode(text.trim()).map_err(|_| SecretError::MasterKeyFormat)?);
        let key: [u8; KEY_LEN] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| SecretError::MasterKeyFormat)?;
        Ok(MasterKey {
            key: Zeroizing::new(key),
        })
    }

    /// The file's text.
    pub fn to_text(&self) -> Zeroizing<String> {
        Zeroizing::new(format!("{}\n", hex::encode(*self.key)))
    }

    /// A short public name for the key (a hash, not the key), stored beside what it wraps.
    pub fn id(&self) -> String {
        let digest = Sha256::new()
            .chain_update(b"postern master key id\0")
            .chain_update(*self.key)
            .finalize();
        format!("mk-{}", hex::encode(&digest[..6]))
    }

    /// Wraps a data key for storage: `wrap:v1:<master id>:<base64>`.
    pub fn wrap(&self, data_key_id: &str, data_key: &DataKey) -> String {
        let sealed = seal_bytes(&self.key, &wrap_aad(data_key_id), &data_key.0[..]);
        format!("{WRAPPED_PREFIX}{}:{}", self.id(), B64.encode(sealed))
    }

    /// Unwraps a stored data key; the wrong master key is named as such.
    pub fn unwrap(&self, data_key_id: &str, wrapped: &str) -> Result<DataKey> {
        let rest = wrapped
            .strip_prefix(WRAPPED_PREFIX)
            .ok_or(SecretError::Malformed)?;
        let (master_id, body) = rest.split_once(':').ok_or(SecretError::Malformed)?;
        let wrong = || SecretError::WrongMaster {
            given: self.id(),
            data_key: data_key_id.to_owned(),
            wrapped_under: master_id.to_owned(),
        };
        if master_id != self.id() {
            return Err(wrong());
        }
        let sealed = B64.decode(body).map_err(|_| SecretError::Malformed)?;
        let plain = Zeroizing::new(
            open_bytes(&self.key, &wrap_aad(data_key_id), &sealed).map_err(|_| wrong())?,
        );
        let key: [u8; KEY_LEN] = plain
            .as_slice()
            .try_into()
            .map_err(|_| SecretError::Malformed)?;
        Ok(DataKey(Zeroizing::new(key)))
    }
}

fn wrap_aad(data_key_id: &str) -> Vec<u8> {
    format!("postern data key\0{data_key_id}").into_bytes()
}

/// A data key, which seals the secrets themselves.
pub struct DataKey(Zeroizing<[u8; KEY_LEN]>);

impl DataKey {
    pub fn generate() -> DataKey {
        DataKey(Zeroizing::new(rand::random()))
    }
}

/// The data keys a node holds once unlocked, and the one new secrets are sealed with.
pub struct Secrets {
    keys: HashMap<String, DataKey>,
    current: String,
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secrets(current {})", self.current)
    }
}

impl Secrets {
    /// `current` must be one of `keys`.
    pub fn new(keys: HashMap<String, DataKey>, current: String) -> Result<Secrets> {
        if !keys.contains_key(&current) {
            return Err(SecretError::UnknownKey(current));
        }
        Ok(Secrets { keys, current })
    }

    /// Seals `plain` for `owner`. The empty string (no secret set yet) stays empty.
    pub fn seal(&self, owner: Owner<'_>, plain: &str) -> Result<String> {
        if plain.is_empty() {
            return Ok(String::new());
        }
        let key = self
            .keys
            .get(&self.current)
            .ok_or_else(|| SecretError::UnknownKey(self.current.clone()))?;
        let sealed = seal_bytes(&key.0, &owner.aad(), plain.as_bytes());
        Ok(format!(
            "{SEALED_PREFIX}{}:{}",
            self.current,
            B64.encode(sealed)
        ))
    }

    /// Opens a stored value for `owner`. A value without the sealed prefix is a plain value
    /// written before encryption (or by a node not yet upgraded) and is returned as it is; the
    /// start-up step seals such values.
    pub fn open(&self, owner: Owner<'_>, stored: &str) -> Result<String> {
        let Some(rest) = stored.strip_prefix(SEALED_PREFIX) else {
            return Ok(stored.to_owned());
        };
        let (key_id, body) = rest.split_once(':').ok_or(SecretError::Malformed)?;
        let key = self
            .keys
            .get(key_id)
            .ok_or_else(|| SecretError::UnknownKey(key_id.to_owned()))?;
        let sealed = B64.decode(body).map_err(|_| SecretError::Malformed)?;
        let plain = open_bytes(&key.0, &owner.aad(), &sealed)?;
        String::from_utf8(plain).map_err(|_| SecretError::Malformed)
    }
}

/// Whether a stored value is sealed (or empty, which holds no secret).
pub fn is_sealed(stored: &str) -> bool {
    stored.is_empty() || stored.starts_with(SEALED_PREFIX)
}

fn seal_bytes(key: &[u8; KEY_LEN], aad: &[u8], plain: &[u8]) -> Vec<u8> {
    let cipher = XChaCha20Poly1305::new(key.into());
    let nonce = XNonce::generate();
    // Encryption with a valid key and nonce cannot fail for inputs this size.
    let ct = cipher
        .encrypt(&nonce, Payload { msg: plain, aad })
        .unwrap_or_default();
    let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
    out.extend_from_slice(nonce.as_slice());
    out.extend_from_slice(&ct);
    out
}

fn open_bytes(key: &[u8; KEY_LEN], aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>> {
    if sealed.len() < NONCE_LEN {
        return Err(SecretError::Malformed);
    }
    let (nonce, ct) = sealed.split_at(NONCE_LEN);
    let nonce = XNonce::try_from(nonce).map_err(|_| SecretError::Malformed)?;
    XChaCha20Poly1305::new(key.into())
        .decrypt(&nonce, Payload { msg: ct, aad })
        .map_err(|_| SecretError::Tampered)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets(id: &str) -> Secrets {
        let mut keys = HashMap::new();
        keys.insert(id.to_owned(), DataKey::generate());
        Secrets::new(keys, id.to_owned()).unwrap()
    }

    const DEV: Owner<'static> = Owner::Device {
        site: "s1",
        name: "d1",
    };

    #[test]
    fn round_trip_and_no_plain_text() {
        let s = secrets("dk-1");
        let sealed = s.seal(DEV, "-----BEGIN OPENSSH PRIVATE KEY-----").unwrap();
        assert!(sealed.starts_with("enc:v1:dk-1:"));
        assert!(!sealed.contains("BEGIN"));
        assert_eq!(
            s.open(DEV, &sealed).unwrap(),
            "-----BEGIN OPENSSH PRIVATE KEY-----"
        );
        // Fresh nonce each time.
        assert_ne!(
            sealed,
            s.seal(DEV, "-----BEGIN OPENSSH PRIVATE KEY-----").unwrap()
        );
        assert_eq!(s.seal(DEV, "").unwrap(), "");
    }

    #[test]
    fn tampered_ciphertext_is_refused() {
        let s = secrets("dk-1");
        let sealed = s.seal(Owner::Vendor("acme"), "JBSWY3DPEHPK3PXP").unwrap();
        let (head, body) = sealed.rsplit_once(':').unwrap();
        let mut bytes = B64.decode(body).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        let altered = format!("{head}:{}", B64.encode(&bytes));
        assert!(matches!(
            s.open(Owner::Vendor("acme"), &altered),
            Err(SecretError::Tampered)
        ));
        assert!(matches!(
            s.open(Owner::Vendor("acme"), "enc:v1:dk-1:!!"),
            Err(SecretError::Malformed)
        ));
    }

    #[test]
    fn wrong_row_is_refused() {
        let s = secrets("dk-1");
        let sealed = s.seal(Owner::Vendor("acme"), "JBSWY3DPEHPK3PXP").unwrap();
        for other in [
            Owner::Vendor("evil"),
            Owner::Approver("acme"),
            Owner::Device {
                site: "acme",
                name: "",
            },
        ] {
            assert!(matches!(s.open(other, &sealed), Err(SecretError::Tampered)));
        }
        let dev = s.seal(DEV, "pw").unwrap();
        let swapped = Owner::Device {
            site: "s1",
            name: "d2",
        };
        assert!(matches!(s.open(swapped, &dev), Err(SecretError::Tampered)));
    }

    #[test]
    fn wrong_key_id_is_refused() {
        let s = secrets("dk-1");
        let sealed = s.seal(DEV, "pw").unwrap();
        let renamed = sealed.replacen("dk-1", "dk-2", 1);
        assert!(matches!(
            s.open(DEV, &renamed),
            Err(SecretError::UnknownKey(k)) if k == "dk-2"
        ));
        // Same id, another key: does not open.
        let other = secrets("dk-1");
        assert!(matches!(
            other.open(DEV, &sealed),
            Err(SecretError::Tampered)
        ));
    }

    #[test]
    fn data_key_wrapping() {
        let master = MasterKey::generate();
        let again = MasterKey::parse(&master.to_text()).unwrap();
        assert_eq!(master.id(), again.id());
        let dk = DataKey::generate();
        let wrapped = master.wrap("dk-1", &dk);
        assert!(wrapped.starts_with(&format!("wrap:v1:{}:", master.id())));
        let back = again.unwrap("dk-1", &wrapped).unwrap();
        assert_eq!(*back.0, *dk.0);
        assert!(matches!(
            master.unwrap("dk-2", &wrapped),
            Err(SecretError::WrongMaster { .. })
        ));
        let other = MasterKey::generate();
        assert!(matches!(
            other.unwrap("dk-1", &wrapped),
            Err(SecretError::WrongMaster { .. })
        ));
        assert!(MasterKey::parse("abc").is_err());
    }

    #[test]
    fn plain_legacy_values_pass_through() {
        let s = secrets("dk-1");
        assert_eq!(s.open(DEV, "hunter2").unwrap(), "hunter2");
        assert!(!is_sealed("hunter2"));
        assert!(is_sealed(""));
    }
}
