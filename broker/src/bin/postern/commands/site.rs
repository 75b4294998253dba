//! `postern site`: add and list sites.

use anyhow::Result;
use approvals::store::Edge;
use approvals::time::{fmt_time, now};

use super::{Env, operator};
use crate::args::*;

pub async fn run(env: &Env, action: &SiteAction) -> Result<()> {
    match action {
        SiteAction::Add { site, region } => {
            env.actions()
                .add_site(&operator(), site, region.as_deref(), now())
                .await?;
            println!("site {site} added");
        }
        SiteAction::List => {
            let sites = env.store.sites().await?;
            let edges = env.store.edges().await?;
            let t = now();
            let rows: Vec<Listed<'_>> = sites
                .iter()
                .map(|s| {
                    let edge = edges.iter().find(|e| e.sites.contains(&s.name));
                    Listed {
                        site: s,
                        edge: edge.map(|e| e.name.clone()),
                        reached: reached(edge, t),
                    }
                })
                .collect();
            env.print_list(&rows, &["SITE", "REGION", "EDGE", "REACHED"], |l| {
                vec![
                    l.site.name.clone(),
                    l.site.region.clone().unwrap_or_else(|| "-".into()),
                    l.edge.clone().unwrap_or_else(|| "-".into()),
                    l.reached.clone(),
                ]
            })?;
        }
    }
    Ok(())
}

/// A site as listed: how the central reaches it now.
#[derive(serde::Serialize)]
struct Listed<'a> {
    #[serde(flatten)]
    site: &'a approvals::Site,
    edge: Option<String>,
    /// `direct`, `through its edge`, or `offline since TIME (its edge lost contact)`.
    reached: String,
}

fn reached(edge: Option<&Edge>, now: i64) -> String {
    match edge {
        None => "direct".into(),
        Some(e) => e
            .offline(now, fmt_time)
            .unwrap_or_else(|| "through its edge".into()),
    }
}
