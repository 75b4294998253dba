//! `postern request`: access requests vendors filed, and deciding them from the CLI.

use std::time::Duration;

use anyhow::{Context, Result};
use approvals::time::{fmt_time, now, parse_time};

use super::Env;
use crate::args::*;

/// A request as listed: with whether it is overdue (escalated and still pending).
#[derive(serde::Serialize)]
struct Listed {
    #[serde(flatten)]
    row: approvals::AccessRequestRow,
    overdue: bool,
}

pub async fn run(env: &Env, action: &RequestAction) -> Result<()> {
    match action {
        RequestAction::List { status } => {
            let rows = match status.as_deref().map(str::parse) {
                Some(Err(_)) => Vec::new(), // no request is in a state that does not exist
                known => env.store.requests(known.and_then(Result::ok)).await?,
            };
            let rows: Vec<Listed> = rows
                .into_iter()
                .map(|row| Listed {
                    overdue: row.overdue(),
                    row,
                })
                .collect();
            env.print_list(
                &rows,
                &[
                    "REQUEST", "VENDOR", "TARGET", "FUNCTION", "ASKED", "STATUS", "LATENCY",
                    "REASON",
                ],
                |Listed { row: r, overdue }| {
                    vec![
                        r.id.clone(),
                        r.vendor.clone(),
                        format!("{}/{}", r.site, r.device),
                        r.function.clone(),
                        humantime::format_duration(Duration::from_secs(r.duration.max(0) as u64))
                            .to_string(),
                        if *overdue {
                            "pending, OVERDUE".to_owned()
                        } else {
                            r.status.to_string()
                        },
                        r.latency()
                            .map(|l| format!("{l}s"))
                            .unwrap_or_else(|| "-".into()),
                        r.reason.clone(),
                    ]
                },
            )?;
        }
        RequestAction::Approve {
            id,
            from,
            until,
            as_approver,
        } => {
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
                .approve_request(&decider(as_approver.as_deref()), id, from, until, t)
                .await?;
            println!(
                "request {id} approved: grant {} until {}",
                grant.id,
                fmt_time(grant.valid_until)
            );
        }
        RequestAction::Deny {
            id,
            reason,
            as_approver,
        } => {
            env.actions()
                .deny_request(&decider(as_approver.as_deref()), id, reason, now())
                .await?;
            println!("request {id} denied");
        }
    }
    Ok(())
}

/// Who decides: the operator, or with `--as` the approver (whose coverage is then checked) on
/// the operator's behalf.
fn decider(as_approver: Option<&str>) -> approvals::Actor {
    let user = broker::sys::login_name();
    match as_approver {
        Some(a) => approvals::Actor::operator_as(&user, a),
        None => approvals::Actor::operator(&user),
    }
}
