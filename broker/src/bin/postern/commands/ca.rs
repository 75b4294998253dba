//! `postern ca`: the vendor CAs every node sharing the database trusts (list, rotate, retire).

use anyhow::Result;
use approvals::time::fmt_time;
use broker::vendor_ca;
use serde_json::json;

use super::output::opt_time;
use super::{Env, operator};
use crate::args::CaAction;

pub async fn run(env: &Env, action: &CaAction) -> Result<()> {
    match action {
        CaAction::List => list(env).await,
        CaAction::Rotate => rotate(env).await,
        CaAction::Retire { fingerprint } => retire(env, fingerprint).await,
    }
}

/// `postern ca list`.
async fn list(env: &Env) -> Result<()> {
    let rows = vendor_ca::list(env).await?;
    env.print_list(
        &rows,
        &["FINGERPRINT", "NODE", "SINCE", "RETIRED", "SIGNS HERE"],
        |c| {
            vec![
                c.fingerprint.clone(),
                c.node.clone(),
                fmt_time(c.created),
                opt_time(c.retired),
                if c.signing {
                    "yes".into()
                } else {
                    String::new()
                },
            ]
        },
    )
}

/// `postern ca rotate`.
async fn rotate(env: &Env) -> Result<()> {
    let (new, previous) = vendor_ca::rotate(env, &operator()).await?;
    if env.json {
        println!(
            "{}",
            json!({"ca": new, "previous": previous, "node": env.cfg.node})
        );
    } else {
        println!(
            "vendor CA {new} signs certificates on node {} from now on",
            env.cfg.node
        );
        if let Some(old) = previous {
            println!(
                "{old} stays trusted until `postern ca retire {old}` (which revokes the certificates it signed)"
            );
        }
    }
    Ok(())
}

/// `postern ca retire FINGERPRINT`.
async fn retire(env: &Env, fingerprint: &str) -> Result<()> {
    let revoked = vendor_ca::retire(env, &operator(), fingerprint).await?;
    if env.json {
        println!(
            "{}",
            json!({"ca": fingerprint, "retired": true, "certificates_revoked": revoked})
        );
    } else {
        println!(
            "vendor CA {fingerprint} retired on every node; {} certificate(s) revoked; live sessions on them close within a second",
            revoked.len()
        );
    }
    Ok(())
}
