//! Sessions and their command logs.

use super::{Conflict, Missing, Result, Store, Thing, Tx};
use crate::model::{CommandRow, Session};

impl Store {
    pub async fn start_session(&self, s: &Session) -> Result<()> {
        sqlx::query("INSERT INTO sessions (id, vendor, site, device, function, grant_id, node, source, recording, started, kill_requested) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 0)")
            .bind(&s.id)
            .bind(&s.vendor)
            .bind(&s.site)
            .bind(&s.device)
            .bind(&s.function)
            .bind(&s.grant_id)
            .bind(&s.node)
            .bind(&s.source)
            .bind(&s.recording)
            .bind(s.started)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Records a session's end and its seal (record count and final hash of the recording).
    /// `seal` is `None` when the recording could not be sealed (a write error): the session is then
    /// stored like one cut by a crash, with an unsealed recording.
    pub async fn end_session(
        &self,
        id: &str,
        reason: &str,
        seal: Option<(i64, &str)>,
        now: i64,
    ) -> Result<()> {
        let (records, final_hash) = match seal {
            Some((n, h)) => (Some(n), Some(h)),
            None => (None, None),
        };
        sqlx::query("UPDATE sessions SET ended = $1, end_reason = $2, records = $3, final_hash = $4 WHERE id = $5 AND ended IS NULL")
            .bind(now)
            .bind(reason)
            .bind(records)
            .bind(final_hash)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn session(&self, id: &str) -> Result<Option<Session>> {
        Ok(
            sqlx::query_as::<_, Session>("SELECT * FROM sessions WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    pub async fn sessions(&self, live_only: bool) -> Result<Vec<Session>> {
        let sql = if live_only {
            "SELECT * FROM sessions WHERE ended IS NULL ORDER BY started, id"
        } else {
            "SELECT * FROM sessions ORDER BY started, id"
        };
        Ok(sqlx::query_as::<_, Session>(sql)
            .fetch_all(&self.pool)
            .await?)
    }

    /// Asks whichever node runs a live session to close it.
    pub async fn request_kill(&self, id: &str) -> Result<Session> {
        let mut tx = self.begin().await?;
        let s = self.request_kill_in(&mut tx, id).await?;
        tx.commit().await?;
        Ok(s)
    }

    /// [`Store::request_kill`] inside the caller's transaction.
    pub async fn request_kill_in(&self, tx: &mut Tx, id: &str) -> Result<Session> {
        let n =
            sqlx::query("UPDATE sessions SET kill_requested = 1 WHERE id = $1 AND ended IS NULL")
                .bind(id)
                .execute(&mut **tx)
                .await?
                .rows_affected();
        let s = sqlx::query_as::<_, Session>("SELECT * FROM sessions WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut **tx)
            .await?
            .ok_or_else(|| Missing::id(Thing::Session, id))?;
        if n == 0 {
            return Err(Conflict::SessionEnded(id.to_owned()).into());
        }
        self.bump_revision(&mut **tx).await?;
        Ok(s)
    }

    /// Ids of this node's live sessions whose kill was requested.
    pub async fn kill_requests(&self, node: &str) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar(
            "SELECT id FROM sessions WHERE node = $1 AND ended IS NULL AND kill_requested = 1",
        )
        .bind(node)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Sessions a node left open when it stopped without closing them (a crash): marked ended.
    pub async fn end_orphaned_sessions(&self, node: &str, now: i64) -> Result<Vec<String>> {
        let ids: Vec<String> =
            sqlx::query_scalar("SELECT id FROM sessions WHERE node = $1 AND ended IS NULL")
                .bind(node)
                .fetch_all(&self.pool)
                .await?;
        sqlx::query("UPDATE sessions SET ended = $1, end_reason = 'broker stopped unexpectedly' WHERE node = $2 AND ended IS NULL")
            .bind(now)
            .bind(node)
            .execute(&self.pool)
            .await?;
        Ok(ids)
    }

    /// Stores a session's command log (replacing any earlier extraction of it).
    pub async fn set_commands(&self, session: &str, rows: &[CommandRow]) -> Result<()> {
        let mut tx = self.begin().await?;
        sqlx::query("DELETE FROM commands WHERE session = $1")
            .bind(session)
            .execute(&mut *tx)
            .await?;
        for r in rows {
            sqlx::query("INSERT INTO commands (session, seq, vendor, site, device, time_us, offset_ms, channel, kind, command) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)")
                .bind(&r.session)
                .bind(r.seq)
                .bind(&r.vendor)
                .bind(&r.site)
                .bind(&r.device)
                .bind(r.time_us)
                .bind(r.offset_ms)
                .bind(r.channel)
                .bind(&r.kind)
                .bind(&r.command)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Commands across sessions, oldest first, filtered by vendor, site, device and start time.
    pub async fn commands(
        &self,
        vendor: Option<&str>,
        site: Option<&str>,
        device: Option<&str>,
        since_us: Option<i64>,
    ) -> Result<Vec<CommandRow>> {
        Ok(sqlx::query_as::<_, CommandRow>(
            "SELECT * FROM commands WHERE ($1 = '' OR vendor = $1) AND ($2 = '' OR site = $2) AND ($3 = '' OR device = $3) AND time_us >= $4 ORDER BY time_us, session, seq",
        )
        .bind(vendor.unwrap_or(""))
        .bind(site.unwrap_or(""))
        .bind(device.unwrap_or(""))
        .bind(since_us.unwrap_or(i64::MIN))
        .fetch_all(&self.pool)
        .await?)
    }

    /// One session's command log, in order.
    pub async fn commands_of_session(&self, session: &str) -> Result<Vec<CommandRow>> {
        Ok(sqlx::query_as::<_, CommandRow>(
            "SELECT * FROM commands WHERE session = $1 ORDER BY seq",
        )
        .bind(session)
        .fetch_all(&self.pool)
        .await?)
    }
}
