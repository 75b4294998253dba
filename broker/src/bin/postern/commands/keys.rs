//! `postern keys` and `postern seal-key`: the root, its pin, certifying and rotating the seal key.

use approvals::audit::AuditEvent;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use approvals::time::{fmt_time, now, parse_duration, parse_time};
use broker::config::DataDir;
use broker::keys;
use broker::master_key;
use serde_json::{Value, json};

use super::Env;
use super::output::printable;
use crate::args::*;

/// `postern seal-key [--current]`.
pub fn seal_key(data: &DataDir, current: bool, json: bool) -> Result<ExitCode> {
    if !current {
        return seal_keyring_export(data, json);
    }
    let key = keys::seal_key(&data.seal_key())
        .with_context(|| format!("no seal key in {}", data.root.display()))?;
    println!("{}", key.public().export());
    Ok(ExitCode::SUCCESS)
}

/// `postern keys root init --out FILE`: needs no opened data directory (only its pin).
pub fn root_init(data: &DataDir, out: &Path) -> Result<ExitCode> {
    let public = keys::root_init(out, data)?;
    println!("{}", public.export());
    println!("fingerprint {}", public.fingerprint());
    println!(
        "root private key in {} (keep it off the broker); public key in {}",
        out.display(),
        keys::root_pub_beside(out).display()
    );
    Ok(ExitCode::SUCCESS)
}

/// The keyring as signed lines an auditor checks with their own root public
/// key, each key's history in comments first.
fn seal_keyring_export(data: &DataDir, json: bool) -> Result<ExitCode> {
    let ring = recorder::keyring::Keyring::load(&keys::keyring_path(data))?;
    let current = keys::seal_key(&data.seal_key())
        .with_context(|| format!("no seal key in {}", data.root.display()))?
        .public();
    let current_id = recorder::keyring::KeyId::of(&current);
    let root = keys::pinned_root(data)?;
    let history = match &root {
        Some(root) => ring.history(root).map_err(|e| e.to_string()),
        None => Err("no root public key is pinned here".to_owned()),
    };
    if json {
        let entries: Vec<&recorder::keyring::Entry> = ring.entries().collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "current": {"key_id": current_id, "key": current.export()},
                "pinned_root": root.map(|r| r.fingerprint()),
                "keys": history.as_ref().ok(),
                "problem": history.as_ref().err(),
                "entries": entries,
            }))?
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "# Postern seal keyring. Check it with your own copy of the operator's root public key:"
    );
    println!("#   postern verify --file RECORDING --keyring THIS_FILE --root ROOT_PUB");
    match (&root, &history) {
        (Some(root), Ok(history)) => {
            println!("# Pinned on this node: root {}", root.fingerprint());
            for h in history {
                let windows: Vec<String> = h
                    .windows
                    .iter()
                    .map(|(a, b)| format!("{} to {}", fmt_time(*a), fmt_time(*b)))
                    .collect();
                let mut line = format!(
                    "# {} node {} certified {}",
                    h.key_id,
                    printable(&h.node),
                    windows.join(", ")
                );
                if let Some(r) = h.revoked {
                    line.push_str(&format!("; revoked from {}", fmt_time(r)));
                }
                if let Some((from, at)) = &h.replaces {
                    line.push_str(&format!("; replaced {from} at {}", fmt_time(*at)));
                }
                if let Some((to, at)) = &h.replaced_by {
                    line.push_str(&format!("; replaced by {to} at {}", fmt_time(*at)));
                }
                if h.key_id == current_id {
                    line.push_str("; sealing now");
                }
                println!("{line}");
            }
        }
        (_, Err(problem)) => println!("# WARNING: {problem}"),
        (None, Ok(_)) => {}
    }
    if !ring
        .entries()
        .any(|e| matches!(e, recorder::keyring::Entry::Certify(c) if c.key_id == current_id))
    {
        println!(
            "# The key sealing now ({current_id}) is not certified: run `postern keys certify --root ROOT_KEY_FILE`"
        );
    }
    for e in ring.entries() {
        println!("{}", e.line());
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn run(env: &Env, action: &KeysAction) -> Result<()> {
    match action {
        // Handled before the data directory is opened.
        KeysAction::Root { .. } => bail!("`keys root init` does not open the data directory"),
        KeysAction::Pin { root_pub } => pin(env, root_pub),
        KeysAction::Certify {
            root,
            valid_for,
            from,
        } => certify(env, root, valid_for, from.as_deref()).await,
        KeysAction::Revoke {
            key_id,
            root,
            at,
            reason,
        } => revoke(env, key_id, root, at.as_deref(), reason),
        KeysAction::Rotate {
            root,
            valid_for,
            overlap,
        } => rotate(env, root, valid_for, overlap).await,
        KeysAction::RotateMaster { out } => rotate_master(env, out.as_deref()).await,
    }
}

/// `postern keys rotate-master [--out FILE]`: the new key is saved before the database is
/// changed, so a committed rotation always has its key on disk (see `broker::master_key`).
async fn rotate_master(env: &Env, out: Option<&Path>) -> Result<()> {
    let path = master_key::path(&env.data, &env.cfg);
    let old = master_key::load(&path)?;
    let new_path = match out {
        Some(out) => out.to_owned(),
        None if env.cfg.master_key_file.is_some() => bail!(
            "master_key_file is set ({}): give --out FILE for the new key, then install it there",
            path.display()
        ),
        None => {
            // A leftover of a rotation that never committed (one that did is promoted on open).
            let pending = master_key::pending_path(&path);
            if pending.exists() {
                std::fs::remove_file(&pending)
                    .with_context(|| format!("removing {}", pending.display()))?;
            }
            pending
        }
    };
    let new = master_key::create(&new_path)?;
    let rewrapped = match env
        .actions()
        .rotate_master(&super::operator(), &old, &new)
        .await
    {
        Ok(n) => n,
        Err(e) => {
            let _ = std::fs::remove_file(&new_path);
            return Err(e.into());
        }
    };
    if out.is_none() {
        master_key::promote(&path)?;
    }
    if env.json {
        println!(
            "{}",
            json!({"from": old.id(), "to": new.id(), "data_keys": rewrapped, "file": new_path.display().to_string()})
        );
        return Ok(());
    }
    let file = if out.is_none() { &path } else { &new_path };
    println!(
        "master key rotated: {} -> {} ({rewrapped} data key(s) re-wrapped); new key in {}",
        old.id(),
        new.id(),
        file.display()
    );
    println!(
        "running nodes keep working; give every other node this file before it next starts (the old key no longer opens the database)"
    );
    Ok(())
}

/// `postern keys pin ROOT_PUB`.
fn pin(env: &Env, root_pub: &Path) -> Result<()> {
    let root = keys::load_root_public(root_pub)?;
    env.audit(AuditEvent::KeysPin, json!({"root": root.fingerprint()}))?;
    if keys::pin_root(&env.data, &root)? {
        print_pinned(env, &root);
    } else {
        println!("root {} was already pinned", root.fingerprint());
    }
    Ok(())
}

fn print_pinned(env: &Env, root: &recorder::keyring::RootPublicKey) {
    println!(
        "pinned root {} in {} (for this broker's start-up check; auditors use their own copy)",
        root.fingerprint(),
        keys::root_pub_path(&env.data).display()
    );
}

/// `postern keys certify --root KEY`: the root vouches for this node's seal key.
async fn certify(env: &Env, root: &Path, valid_for: &str, from: Option<&str>) -> Result<()> {
    let now = now();
    let ring_path = keys::keyring_path(&env.data);
    let root = keys::load_root_key(root)?;
    let public = root.public();
    if let Some(pinned) = keys::pinned_root(&env.data)?
        && pinned != public
    {
        bail!(
            "this node pins another root key ({}) in {}; certify with that one, or remove the file to change roots",
            pinned.fingerprint(),
            keys::root_pub_path(&env.data).display()
        );
    }
    let ring = open_keyring(&ring_path, &public)?;
    let valid_for = parse_duration(valid_for).context("--valid-for")?;
    let from = match from {
        Some(f) => parse_time(f, now).context("--from")?,
        None => now,
    };
    let seal = keys::seal_key(&env.data.seal_key())?.public();
    let entry = keys::certify_entry(&root, &seal, &env.cfg.node, from, valid_for, now)?;
    let recorder::keyring::Entry::Certify(cert) = &entry else {
        bail!("internal: certify made no certificate");
    };
    drop(ring);
    env.audit(
        AuditEvent::KeysCertify,
        json!({
            "key_id": cert.key_id, "key": cert.key, "node": cert.node,
            "not_before": cert.not_before, "not_after": cert.not_after,
            "root": public.fingerprint(),
        }),
    )?;
    let pinned = keys::pin_root(&env.data, &public)?;
    recorder::keyring::Keyring::append(&ring_path, std::slice::from_ref(&entry))?;
    // The database row is only a hint for other nodes' listings; trust is the keyring.
    env.store
        .register_seal_key(&cert.key, &env.cfg.node, now)
        .await?;
    println!(
        "certified seal key {} of node {} from {} to {} by root {}",
        cert.key_id,
        printable(&cert.node),
        fmt_time(cert.not_before),
        fmt_time(cert.not_after),
        public.fingerprint()
    );
    if pinned {
        print_pinned(env, &public);
    }
    Ok(())
}

/// `postern keys revoke KEY_ID --root KEY`: seals by that key from `at` on are not trusted.
fn revoke(env: &Env, key_id: &str, root: &Path, at: Option<&str>, reason: &str) -> Result<()> {
    let now = now();
    let ring_path = keys::keyring_path(&env.data);
    let root = keys::load_root_key(root)?;
    let ring = open_keyring(&ring_path, &root.public())?;
    let id = recorder::keyring::KeyId(key_id.to_owned());
    if !ring
        .entries()
        .any(|e| matches!(e, recorder::keyring::Entry::Certify(c) if c.key_id == id))
    {
        bail!("no key {} in {}", printable(key_id), ring_path.display());
    }
    let at = match at {
        Some(a) => parse_time(a, now).context("--at")?,
        None => now,
    };
    let entry = recorder::keyring::Entry::Revoke(root.revoke(&id, at, now, reason));
    env.audit(
        AuditEvent::KeysRevoke,
        json!({"key_id": id, "not_after": at, "reason": reason, "root": root.public().fingerprint()}),
    )?;
    recorder::keyring::Keyring::append(&ring_path, std::slice::from_ref(&entry))?;
    println!(
        "revoked seal key {id}: its seals from {} on are not trusted",
        fmt_time(at)
    );
    Ok(())
}

/// `postern keys rotate --root KEY`: a new seal key, the old one trusted for `overlap` more.
async fn rotate(env: &Env, root: &Path, valid_for: &str, overlap: &str) -> Result<()> {
    let now = now();
    let ring_path = keys::keyring_path(&env.data);
    let root = keys::load_root_key(root)?;
    let ring = open_keyring(&ring_path, &root.public())?;
    let valid_for = parse_duration(valid_for).context("--valid-for")?;
    let overlap = parse_duration(overlap).context("--overlap")?;
    let old_seed = keys::seal_seed(&env.data.seal_key())?;
    let old_id = recorder::keyring::KeyId::of(&recorder::SealKey::from_seed(&old_seed).public());
    if !ring
        .entries()
        .any(|e| matches!(e, recorder::keyring::Entry::Certify(c) if c.key_id == old_id))
    {
        bail!(
            "the current seal key {old_id} was never certified: certify it with `postern keys certify --root ROOT_KEY_FILE` instead"
        );
    }
    let rot = keys::rotation(&root, &old_seed, &env.cfg.node, valid_for, overlap, now)?;
    let entries: Vec<Value> = rot
        .entries
        .iter()
        .map(|e| serde_json::to_value(e).unwrap_or(Value::Null))
        .collect();
    // The transition, signed by both keys, goes into the audit log as well as the keyring.
    env.audit(
        AuditEvent::KeysRotate,
        json!({"from": rot.from, "to": rot.to, "at": now, "old_not_after": now.saturating_add(overlap), "entries": entries}),
    )?;
    recorder::keyring::Keyring::append(&ring_path, &rot.entries)?;
    keys::install_seal_seed(&env.data.seal_key(), &rot.new_seed)?;
    let new_public = recorder::SealKey::from_seed(&rot.new_seed).public();
    env.store
        .register_seal_key(&new_public.export(), &env.cfg.node, now)
        .await?;
    println!(
        "rotated seal key {} to {}; {} stays trusted until {}: restart the broker before then",
        rot.from,
        rot.to,
        rot.from,
        fmt_time(now.saturating_add(overlap))
    );
    Ok(())
}

/// The data directory's keyring, refused if it does not check against the root about to sign
/// into it: never extend a keyring someone has tampered with.
fn open_keyring(
    path: &Path,
    root: &recorder::keyring::RootPublicKey,
) -> Result<recorder::keyring::Keyring> {
    let ring = recorder::keyring::Keyring::load(path)?;
    ring.check(root)
        .with_context(|| format!("{} does not check against this root key", path.display()))?;
    Ok(ring)
}
