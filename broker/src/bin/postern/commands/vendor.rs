//! `postern vendor`: add vendors (with their TOTP enrolment), issue their certificates, disable them, list them.

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
        } => {
            let end = contract_end
                .as_deref()
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
        }
        VendorAction::Cert {
            name,
            pubkey,
            validity,
            from,
            no_pty,
            no_port_forwarding,
        } => {
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
            let restrict = keys::Restrictions {
                no_pty: *no_pty,
                no_port_forwarding: *no_port_forwarding,
            };
            let (out, issued) = broker::enrol::issue_certificate(
                env,
                &operator(),
                name,
                pubkey,
                start,
                secs,
                restrict,
            )
            .await?;
            if env.json {
                println!(
                    "{}",
                    json!({"certificate": out, "serial": issued.serial.to_string(), "key_id": issued.key_id, "valid_before": fmt_time(start + secs)})
                );
            } else {
                println!("{}", out.display());
            }
        }
        VendorAction::Disable { name } => {
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
        }
        VendorAction::List => {
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
        }
    }
    Ok(())
}

// ---- sites, devices, functions ----
