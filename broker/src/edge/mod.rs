//! Site edges: the same binary at a site (`postern edge run`), dialing out to the central over
//! mutually authenticated TLS 1.3, so that the central reaches devices behind NAT.
//!
//! - [`ca`]: the central's edge CA (`DATA/keys/edge_ca.{key,crt}`), which issues edges' client
//!   certificates from their CSRs and the central's own server certificate.
//! - [`token`]: the one-time join token, which also pins the edge CA (by its SHA-256).
//! - [`wire`]: the few framed messages both ends exchange (join, welcome, open a device).
//! - [`tls`]: rustls configurations (TLS 1.3 only; client certificates checked against the edge
//!   CA, then against the edge's registration: identity from the certificate's SAN URI).
//! - [`hub`]: the central side: one link per connected edge, their liveness and revocation, and
//!   opening a stream to a device through the link of the edge serving its site.
//! - [`listener`]: the central's edge listener: join, registration check, welcome, link driver.
//! - [`agent`]: the edge side: `edge join` and `edge run` (reconnect with jittered backoff).
//!
//! Design note: one TLS connection per edge carries many streams, multiplexed by `tokio-yamux`.
//! The central opens the streams (one per upstream device connection), which rules out HTTP/2
//! (`h2`: only the client opens streams, and flow control needs manual capacity release), and
//! `tokio-yamux` is the tokio-native yamux with a keepalive (pings) that notices a dead link,
//! where the `yamux` crate is poll-only and has none. The central speaks first on a new link
//! (with TLS 1.3 a refused client certificate only shows on the client's first read).

pub mod agent;
pub mod ca;
mod evidence;
pub mod hub;
pub mod join;
pub mod listener;
pub mod policy;
mod publish;
mod scope;
mod shipper;
pub mod site;
pub mod tls;
pub mod token;
pub mod wire;

/// The URI SAN every edge certificate carries: `postern-edge:NAME`. The central reads the
/// edge's identity from it, never from anything the edge says.
pub const EDGE_URI_PREFIX: &str = "postern-edge:";

/// The name the central's server certificate carries; edges check it (and the pinned CA), not
/// the host name they dial, which may be an address or a load balancer.
pub const CENTRAL_NAME: &str = "postern-central";
