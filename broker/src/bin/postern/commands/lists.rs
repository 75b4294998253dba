//! Listings with no verb of their own: `postern notifications`, `postern breakglass`,
//! `postern checkpoints export`.

use anyhow::Result;
use approvals::time::fmt_time;

use super::Env;

/// `postern notifications`: the webhook outbox and how each delivery went.
pub async fn notifications(env: &Env) -> Result<()> {
    let rows = env.store.notifications().await?;
    env.print_list(
        &rows,
        &[
            "NOTIFICATION",
            "EVENT",
            "FILED",
            "STATUS",
            "ATTEMPTS",
            "LAST ERROR",
        ],
        |n| {
            vec![
                n.id.clone(),
                n.event.clone(),
                fmt_time(n.created),
                if n.delivered_at.is_some() {
                    "delivered".into()
                } else if n.failed_at.is_some() {
                    "given up".into()
                } else if n.attempts > 0 {
                    "retrying".into()
                } else {
                    "queued".into()
                },
                n.attempts.to_string(),
                n.last_error.clone().unwrap_or_default(),
            ]
        },
    )
}

/// `postern breakglass`: break-glass openings and their review.
pub async fn breakglass(env: &Env) -> Result<()> {
    let rows = env.store.breakglass_list(false).await?;
    env.print_list(
        &rows,
        &[
            "BREAK-GLASS",
            "VENDOR",
            "ORG",
            "TARGET",
            "FUNCTION",
            "OPENED",
            "REVIEW",
            "REASON",
        ],
        |b| {
            vec![
                b.id.clone(),
                b.vendor.clone(),
                b.org.clone(),
                format!("{}/{}", b.site, b.device),
                b.function.clone(),
                fmt_time(b.opened),
                b.reviewed_by
                    .as_ref()
                    .map(|r| format!("reviewed by {r}"))
                    .unwrap_or_else(|| "WAITING".into()),
                b.reason.clone(),
            ]
        },
    )
}

/// `postern checkpoints export`: the database's checkpoints as JSON lines, to keep off the host.
pub async fn checkpoints(env: &Env, node: Option<&str>) -> Result<()> {
    for cp in env.store.checkpoints(node).await? {
        println!("{}", serde_json::to_string(&cp)?);
    }
    Ok(())
}

/// `postern exceptions`: access outside the just-in-time path, oldest first.
pub async fn exceptions(env: &Env, site: Option<&str>) -> Result<()> {
    let thresholds = env.cfg.limits()?.exceptions();
    let now = approvals::time::now();
    let rows = env.store.exceptions(thresholds, now, site).await?;
    env.print_list(
        &rows,
        &[
            "KIND", "SITE", "SUBJECT", "OPENED", "AGE", "OWNERS", "DETAIL",
        ],
        |e| {
            vec![
                e.kind.as_str().into(),
                e.site.clone(),
                e.subject.clone(),
                fmt_time(e.opened),
                super::device_rotate::age(now - e.opened),
                if e.owners.is_empty() {
                    "(nobody)".into()
                } else {
                    e.owners.join(",")
                },
                e.detail.clone(),
            ]
        },
    )
}
