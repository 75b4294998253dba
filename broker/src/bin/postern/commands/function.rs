//! `postern function`: the named maintenance functions and the channels each allows.

use std::time::Duration;

use anyhow::{Context, Result};
use approvals::ChannelSet;
use approvals::time::{fmt_time, now, parse_duration};
use serde_json::json;

use super::{Env, operator};
use crate::args::*;

pub async fn run(env: &Env, action: &FunctionAction) -> Result<()> {
    match action {
        FunctionAction::Add {
            name,
            allow,
            login,
            max_window,
            emergency,
            orgs,
            rotate_after_session,
            offline_ok,
        } => {
            let set = ChannelSet::parse(allow).context("--allow")?;
            let max = parse_duration(max_window).context("--max-window")?;
            let orgs: Vec<String> = orgs
                .iter()
                .map(|o| o.trim().to_owned())
                .filter(|o| !o.is_empty())
                .collect();
            env.actions()
                .add_function(
                    &operator(),
                    name,
                    &set,
                    login.as_deref(),
                    max,
                    emergency.then_some(orgs.as_slice()),
                    now(),
                )
                .await?;
            println!("function {name} added (allows {set})");
            if *rotate_after_session {
                rotate_after_session_set(env, name, true).await?;
            }
            if *offline_ok {
                offline_ok_set(env, name, true).await?;
            }
        }
        FunctionAction::Update {
            name,
            allow,
            max_window,
            rotate_after_session,
            offline_ok,
        } => {
            if allow.is_some() || max_window.is_some() {
                update(env, name, allow.as_deref(), max_window.as_deref()).await?;
            }
            if let Some(on) = rotate_after_session {
                rotate_after_session_set(env, name, *on).await?;
            }
            if let Some(on) = offline_ok {
                offline_ok_set(env, name, *on).await?;
            }
        }
        FunctionAction::List => {
            let rotating = env.store.functions_rotating_after_session().await?;
            let functions = env.store.functions().await?;
            let rows: Vec<Listed<'_>> = functions
                .iter()
                .map(|f| Listed {
                    rotate_after_session: rotating.contains(&f.name),
                    f,
                })
                .collect();
            env.print_list(
                &rows,
                &[
                    "FUNCTION",
                    "ALLOWS",
                    "LOGIN",
                    "MAX WINDOW",
                    "EMERGENCY",
                    "ROTATE AFTER SESSION",
                ],
                |l| {
                    let f = l.f;
                    vec![
                        f.name.clone(),
                        f.allow.clone(),
                        f.login.clone().unwrap_or_else(|| "(device)".into()),
                        humantime::format_duration(Duration::from_secs(f.max_window.max(0) as u64))
                            .to_string(),
                        if f.emergency {
                            format!("yes: {}", f.emergency_orgs)
                        } else {
                            "no".into()
                        },
                        if l.rotate_after_session { "yes" } else { "no" }.into(),
                    ]
                },
            )?;
        }
    }
    Ok(())
}

/// A function as listed: its row and whether its sessions end with a rotation.
#[derive(serde::Serialize)]
struct Listed<'a> {
    #[serde(flatten)]
    f: &'a approvals::Function,
    rotate_after_session: bool,
}

/// `--offline-ok`: its own audited action (`function.offline_ok`).
async fn offline_ok_set(env: &Env, name: &str, on: bool) -> Result<()> {
    env.actions()
        .set_function_offline_ok(&operator(), name, on)
        .await
        .with_context(|| format!("function {name}: --offline-ok not changed"))?;
    if on {
        println!("function {name}: edges past their offline grace still open it (break-glass)");
    } else {
        println!("function {name}: not opened at edges past their offline grace");
    }
    Ok(())
}

/// `--rotate-after-session`: its own audited action (`function.rotation`).
async fn rotate_after_session_set(env: &Env, name: &str, on: bool) -> Result<()> {
    env.actions()
        .set_function_rotate_after_session(&operator(), name, on)
        .await
        .with_context(|| format!("function {name}: --rotate-after-session not changed"))?;
    if on {
        println!("function {name}: the device's credential is rotated after every session");
    } else {
        println!("function {name}: no rotation after sessions");
    }
    Ok(())
}

/// `postern function update NAME [--allow ...] [--max-window ...]`.
async fn update(
    env: &Env,
    name: &str,
    allow: Option<&str>,
    max_window: Option<&str>,
) -> Result<()> {
    let set = allow
        .map(ChannelSet::parse)
        .transpose()
        .context("--allow")?;
    let max = max_window
        .map(parse_duration)
        .transpose()
        .context("--max-window")?;
    let change = env
        .actions()
        .update_function(&operator(), name, set.as_ref(), max, now())
        .await?;
    let f = &change.function;
    if env.json {
        let cut: Vec<_> = change
            .cut
            .iter()
            .map(|c| json!({"grant": c.grant.id, "until": fmt_time(c.grant.valid_until), "was": fmt_time(c.was)}))
            .collect();
        println!(
            "{}",
            json!({"function": name, "allow": f.allow, "max_window": f.max_window, "grants_cut": cut})
        );
        return Ok(());
    }
    let window = humantime::format_duration(Duration::from_secs(f.max_window.max(0) as u64));
    println!(
        "function {name} updated (allows {}, at most {window}); live sessions follow within a second",
        f.allow
    );
    for c in &change.cut {
        println!(
            "grant {} ({} at {}) cut to end {} (was {})",
            c.grant.id,
            c.grant.vendor,
            c.grant.site,
            fmt_time(c.grant.valid_until),
            fmt_time(c.was)
        );
    }
    Ok(())
}
