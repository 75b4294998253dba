//! Operator actions: approve or deny a request, add or revoke a grant, kill a session, disable a
//! vendor, review a break-glass opening, and the directory changes (vendors and their
//! certificates, approvers, sites, devices, functions). The CLI and the web form both call these;
//! neither makes these changes itself.
//!
//! Each action runs in one database transaction: it makes the change, queues its notification in
//! the outbox, writes its audit record (fsynced) and only then commits. If the audit record cannot
//! be written the transaction is rolled back and nothing happened: an action the audit log cannot
//! account for does not take effect. Should the commit itself fail after the record was written,
//! a follow-up record (`action.not_committed`) says so.

use crate::audit::AuditEvent;
use serde::Serialize;
use serde_json::{Value, json};
use tracing::warn;

use crate::approvers::AccessRequestRow;
use crate::audit::{AuditError, AuditLog};
use crate::breakglass::BreakGlass;
use crate::model::{ChannelSet, Grant, Session};
use crate::notify::{Message, Notifier};
use crate::store::{NewDevice, NewGrant, Store, StoreError, Tx};
use crate::time::fmt_time;

mod certificates;
mod coverage;
mod deadlines;
mod secrets;
pub use deadlines::{Deadlines, Swept};

/// Why an action was refused. Whatever the reason, nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    /// The request, grant, session, vendor or opening does not exist.
    #[error("{0}")]
    NotFound(String),
    /// It is no longer in a state the action applies to (already decided, revoked, ended).
    #[error("{0}")]
    Conflict(String),
    /// The inputs are wrong (a window too long, a missing reason).
    #[error("{0}")]
    Invalid(String),
    /// The audit log cannot be written, so the action was not taken.
    #[error("the audit log cannot be written, so nothing was changed: {0}")]
    AuditUnwritable(#[source] AuditError),
    /// The database failed.
    #[error("the control plane is unavailable, so nothing was changed: {0}")]
    Unavailable(#[source] StoreError),
    /// The approver deciding does not cover the request's site (or is no enabled approver).
    #[error("{0}")]
    NotCovered(String),
}

impl From<StoreError> for ActionError {
    fn from(e: StoreError) -> ActionError {
        match e {
            StoreError::NotFound(m) => ActionError::NotFound(m.to_string()),
            StoreError::Conflict(c) => ActionError::Conflict(c.to_string()),
            StoreError::Invalid(i) => ActionError::Invalid(i.to_string()),
            e @ (StoreError::Db(_)
            | StoreError::Migrate(_)
            | StoreError::Timeout
            | StoreError::Secret(_)) => ActionError::Unavailable(e),
        }
    }
}

type Result<T> = std::result::Result<T, ActionError>;

mod lifecycle;
pub use lifecycle::GrantCut;
mod edges;
pub use edges::{EdgeCertificate, JoinRefused};
mod rotation;
pub use rotation::{Rotated, template};
mod scan;
pub use scan::DeviceScan;
mod web;
pub use web::{Browser, LINK_USED_OR_EXPIRED, WEB_ENTRY_TTL, WEB_SESSION_MAX};

/// Who acts: `name` is stored as the decider (`decided_by`, `granted_by`, `revoked_by`) and shown
/// to vendors and in notifications; `tag` is the audit log's `actor` (`operator:USER`, `web:NAME`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    name: String,
    tag: String,
    /// The approver whose coverage a decision is checked against (the web form, `--as`).
    approver: Option<String>,
}

impl Actor {
    /// An operator at the CLI (the Unix user who ran it).
    pub fn operator(user: &str) -> Actor {
        let name = format!("operator:{user}");
        Actor {
            tag: name.clone(),
            name,
            approver: None,
        }
    }

    /// A signed-in approver in the web form.
    pub fn web(approver: &str) -> Actor {
        Actor {
            name: approver.to_owned(),
            tag: format!("web:{approver}"),
            approver: Some(approver.to_owned()),
        }
    }

    /// A vendor acting for themselves (self-service enrolment and renewal over ssh).
    pub fn vendor(vendor: &str) -> Actor {
        Actor {
            name: vendor.to_owned(),
            tag: format!("vendor:{vendor}"),
            approver: None,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn tag(&self) -> &str {
        &self.tag
    }
}

/// The audit records of operator actions. Event names and field names are stable: auditors'
/// tools, the tests and the README rely on them.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum ActionRecord {
    RequestApprove {
        request: String,
        vendor: String,
        site: String,
        /// The devices the grant covers (empty: the whole site).
        devices: Vec<String>,
        function: String,
        grant: String,
        from: String,
        until: String,
        latency: Option<i64>,
    },
    RequestDeny {
        request: String,
        vendor: String,
        site: String,
        reason: String,
        latency: Option<i64>,
    },
    GrantAdd {
        grant: String,
        vendor: String,
        site: String,
        /// The devices the grant covers (empty: the whole site).
        devices: Vec<String>,
        function: String,
        from: String,
        until: String,
        reason: String,
    },
    GrantRevoke {
        grant: String,
        vendor: String,
        site: String,
        function: String,
    },
    SessionKill {
        session: String,
        vendor: String,
        node: String,
    },
    VendorDisable {
        vendor: String,
        grants_revoked: Vec<String>,
        /// Serials of the vendor's certificates this revoked (left out when none).
        #[serde(skip_serializing_if = "Vec::is_empty")]
        certificates_revoked: Vec<String>,
        /// Unused enrolment codes this burnt (left out when none).
        #[serde(skip_serializing_if = "is_zero")]
        invites_burnt: u64,
    },
    BreakglassReview {
        breakglass: String,
        vendor: String,
        site: String,
        note: Option<String>,
    },
    /// Directory records never carry secrets: no TOTP secret, password or device credential.
    VendorAdd {
        vendor: String,
        org: String,
        contract_end: Option<String>,
    },
    VendorCert {
        vendor: String,
        serial: String,
        key_id: String,
        /// The fingerprint of the vendor's public key.
        key: String,
        valid_before: String,
        /// The certificate this one renews (`ssh VENDOR:renew@broker`), if any.
        #[serde(skip_serializing_if = "Option::is_none")]
        renewed_from: Option<String>,
    },
    /// `invite` is the first 12 hex digits of the code's hash, never the code.
    /// A one-time sign-in link to device web UIs, printed to the vendor over ssh.
    WebEntry {
        vendor: String,
        /// A prefix of the link token's hash (the token is a secret until used).
        entry: String,
        expires: String,
    },
    /// A sign-in link used: a browser session opened.
    WebEnter {
        vendor: String,
        entry: String,
        /// A prefix of the session cookie's hash.
        session: String,
        until: String,
        /// The browser's address and User-Agent.
        source: String,
        agent: String,
    },
    VendorInvite {
        vendor: String,
        invite: String,
        expires: String,
    },
    VendorEnrol {
        vendor: String,
        invite: String,
        /// The fingerprint of the key the enrolment certifies.
        key: String,
        /// The certificate issued to it.
        serial: String,
        valid_before: String,
    },
    ApproverAdd {
        approver: String,
        sites: Vec<String>,
        regions: Vec<String>,
    },
    ApproverReset {
        approver: String,
    },
    ApproverDisable {
        approver: String,
    },
    SiteAdd {
        site: String,
        region: Option<String>,
    },
    DeviceAdd {
        site: String,
        device: String,
        addr: String,
        login: String,
        /// The kind of credential (`key` or `password`), never the credential.
        credential: String,
        /// The pinned host key's fingerprint.
        host_key: String,
        /// How the host key was pinned.
        pinned: String,
        /// The device's web UI, its pinned certificate (SHA-256, hex) and how it was pinned.
        #[serde(skip_serializing_if = "Option::is_none")]
        web: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        web_cert: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        web_pinned: Option<String>,
        /// The user Postern signs in to the web UI as (never the password).
        #[serde(skip_serializing_if = "Option::is_none")]
        web_user: Option<String>,
    },
    /// A device's web UI endpoint set, its certificate pinned.
    DeviceWeb {
        site: String,
        device: String,
        url: String,
        /// SHA-256 of the pinned certificate (hex); empty for plain HTTP.
        cert: String,
        /// How the certificate was pinned.
        pinned: String,
        /// The user Postern signs in to the UI as (never the password).
        #[serde(skip_serializing_if = "Option::is_none")]
        basic_user: Option<String>,
    },
    DeviceRotate {
        site: String,
        device: String,
        /// The kind of credential, never the credential.
        credential: String,
        /// Fingerprints of the replaced and the new key (empty for passwords).
        old_key: String,
        new_key: String,
    },
    DeviceRotateFailed {
        site: String,
        device: String,
        /// The step that failed; the old credential stays in use.
        step: String,
        error: String,
    },
    EdgeAdd {
        edge: String,
        sites: Vec<String>,
        region: Option<String>,
        /// When the join token stops working (the token is never recorded).
        token_expires: i64,
    },
    EdgeJoin {
        edge: String,
        serial: String,
        not_after: i64,
    },
    EdgeJoinRefused {
        edge: String,
        reason: String,
    },
    EdgeRenew {
        edge: String,
        serial: String,
        not_after: i64,
    },
    EdgeRevoke {
        edge: String,
    },
    DeviceRotateCommand {
        site: String,
        device: String,
        /// The template (it holds `{password}`, never a password); `None`: removed.
        command: Option<String>,
    },
    /// A password set aside by an interrupted rotation was found to work and is now the stored
    /// credential.
    DeviceRotateRecovered {
        site: String,
        device: String,
    },
    ScanRun {
        devices: usize,
        scanned: usize,
        /// Unbrokered paths found on the devices scanned.
        found: usize,
        /// Devices that could not be scanned (their paths are left as they were).
        unscanned: Vec<String>,
    },
    ScanRemove {
        site: String,
        device: String,
        file: String,
        /// Fingerprints of the keys removed.
        keys: Vec<String>,
    },
    DeviceImport {
        file: String,
        devices: usize,
        new_sites: usize,
        login: String,
    },
    FunctionAdd {
        function: String,
        allow: String,
        login: Option<String>,
        max_window: i64,
        emergency: bool,
        emergency_orgs: Vec<String>,
    },
    VendorRevokeCert {
        vendor: String,
        /// The serials this revoked.
        serials: Vec<String>,
    },
    /// A new vendor CA signs from now on (on `node`); the old ones stay trusted until retired.
    CaRotate {
        /// The new CA's fingerprint.
        ca: String,
        node: String,
    },
    CaRetire {
        /// The retired CA's fingerprint.
        ca: String,
        certificates_revoked: Vec<String>,
    },
    VendorUpdate {
        vendor: String,
        org: String,
        contract_end: Option<String>,
        /// The contract end before this change.
        contract_end_was: Option<String>,
    },
    VendorEnable {
        vendor: String,
    },
    /// The approver's coverage after the change.
    ApproverUpdate {
        approver: String,
        sites: Vec<String>,
        regions: Vec<String>,
    },
    /// The function after the change, and the grants cut to its new longest window.
    FunctionUpdate {
        function: String,
        allow: String,
        max_window: i64,
        grants_cut: Vec<GrantCut>,
    },
    /// Secrets an older version stored in the clear, sealed at start (counts only).
    SecretsSealed {
        devices: u64,
        vendors: u64,
        approvers: u64,
    },
    /// The data keys re-wrapped under a new master key (key ids, never keys).
    KeysRotateMaster {
        from: String,
        to: String,
        data_keys: u64,
    },
    /// Whether edges past their offline grace still open the function as break-glass.
    FunctionOfflineOk {
        function: String,
        offline_ok: bool,
    },
    /// Whether every session of the function ends with a rotation of the device's credential.
    FunctionRotation {
        function: String,
        rotate_after_session: bool,
    },
    /// The action's record was written but its transaction did not commit: it did not happen.
    NotCommitted {
        action: String,
        error: String,
    },
    /// A request undecided past `approval_slo`, escalated once.
    RequestEscalated {
        request: String,
        vendor: String,
        site: String,
        device: String,
        function: String,
        filed: String,
        /// Seconds it had waited.
        waited: i64,
        /// Who it was escalated to.
        approvers: Vec<String>,
    },
    /// A request undecided past `request_ttl`, closed as `expired`.
    RequestExpired {
        request: String,
        vendor: String,
        site: String,
        device: String,
        function: String,
        filed: String,
        waited: i64,
        escalated: bool,
    },
    /// A decision refused because the approver does not cover the site; nothing changed.
    RequestDecisionRefused {
        request: String,
        site: String,
        approver: String,
        decision: String,
        reason: String,
    },
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl ActionRecord {
    /// The audit event name.
    pub fn event(&self) -> AuditEvent {
        match self {
            ActionRecord::RequestApprove { .. } => AuditEvent::RequestApprove,
            ActionRecord::RequestDeny { .. } => AuditEvent::RequestDeny,
            ActionRecord::GrantAdd { .. } => AuditEvent::GrantAdd,
            ActionRecord::GrantRevoke { .. } => AuditEvent::GrantRevoke,
            ActionRecord::SessionKill { .. } => AuditEvent::SessionKillRequested,
            ActionRecord::VendorDisable { .. } => AuditEvent::VendorDisable,
            ActionRecord::BreakglassReview { .. } => AuditEvent::BreakglassReview,
            ActionRecord::VendorAdd { .. } => AuditEvent::VendorAdd,
            ActionRecord::VendorCert { .. } => AuditEvent::VendorCert,
            ActionRecord::VendorInvite { .. } => AuditEvent::VendorInvite,
            ActionRecord::WebEntry { .. } => AuditEvent::WebEntry,
            ActionRecord::WebEnter { .. } => AuditEvent::WebEnter,
            ActionRecord::VendorEnrol { .. } => AuditEvent::VendorEnrol,
            ActionRecord::ApproverAdd { .. } => AuditEvent::ApproverAdd,
            ActionRecord::ApproverReset { .. } => AuditEvent::ApproverReset,
            ActionRecord::ApproverDisable { .. } => AuditEvent::ApproverDisable,
            ActionRecord::SiteAdd { .. } => AuditEvent::SiteAdd,
            ActionRecord::DeviceAdd { .. } => AuditEvent::DeviceAdd,
            ActionRecord::DeviceImport { .. } => AuditEvent::DeviceImport,
            ActionRecord::DeviceRotate { .. } => AuditEvent::DeviceRotate,
            ActionRecord::DeviceRotateFailed { .. } => AuditEvent::DeviceRotateFailed,
            ActionRecord::DeviceRotateCommand { .. } => AuditEvent::DeviceRotateCommand,
            ActionRecord::DeviceWeb { .. } => AuditEvent::DeviceWeb,
            ActionRecord::EdgeAdd { .. } => AuditEvent::EdgeAdd,
            ActionRecord::EdgeJoin { .. } => AuditEvent::EdgeJoin,
            ActionRecord::EdgeJoinRefused { .. } => AuditEvent::EdgeJoinRefused,
            ActionRecord::EdgeRenew { .. } => AuditEvent::EdgeRenew,
            ActionRecord::EdgeRevoke { .. } => AuditEvent::EdgeRevoke,
            ActionRecord::DeviceRotateRecovered { .. } => AuditEvent::DeviceRotateRecovered,
            ActionRecord::ScanRun { .. } => AuditEvent::ScanRun,
            ActionRecord::ScanRemove { .. } => AuditEvent::ScanRemove,
            ActionRecord::FunctionAdd { .. } => AuditEvent::FunctionAdd,
            ActionRecord::VendorRevokeCert { .. } => AuditEvent::VendorRevokeCert,
            ActionRecord::CaRotate { .. } => AuditEvent::CaRotate,
            ActionRecord::CaRetire { .. } => AuditEvent::CaRetire,
            ActionRecord::NotCommitted { .. } => AuditEvent::ActionNotCommitted,
            ActionRecord::RequestEscalated { .. } => AuditEvent::RequestEscalated,
            ActionRecord::RequestExpired { .. } => AuditEvent::RequestExpired,
            ActionRecord::RequestDecisionRefused { .. } => AuditEvent::RequestDecisionRefused,
            ActionRecord::VendorUpdate { .. } => AuditEvent::VendorUpdate,
            ActionRecord::VendorEnable { .. } => AuditEvent::VendorEnable,
            ActionRecord::ApproverUpdate { .. } => AuditEvent::ApproverUpdate,
            ActionRecord::FunctionUpdate { .. } => AuditEvent::FunctionUpdate,
            ActionRecord::SecretsSealed { .. } => AuditEvent::SecretsSealed,
            ActionRecord::KeysRotateMaster { .. } => AuditEvent::KeysRotateMaster,
            ActionRecord::FunctionRotation { .. } => AuditEvent::FunctionRotation,
            ActionRecord::FunctionOfflineOk { .. } => AuditEvent::FunctionOfflineOk,
        }
    }

    /// The record's fields, with who acted.
    fn fields(&self, actor: &Actor) -> Value {
        let mut v = serde_json::to_value(self).unwrap_or_else(|_| json!({}));
        if let Value::Object(m) = &mut v {
            m.insert("actor".into(), json!(actor.tag()));
        }
        v
    }
}

/// What an import enrolled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImportSummary {
    pub devices: usize,
    pub new_sites: usize,
}

/// The one place operator actions are taken. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Actions {
    store: Store,
    audit: AuditLog,
    notifier: Notifier,
}

impl Actions {
    pub fn new(store: Store, audit: AuditLog, notifier: Notifier) -> Actions {
        Actions {
            store,
            audit,
            notifier,
        }
    }

    /// The store the actions write to (for the reads a front end makes around an action).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Approves a pending request with the window `from`..`until` (by default as long as the
    /// vendor asked for).
    pub async fn approve_request(
        &self,
        actor: &Actor,
        id: &str,
        from: i64,
        until: Option<i64>,
        now: i64,
    ) -> Result<(AccessRequestRow, Grant)> {
        let asked = self
            .store
            .request(id)
            .await?
            .ok_or_else(|| ActionError::NotFound(format!("no request with id {id}")))?;
        self.check_coverage(actor, &asked, "approve").await?;
        let until = until.unwrap_or(from + asked.duration);
        let mut tx = self.store.begin().await?;
        let (req, grant) = self
            .store
            .approve_request_in(&mut tx, id, actor.name(), from, until, now)
            .await?;
        self.notifier
            .file_in(
                &mut tx,
                &Message::request_granted(&req, &grant, actor.name()),
            )
            .await?;
        let record = ActionRecord::RequestApprove {
            request: req.id.clone(),
            vendor: req.vendor.clone(),
            site: req.site.clone(),
            devices: grant.device_list(),
            function: req.function.clone(),
            grant: grant.id.clone(),
            from: fmt_time(grant.valid_from),
            until: fmt_time(grant.valid_until),
            latency: req.latency(),
        };
        self.finish(tx, actor, record).await?;
        Ok((req, grant))
    }

    /// Denies a pending request; the reason is shown to the vendor.
    pub async fn deny_request(
        &self,
        actor: &Actor,
        id: &str,
        reason: &str,
        now: i64,
    ) -> Result<AccessRequestRow> {
        let reason = reason.trim();
        if reason.is_empty() {
            return Err(ActionError::Invalid(
                "a denial needs a reason: the vendor sees it".into(),
            ));
        }
        if actor.approver.is_some() {
            let asked = self
                .store
                .request(id)
                .await?
                .ok_or_else(|| ActionError::NotFound(format!("no request with id {id}")))?;
            self.check_coverage(actor, &asked, "deny").await?;
        }
        let mut tx = self.store.begin().await?;
        let req = self
            .store
            .deny_request_in(&mut tx, id, actor.name(), reason, now)
            .await?;
        self.notifier
            .file_in(
                &mut tx,
                &Message::request_denied(&req, actor.name(), reason),
            )
            .await?;
        let record = ActionRecord::RequestDeny {
            request: req.id.clone(),
            vendor: req.vendor.clone(),
            site: req.site.clone(),
            reason: reason.to_owned(),
            latency: req.latency(),
        };
        self.finish(tx, actor, record).await?;
        Ok(req)
    }

    /// Adds a grant on the actor's authority (`granted_by` is the actor).
    pub async fn add_grant(&self, actor: &Actor, g: &NewGrant, now: i64) -> Result<Grant> {
        let mut g = g.clone();
        g.granted_by = actor.name().to_owned();
        let mut tx = self.store.begin().await?;
        let grant = self.store.add_grant_in(&mut tx, &g, now).await?;
        let record = ActionRecord::GrantAdd {
            grant: grant.id.clone(),
            vendor: grant.vendor.clone(),
            site: grant.site.clone(),
            devices: grant.device_list(),
            function: grant.function.clone(),
            from: fmt_time(grant.valid_from),
            until: fmt_time(grant.valid_until),
            reason: grant.reason.clone(),
        };
        self.finish(tx, actor, record).await?;
        Ok(grant)
    }

    /// Revokes a grant; live sessions under it close within a second.
    pub async fn revoke_grant(&self, actor: &Actor, id: &str, now: i64) -> Result<Grant> {
        let mut tx = self.store.begin().await?;
        let g = self
            .store
            .revoke_grant_in(&mut tx, id, actor.name(), now)
            .await?;
        let record = ActionRecord::GrantRevoke {
            grant: g.id.clone(),
            vendor: g.vendor.clone(),
            site: g.site.clone(),
            function: g.function.clone(),
        };
        self.finish(tx, actor, record).await?;
        Ok(g)
    }

    /// Asks whichever node runs a live session to close it.
    pub async fn kill_session(&self, actor: &Actor, id: &str) -> Result<Session> {
        let mut tx = self.store.begin().await?;
        let s = self.store.request_kill_in(&mut tx, id).await?;
        self.notifier
            .file_in(&mut tx, &Message::session_terminated(&s, actor.name()))
            .await?;
        let record = ActionRecord::SessionKill {
            session: s.id.clone(),
            vendor: s.vendor.clone(),
            node: s.node.clone(),
        };
        self.finish(tx, actor, record).await?;
        Ok(s)
    }

    /// Disables a vendor and revokes their grants and certificates; returns the ids of the
    /// grants revoked.
    pub async fn disable_vendor(&self, actor: &Actor, name: &str, now: i64) -> Result<Vec<String>> {
        let mut tx = self.store.begin().await?;
        let revoked = self
            .store
            .disable_vendor_in(&mut tx, name, actor.name(), now)
            .await?;
        let certificates_revoked = self
            .store
            .revoke_certificates_in(&mut tx, name, None)
            .await?;
        // An invite handed out before the disable must not let them back in after an enable.
        let invites_burnt = self.store.burn_invites_in(&mut tx, name, now).await?;
        self.notifier
            .file_in(
                &mut tx,
                &Message::vendor_disabled(name, actor.name(), &revoked),
            )
            .await?;
        let record = ActionRecord::VendorDisable {
            vendor: name.to_owned(),
            grants_revoked: revoked.clone(),
            certificates_revoked,
            invites_burnt,
        };
        self.finish(tx, actor, record).await?;
        Ok(revoked)
    }

    /// Marks a break-glass opening reviewed, closing it in the review queue.
    pub async fn review_breakglass(
        &self,
        actor: &Actor,
        id: &str,
        note: &str,
        now: i64,
    ) -> Result<BreakGlass> {
        let mut tx = self.store.begin().await?;
        let b = self
            .store
            .review_breakglass_in(&mut tx, id, actor.name(), note, now)
            .await?;
        let record = ActionRecord::BreakglassReview {
            breakglass: b.id.clone(),
            vendor: b.vendor.clone(),
            site: b.site.clone(),
            note: b.review_note.clone(),
        };
        self.finish(tx, actor, record).await?;
        Ok(b)
    }

    // ---- the directory ----

    /// Adds a vendor with their TOTP secret (which the record does not carry).
    pub async fn add_vendor(
        &self,
        actor: &Actor,
        name: &str,
        org: &str,
        contract_end: Option<i64>,
        totp_secret: &str,
        now: i64,
    ) -> Result<()> {
        let mut tx = self.store.begin().await?;
        self.store
            .add_vendor_in(&mut tx, name, org, contract_end, totp_secret, now)
            .await?;
        let record = ActionRecord::VendorAdd {
            vendor: name.to_owned(),
            org: org.to_owned(),
            contract_end: contract_end.map(fmt_time),
        };
        self.finish(tx, actor, record).await
    }

    /// Adds an approver for the listed sites and regions; only the password's hash is stored.
    #[allow(clippy::too_many_arguments)]
    pub async fn add_approver(
        &self,
        actor: &Actor,
        name: &str,
        password_hash: &str,
        totp_secret: &str,
        sites: &[String],
        regions: &[String],
        now: i64,
    ) -> Result<()> {
        let mut tx = self.store.begin().await?;
        self.store
            .add_approver_in(
                &mut tx,
                name,
                password_hash,
                totp_secret,
                sites,
                regions,
                now,
            )
            .await?;
        let record = ActionRecord::ApproverAdd {
            approver: name.to_owned(),
            sites: sites.to_vec(),
            regions: regions.to_vec(),
        };
        self.finish(tx, actor, record).await
    }

    /// Gives an approver a new password and TOTP secret and signs them out everywhere.
    pub async fn reset_approver(
        &self,
        actor: &Actor,
        name: &str,
        password_hash: &str,
        totp_secret: &str,
    ) -> Result<()> {
        let mut tx = self.store.begin().await?;
        self.store
            .reset_approver_in(&mut tx, name, password_hash, totp_secret)
            .await?;
        let record = ActionRecord::ApproverReset {
            approver: name.to_owned(),
        };
        self.finish(tx, actor, record).await
    }

    /// Disables an approver and signs them out everywhere.
    pub async fn disable_approver(&self, actor: &Actor, name: &str) -> Result<()> {
        let mut tx = self.store.begin().await?;
        self.store.disable_approver_in(&mut tx, name).await?;
        let record = ActionRecord::ApproverDisable {
            approver: name.to_owned(),
        };
        self.finish(tx, actor, record).await
    }

    pub async fn add_site(
        &self,
        actor: &Actor,
        name: &str,
        region: Option<&str>,
        now: i64,
    ) -> Result<()> {
        let mut tx = self.store.begin().await?;
        self.store.add_site_in(&mut tx, name, region, now).await?;
        let record = ActionRecord::SiteAdd {
            site: name.to_owned(),
            region: region.map(str::to_owned),
        };
        self.finish(tx, actor, record).await
    }

    /// Enrols a device, with its web UI if it has one (`web`: the endpoint and how its
    /// certificate was pinned), all or nothing. `host_key_fingerprint` and `pinned` (how the key
    /// was obtained) are for the record; the credential stays out of it.
    pub async fn add_device(
        &self,
        actor: &Actor,
        d: &NewDevice,
        host_key_fingerprint: &str,
        pinned: &str,
        web: Option<(&crate::store::DeviceWeb, &str)>,
        now: i64,
    ) -> Result<()> {
        let mut tx = self.store.begin().await?;
        self.store.add_device_in(&mut tx, d, now).await?;
        if let Some((w, _)) = web {
            self.store.set_device_web_in(&mut tx, w).await?;
        }
        let record = ActionRecord::DeviceAdd {
            web: web.map(|(w, _)| w.url.clone()),
            web_cert: web.and_then(|(w, _)| w.cert_sha256.clone()),
            web_pinned: web.map(|(_, how)| how.to_owned()),
            web_user: web.and_then(|(w, _)| w.basic_user.clone()),
            site: d.site.clone(),
            device: d.name.clone(),
            addr: d.addr.clone(),
            login: d.login.clone(),
            credential: d.credential_kind.to_string(),
            host_key: host_key_fingerprint.to_owned(),
            pinned: pinned.to_owned(),
        };
        self.finish(tx, actor, record).await
    }

    /// Sets a device's web UI endpoint and its pinned certificate (`pinned` says how it was
    /// obtained, for the record).
    pub async fn set_device_web(
        &self,
        actor: &Actor,
        w: &crate::store::DeviceWeb,
        pinned: &str,
    ) -> Result<()> {
        let mut tx = self.store.begin().await?;
        self.store.set_device_web_in(&mut tx, w).await?;
        let record = ActionRecord::DeviceWeb {
            site: w.site.clone(),
            device: w.device.clone(),
            url: w.url.clone(),
            cert: w.cert_sha256.clone().unwrap_or_default(),
            pinned: pinned.to_owned(),
            basic_user: w.basic_user.clone(),
        };
        self.finish(tx, actor, record).await
    }

    /// Enrols a list of devices from `file` (each with the line it came from, for errors) as one
    /// change: all of them or none. Sites not yet known are added in `region`. Returns how many
    /// devices and new sites.
    pub async fn import_devices(
        &self,
        actor: &Actor,
        file: &str,
        login: &str,
        region: Option<&str>,
        devices: &[(usize, NewDevice)],
        now: i64,
    ) -> Result<ImportSummary> {
        let mut tx = self.store.begin().await?;
        let mut known = std::collections::HashSet::new();
        let mut new_sites = 0;
        let at = |line: usize, e: StoreError| -> ActionError {
            match ActionError::from(e) {
                ActionError::NotFound(m) => {
                    ActionError::NotFound(format!("{file} line {line}: {m}"))
                }
                ActionError::Conflict(m) => {
                    ActionError::Conflict(format!("{file} line {line}: {m}"))
                }
                ActionError::Invalid(m) => ActionError::Invalid(format!("{file} line {line}: {m}")),
                other => other,
            }
        };
        for (line, d) in devices {
            if known.insert(d.site.as_str())
                && self
                    .store
                    .add_site_if_new_in(&mut tx, &d.site, region, now)
                    .await
                    .map_err(|e| at(*line, e))?
            {
                new_sites += 1;
            }
            self.store
                .add_device_in(&mut tx, d, now)
                .await
                .map_err(|e| at(*line, e))?;
        }
        let summary = ImportSummary {
            devices: devices.len(),
            new_sites,
        };
        let record = ActionRecord::DeviceImport {
            file: file.to_owned(),
            devices: summary.devices,
            new_sites: summary.new_sites,
            login: login.to_owned(),
        };
        self.finish(tx, actor, record).await?;
        Ok(summary)
    }

    /// Adds a function; `emergency_orgs` makes it a break-glass function for those organisations.
    #[allow(clippy::too_many_arguments)]
    pub async fn add_function(
        &self,
        actor: &Actor,
        name: &str,
        allow: &ChannelSet,
        login: Option<&str>,
        max_window: i64,
        emergency_orgs: Option<&[String]>,
        now: i64,
    ) -> Result<()> {
        let mut tx = self.store.begin().await?;
        self.store
            .add_function_in(&mut tx, name, allow, login, max_window, emergency_orgs, now)
            .await?;
        let record = ActionRecord::FunctionAdd {
            function: name.to_owned(),
            allow: allow.to_string(),
            login: login.map(str::to_owned),
            max_window,
            emergency: emergency_orgs.is_some(),
            emergency_orgs: emergency_orgs.unwrap_or_default().to_vec(),
        };
        self.finish(tx, actor, record).await
    }

    // ---- certificates and vendor CAs ----

    /// Writes the action's audit record, then commits; rolls back if the record cannot be written.
    async fn finish(&self, tx: Tx, actor: &Actor, record: ActionRecord) -> Result<()> {
        if let Err(e) = self
            .audit
            .record_async(record.event(), record.fields(actor))
            .await
        {
            warn!(error = %e, event = %record.event(), "audit log write failed; action rolled back");
            if let Err(r) = tx.rollback().await {
                // Dropping the transaction rolls it back all the same.
                warn!(error = %r, "rollback failed");
            }
            return Err(ActionError::AuditUnwritable(e));
        }
        if let Err(e) = tx.commit().await {
            let error = StoreError::from(e);
            warn!(error = %error, event = %record.event(), "action recorded but not committed");
            let undo = ActionRecord::NotCommitted {
                action: record.event().name().to_owned(),
                error: error.to_string(),
            };
            if let Err(a) = self
                .audit
                .record_async(undo.event(), undo.fields(actor))
                .await
            {
                warn!(error = %a, "could not record that the action did not take effect");
            }
            return Err(ActionError::Unavailable(error));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_keep_their_event_and_field_names() {
        let r = ActionRecord::SessionKill {
            session: "s-1".into(),
            vendor: "v".into(),
            node: "n".into(),
        };
        assert_eq!(r.event().name(), "session.kill_requested");
        assert_eq!(
            r.fields(&Actor::web("olga")),
            json!({"session": "s-1", "vendor": "v", "node": "n", "actor": "web:olga"})
        );
        let r = ActionRecord::VendorDisable {
            vendor: "v".into(),
            grants_revoked: vec!["g-1".into()],
            certificates_revoked: Vec::new(),
            invites_burnt: 0,
        };
        assert_eq!(r.event().name(), "vendor.disable");
        assert_eq!(
            r.fields(&Actor::operator("root")),
            json!({"vendor": "v", "grants_revoked": ["g-1"], "actor": "operator:root"})
        );
    }

    #[test]
    fn directory_records_keep_their_names_and_carry_no_secrets() {
        let r = ActionRecord::DeviceAdd {
            site: "s".into(),
            device: "d".into(),
            addr: "127.0.0.1:22".into(),
            login: "root".into(),
            credential: "password".into(),
            host_key: "SHA256:x".into(),
            pinned: "from file".into(),
            web: None,
            web_cert: None,
            web_pinned: None,
            web_user: None,
        };
        assert_eq!(r.event().name(), "device.add");
        assert_eq!(
            r.fields(&Actor::operator("root")),
            json!({"site": "s", "device": "d", "addr": "127.0.0.1:22", "login": "root",
                   "credential": "password", "host_key": "SHA256:x", "pinned": "from file",
                   "actor": "operator:root"})
        );
        let r = ActionRecord::VendorAdd {
            vendor: "v".into(),
            org: "acme".into(),
            contract_end: None,
        };
        assert_eq!(r.event().name(), "vendor.add");
        assert_eq!(
            r.fields(&Actor::operator("root")),
            json!({"vendor": "v", "org": "acme", "contract_end": null, "actor": "operator:root"})
        );
        let r = ActionRecord::ApproverReset {
            approver: "olga".into(),
        };
        assert_eq!(r.event().name(), "approver.reset");
        assert_eq!(
            r.fields(&Actor::operator("root")),
            json!({"approver": "olga", "actor": "operator:root"})
        );
    }

    #[test]
    fn actors_name_and_tag() {
        let a = Actor::web("olga");
        assert_eq!((a.name(), a.tag()), ("olga", "web:olga"));
        let o = Actor::operator("root");
        assert_eq!((o.name(), o.tag()), ("operator:root", "operator:root"));
    }
}
