//! What a channel the vendor opens gets: the device, the request dialogue, the vendor's request
//! list, or one line saying why not.

use std::sync::Arc;
use std::time::Duration;

use approvals::RequestStatus;
use approvals::audit::bounded;
use russh::server::{ChannelOpenHandle, Handle, Msg};
use russh::{Channel, ChannelOpenFailure};
use tracing::{info, warn};

use super::state::{ConnState, Outcome, Ready};
use super::{Conn, OUTAGE};
use crate::login::Target;
use crate::proxy;
use crate::session::{Ctx, LiveSession};

impl Conn {
    /// A session channel (shell, exec, subsystem).
    pub(super) async fn open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        handle: Handle,
    ) {
        if let ConnState::Ready(Ready {
            target,
            outcome: Outcome::Listing,
            ..
        }) = &self.state
        {
            reply.accept().await;
            let (ctx, vendor) = (self.ctx.clone(), target.vendor.clone());
            tokio::spawn(list_requests(ctx, vendor, channel, handle));
            return;
        }
        if let Some(job) = self.self_service_job() {
            reply.accept().await;
            tokio::spawn(job.run(self.ctx.clone(), channel, handle));
            return;
        }
        if let Some(target) = self.request_offer() {
            // No grant for a named function: offer to file a request from this terminal.
            reply.accept().await;
            self.spawn_offer(target, channel, handle);
            return;
        }
        let Some(live) = self.live().filter(|l| !l.is_closed()) else {
            // Accept only to say why, then close: the vendor sees one plain line.
            reply.accept().await;
            if let ConnState::Ready(Ready {
                outcome: Outcome::Unavailable(e),
                ..
            }) = &self.state
            {
                info!(peer = %self.peer, error = %e, "session channel refused: the control plane was unavailable at login");
            }
            let msg = self.state.refusal();
            tokio::spawn(async move {
                proxy::refuse_when_asked(&handle, channel, &msg).await;
            });
            return;
        };
        self.proxy_session(live, channel, reply, handle).await;
    }

    /// The target to offer a request for, if the policy's answer allows one and no session
    /// runs on this connection yet.
    fn request_offer(&self) -> Option<Target> {
        match &self.state {
            ConnState::Ready(ready) if ready.offers_request() && self.live().is_none() => {
                Some(ready.target.clone())
            }
            _ => None,
        }
    }

    /// Runs the request dialogue on this channel; a session it starts becomes the
    /// connection's.
    fn spawn_offer(&self, target: Target, channel: Channel<Msg>, handle: Handle) {
        let ConnState::Ready(ready) = &self.state else {
            return;
        };
        let (shared, permits) = (self.shared.clone(), ready.permits);
        tokio::spawn(crate::request_flow::offer(
            self.ctx.clone(),
            target,
            self.state.refusal(),
            channel,
            handle,
            self.peer.to_string(),
            move |live| {
                live.set_permits(permits);
                shared.set_live(live);
            },
        ));
    }

    /// Opens the matching channel on the device and proxies between the two.
    async fn proxy_session(
        &self,
        live: Arc<LiveSession>,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        handle: Handle,
    ) {
        let upstream = match live.upstream(&self.ctx).await {
            Ok(u) => u,
            Err(e) => {
                reply.accept().await;
                tokio::spawn(async move {
                    proxy::refuse_when_asked(&handle, channel, &e.to_string()).await;
                });
                return;
            }
        };
        match upstream.channel_open_session().await {
            Ok(uch) => {
                reply.accept().await;
                let task = tokio::spawn(proxy::session_channel(
                    self.ctx.clone(),
                    live.clone(),
                    channel,
                    uch,
                    Vec::new(),
                ));
                live.add_task(task.abort_handle());
            }
            Err(e) => {
                warn!(error = %e, "device refused a session channel");
                reply.reject(ChannelOpenFailure::ConnectFailed).await;
            }
        }
    }

    /// A local forward (`ssh -L`) to a port on the device.
    pub(super) async fn open_forward(
        &self,
        channel: Channel<Msg>,
        host: &str,
        port: u32,
        originator: (&str, u32),
        reply: ChannelOpenHandle,
    ) {
        let Some(live) = self.live().filter(|l| !l.is_closed()) else {
            reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return;
        };
        if !self.forward_allowed(&live, host, port).await {
            reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return;
        }
        let Ok(upstream) = live.upstream(&self.ctx).await else {
            reply.reject(ChannelOpenFailure::ConnectFailed).await;
            return;
        };
        let _ = live.recording.write(
            u32::from(channel.id()),
            &recorder::events::ChannelOpen::DirectTcpip { port },
        );
        match upstream
            .channel_open_direct_tcpip("127.0.0.1", port, originator.0, originator.1)
            .await
        {
            Ok(uch) => {
                reply.accept().await;
                let task = tokio::spawn(proxy::forward_channel(
                    self.ctx.clone(),
                    live.clone(),
                    channel,
                    uch,
                    port,
                ));
                live.add_task(task.abort_handle());
            }
            Err(_) => reply.reject(ChannelOpenFailure::ConnectFailed).await,
        }
    }

    /// Whether this forward may be opened; the answer is audited either way.
    async fn forward_allowed(&self, live: &LiveSession, host: &str, port: u32) -> bool {
        let kind = format!("forward:{port}");
        // Forwards reach services on the device itself, never a third host.
        let local = matches!(host, "localhost" | "127.0.0.1" | "::1") || host == live.target.device;
        let refusal = match (local, u16::try_from(port)) {
            // As sshd: a certificate without permit-port-forwarding forwards nothing.
            _ if !live.permits().port_forwarding => {
                "port forwarding is not permitted by your certificate (no permit-port-forwarding)"
                    .to_string()
            }
            (false, _) => format!(
                "forward target {} is not the device: use localhost:{port}",
                bounded(host, 80)
            ),
            (true, Ok(p)) => {
                let channel = approvals::Channel::Forward(p);
                return proxy::allowed(&self.ctx, live, channel).await.is_ok();
            }
            (true, Err(_)) => format!("port {port} is out of range"),
        };
        proxy::audited_answer(&self.ctx, live, &kind, Some(refusal))
            .await
            .is_ok()
    }
}

/// Writes the vendor's own requests to the channel, then closes it.
async fn list_requests(ctx: Arc<Ctx>, vendor: String, channel: Channel<Msg>, handle: Handle) {
    let id = channel.id();
    let text = requests_listing(&ctx, &vendor).await;
    let _ = handle.data(id, text.into_bytes()).await;
    let _ = handle.exit_status_request(id, 0).await;
    let _ = handle.eof(id).await;
    let _ = handle.close(id).await;
    drop(channel);
}

/// A vendor's own access requests, newest first, as text for their terminal.
async fn requests_listing(ctx: &Ctx, vendor: &str) -> String {
    let rows = match approvals::store::deadline(ctx.store.requests_of_vendor(vendor)).await {
        Ok(r) => r,
        Err(e) => {
            warn!(error = %e, "requests listing: control plane unavailable");
            return format!("postern: {OUTAGE}\r\n");
        }
    };
    if rows.is_empty() {
        return "postern: you have filed no access requests\r\n".into();
    }
    let mut out = String::new();
    for r in rows {
        let decision = match (r.status, &r.decided_by, &r.decision_reason) {
            (RequestStatus::Approved, Some(by), _) => format!(
                "approved by {by} (grant {})",
                r.grant_id.clone().unwrap_or_default()
            ),
            (RequestStatus::Denied, Some(by), reason) => format!(
                "denied by {by}: {}",
                approvals::text::printable(reason.as_deref().unwrap_or_default())
            ),
            (RequestStatus::Expired, _, Some(reason)) => format!("expired: {reason}"),
            (status, _, _) => status.to_string(),
        };
        out.push_str(&format!(
            "{}  {}  {}/{}:{}  {}  \"{}\"  {}\r\n",
            r.id,
            approvals::time::fmt_time(r.created),
            r.site,
            r.device,
            r.function,
            humantime::format_duration(Duration::from_secs(r.duration.max(0) as u64)),
            r.reason,
            decision
        ));
    }
    out
}
