//! Measured durations behind the operator's SLOs (table `slo_samples`): what `postern report`
//! and the metrics endpoint's histograms read. A measurement is not evidence: losing one to a
//! database outage loses a figure, never an action.

use serde::Serialize;

use super::{Result, Store};

/// What a sample measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SloKind {
    /// A certificate request (`vendor cert`, enrolment, renewal) to its certificate registered.
    CertificateIssuance,
    /// A revoking change committed to the live session it ended closed.
    RevocationPropagation,
    /// A policy change committed to a site edge holding the bundle that carries it.
    EdgePropagation,
}

impl SloKind {
    pub const ALL: [SloKind; 3] = [
        SloKind::CertificateIssuance,
        SloKind::RevocationPropagation,
        SloKind::EdgePropagation,
    ];

    /// The name in the table, listings and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            SloKind::CertificateIssuance => "certificate_issuance",
            SloKind::RevocationPropagation => "revocation_propagation",
            SloKind::EdgePropagation => "edge_propagation",
        }
    }
}

/// One measurement.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct SloSample {
    /// When the measurement finished (Unix milliseconds).
    pub at_ms: i64,
    pub millis: i64,
    pub subject: String,
}

/// Samples read per query: a backlog is caught up over several refreshes, not in one.
pub const SAMPLES_PER_READ: i64 = 10_000;

impl Store {
    /// Records one measurement (`millis` is clamped at zero: clocks of two nodes may disagree).
    pub async fn record_sample(
        &self,
        kind: SloKind,
        at_ms: i64,
        millis: i64,
        subject: &str,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO slo_samples (kind, at_ms, millis, subject) VALUES ($1, $2, $3, $4)",
        )
        .bind(kind.as_str())
        .bind(at_ms)
        .bind(millis.max(0))
        .bind(subject)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// When the newest sample of `kind` was taken (Unix ms).
    pub async fn newest_sample(&self, kind: SloKind) -> Result<Option<i64>> {
        Ok(
            sqlx::query_scalar("SELECT MAX(at_ms) FROM slo_samples WHERE kind = $1")
                .bind(kind.as_str())
                .fetch_one(&self.pool)
                .await?,
        )
    }

    /// Samples of `kind` taken at or after `since_ms`, oldest first, at most
    /// [`SAMPLES_PER_READ`].
    pub async fn samples_since(&self, kind: SloKind, since_ms: i64) -> Result<Vec<SloSample>> {
        Ok(sqlx::query_as::<_, SloSample>(
            "SELECT at_ms, millis, subject FROM slo_samples WHERE kind = $1 AND at_ms >= $2 \
             ORDER BY at_ms, subject LIMIT $3",
        )
        .bind(kind.as_str())
        .bind(since_ms)
        .bind(SAMPLES_PER_READ)
        .fetch_all(&self.pool)
        .await?)
    }

    /// The durations (milliseconds) of `kind` measured in `[from_ms, to_ms)`, for a report.
    pub async fn sample_millis(&self, kind: SloKind, from_ms: i64, to_ms: i64) -> Result<Vec<i64>> {
        Ok(sqlx::query_scalar(
            "SELECT millis FROM slo_samples WHERE kind = $1 AND at_ms >= $2 AND at_ms < $3",
        )
        .bind(kind.as_str())
        .bind(from_ms)
        .bind(to_ms)
        .fetch_all(&self.pool)
        .await?)
    }
}

impl Store {
    /// When the newest decision by an approver was made (Unix seconds). Expired requests were
    /// decided by nobody: they are not decisions.
    pub async fn newest_decision(&self) -> Result<Option<i64>> {
        Ok(sqlx::query_scalar(
            "SELECT MAX(decided_at) FROM requests WHERE status IN ('approved', 'denied')",
        )
        .fetch_one(&self.pool)
        .await?)
    }

    /// Requests an approver decided at or after `since` (Unix seconds), oldest decision first,
    /// at most [`SAMPLES_PER_READ`].
    pub async fn decided_requests_since(
        &self,
        since: i64,
    ) -> Result<Vec<crate::model::AccessRequestRow>> {
        Ok(sqlx::query_as(
            "SELECT * FROM requests WHERE decided_at >= $1 AND status IN ('approved', 'denied') \
             ORDER BY decided_at, id LIMIT $2",
        )
        .bind(since)
        .bind(SAMPLES_PER_READ)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Requests ever escalated for waiting past `approval_slo`.
    pub async fn escalated_requests(&self) -> Result<i64> {
        Ok(
            sqlx::query_scalar("SELECT COUNT(*) FROM requests WHERE escalated_at IS NOT NULL")
                .fetch_one(&self.pool)
                .await?,
        )
    }
}
