//! `postern function`: the named maintenance functions and the channels each allows.

use std::time::Duration;

use anyhow::{Context, Result};
use approvals::ChannelSet;
use approvals::time::{now, parse_duration};

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
        }
        FunctionAction::List => {
            let rows = env.store.functions().await?;
            env.print_list(
                &rows,
                &["FUNCTION", "ALLOWS", "LOGIN", "MAX WINDOW", "EMERGENCY"],
                |f| {
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
                    ]
                },
            )?;
        }
    }
    Ok(())
}
