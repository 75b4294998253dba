//! `postern sessions`: sessions, live or past, and killing a live one.

use anyhow::Result;
use approvals::time::fmt_time;

use super::output::opt_time;
use super::{Env, operator};
use crate::args::*;

pub async fn run(env: &Env, live: bool, action: Option<&SessionsAction>) -> Result<()> {
    if let Some(SessionsAction::Kill { id }) = action {
        let s = env.actions().kill_session(&operator(), id).await?;
        println!("session {id} is being closed (node {})", s.node);
        return Ok(());
    }
    let rows = env.store.sessions(live).await?;
    env.print_list(
        &rows,
        &[
            "SESSION", "VENDOR", "TARGET", "FUNCTION", "STARTED", "ENDED", "REASON",
        ],
        |s| {
            vec![
                s.id.clone(),
                s.vendor.clone(),
                format!("{}/{}", s.site, s.device),
                s.function.clone(),
                fmt_time(s.started),
                opt_time(s.ended),
                s.end_reason.clone().unwrap_or_else(|| "live".into()),
            ]
        },
    )
}

// ---- evidence ----
