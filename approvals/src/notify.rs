//! Notifications: events approvers and operators want pushed to them (a request filed, granted or
//! denied, break-glass opened, a session terminated, a vendor disabled).
//!
//! Whoever makes the change writes the notification to an outbox table; the serving nodes deliver
//! it to the configured webhook with retries and backoff. Filing never waits on the receiver, so a
//! slow or dead receiver cannot hold up a session, and a notification outlives a restart.

use serde::Serialize;
use serde_json::{Value, json};
use tracing::warn;

use crate::approvers::AccessRequestRow;
use crate::model::{Grant, Session};
use crate::store::{Store, StoreError, Tx, new_id};
use crate::time::fmt_time;

type Result<T> = std::result::Result<T, StoreError>;

/// Delivery attempts before a notification is given up (backoff doubles from 1 s, capped at 5 min:
/// about 25 minutes in all).
pub const MAX_ATTEMPTS: i64 = 10;

/// How long one node holds a notification it is delivering before another node may try it.
const LEASE_MS: i64 = 30_000;

/// The events that are notified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    RequestFiled,
    RequestGranted,
    RequestDenied,
    /// A request waited past `approval_slo`: the escalation approvers are named.
    RequestEscalated,
    /// A request waited past `request_ttl` and was closed undecided.
    RequestExpired,
    BreakGlassOpened,
    SessionTerminated,
    VendorDisabled,
    /// A signed checkpoint of a node's audit log, shipped off the host (the body carries it).
    Checkpoint,
}

impl Event {
    pub fn name(self) -> &'static str {
        match self {
            Event::RequestFiled => "request.filed",
            Event::RequestGranted => "request.granted",
            Event::RequestDenied => "request.denied",
            Event::RequestEscalated => "request.escalated",
            Event::RequestExpired => "request.expired",
            Event::BreakGlassOpened => "breakglass.opened",
            Event::SessionTerminated => "session.terminated",
            Event::VendorDisabled => "vendor.disabled",
            Event::Checkpoint => "checkpoint",
        }
    }
}

/// A notification waiting in the outbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct Notification {
    pub id: String,
    pub event: String,
    /// The JSON body that is POSTed.
    pub payload: String,
    pub created: i64,
    pub attempts: i64,
    pub next_attempt_ms: i64,
    pub delivered_at: Option<i64>,
    pub failed_at: Option<i64>,
    pub last_error: Option<String>,
}

/// One notification about to be filed: its event, the human sentence (Slack shows the `text`
/// field) and the details.
#[derive(Debug, Clone)]
pub struct Message {
    pub event: Event,
    pub text: String,
    pub fields: Value,
}

impl Message {
    pub fn new(event: Event, text: String, fields: Value) -> Message {
        Message {
            event,
            text,
            fields,
        }
    }

    /// The JSON body that is POSTed.
    fn body(&self, now: chrono::DateTime<chrono::Utc>) -> String {
        let mut body = json!({
            "text": format!("postern: {}", self.text),
            "event": self.event.name(),
            "time": now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        });
        if let (Some(b), Value::Object(f)) = (body.as_object_mut(), &self.fields) {
            for (k, v) in f {
                b.entry(k.clone()).or_insert(v.clone());
            }
        }
        body.to_string()
    }

    /// A request was approved (from the CLI or the web form alike).
    pub fn request_granted(req: &AccessRequestRow, grant: &Grant, by: &str) -> Message {
        let text = format!(
            "{by} granted {} {} at {}/{} until {} (request {})",
            req.vendor,
            req.function,
            req.site,
            req.device,
            fmt_time(grant.valid_until),
            req.id
        );
        let fields = json!({"request": req.id, "vendor": req.vendor, "site": req.site, "device": req.device, "function": req.function,
                            "grant": grant.id, "until": grant.valid_until, "approver": by, "latency": req.latency()});
        Message::new(Event::RequestGranted, text, fields)
    }

    /// A request was denied, with the reason the vendor sees.
    pub fn request_denied(req: &AccessRequestRow, by: &str, reason: &str) -> Message {
        let text = format!(
            "{by} denied {}'s request {} for {} at {}/{}: {reason}",
            req.vendor, req.id, req.function, req.site, req.device
        );
        let fields = json!({"request": req.id, "vendor": req.vendor, "site": req.site, "device": req.device, "function": req.function,
                            "approver": by, "reason": reason, "latency": req.latency()});
        Message::new(Event::RequestDenied, text, fields)
    }

    /// Someone asked for a live session to be closed.
    pub fn session_terminated(s: &Session, by: &str) -> Message {
        let text = format!(
            "{by} terminated {}'s session {} at {}/{}",
            s.vendor, s.id, s.site, s.device
        );
        let fields = json!({"session": s.id, "vendor": s.vendor, "site": s.site, "device": s.device, "by": by});
        Message::new(Event::SessionTerminated, text, fields)
    }

    /// A vendor was disabled: their grants revoked, their live sessions closing.
    pub fn vendor_disabled(vendor: &str, by: &str, revoked: &[String]) -> Message {
        let text = format!(
            "vendor {vendor} was disabled by {by}; {} grant(s) revoked and live sessions closed",
            revoked.len()
        );
        let fields = json!({"vendor": vendor, "by": by, "grants_revoked": revoked});
        Message::new(Event::VendorDisabled, text, fields)
    }
}

/// Files notifications when a webhook is configured; does nothing otherwise.
#[derive(Clone, Debug)]
pub struct Notifier {
    store: Store,
    enabled: bool,
}

impl Notifier {
    pub fn new(store: Store, enabled: bool) -> Notifier {
        Notifier { store, enabled }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Files one notification on its own. `text` is the human sentence; `fields` carry the
    /// details. A failure is logged, never returned: the change it reports has already happened
    /// and must not be undone for want of a message. Operator actions use [`Notifier::file_in`].
    pub async fn notify(&self, event: Event, text: &str, fields: Value) {
        if !self.enabled {
            return;
        }
        let now = chrono::Utc::now();
        let body = Message::new(event, text.to_owned(), fields).body(now);
        if let Err(e) = self
            .store
            .enqueue_notification(event.name(), &body, now.timestamp_millis())
            .await
        {
            warn!(error = %e, event = event.name(), "could not file notification");
        }
    }

    /// Files a notification inside the transaction that makes the change it reports, so the
    /// notification exists exactly when the change does. An error here aborts the change.
    pub async fn file_in(&self, tx: &mut Tx, m: &Message) -> Result<()> {
        if !self.enabled {
            return Ok(());
        }
        let now = chrono::Utc::now();
        self.store
            .enqueue_notification_in(tx, m.event.name(), &m.body(now), now.timestamp_millis())
            .await
    }
}

/// Delay before the attempt after `attempts` failed ones.
pub fn backoff_ms(attempts: i64) -> i64 {
    let exp = attempts.clamp(0, 20) as u32;
    (1000i64 << exp).min(300_000)
}

impl Store {
    pub async fn enqueue_notification(
        &self,
        event: &str,
        payload: &str,
        now_ms: i64,
    ) -> Result<()> {
        let mut tx = self.begin().await?;
        self.enqueue_notification_in(&mut tx, event, payload, now_ms)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// [`Store::enqueue_notification`] inside the caller's transaction.
    pub async fn enqueue_notification_in(
        &self,
        tx: &mut Tx,
        event: &str,
        payload: &str,
        now_ms: i64,
    ) -> Result<()> {
        sqlx::query("INSERT INTO notifications (id, event, payload, created, attempts, next_attempt_ms) VALUES ($1, $2, $3, $4, 0, $5)")
            .bind(new_id("n"))
            .bind(event)
            .bind(payload)
            .bind(now_ms / 1000)
            .bind(now_ms)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    /// Notifications due for an attempt, oldest first.
    pub async fn due_notifications(&self, now_ms: i64, limit: i64) -> Result<Vec<Notification>> {
        Ok(sqlx::query_as::<_, Notification>(
            "SELECT * FROM notifications WHERE delivered_at IS NULL AND failed_at IS NULL AND next_attempt_ms <= $1 ORDER BY next_attempt_ms, id LIMIT $2",
        )
        .bind(now_ms)
        .bind(limit)
        .fetch_all(self.pool())
        .await?)
    }

    /// Takes a due notification for delivery by this node; false if another node took it first.
    pub async fn claim_notification(&self, n: &Notification, now_ms: i64) -> Result<bool> {
        let rows = sqlx::query("UPDATE notifications SET attempts = attempts + 1, next_attempt_ms = $1 WHERE id = $2 AND attempts = $3 AND next_attempt_ms = $4 AND delivered_at IS NULL AND failed_at IS NULL")
            .bind(now_ms + LEASE_MS)
            .bind(&n.id)
            .bind(n.attempts)
            .bind(n.next_attempt_ms)
            .execute(self.pool())
            .await?
            .rows_affected();
        Ok(rows == 1)
    }

    pub async fn notification_delivered(&self, id: &str, now: i64) -> Result<()> {
        sqlx::query("UPDATE notifications SET delivered_at = $1, last_error = NULL WHERE id = $2")
            .bind(now)
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// Records a failed attempt: retried after the backoff, or given up after [`MAX_ATTEMPTS`].
    /// Returns true when it was given up.
    pub async fn notification_failed(
        &self,
        id: &str,
        attempts: i64,
        error: &str,
        now_ms: i64,
    ) -> Result<bool> {
        let give_up = attempts >= MAX_ATTEMPTS;
        sqlx::query("UPDATE notifications SET next_attempt_ms = $1, last_error = $2, failed_at = $3 WHERE id = $4")
            .bind(now_ms + backoff_ms(attempts - 1))
            .bind(error)
            .bind(give_up.then_some(now_ms / 1000))
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(give_up)
    }

    /// All notifications, newest first (for operators checking delivery).
    pub async fn notifications(&self) -> Result<Vec<Notification>> {
        Ok(sqlx::query_as::<_, Notification>(
            "SELECT * FROM notifications ORDER BY created DESC, id",
        )
        .fetch_all(self.pool())
        .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        assert_eq!(backoff_ms(0), 1000);
        assert_eq!(backoff_ms(1), 2000);
        assert_eq!(backoff_ms(3), 8000);
        assert_eq!(backoff_ms(9), 300_000);
        assert_eq!(backoff_ms(-5), 1000);
        assert_eq!(backoff_ms(i64::MAX), 300_000);
    }
}
