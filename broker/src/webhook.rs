//! Delivers the notification outbox to the configured webhook: JSON POSTs with a Slack-compatible
//! `text` field, retried with backoff. Runs beside the SSH front door and never in a session's
//! path: a slow or dead receiver only delays its own notifications.

use approvals::audit::AuditEvent;
use std::time::Duration;

use approvals::{AuditLog, Store};
use serde_json::json;
use tracing::{debug, warn};

/// How often the outbox is looked at.
const POLL: Duration = Duration::from_millis(500);

pub async fn deliver(
    store: Store,
    audit: AuditLog,
    url: String,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
) {
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .connect_timeout(Duration::from_secs(3))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("postern/", env!("CARGO_PKG_VERSION")))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %e, "webhook client could not be built; notifications stay queued");
            return;
        }
    };
    loop {
        tokio::time::sleep(POLL).await;
        let now_ms = chrono::Utc::now().timestamp_millis();
        let due = match store.due_notifications(now_ms, 20).await {
            Ok(d) => d,
            Err(e) => {
                debug!(error = %e, "outbox unavailable");
                continue;
            }
        };
        for n in due {
            if !store.claim_notification(&n, now_ms).await.unwrap_or(false) {
                continue; // another node has it
            }
            let attempts = n.attempts + 1;
            let result = client
                .post(&url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(n.payload.clone())
                .send()
                .await;
            let error = match result {
                Ok(r) if r.status().is_success() => None,
                Ok(r) => Some(format!("receiver answered {}", r.status())),
                Err(e) => Some(format!("{e}")),
            };
            let now_ms = chrono::Utc::now().timestamp_millis();
            match error {
                None => {
                    let _ = store.notification_delivered(&n.id, now_ms / 1000).await;
                }
                Some(err) => {
                    warn!(notification = %n.id, event = %n.event, attempts, error = %err, "webhook delivery failed");
                    metrics.notification_failed();
                    if store
                        .notification_failed(&n.id, attempts, &err, now_ms)
                        .await
                        .unwrap_or(false)
                    {
                        let _ = audit
                            .record_async(
                                AuditEvent::NotifyFailed,
                                json!({"notification": n.id, "event": n.event, "attempts": attempts, "error": err}),
                            )
                            .await;
                    }
                }
            }
        }
    }
}
