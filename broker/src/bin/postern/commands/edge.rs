//! `postern edge`: at the central, `add` (registration and its one-time join token), `list` and
//! `revoke`; at the site, `join` and `run` (`broker::edge::agent`).

use std::process::ExitCode;

use anyhow::{Context, Result};
use approvals::store::{Edge, NewEdge};
use approvals::time::{fmt_time, now, parse_duration};
use broker::edge::ca::EdgeCa;
use broker::edge::token::JoinToken;
use serde::Serialize;

use super::{Env, operator};
use crate::args::*;

pub async fn run(env: &Env, action: &EdgeAction) -> Result<()> {
    match action {
        EdgeAction::Add {
            name,
            sites,
            region,
            ttl,
            token_ttl,
        } => add(env, name, sites, region.as_deref(), ttl, token_ttl).await,
        EdgeAction::List => list(env).await,
        EdgeAction::Revoke { name } => {
            env.actions()
                .revoke_edge(&operator(), name, now())
                .await
                .with_context(|| format!("edge {name} not revoked"))?;
            println!("edge {name} revoked: its certificate is refused and its link is closed");
            Ok(())
        }
        EdgeAction::Join { .. } | EdgeAction::Run { .. } => {
            anyhow::bail!("`edge join` and `edge run` run at the site, without a central data dir")
        }
    }
}

async fn add(
    env: &Env,
    name: &str,
    sites: &[String],
    region: Option<&str>,
    ttl: &str,
    token_ttl: &str,
) -> Result<()> {
    let ttl = parse_duration(ttl).context("--ttl")?;
    let token_ttl = parse_duration(token_ttl).context("--token-ttl")?;
    anyhow::ensure!(ttl >= 300, "--ttl must be at least 5m");
    let ca = EdgeCa::load_or_create(&env.node.data.keys())?;
    let token = JoinToken::new(name, &ca.pin()?);
    let sites: Vec<String> = sites.iter().map(|s| s.trim().to_owned()).collect();
    let hash = JoinToken::secret_hash(&token.secret);
    let t = now();
    let edge = NewEdge {
        name,
        region,
        sites: &sites,
        token_hash: &hash,
        token_expires: t + token_ttl,
        ttl,
    };
    env.actions()
        .add_edge(&operator(), &edge, t)
        .await
        .with_context(|| format!("edge {name} not added"))?;
    if env.json {
        let out = serde_json::json!({"edge": name, "sites": sites, "token": token.to_string(),
            "token_expires": t + token_ttl});
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!("edge {name} added for sites {}", sites.join(","));
        println!(
            "join token (works once, until {}):",
            fmt_time(t + token_ttl)
        );
        println!("{token}");
        println!("at the site: postern edge join --central HOST:PORT --token TOKEN --data DIR");
    }
    Ok(())
}

/// An edge as listed: its row and whether it is online now.
#[derive(Serialize)]
struct Listed<'a> {
    #[serde(flatten)]
    edge: &'a Edge,
    online: bool,
}

/// Evidence waiting at the edge, as it last reported.
fn buffered(e: &Edge) -> String {
    match (e.buffered_sessions, e.buffered_bytes) {
        (Some(0), _) => "none".into(),
        (Some(n), Some(b)) => format!("{n} sessions, {:.1} MiB", b as f64 / 1_048_576.0),
        _ => "-".into(),
    }
}

/// The policy bundle: its version and age, and whether the edge holds it.
fn policy(e: &Edge, now: i64) -> String {
    if e.policy_version == 0 {
        return "-".into();
    }
    let age = super::device_rotate::age(now - e.policy_issued.unwrap_or(now));
    match e.policy_acked {
        Some(v) if v == e.policy_version => format!("v{v} ({age} old)"),
        Some(v) => format!("v{} ({age} old; edge holds v{v})", e.policy_version),
        None => format!("v{} ({age} old; not yet held)", e.policy_version),
    }
}

fn state(l: &Listed<'_>) -> String {
    match (&l.edge.revoked, l.online) {
        (Some(t), _) => format!("revoked {}", fmt_time(*t)),
        (None, true) => format!(
            "online since {}",
            l.edge.connected_since.map(fmt_time).unwrap_or_default()
        ),
        (None, false) => match l.edge.last_seen {
            Some(t) => format!("offline since {}", fmt_time(t)),
            None => "never connected".into(),
        },
    }
}

async fn list(env: &Env) -> Result<()> {
    let edges = env.store.edges().await?;
    let t = now();
    let rows: Vec<Listed<'_>> = edges
        .iter()
        .map(|e| Listed {
            online: e.revoked.is_none() && e.online(t),
            edge: e,
        })
        .collect();
    env.print_list(
        &rows,
        &[
            "EDGE",
            "SITES",
            "REGION",
            "STATE",
            "ADDRESS",
            "NODE",
            "CERT UNTIL",
            "POLICY",
            "BUFFERED",
        ],
        |l| {
            vec![
                l.edge.name.clone(),
                l.edge.sites.join(","),
                l.edge.region.clone().unwrap_or_else(|| "-".into()),
                state(l),
                l.edge.remote_addr.clone().unwrap_or_else(|| "-".into()),
                l.edge.node.clone().unwrap_or_else(|| "-".into()),
                l.edge
                    .cert_not_after
                    .map(fmt_time)
                    .unwrap_or_else(|| "(not joined)".into()),
                policy(l.edge, t),
                buffered(l.edge),
            ]
        },
    )
}

/// `edge join` and `edge run`, at the site (DATA is the edge's own directory).
pub async fn at_site(cli: &Cli, action: &EdgeAction) -> Result<ExitCode> {
    match action {
        EdgeAction::Join { central, token } => {
            let joined = broker::edge::join::join(central, token, &cli.data).await?;
            // The site node for the edge's own front door (`edge run --ssh-listen`).
            broker::edge::site::prepare(&cli.data, &joined.edge).await?;
            println!(
                "edge {} joined {}; certificate until {}; now run: postern edge run --data {}",
                joined.edge,
                joined.central,
                fmt_time(joined.not_after),
                cli.data.display()
            );
        }
        EdgeAction::Run {
            ssh_listen: Some(addr),
            buffer_max,
        } => broker::edge::agent::run_at_site(&cli.data, addr, *buffer_max).await?,
        EdgeAction::Run {
            ssh_listen: None, ..
        } => broker::edge::agent::run(&cli.data).await?,
        _ => {}
    }
    Ok(ExitCode::SUCCESS)
}
