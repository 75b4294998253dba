//! `postern grant`: time-bound grants of a function at a site (or some devices) to a vendor.

use anyhow::{Context, Result};
use approvals::NewGrant;
use approvals::time::{fmt_time, now, parse_time};

use super::{Env, operator};
use crate::args::*;

pub async fn run(env: &Env, action: &GrantAction) -> Result<()> {
    match action {
        GrantAction::Add {
            vendor,
            site,
            function,
            from,
            until,
            reason,
            devices,
        } => {
            let t = now();
            let from = parse_time(from, t).context("--from")?;
            let until = parse_time(until, t).context("--until")?;
            let g = env
                .actions()
                .add_grant(
                    &operator(),
                    &NewGrant {
                        vendor: vendor.clone(),
                        site: site.clone(),
                        function: function.clone(),
                        valid_from: from,
                        valid_until: until,
                        granted_by: operator().tag().to_owned(),
                        reason: reason.clone(),
                        devices: devices.clone(),
                    },
                    t,
                )
                .await?;
            if env.json {
                println!("{}", serde_json::to_string(&g)?);
            } else {
                println!("{}", g.id);
            }
        }
        GrantAction::List => list(env).await?,
        GrantAction::Revoke { id } => {
            env.actions().revoke_grant(&operator(), id, now()).await?;
            println!("grant {id} revoked; live sessions under it close within a second");
        }
    }
    Ok(())
}

/// `postern grant list`, with each grant's state now.
async fn list(env: &Env) -> Result<()> {
    let rows = env.store.grants().await?;
    let t = now();
    env.print_list(
        &rows,
        &[
            "GRANT", "VENDOR", "SITE", "DEVICES", "FUNCTION", "FROM", "UNTIL", "STATE", "BY",
        ],
        |g| {
            let state = if g.revoked_at.is_some() {
                "revoked"
            } else if g.valid_until <= t {
                "ended"
            } else if g.valid_from > t {
                "future"
            } else {
                "active"
            };
            vec![
                g.id.clone(),
                g.vendor.clone(),
                g.site.clone(),
                if g.whole_site() {
                    "all devices".into()
                } else {
                    g.device_list().join(",")
                },
                g.function.clone(),
                fmt_time(g.valid_from),
                fmt_time(g.valid_until),
                state.into(),
                g.granted_by.clone(),
            ]
        },
    )
}
