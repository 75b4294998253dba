//! Postern's control plane: the directory (vendors, sites, devices, functions), grants, sessions,
//! the policy decision and the audit log.
//!
//! The broker asks [`PolicyGate`] — which loads the facts from the [`Store`] and applies
//! [`policy::decide`], one pure function — at session start and at every new channel; it never
//! decides on its own.

#![forbid(unsafe_code)]

pub mod actions;
pub mod approvers;
pub mod audit;
pub mod breakglass;
pub mod bundle;
pub mod checkpoint;
pub mod exceptions;
pub mod lockout;
pub mod model;
pub mod notify;
pub mod policy;
pub mod ratelimit;
pub mod report;
pub mod secrets;
pub mod store;
pub mod text;
pub mod time;
pub mod totp;
pub mod verify;
pub mod web;

pub use actions::{ActionError, Actions, Actor, ImportSummary};
pub use approvers::{AccessRequestRow, Approver, NewRequest, WebLogin};
pub use audit::AuditLog;
pub use breakglass::{BreakGlass, NewBreakGlass};
pub use model::VendorCa;
pub use model::{
    Channel, ChannelSet, ChannelSetError, CommandRow, CredentialKind, Device, Function, Grant,
    IssuedCertificate, RequestStatus, Session, Site, Vendor,
};
pub use notify::{Event, Notifier};
pub use policy::{AccessRequest, Allowed, Decision, Deny, Facts, PolicyGate, Refusal, decide};
pub use store::{NewDevice, NewGrant, Store, StoreError};
