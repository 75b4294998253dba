//! The SSH front door: a russh server that authenticates vendors by certificate then TOTP, asks the
//! policy decision, and hands channels to the proxy.
//!
//! - [`listener`]: the accept loop, admission, the login grace cut and the connection's summary.
//! - [`handler`]: the thin russh `Handler`; it counts calls and delegates to the steps below.
//! - [`state`]: where a connection stands ([`state::ConnState`]) and, once both factors passed,
//!   what the policy made of it ([`state::Outcome`]).
//! - [`auth`]: the certificate check, and how each failure is audited, counted and delayed.
//! - [`totp`]: the TOTP code at the keyboard-interactive prompt.
//! - [`channels`]: what a session channel or a forward gets in each outcome.

mod auth;
mod channels;
mod handler;
mod listener;
mod self_service;
mod state;
mod totp;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use russh::MethodKind;
use russh::MethodSet;
use russh::keys::PrivateKey;

pub use crate::session::OUTAGE;
pub use listener::serve;

use crate::session::Ctx;
use listener::ConnShared;
use state::ConnState;

/// The longest SSH user name looked at: `VENDOR:SITE/DEVICE:FUNCTION` with 64-character parts
/// fits easily. Longer names are refused before anything else happens.
pub const MAX_USER: usize = 300;
/// How much of a client-supplied name or reason goes into the audit log.
const LOGGED: usize = 200;
/// Authentication callbacks one connection may make (each key offered is one) before it is
/// dropped: every offer costs a database lookup.
const MAX_AUTH_CALLS: u32 = 32;
/// Plain keys per connection looked up in the registry to explain a refusal.
const MAX_KEY_LOOKUPS: u32 = 3;

/// One vendor connection, as the russh handler sees it.
pub struct Conn {
    ctx: Arc<Ctx>,
    peer: SocketAddr,
    /// The address the vendor reached (for the `VENDOR:config` block).
    local: SocketAddr,
    state: ConnState,
    tries: Tries,
    /// What the task waiting for the connection's end needs from it.
    shared: Arc<ConnShared>,
}

/// What a connection has used up, or run into, while authenticating (whatever its state).
#[derive(Default)]
struct Tries {
    /// Authentication callbacks so far.
    calls: u32,
    /// Plain keys looked up in the certificate registry so far.
    key_lookups: u32,
    /// The control plane failed during authentication: a vendor without a passed certificate
    /// is told so at the keyboard-interactive step.
    control_plane_down: bool,
}

impl Conn {
    fn new(ctx: Arc<Ctx>, peer: SocketAddr, local: SocketAddr, shared: Arc<ConnShared>) -> Conn {
        Conn {
            ctx,
            peer,
            local,
            state: ConnState::Unauthenticated,
            tries: Tries::default(),
            shared,
        }
    }

    /// Counts an authentication callback; an error (drop the connection) once it made too many.
    fn count_call(&mut self) -> Result<(), russh::Error> {
        let previous = self.tries.calls;
        self.tries.calls = previous.saturating_add(1);
        if previous < MAX_AUTH_CALLS {
            Ok(())
        } else {
            Err(russh::Error::Disconnect)
        }
    }

    /// The key failures are counted under: the address, or its /64 for IPv6.
    fn source(&self) -> String {
        approvals::audit::source_key(self.peer.ip()).to_string()
    }
}

/// Server configuration for the vendor side.
pub fn server_config(host_key: PrivateKey) -> Arc<russh::server::Config> {
    Arc::new(russh::server::Config {
        server_id: russh::SshId::Standard("SSH-2.0-Postern".into()),
        methods: MethodSet::from(&[MethodKind::PublicKey, MethodKind::KeyboardInteractive][..]),
        // No blanket delay: OpenSSH's normal path here includes two refusals (the bare key it
        // offers before the certificate, and the certificate's partial success), which a delay
        // would add to every login. Genuine failures wait in `auth::FAILURE_DELAY`.
        auth_rejection_time: Duration::ZERO,
        auth_rejection_time_initial: Some(Duration::ZERO),
        keys: vec![host_key],
        max_auth_attempts: 10,
        inactivity_timeout: Some(Duration::from_secs(3600)),
        // russh sends its keepalive even while the client is still authenticating, and OpenSSH
        // then drops the connection ("bad message during authentication"): a vendor who takes
        // more than the interval to type the TOTP code would be cut off. Dead connections are
        // found by TCP keepalive instead (see `serve`).
        keepalive_interval: None,
        nodelay: true,
        ..Default::default()
    })
}
