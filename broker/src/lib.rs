//! Postern's data plane: everything that touches a socket or a process.
//!
//! The `postern` binary (`src/bin/postern/`) is a thin shell over this library: clap types, one
//! module per subcommand, and the device simulator and load generator. Nothing here depends on
//! the binary. `ARCHITECTURE.md` follows one vendor session through these modules.
//!
//! - [`server`] assembles a node from its data directory ([`Server::build`]), serves it
//!   ([`Server::run`]) and drains live sessions on the way out.
//! - [`frontdoor`] accepts SSH connections and authenticates vendors; [`admission`] caps what an
//!   unauthenticated crowd may hold; [`login`] parses `VENDOR:SITE/DEVICE[:FUNCTION]`.
//! - [`session`] is one vendor's live session and its supervisor; [`proxy`] its channels;
//!   [`upstream`] the broker's own connection to a device; [`transfer`] follows file transfers;
//!   [`request_flow`] files requests and opens break-glass from the vendor's terminal.
//! - [`recording`], [`journal`] and [`checkpointer`] keep the evidence; [`webhook`] delivers
//!   notifications; [`web`] serves the approvers' UI.
//! - [`node`] is an opened data directory; [`init`] creates one; [`config`] reads
//!   `postern.toml`; [`keys`] holds every key file; [`enrol`] issues vendor certificates;
//!   [`vendor_ca`] the CAs a node trusts.
//! - [`sys`] is the only place with `unsafe` (rlimits, termios, SIGPIPE).

#![deny(unsafe_code)]

pub mod admission;
pub mod checkpointer;
pub mod config;
pub mod device_admin;
pub mod device_web;
pub mod edge;
pub mod enrol;
pub mod evidence_store;
pub mod frontdoor;
pub mod init;
pub mod journal;
pub mod keys;
pub mod login;
pub mod master_key;
pub mod metrics;
pub mod node;
pub mod proxy;
pub mod recording;
pub mod request_flow;
pub mod rotation;
pub mod scan;
pub mod scheduled_rotation;
pub mod self_service;
pub mod server;
pub mod session;
pub mod ssh_config;
pub mod sys;
pub mod transfer;
pub mod upstream;
pub mod vendor_ca;
pub mod web;
pub mod webdoor;
pub mod webhook;

pub use node::Node;
pub use server::Server;
