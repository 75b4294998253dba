//! `postern site`: add and list sites.

use anyhow::Result;
use approvals::time::now;

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
            let rows = env.store.sites().await?;
            env.print_list(&rows, &["SITE", "REGION"], |s| {
                vec![
                    s.name.clone(),
                    s.region.clone().unwrap_or_else(|| "-".into()),
                ]
            })?;
        }
    }
    Ok(())
}
