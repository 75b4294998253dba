//! Site edges, as actions: registering one (`edge.add`), a join that spends the one-time token and
//! records the issued certificate (`edge.join`, or `edge.join_refused` with the reason), a
//! certificate renewal (`edge.renew`) and revocation (`edge.revoke`).

use super::{ActionRecord, Actions, Actor, Result};
use crate::store::{NewEdge, TokenState};

/// A certificate issued to an edge, as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeCertificate {
    /// Hex serial.
    pub serial: String,
    pub not_after: i64,
    /// The certificate, PEM.
    pub pem: String,
}

/// Why a join was refused (each is audited).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinRefused {
    #[error("no edge of that name is registered")]
    UnknownEdge,
    #[error("the edge is revoked")]
    Revoked,
    #[error("the join token was used already")]
    Spent,
    #[error("the join token has expired")]
    Expired,
    #[error("the join token is wrong")]
    Wrong,
    #[error("the certificate request was refused: {0}")]
    BadRequest(String),
}

impl Actions {
    /// Registers an edge for its sites; the join token (only its hash is given) is shown once by
    /// the caller.
    pub async fn add_edge(&self, actor: &Actor, e: &NewEdge<'_>, now: i64) -> Result<()> {
        let mut tx = self.store.begin().await?;
        self.store.add_edge_in(&mut tx, e, now).await?;
        let record = ActionRecord::EdgeAdd {
            edge: e.name.to_owned(),
            sites: e.sites.to_vec(),
            region: e.region.map(str::to_owned),
            token_expires: e.token_expires,
        };
        self.finish(tx, actor, record).await
    }

    /// Joins an edge: checks and spends its token, and records the certificate `issue` makes.
    /// A refusal is audited and returned as the inner error.
    pub async fn join_edge(
        &self,
        actor: &Actor,
        edge: &str,
        token_hash: &str,
        now: i64,
        issue: impl FnOnce() -> std::result::Result<EdgeCertificate, String>,
    ) -> Result<std::result::Result<EdgeCertificate, JoinRefused>> {
        let mut tx = self.store.begin().await?;
        let state = self
            .store
            .edge_token_in(&mut tx, edge, token_hash, now)
            .await?;
        let refused = match state {
            TokenState::Good => match issue() {
                Ok(cert) => {
                    self.store
                        .set_edge_certificate_in(&mut tx, edge, &cert.serial, cert.not_after, now)
                        .await?;
                    let record = ActionRecord::EdgeJoin {
                        edge: edge.to_owned(),
                        serial: cert.serial.clone(),
                        not_after: cert.not_after,
                    };
                    self.finish(tx, actor, record).await?;
                    return Ok(Ok(cert));
                }
                Err(e) => JoinRefused::BadRequest(e),
            },
            TokenState::Unknown => JoinRefused::UnknownEdge,
            TokenState::Revoked => JoinRefused::Revoked,
            TokenState::Spent => JoinRefused::Spent,
            TokenState::Expired => JoinRefused::Expired,
            TokenState::Wrong => JoinRefused::Wrong,
        };
        let record = ActionRecord::EdgeJoinRefused {
            edge: edge.to_owned(),
            reason: refused.to_string(),
        };
        self.finish(tx, actor, record).await?;
        Ok(Err(refused))
    }

    /// Records a renewed certificate: from now on only it is accepted.
    pub async fn renew_edge(
        &self,
        actor: &Actor,
        edge: &str,
        cert: &EdgeCertificate,
        now: i64,
    ) -> Result<()> {
        let mut tx = self.store.begin().await?;
        self.store
            .set_edge_certificate_in(&mut tx, edge, &cert.serial, cert.not_after, now)
            .await?;
        let record = ActionRecord::EdgeRenew {
            edge: edge.to_owned(),
            serial: cert.serial.clone(),
            not_after: cert.not_after,
        };
        self.finish(tx, actor, record).await
    }

    /// Revokes an edge: its certificate is refused from now on and its link is cut by the node
    /// holding it.
    pub async fn revoke_edge(&self, actor: &Actor, edge: &str, now: i64) -> Result<()> {
        let mut tx = self.store.begin().await?;
        self.store.revoke_edge_in(&mut tx, edge, now).await?;
        let record = ActionRecord::EdgeRevoke {
            edge: edge.to_owned(),
        };
        self.finish(tx, actor, record).await
    }
}
