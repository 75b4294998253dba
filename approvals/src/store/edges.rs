//! Site edges: registration, the one-time join token, the current client certificate, revocation,
//! and the link state written by the node holding an edge's connection (see migration 0021).

use serde::Serialize;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Conflict, Missing, Result, Store, Thing, Tx, check_name};

/// An edge as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Edge {
    pub name: String,
    pub region: Option<String>,
    pub sites: Vec<String>,
    pub created: i64,
    /// Seconds each certificate is valid for.
    pub ttl: i64,
    pub token_expires: Option<i64>,
    pub token_used: Option<i64>,
    pub cert_serial: Option<String>,
    pub cert_not_after: Option<i64>,
    pub revoked: Option<i64>,
    pub connected_since: Option<i64>,
    pub last_seen: Option<i64>,
    pub remote_addr: Option<String>,
    pub node: Option<String>,
    /// The current policy bundle's version (0: none made yet) and when it was made.
    pub policy_version: i64,
    pub policy_issued: Option<i64>,
    /// The version the edge last confirmed holding, and when.
    pub policy_acked: Option<i64>,
    pub policy_acked_at: Option<i64>,
    /// Evidence waiting at the edge to be shipped, as it last reported.
    pub buffered_sessions: Option<i64>,
    pub buffered_bytes: Option<i64>,
}

/// A node holding an edge's link writes `last_seen` this often; twice that without a write and
/// the edge counts as offline (the node may have died without saying so).
pub const EDGE_SEEN_EVERY: i64 = 3;

impl Edge {
    /// Connected to a node that has written lately.
    pub fn online(&self, now: i64) -> bool {
        self.connected_since.is_some()
            && self
                .last_seen
                .is_some_and(|t| now - t <= 2 * EDGE_SEEN_EVERY + 1)
    }
}

impl Edge {
    /// What to say of its sites when they cannot be reached through it (`None`: they can), with
    /// times written by `time`.
    pub fn offline(&self, now: i64, time: impl Fn(i64) -> String) -> Option<String> {
        match (self.revoked, self.last_seen) {
            (Some(_), _) => Some(format!("offline: its edge {} is revoked", self.name)),
            _ if self.online(now) => None,
            (None, Some(t)) => Some(format!("offline since {} (its edge lost contact)", time(t))),
            (None, None) => Some("offline (its edge never connected)".to_owned()),
        }
    }
}

/// What joining with a token needs to know about the edge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenState {
    Unknown,
    Revoked,
    Spent,
    Expired,
    Wrong,
    Good,
}

fn edge_of(row: &AnyRow, sites: Vec<String>) -> sqlx::Result<Edge> {
    Ok(Edge {
        name: row.try_get("name")?,
        region: row.try_get("region")?,
        sites,
        created: row.try_get("created")?,
        ttl: row.try_get("ttl")?,
        token_expires: row.try_get("token_expires")?,
        token_used: row.try_get("token_used")?,
        cert_serial: row.try_get("cert_serial")?,
        cert_not_after: row.try_get("cert_not_after")?,
        revoked: row.try_get("revoked")?,
        connected_since: row.try_get("connected_since")?,
        last_seen: row.try_get("last_seen")?,
        remote_addr: row.try_get("remote_addr")?,
        node: row.try_get("node")?,
        policy_version: row.try_get("policy_version")?,
        policy_issued: row.try_get("policy_issued")?,
        policy_acked: row.try_get("policy_acked")?,
        policy_acked_at: row.try_get("policy_acked_at")?,
        buffered_sessions: row.try_get("buffered_sessions")?,
        buffered_bytes: row.try_get("buffered_bytes")?,
    })
}

/// A new edge, as `edge add` registers it.
pub struct NewEdge<'a> {
    pub name: &'a str,
    pub region: Option<&'a str>,
    pub sites: &'a [String],
    pub token_hash: &'a str,
    pub token_expires: i64,
    pub ttl: i64,
}

/// A device an edge may connect to: `(site, device, ssh addr, web UI url)`.
pub type EdgeDeviceAddr = (String, String, String, Option<String>);

impl Store {
    /// Registers an edge for `sites` (each must exist and have no edge yet).
    pub async fn add_edge_in(&self, tx: &mut Tx, e: &NewEdge<'_>, now: i64) -> Result<()> {
        check_name(Thing::Edge, e.name)?;
        // A write first takes the lock (see `Tx`).
        sqlx::query("UPDATE meta SET value = value WHERE key = 'revision'")
            .execute(&mut **tx)
            .await?;
        let exists: Option<String> = sqlx::query_scalar("SELECT name FROM edges WHERE name = $1")
            .bind(e.name)
            .fetch_optional(&mut **tx)
            .await?;
        if exists.is_some() {
            return Err(Conflict::exists(Thing::Edge, e.name).into());
        }
        sqlx::query(
            "INSERT INTO edges (name, region, created, token_hash, token_expires, ttl) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(e.name)
        .bind(e.region)
        .bind(now)
        .bind(e.token_hash)
        .bind(e.token_expires)
        .bind(e.ttl)
        .execute(&mut **tx)
        .await?;
        for site in e.sites {
            let known: Option<String> =
                sqlx::query_scalar("SELECT name FROM sites WHERE name = $1")
                    .bind(site)
                    .fetch_optional(&mut **tx)
                    .await?;
            if known.is_none() {
                return Err(Missing::Named {
                    thing: Thing::Site,
                    name: site.clone(),
                }
                .into());
            }
            let served: Option<String> =
                sqlx::query_scalar("SELECT edge FROM edge_sites WHERE site = $1")
                    .bind(site)
                    .fetch_optional(&mut **tx)
                    .await?;
            if let Some(edge) = served {
                return Err(Conflict::SiteServed {
                    site: site.clone(),
                    edge,
                }
                .into());
            }
            sqlx::query("INSERT INTO edge_sites (site, edge) VALUES ($1, $2)")
                .bind(site)
                .bind(e.name)
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }

    pub async fn sites_of_edge(&self, edge: &str) -> Result<Vec<String>> {
        Ok(
            sqlx::query_scalar("SELECT site FROM edge_sites WHERE edge = $1 ORDER BY site")
                .bind(edge)
                .fetch_all(&self.pool)
                .await?,
        )
    }

    pub async fn edge(&self, name: &str) -> Result<Option<Edge>> {
        let row = sqlx::query("SELECT * FROM edges WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        match row {
            Some(row) => Ok(Some(edge_of(&row, self.sites_of_edge(name).await?)?)),
            None => Ok(None),
        }
    }

    pub async fn edges(&self) -> Result<Vec<Edge>> {
        let rows = sqlx::query("SELECT * FROM edges ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        let links: Vec<(String, String)> =
            sqlx::query_as("SELECT site, edge FROM edge_sites ORDER BY site")
                .fetch_all(&self.pool)
                .await?;
        // Grouped once: thousands of edges each serving dozens of sites.
        let mut sites_of: std::collections::HashMap<String, Vec<String>> = Default::default();
        for (site, edge) in links {
            sites_of.entry(edge).or_default().push(site);
        }
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let name: String = row.try_get("name")?;
            let sites = sites_of.remove(&name).unwrap_or_default();
            out.push(edge_of(&row, sites)?);
        }
        Ok(out)
    }

    /// The devices at the sites `edge` serves: what the edge may connect to. Addresses only (no
    /// credential is read or opened).
    pub async fn device_addrs_of_edge(&self, edge: &str) -> Result<Vec<EdgeDeviceAddr>> {
        Ok(sqlx::query_as(
            "SELECT d.site, d.name, d.addr, w.url FROM devices d \
             JOIN edge_sites e ON e.site = d.site \
             LEFT JOIN device_web w ON w.site = d.site AND w.device = d.name \
             WHERE e.edge = $1 ORDER BY d.site, d.name",
        )
        .bind(edge)
        .fetch_all(&self.pool)
        .await?)
    }

    /// The name of the edge serving `site`, if it has one (one lookup, for checks per device).
    pub async fn edge_name_of_site(&self, site: &str) -> Result<Option<String>> {
        Ok(
            sqlx::query_scalar("SELECT edge FROM edge_sites WHERE site = $1")
                .bind(site)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// The edge serving `site`, if it has one.
    pub async fn edge_of_site(&self, site: &str) -> Result<Option<Edge>> {
        match self.edge_name_of_site(site).await? {
            Some(name) => self.edge(&name).await,
            None => Ok(None),
        }
    }

    /// Checks a join token's hash inside the caller's transaction (the row is locked by a write
    /// first, so two joins with one token cannot both see it unspent).
    pub async fn edge_token_in(
        &self,
        tx: &mut Tx,
        name: &str,
        token_hash: &str,
        now: i64,
    ) -> Result<TokenState> {
        sqlx::query("UPDATE edges SET name = name WHERE name = $1")
            .bind(name)
            .execute(&mut **tx)
            .await?;
        let row = sqlx::query(
            "SELECT token_hash, token_expires, token_used, revoked FROM edges WHERE name = $1",
        )
        .bind(name)
        .fetch_optional(&mut **tx)
        .await?;
        let Some(row) = row else {
            return Ok(TokenState::Unknown);
        };
        let (hash, expires, used, revoked): (
            Option<String>,
            Option<i64>,
            Option<i64>,
            Option<i64>,
        ) = (
            row.try_get(0)?,
            row.try_get(1)?,
            row.try_get(2)?,
            row.try_get(3)?,
        );
        Ok(match () {
            _ if revoked.is_some() => TokenState::Revoked,
            _ if used.is_some() => TokenState::Spent,
            _ if expires.is_none_or(|e| now > e) => TokenState::Expired,
            _ if hash.as_deref() != Some(token_hash) => TokenState::Wrong,
            _ => TokenState::Good,
        })
    }

    /// Records the edge's current certificate (at join, marking the token spent, and at renewal).
    pub async fn set_edge_certificate_in(
        &self,
        tx: &mut Tx,
        name: &str,
        serial: &str,
        not_after: i64,
        now: i64,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE edges SET cert_serial = $1, cert_not_after = $2, \
             token_used = COALESCE(token_used, $3) WHERE name = $4",
        )
        .bind(serial)
        .bind(not_after)
        .bind(now)
        .bind(name)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    pub async fn revoke_edge_in(&self, tx: &mut Tx, name: &str, now: i64) -> Result<()> {
        let n = sqlx::query("UPDATE edges SET revoked = $1 WHERE name = $2 AND revoked IS NULL")
            .bind(now)
            .bind(name)
            .execute(&mut **tx)
            .await?
            .rows_affected();
        if n == 0 {
            let exists: Option<String> =
                sqlx::query_scalar("SELECT name FROM edges WHERE name = $1")
                    .bind(name)
                    .fetch_optional(&mut **tx)
                    .await?;
            if exists.is_none() {
                return Err(Missing::Named {
                    thing: Thing::Edge,
                    name: name.to_owned(),
                }
                .into());
            }
        }
        Ok(())
    }

    /// The edge's link came up on `node`.
    pub async fn edge_connected(
        &self,
        name: &str,
        node: &str,
        remote: &str,
        now: i64,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE edges SET connected_since = $1, last_seen = $1, remote_addr = $2, node = $3 \
             WHERE name = $4",
        )
        .bind(now)
        .bind(remote)
        .bind(node)
        .bind(name)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Every link `node` holds is still up: one statement per node, however many edges.
    pub async fn edges_seen_by(&self, node: &str, now: i64) -> Result<()> {
        sqlx::query(
            "UPDATE edges SET last_seen = $1 WHERE node = $2 AND connected_since IS NOT NULL",
        )
        .bind(now)
        .bind(node)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The revoked edges among those whose link `node` holds (to be cut).
    pub async fn revoked_edges_held_by(&self, node: &str) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar(
            "SELECT name FROM edges WHERE node = $1 AND connected_since IS NOT NULL \
             AND revoked IS NOT NULL",
        )
        .bind(node)
        .fetch_all(&self.pool)
        .await?)
    }

    /// At a node's start: the links it held before are gone (it stopped or crashed), whatever
    /// the database still says.
    pub async fn edges_lost_by(&self, node: &str, now: i64) -> Result<u64> {
        let n = sqlx::query(
            "UPDATE edges SET connected_since = NULL, last_seen = $1 \
             WHERE node = $2 AND connected_since IS NOT NULL",
        )
        .bind(now)
        .bind(node)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n)
    }

    /// The link on `node` went down (a link another node holds by now is left alone).
    pub async fn edge_disconnected(&self, name: &str, node: &str, now: i64) -> Result<()> {
        sqlx::query(
            "UPDATE edges SET connected_since = NULL, last_seen = $1 WHERE name = $2 AND node = $3",
        )
        .bind(now)
        .bind(name)
        .bind(node)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
