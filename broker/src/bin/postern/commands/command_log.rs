//! `postern commands`: search the command log across sessions.

use anyhow::{Context, Result, anyhow};
use approvals::time::{fmt_time, now, parse_time};

use super::Env;

/// Which commands to show (each `None` matches everything).
#[derive(Clone, Copy)]
pub struct Filter<'a> {
    pub vendor: Option<&'a str>,
    pub site: Option<&'a str>,
    pub device: Option<&'a str>,
    pub since: Option<&'a str>,
    pub grep: Option<&'a str>,
}

pub async fn run(env: &Env, filter: &Filter<'_>) -> Result<()> {
    let Filter {
        vendor,
        site,
        device,
        since,
        grep,
    } = *filter;
    let since_us = since
        .map(|t| parse_time(t, now()).map(|s| s * 1_000_000))
        .transpose()
        .context("--since")?;
    let pattern = grep
        .map(regex::Regex::new)
        .transpose()
        .map_err(|e| anyhow!("--grep: {e}"))?;
    let rows: Vec<approvals::CommandRow> = env
        .store
        .commands(vendor, site, device, since_us)
        .await?
        .into_iter()
        .filter(|r| pattern.as_ref().is_none_or(|p| p.is_match(&r.command)))
        .collect();
    env.print_list(
        &rows,
        &[
            "TIME", "SESSION", "AT", "VENDOR", "TARGET", "KIND", "COMMAND",
        ],
        |r| {
            vec![
                fmt_time(r.time_us / 1_000_000),
                r.session.clone(),
                format!("{:.1}", r.offset_ms as f64 / 1000.0),
                r.vendor.clone(),
                format!("{}/{}", r.site, r.device),
                r.kind.clone(),
                // Control characters would act on the auditor's terminal: show them escaped.
                r.command
                    .chars()
                    .flat_map(|c| {
                        if c.is_control() {
                            c.escape_default().collect::<Vec<_>>()
                        } else {
                            vec![c]
                        }
                    })
                    .collect(),
            ]
        },
    )?;
    if !env.json && !rows.is_empty() {
        println!(
            "(replay from a command: postern replay SESSION --at AT; add --input for the keys)"
        );
        if rows
            .iter()
            .any(|r| matches!(r.kind.as_str(), "input" | "unreconstructed" | "secret"))
        {
            // Kinds that come from keystrokes rather than the screen: say what each means.
            println!(
                "(input: rebuilt from the keys, the screen did not show it; unreconstructed: raw keys, escaped; secret: typed at a password prompt, withheld)"
            );
        }
    }
    Ok(())
}
