//! `postern verify`: recordings, the audit log and shipped checkpoints against the keys the root certified.

use approvals::audit::AuditEvent;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use approvals::time::{fmt_time, now};
use approvals::verify::Finding;
use broker::keys;
use serde_json::json;

use super::Env;

fn report(findings: &[Finding], json: bool) -> Result<ExitCode> {
    report_with(findings, json, false)
}

/// Prints the findings; `summary` adds a count line (sessions kept on other nodes apart: they
/// are neither checked nor failed here).
fn report_with(findings: &[Finding], json: bool, summary: bool) -> Result<ExitCode> {
    let failed = findings.iter().filter(|f| !f.ok).count();
    let elsewhere = findings.iter().filter(|f| f.elsewhere.is_some()).count();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &json!({"ok": failed == 0, "failed": failed, "elsewhere": elsewhere, "findings": findings})
            )?
        );
    } else {
        for f in findings {
            println!("{}", f.line());
        }
        if summary {
            println!(
                "{} checked: {} OK, {failed} failed; {elsewhere} recorded on other nodes",
                findings.len() - elsewhere,
                findings.len() - elsewhere - failed
            );
        }
    }
    if failed > 0 {
        eprintln!("postern: verification failed for {failed} item(s)");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// What a third party trusts to check one recording file.
pub enum FileTrust<'a> {
    /// One seal public key, taken on trust.
    Key(&'a Path),
    /// A keyring and the checker's own copy of the root public key: the keys the root certified
    /// for the time the recording was sealed.
    Keyring { keyring: &'a Path, root: &'a Path },
}

impl<'a> FileTrust<'a> {
    /// What `--public-key`, or `--keyring` with `--root`, says to trust.
    pub fn of(
        public_key: &'a Option<PathBuf>,
        keyring: &'a Option<PathBuf>,
        root: &'a Option<PathBuf>,
    ) -> Result<FileTrust<'a>> {
        match (public_key, keyring, root) {
            (Some(key), _, _) => Ok(FileTrust::Key(key)),
            (None, Some(keyring), Some(root)) => Ok(FileTrust::Keyring { keyring, root }),
            _ => bail!("--file needs --public-key, or --keyring with --root"),
        }
    }
}

/// Checks one recording file with only a seal public key, or a keyring and a root public key:
/// no data directory, no database.
pub fn verify_standalone(
    file: &Path,
    trust: &FileTrust<'_>,
    expect_session: Option<&str>,
    json: bool,
) -> Result<ExitCode> {
    let item = file.display().to_string();
    let (key, ring) = match trust {
        FileTrust::Key(public_key) => {
            let key_text = std::fs::read_to_string(public_key)
                .with_context(|| format!("reading {}", public_key.display()))?;
            let key = recorder::SealPublicKey::parse(&key_text)
                .map_err(|e| anyhow!("{}: {e}", public_key.display()))?;
            (Some(key), None)
        }
        FileTrust::Keyring { keyring, root } => {
            let root = keys::load_root_public(root)?;
            if !keyring.exists() {
                bail!("reading {}: no such file", keyring.display());
            }
            let ring = recorder::keyring::Keyring::load(keyring)?;
            (None, Some((ring, root)))
        }
    };
    if let Some((ring, root)) = &ring {
        // A keyring that does not check against the auditor's root proves nothing.
        if let Err(e) = ring.check(root) {
            return report(&[Finding::bad(&item, 0, e.to_string())], json);
        }
    }
    let finding = match recorder::verify_file(file) {
        Err(e) => Finding::bad(&item, 0, e.to_string()),
        Ok(r) if expect_session.is_some_and(|want| want != r.stream_id) => Finding::bad(
            &item,
            r.records,
            format!(
                "the file is session {}, not {} (a recording of another session)",
                r.stream_id,
                expect_session.unwrap_or_default()
            ),
        ),
        Ok(r) => match (&r.problem, &r.tail) {
            (Some(p), _) => Finding::bad(&item, r.records, p.to_string()),
            (None, recorder::Tail::Torn { offset, .. }) => Finding::bad(
                &item,
                r.records,
                format!("record {}: incomplete at byte {offset}", r.records),
            ),
            (None, recorder::Tail::Clean) => match (&key, &ring) {
                (Some(key), _) => match r.seal(&[*key]) {
                    Ok(seal) => Finding::ok(
                        &item,
                        r.records,
                        format!(
                            "session {}: chain intact; sealed over {} records by this key",
                            seal.stream, seal.records
                        ),
                    ),
                    Err(e) => Finding::bad(&item, r.records, e.to_string()),
                },
                (None, Some((ring, root))) => sealed_by_keyring(&item, &r, ring, root),
                (None, None) => Finding::bad(&item, r.records, "no key to check the seal with"),
            },
        },
    };
    report(&[finding], json)
}

pub async fn run(
    env: &Env,
    id: Option<&str>,
    root: Option<&Path>,
    checkpoints: Option<&str>,
) -> Result<ExitCode> {
    let mut evidence = env.evidence();
    if let Some(root) = root {
        evidence.root = Some(keys::load_root_public(root)?);
    }
    let sessions = match id {
        Some(id) => env.store.session(id).await?.into_iter().collect(),
        None => env.store.sessions(false).await?,
    };
    env.fetch_recordings(&sessions).await?;
    let mut findings = approvals::verify::verify(&env.store, &evidence, id).await?;
    if id.is_none() || checkpoints.is_some() {
        findings.extend(verify_checkpoints(env, checkpoints).await?);
    }
    let failed = findings.iter().filter(|f| !f.ok).count();
    let elsewhere = findings.iter().filter(|f| f.elsewhere.is_some()).count();
    // The verification itself is evidence, but verify never changes what it judged: with the
    // audit log damaged or cut, appending (which would cut an incomplete tail) is left out.
    let log_damaged = approvals::verify::audit_log_damaged(&env.evidence().audit_log);
    if !log_damaged {
        let _ = env.audit(
        AuditEvent::Verify,
            json!({"session": id, "checked": findings.len() - elsewhere, "failed": failed, "elsewhere": elsewhere}),
        );
    }
    report_with(&findings, env.json, id.is_none())
}

/// The audit log against shipped checkpoints: from `source` (a file or an http(s) URL of JSON
/// lines), or the database's, which whoever runs this host can change (a hint, labelled so).
async fn verify_checkpoints(env: &Env, source: Option<&str>) -> Result<Vec<Finding>> {
    let (list, label, required) = match source {
        None => (
            env.store.checkpoints(None).await?,
            "database, a hint: only an off-host copy binds".to_owned(),
            false,
        ),
        Some(s) => {
            let text = if s.starts_with("http://") || s.starts_with("https://") {
                let r = reqwest::Client::builder()
                    .timeout(Duration::from_secs(30))
                    .build()?
                    .get(s)
                    .send()
                    .await
                    .with_context(|| format!("fetching {s}"))?;
                if !r.status().is_success() {
                    bail!("fetching {s}: {}", r.status());
                }
                r.text().await.with_context(|| format!("reading {s}"))?
            } else {
                std::fs::read_to_string(s).with_context(|| format!("reading {s}"))?
            };
            let list =
                approvals::checkpoint::parse_lines(&text).map_err(|e| anyhow!("{s}: {e}"))?;
            (list, s.to_owned(), true)
        }
    };
    let (path, node) = (env.data.audit_log(), env.cfg.node.clone());
    let evidence = env.evidence();
    tokio::task::spawn_blocking(move || {
        let mut findings =
            approvals::checkpoint::verify_log(&path, &node, &list, &label, required, now());
        findings.extend(checkpoint_keys(&evidence, &node, &list));
        findings
    })
    .await
    .map_err(|e| anyhow!("{e}"))
}

/// A checkpoint counts only if the root certified its key for the time it was made (as seals
/// do): a key an insider made and signed checkpoints with proves nothing.
fn checkpoint_keys(
    evidence: &approvals::verify::Evidence,
    node: &str,
    list: &[approvals::checkpoint::Checkpoint],
) -> Vec<Finding> {
    let (Some(root), Some(path)) = (&evidence.root, &evidence.keyring) else {
        return Vec::new();
    };
    let ring = match recorder::keyring::Keyring::load(path) {
        Ok(r) => r,
        Err(e) => return vec![Finding::bad("checkpoint keys", 0, e.to_string())],
    };
    list.iter()
        .filter(|cp| cp.node == node)
        .filter_map(|cp| {
            let key = recorder::SealPublicKey::parse(&cp.key).ok()?;
            let trusted = ring
                .trusted(root, cp.time)
                .is_ok_and(|keys| keys.iter().any(|(k, _)| *k == key));
            (!trusted).then(|| {
                let why = ring
                    .status(root, &key, cp.time)
                    .map(|s| s.to_string())
                    .unwrap_or_else(|e| e.to_string());
                Finding::bad(
                    &format!("checkpoint seq {}", cp.seq),
                    0,
                    format!("signed by a key the root did not certify for its time: {why}"),
                )
            })
        })
        .collect()
}

// ---- serving ----

/// A recording's seal checked against the keys `root` certified for the time it was sealed (the
/// seal record's time).
fn sealed_by_keyring(
    item: &str,
    r: &recorder::VerifyReport,
    ring: &recorder::keyring::Keyring,
    root: &recorder::keyring::RootPublicKey,
) -> Finding {
    let at = r.last.as_ref().map(|l| l.time_us / 1_000_000).unwrap_or(0);
    let trusted = match ring.trusted(root, at) {
        Ok(t) => t,
        Err(e) => return Finding::bad(item, r.records, e.to_string()),
    };
    let keys: Vec<recorder::SealPublicKey> = trusted.iter().map(|(k, _)| *k).collect();
    match r.seal(&keys) {
        Ok(seal) => {
            let id = recorder::SealPublicKey::parse(&seal.key)
                .map(|k| recorder::keyring::KeyId::of(&k).to_string())
                .unwrap_or_default();
            Finding::ok(
                item,
                r.records,
                format!(
                    "session {}: chain intact; sealed over {} records at {} by key {id}, certified by root {} at that time",
                    seal.stream,
                    seal.records,
                    fmt_time(at),
                    root.fingerprint()
                ),
            )
        }
        Err(recorder::SealError::UnknownKey { seq, key }) => {
            // Say why the keyring does not vouch for this key then.
            let why = match recorder::SealPublicKey::parse(&key) {
                Err(_) => "an unreadable key".to_owned(),
                Ok(k) => match ring.status(root, &k, at) {
                    Ok(recorder::keyring::KeyStatus::NotCertified(id)) => {
                        format!("key {id}, which the root never certified")
                    }
                    Ok(recorder::keyring::KeyStatus::Revoked { key_id, at: from }) => {
                        format!("key {key_id}, revoked from {}", fmt_time(from))
                    }
                    Ok(recorder::keyring::KeyStatus::Expired { key_id, at: end }) => {
                        format!("key {key_id}, whose certificate ended at {}", fmt_time(end))
                    }
                    Ok(recorder::keyring::KeyStatus::NotYetValid { key_id, from }) => {
                        format!("key {key_id}, certified only from {}", fmt_time(from))
                    }
                    Ok(recorder::keyring::KeyStatus::Trusted(id)) => format!("key {id}"),
                    Err(e) => e.to_string(),
                },
            };
            Finding::bad(
                item,
                r.records,
                format!(
                    "record {seq}: sealed at {} with {why}: not trusted",
                    fmt_time(at)
                ),
            )
        }
        Err(e) => Finding::bad(item, r.records, e.to_string()),
    }
}

// ---- seal-key trust ----
