//! What the store refuses, with what it was loading or writing and which name or id. The texts
//! are the ones operators and approvers have always seen.

use super::{DEADLINE, MAX_WINDOW};
use crate::model::RequestStatus;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("{0}")]
    NotFound(Missing),
    #[error("{0}")]
    Conflict(Conflict),
    #[error("{0}")]
    Invalid(Invalid),
    /// The database did not answer in time: a hung or unreachable control plane.
    #[error("the database did not answer within {} seconds", DEADLINE.as_secs())]
    Timeout,
    /// A secret could not be sealed or opened (locked store, wrong master key, altered row).
    #[error("{0}")]
    Secret(#[from] crate::secrets::SecretError),
}

impl From<Missing> for StoreError {
    fn from(m: Missing) -> StoreError {
        StoreError::NotFound(m)
    }
}

impl From<Conflict> for StoreError {
    fn from(c: Conflict) -> StoreError {
        StoreError::Conflict(c)
    }
}

impl From<Invalid> for StoreError {
    fn from(i: Invalid) -> StoreError {
        StoreError::Invalid(i)
    }
}

/// The kinds of thing the store holds, as named in its messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Thing {
    Vendor,
    Site,
    Device,
    Function,
    Approver,
    Grant,
    Session,
    Request,
    BreakGlass,
    Edge,
}

impl std::fmt::Display for Thing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Thing::Vendor => "vendor",
            Thing::Site => "site",
            Thing::Device => "device",
            Thing::Function => "function",
            Thing::Approver => "approver",
            Thing::Grant => "grant",
            Thing::Edge => "edge",
            Thing::Session => "session",
            Thing::Request => "request",
            Thing::BreakGlass => "break-glass opening",
        })
    }
}

/// What a look-up or a write did not find.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Missing {
    /// A vendor, site, function or approver, by name.
    #[error("no {thing} named {name}")]
    Named { thing: Thing, name: String },
    /// A grant, session, request or break-glass opening, by id.
    #[error("no {thing} with id {id}")]
    Id { thing: Thing, id: String },
    #[error("no device {device} at {site}")]
    Device { site: String, device: String },
    /// The site a new device names; the operator adds sites first.
    #[error("no site named {0}: add it with `postern site add {0}`")]
    SiteOfDevice(String),
    /// A new request's vendor, site or function vanished while it was filed.
    #[error(
        "request refers to an unknown vendor, site or function: it refers to something that does not exist"
    )]
    RequestTarget,
    /// A write whose row refers to a row that does not exist.
    #[error("{0}: it refers to something that does not exist")]
    Reference(Box<Conflict>),
}

impl Missing {
    pub fn named(thing: Thing, name: impl Into<String>) -> Missing {
        Missing::Named {
            thing,
            name: name.into(),
        }
    }

    pub fn id(thing: Thing, id: impl Into<String>) -> Missing {
        Missing::Id {
            thing,
            id: id.into(),
        }
    }
}

/// A write refused because of what is there already: a duplicate, or a state the change no
/// longer applies to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Conflict {
    #[error("{thing} {name} already exists")]
    Exists { thing: Thing, name: String },
    #[error("device {site}/{device} already exists")]
    DeviceExists { site: String, device: String },
    #[error("certificate serial {0} already recorded")]
    CertificateRecorded(String),
    #[error("site {site} is already served by edge {edge}")]
    SiteServed { site: String, edge: String },
    /// One pending request per vendor, device and function.
    #[error(
        "request {request} for {function} at {site}/{device} is already waiting for an approver"
    )]
    RequestWaiting {
        request: String,
        function: String,
        site: String,
        device: String,
    },
    /// The pending request that blocked a new one was decided meanwhile.
    #[error("a request for {function} at {site}/{device} was just decided; try again")]
    RequestJustDecided {
        function: String,
        site: String,
        device: String,
    },
    #[error("request {request} is already {status}")]
    RequestDecided {
        request: String,
        status: RequestStatus,
    },
    /// Two approvers decided at once; the other one's decision stands.
    #[error("request {0} was decided by someone else first")]
    RequestDecidedFirst(String),
    #[error("grant {0} was already revoked")]
    GrantRevoked(String),
    #[error("session {0} has already ended")]
    SessionEnded(String),
    #[error("break-glass {id} was already reviewed by {by}")]
    BreakGlassReviewed { id: String, by: String },
    #[error("vendor {0} is not disabled")]
    VendorNotDisabled(String),
}

impl Conflict {
    pub fn exists(thing: Thing, name: impl Into<String>) -> Conflict {
        Conflict::Exists {
            thing,
            name: name.into(),
        }
    }
}

/// Input the store refuses to write, or stored data it cannot read.
#[derive(Debug, thiserror::Error)]
pub enum Invalid {
    #[error("database_url must start with sqlite:// or postgres:// (got '{scheme}')")]
    DatabaseUrl { scheme: String },
    #[error("database file {path}: {source}")]
    DatabaseFile {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "'{name}' is not a valid {thing} name: use letters, digits, '-', '_' and '.' (at most 64)"
    )]
    Name { thing: Thing, name: String },
    #[error("vendor {0} is disabled")]
    VendorDisabled(String),
    #[error("the window must end after it starts")]
    WindowEndsBeforeStart,
    #[error("the window is already over")]
    WindowOver,
    #[error("the window is longer than function {function} allows ({asked}s > {max}s)")]
    WindowTooLong {
        function: String,
        asked: i64,
        max: i64,
    },
    /// A blank name must not quietly widen a grant to the whole site.
    #[error("an empty device name: name each device, or none for the whole site")]
    EmptyDeviceName,
    #[error("--max-window must be positive")]
    MaxWindowNotPositive,
    #[error(
        "--max-window is at most 366 days ({MAX_WINDOW}s); longer access is standing access, not a window"
    )]
    MaxWindowTooLong,
    #[error(
        "an emergency function needs the vendor organisations pre-approved to open it (--orgs)"
    )]
    EmergencyWithoutOrgs,
    #[error(
        "only an emergency function (pre-approved for break-glass) can be offline-ok: add it with --emergency --orgs"
    )]
    OfflineOkNotEmergency,
    #[error("an approver needs --sites or --regions")]
    ApproverWithoutScope,
    #[error("nothing to change: give at least one of the options")]
    NothingToChange,
    /// A request's or break-glass opening's duration outside 1s..the function's longest window.
    #[error("the duration must be between 1s and {max}s for function {function}")]
    Duration { function: String, max: i64 },
    #[error("a request needs a reason")]
    RequestWithoutReason,
    #[error("break-glass needs a reason")]
    BreakGlassWithoutReason,
    #[error("function {function} is not pre-approved for emergency use by {org}")]
    NotPreApproved { function: String, org: String },
    #[error("salt: {0}")]
    PasswordSalt(argon2::password_hash::Error),
    #[error("hashing password: {0}")]
    PasswordHash(argon2::password_hash::Error),
    #[error("checkpoint: {0}")]
    Checkpoint(serde_json::Error),
    #[error("stored checkpoint: {0}")]
    StoredCheckpoint(serde_json::Error),
    #[error(transparent)]
    RotateCommand(#[from] crate::actions::template::TemplateError),
}

/// An insert's error: a duplicate is `duplicate`, a reference to nothing is `missing`.
pub(crate) fn insert_error(e: sqlx::Error, duplicate: Conflict, missing: Missing) -> StoreError {
    match &e {
        sqlx::Error::Database(d) if d.is_unique_violation() => StoreError::Conflict(duplicate),
        sqlx::Error::Database(d) if d.is_foreign_key_violation() => StoreError::NotFound(missing),
        _ => StoreError::Db(e),
    }
}

/// [`insert_error`] for rows whose references the caller does not name.
pub(crate) fn conflict_on_unique(e: sqlx::Error, duplicate: Conflict) -> StoreError {
    let missing = Missing::Reference(Box::new(duplicate.clone()));
    insert_error(e, duplicate, missing)
}
