//! `postern request`: access requests vendors filed, and deciding them from the CLI.

use std::time::Duration;

use anyhow::{Context, Result};
use approvals::time::{fmt_time, now, parse_time};

use super::{Env, operator};
use crate::args::*;

pub async fn run(env: &Env, action: &RequestAction) -> Result<()> {
    match action {
        RequestAction::List { status } => {
            let rows = match status.as_deref().map(str::parse) {
                Some(Err(_)) => Vec::new(), // no request is in a state that does not exist
                known => env.store.requests(known.and_then(Result::ok)).await?,
            };
            env.print_list(
                &rows,
                &[
                    "REQUEST", "VENDOR", "TARGET", "FUNCTION", "ASKED", "STATUS", "LATENCY",
                    "REASON",
                ],
                |r| {
                    vec![
                        r.id.clone(),
                        r.vendor.clone(),
                        format!("{}/{}", r.site, r.device),
                        r.function.clone(),
                        humantime::format_duration(Duration::from_secs(r.duration.max(0) as u64))
                            .to_string(),
                        r.status.to_string(),
                        r.latency()
                            .map(|l| format!("{l}s"))
                            .unwrap_or_else(|| "-".into()),
                        r.reason.clone(),
                    ]
                },
            )?;
        }
        RequestAction::Approve { id, from, until } => {
            let t = now();
            let from = from
                .as_deref()
                .map(|f| parse_time(f, t))
                .transpose()
                .context("--from")?
                .unwrap_or(t);
            let until = until
                .as_deref()
                .map(|u| parse_time(u, t))
                .transpose()
                .context("--until")?;
            let (_, grant) = env
                .actions()
                .approve_request(&operator(), id, from, until, t)
                .await?;
            println!(
                "request {id} approved: grant {} until {}",
                grant.id,
                fmt_time(grant.valid_until)
            );
        }
        RequestAction::Deny { id, reason } => {
            env.actions()
                .deny_request(&operator(), id, reason, now())
                .await?;
            println!("request {id} denied");
        }
    }
    Ok(())
}
