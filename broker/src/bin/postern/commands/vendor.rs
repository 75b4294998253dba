//! `postern vendor`: add vendors (with their TOTP enrolment), issue their certificates, disable them, list them.

use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use approvals::time::{fmt_time, now, parse_duration, parse_time};
use broker::keys;
use serde_json::json;

use super::output::{opt_time, print_qr};
use super::{Env, operator};
use crate::args::*;

pub async fn run(env: &Env, action: &VendorAction) -> Result<()> {
    match action {
        VendorAction::Add {
            name,
            org,
            contract_end,
        } => add(env, name, org, contract_end.as_deref()).await,
        VendorAction::Cert {
            name,
            pubkey,
            validity,
            from,
            no_pty,
            no_port_forwarding,
        } => {
            let restrict = keys::Restrictions {
                no_pty: *no_pty,
                no_port_forwarding: *no_port_forwarding,
            };
            cert(env, name, pubkey, validity, from.as_deref(), restrict).await
        }
        VendorAction::Invite { name, ttl } => super::invite::run(env, name, ttl.as_deref()).await,
        VendorAction::Disable { name } => disable(env, name).await,
        VendorAction::List => list(env).await,
        VendorAction::Certs { name } => certs(env, name).await,
        VendorAction::RevokeCert { name, serial, .. } => {
            revoke_cert(env, name, serial.as_deref()).await
        }
        VendorAction::Update {
            name,
            org,
            contract_end,
        } => update(env, name, org.as_deref(), contract_end.as_deref()).await,
        VendorAction::Enable { name } => enable(env, name).await,
    }
}

/// `postern vendor update NAME [--org ORG] [--contract-end DATE|none]`.
async fn update(
    env: &Env,
    name: &str,
    org: Option<&str>,
    contract_end: Option<&str>,
) -> Result<()> {
    let end = match contract_end {
        None => None,
        Some("none") => Some(None),
        Some(t) => Some(Some(parse_time(t, now()).context("--contract-end")?)),
    };
    let change = env
        .actions()
        .update_vendor(&operator(), name, org, end)
        .await?;
    let v = &change.after;
    if env.json {
        println!(
            "{}",
            json!({"vendor": name, "org": v.org, "contract_end": v.contract_end.map(fmt_time)})
        );
    } else {
        let end = match v.contract_end {
            Some(t) => format!("contract ends {}; live sessions end then", fmt_time(t)),
            None => "no contract end".into(),
        };
        println!("vendor {name} ({}) updated: {end}", v.org);
    }
    Ok(())
}

/// `postern vendor enable NAME`.
async fn enable(env: &Env, name: &str) -> Result<()> {
    env.actions().enable_vendor(&operator(), name).await?;
    if env.json {
        println!("{}", json!({"vendor": name, "disabled": false}));
    } else {
        println!("vendor {name} enabled; the grants revoked when it was disabled stay revoked");
    }
    Ok(())
}

/// `postern vendor add NAME --org ORG`: the TOTP enrolment is shown once.
async fn add(env: &Env, name: &str, org: &str, contract_end: Option<&str>) -> Result<()> {
    let end = contract_end
        .map(|t| parse_time(t, now()))
        .transpose()
        .context("--contract-end")?;
    let secret = approvals::totp::new_secret();
    let uri = approvals::totp::otpauth_uri(&secret, name)?;
    env.actions()
        .add_vendor(&operator(), name, org, end, &secret, now())
        .await?;
    if env.json {
        println!("{}", json!({"vendor": name, "org": org, "otpauth": uri}));
    } else {
        println!("vendor {name} ({org}) added.");
        println!("TOTP enrolment (shown once; scan it in an authenticator app):\n{uri}\n");
        print_qr(&uri);
    }
    Ok(())
}

/// `postern vendor cert NAME PUBKEY`: a certificate next to the key, registered and audited.
async fn cert(
    env: &Env,
    name: &str,
    pubkey: &Path,
    validity: &str,
    from: Option<&str>,
    restrict: keys::Restrictions,
) -> Result<()> {
    let v = env
        .store
        .vendor(name)
        .await?
        .ok_or_else(|| anyhow!("no vendor named {name}"))?;
    if v.is_disabled() {
        bail!("vendor {name} is disabled");
    }
    let secs = parse_duration(validity).context("--validity")?;
    let start = match from {
        Some(t) => parse_time(t, now()).context("--from")?,
        None => now() - 60,
    };
    let (out, issued) =
        broker::enrol::issue_certificate(env, &operator(), name, pubkey, start, secs, restrict)
            .await?;
    // The effective window: the contract end may have cut it short.
    let (from, until) = (
        issued.cert.valid_after() as i64,
        issued.cert.valid_before() as i64,
    );
    let capped = until < start.saturating_add(secs);
    if env.json {
        println!(
            "{}",
            json!({"certificate": out, "serial": issued.serial.to_string(), "key_id": issued.key_id,
                   "valid_after": fmt_time(from), "valid_before": fmt_time(until), "capped_at_contract_end": capped})
        );
    } else {
        println!("{}", out.display());
        let why = if capped {
            " (capped at the contract end)"
        } else {
            ""
        };
        println!(
            "serial {}, valid from {} until {}{why}",
            issued.serial,
            fmt_time(from),
            fmt_time(until)
        );
    }
    Ok(())
}

/// `postern vendor certs NAME`.
async fn certs(env: &Env, name: &str) -> Result<()> {
    if env.store.vendor(name).await?.is_none() {
        bail!("no vendor named {name}");
    }
    let rows = env.store.certificates_of(name).await?;
    env.print_list(
        &rows,
        &["SERIAL", "KEY", "VALID FROM", "VALID UNTIL", "REVOKED"],
        |c| {
            vec![
                c.serial.clone(),
                c.key_fingerprint.clone(),
                fmt_time(c.valid_after),
                fmt_time(c.valid_before),
                if c.revoked {
                    "revoked".into()
                } else {
                    String::new()
                },
            ]
        },
    )?;
    Ok(())
}

/// `postern vendor revoke-cert NAME (--serial N | --all)`.
async fn revoke_cert(env: &Env, name: &str, serial: Option<&str>) -> Result<()> {
    let revoked = env
        .actions()
        .revoke_certificates(&operator(), name, serial)
        .await?;
    if env.json {
        println!("{}", json!({"vendor": name, "revoked": revoked}));
    } else {
        println!(
            "{} certificate(s) of vendor {name} revoked{}; refused at the next login on every node, live sessions on them close within a second",
            revoked.len(),
            if revoked.is_empty() {
                String::new()
            } else {
                format!(" ({})", revoked.join(", "))
            }
        );
    }
    Ok(())
}

/// `postern vendor disable NAME`: grants revoked, live sessions closed.
async fn disable(env: &Env, name: &str) -> Result<()> {
    let revoked = env
        .actions()
        .disable_vendor(&operator(), name, now())
        .await?;
    if env.json {
        println!(
            "{}",
            json!({"vendor": name, "disabled": true, "grants_revoked": revoked})
        );
    } else {
        println!(
            "vendor {name} disabled; {} grant(s) revoked; live sessions close within a second",
            revoked.len()
        );
    }
    Ok(())
}

/// `postern vendor list`.
async fn list(env: &Env) -> Result<()> {
    let rows = env.store.vendors().await?;
    env.print_list(&rows, &["VENDOR", "ORG", "CONTRACT END", "STATUS"], |v| {
        vec![
            v.name.clone(),
            v.org.clone(),
            opt_time(v.contract_end),
            if v.is_disabled() {
                "disabled".into()
            } else {
                "enabled".into()
            },
        ]
    })?;
    Ok(())
}

// ---- sites, devices, functions ----
