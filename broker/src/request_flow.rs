//! Access requests from ssh: a vendor without a grant who names a function is offered, in their
//! own terminal, to file a request (reason and duration). The connection then waits with a status
//! line; once an approver grants it the session goes straight on to the device, and if they deny
//! it the vendor sees their reason.
//!
//! A vendor whose organisation is pre-approved for an emergency function is offered break-glass
//! instead: a reason, and the session opens at once, flagged for review, with every approver of
//! the site notified.

use approvals::audit::AuditEvent;
use std::sync::Arc;
use std::time::Duration;

use approvals::time::{fmt_time, now};
use approvals::{
    AccessRequest, AccessRequestRow, Allowed, BreakGlass, Event, NewBreakGlass, NewRequest,
    PolicyGate, Refusal,
};
use russh::Channel;
use russh::server::{Handle, Msg};
use serde_json::json;

use crate::login::Target;
use crate::proxy;
use crate::session::{Ctx, LiveSession};

mod dialogue;
use dialogue::{Dialogue, Waited};

/// Runs the request dialogue on a session channel. `set_live` registers the session once it starts.
pub async fn offer(
    ctx: Arc<Ctx>,
    target: Target,
    refusal: String,
    vch: Channel<Msg>,
    handle: Handle,
    source: String,
    set_live: impl FnOnce(Arc<LiveSession>),
) {
    let Some(function) = target.function.clone() else {
        return;
    };
    let mut dialogue = Dialogue::new(vch, handle);
    if !dialogue.until_shell(&refusal).await {
        return;
    }
    let Some((max, breakglass)) = terms(&ctx, &target, &function).await else {
        dialogue.refuse(&refusal).await;
        return;
    };
    let asking = Asking {
        ctx,
        target,
        function,
        source,
        dialogue,
    };
    if breakglass {
        asking.breakglass(&refusal, max, set_live).await;
    } else {
        asking.request(&refusal, max, set_live).await;
    }
}

/// What the function allows this vendor: its longest window, and whether their organisation may
/// open it at once (break-glass). `None` if the function cannot be read.
async fn terms(ctx: &Ctx, target: &Target, function: &str) -> Option<(i64, bool)> {
    let f = ctx.store.function(function).await.ok().flatten()?;
    let org = match ctx.store.vendor(&target.vendor).await {
        Ok(Some(v)) => v.org,
        _ => String::new(),
    };
    Some((f.max_window, f.emergency_open_to(&org)))
}

async fn approvers_of(ctx: &Ctx, site: &str) -> Vec<String> {
    ctx.store
        .approvers_of(site)
        .await
        .map(|a| a.into_iter().map(|a| a.name).collect())
        .unwrap_or_default()
}

/// A vendor asking for a function on one device, and the terminal the dialogue runs in.
struct Asking {
    ctx: Arc<Ctx>,
    target: Target,
    function: String,
    source: String,
    dialogue: Dialogue,
}

impl Asking {
    /// Files an access request, waits for the decision and, once granted, goes on to the device.
    async fn request(mut self, refusal: &str, max: i64, set_live: impl FnOnce(Arc<LiveSession>)) {
        if !self.none_waiting(refusal).await {
            return;
        }
        let heading = format!(
            "postern: {refusal}.\r\nYou can ask for access now. Reason (empty to cancel): "
        );
        let Some((reason, duration)) = self.dialogue.ask(&heading, max, max.min(3600)).await else {
            self.dialogue.refuse("no request filed").await;
            return;
        };
        let Some(req) = self.file(reason, duration).await else {
            return;
        };
        let Some(by) = self.decision(&req).await else {
            return;
        };
        let banner = |end| {
            format!(
                "postern: request {} granted by {by} until {}.\r\n",
                req.id,
                fmt_time(end)
            )
        };
        self.proceed(set_live, banner, None).await;
    }

    /// One open request per vendor, device and function: say so before asking anything. (The
    /// database refuses a second one anyway, should two connections race past this check.)
    async fn none_waiting(&self, refusal: &str) -> bool {
        let t = &self.target;
        let waiting = (self.ctx.store)
            .pending_request(&t.vendor, &t.site, &t.device, &self.function)
            .await;
        match waiting {
            Ok(None) => true,
            Ok(Some(p)) => {
                let message = format!(
                    "{refusal}; {} (connect again once it is decided)",
                    p.already_waiting()
                );
                self.dialogue.refuse(&message).await;
                false
            }
            Err(e) => {
                tracing::warn!(error = %e, "request flow: control plane unavailable");
                self.dialogue.refuse(crate::session::OUTAGE).await;
                false
            }
        }
    }

    /// Files the request, audits it and notifies the site's approvers. `None` (the vendor told
    /// why) if the store does not take it.
    async fn file(&self, reason: String, duration: i64) -> Option<AccessRequestRow> {
        let ask = NewRequest {
            vendor: self.target.vendor.clone(),
            site: self.target.site.clone(),
            device: self.target.device.clone(),
            function: self.function.clone(),
            reason,
            duration,
        };
        let req = match self.ctx.store.add_request(&ask, now()).await {
            Ok(r) => r,
            Err(e) => {
                let message = format!("the request could not be filed: {e}");
                self.dialogue.refuse(&message).await;
                return None;
            }
        };
        let approvers = approvers_of(&self.ctx, &self.target.site).await;
        let fields = json!({"request": req.id, "vendor": req.vendor, "site": req.site, "device": req.device,
                            "function": req.function, "reason": req.reason, "duration": req.duration,
                            "approvers": approvers});
        self.ctx
            .audit(AuditEvent::RequestFiled, fields.clone())
            .await;
        let text = format!(
            "{} asks for {} at {}/{} for {}: {} (request {})",
            req.vendor,
            req.function,
            req.site,
            req.device,
            humantime::format_duration(Duration::from_secs(req.duration.max(0) as u64)),
            req.reason,
            req.id
        );
        (self.ctx.notifier)
            .notify(Event::RequestFiled, &text, fields)
            .await;
        Some(req)
    }

    /// Waits for an approver and returns who granted the request. A denial, the vendor giving up
    /// and the wait running out are told to the vendor (`None`), as is nothing once the channel
    /// has closed.
    async fn decision(&mut self, req: &AccessRequestRow) -> Option<String> {
        let decided = match self.wait(req).await {
            Waited::Decided(r) => r,
            Waited::GaveUp => {
                self.dialogue.say("\r\x1b[K").await;
                let message = format!(
                    "request {} is still waiting for an approver; connect again once it is granted",
                    req.id
                );
                self.dialogue.refuse(&message).await;
                return None;
            }
            Waited::Gone => return None,
        };
        self.dialogue.say("\r\x1b[K").await;
        if decided.status == approvals::RequestStatus::Expired {
            let why = decided.decision_reason.unwrap_or_default();
            let message = format!(
                "request {} expired: {why}; connect again to ask anew",
                req.id
            );
            self.dialogue.refuse(&message).await;
            return None;
        }
        let by = decided.decided_by.unwrap_or_default();
        if decided.status != approvals::RequestStatus::Approved {
            let why = decided.decision_reason.unwrap_or_default();
            // The approver's words, shown on the vendor's terminal: escaped, never acted on.
            let message = format!(
                "request {} was denied by {by}: {}",
                req.id,
                approvals::text::printable(&why)
            );
            self.dialogue.refuse(&message).await;
            return None;
        }
        Some(by)
    }

    /// Waits for a decision, showing how long it has been. Keys pressed while waiting (other than
    /// Ctrl-C) are not for the device.
    async fn wait(&mut self, req: &AccessRequestRow) -> Waited {
        let started = tokio::time::Instant::now();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if let Some(end) = self.poll(req, started).await {
                        return end;
                    }
                }
                end = self.dialogue.while_waiting() => {
                    if let Some(end) = end {
                        return end;
                    }
                }
            }
        }
    }

    /// Looks at the request once a second and shows the vendor how long it has waited.
    async fn poll(&self, req: &AccessRequestRow, started: tokio::time::Instant) -> Option<Waited> {
        match self.ctx.store.request(&req.id).await {
            Ok(Some(r)) if r.status != approvals::RequestStatus::Pending => {
                return Some(Waited::Decided(Box::new(r)));
            }
            _ => {}
        }
        if started.elapsed() > self.ctx.request_wait {
            return Some(Waited::GaveUp);
        }
        let s = started.elapsed().as_secs();
        let status = format!(
            "\r\x1b[Kpostern: request {} is waiting for an approver ({}:{:02}; Ctrl-C stops waiting)",
            req.id,
            s / 60,
            s % 60
        );
        self.dialogue.say(&status).await;
        None
    }

    /// Asks for the emergency's reason and opens break-glass.
    async fn breakglass(
        mut self,
        refusal: &str,
        max: i64,
        set_live: impl FnOnce(Arc<LiveSession>),
    ) {
        let heading = format!(
            "postern: {refusal}.\r\n{function} is an emergency function your organisation may open at once (break-glass).\r\nEvery approver of {site} is notified and the session is flagged for review.\r\nReason for the emergency (empty to cancel): ",
            function = self.function,
            site = self.target.site
        );
        let Some((reason, duration)) = self.dialogue.ask(&heading, max, max).await else {
            self.dialogue.refuse("break-glass not opened").await;
            return;
        };
        self.open_breakglass(reason, duration, set_live).await;
    }

    /// Opens break-glass access at once: the grant, the flagged record, the notification to every
    /// approver of the site, then the session.
    async fn open_breakglass(
        self,
        reason: String,
        duration: i64,
        set_live: impl FnOnce(Arc<LiveSession>),
    ) {
        let ask = NewBreakGlass {
            vendor: self.target.vendor.clone(),
            site: self.target.site.clone(),
            device: self.target.device.clone(),
            function: self.function.clone(),
            reason,
            duration,
        };
        let (bg, grant) = match self.ctx.store.open_breakglass(&ask, now()).await {
            Ok(x) => x,
            Err(e) => {
                let message = format!("break-glass could not be opened: {e}");
                self.dialogue.refuse(&message).await;
                return;
            }
        };
        if !self.announce(&bg, &grant.id).await {
            return;
        }
        let banner = |end| {
            format!(
                "postern: break-glass {} open until {}; every approver of the site has been told and this session is flagged for review.\r\n",
                bg.id,
                fmt_time(end)
            )
        };
        self.proceed(set_live, banner, Some(bg.id.clone())).await;
    }

    /// Audits the break-glass and notifies every approver of the site. Emergency access that is
    /// not on record is withdrawn (fail closed): `false`, and the vendor is told.
    async fn announce(&self, bg: &BreakGlass, grant: &str) -> bool {
        let approvers = approvers_of(&self.ctx, &self.target.site).await;
        let fields = json!({"breakglass": bg.id, "vendor": bg.vendor, "org": bg.org, "site": bg.site, "device": bg.device,
                            "function": bg.function, "reason": bg.reason, "grant": grant, "until": bg.valid_until,
                            "approvers": approvers});
        if !self
            .ctx
            .audit(AuditEvent::BreakglassOpen, fields.clone())
            .await
        {
            let _ = (self.ctx.store)
                .revoke_grant(grant, "break-glass", now())
                .await;
            (self.dialogue)
                .refuse("break-glass could not be recorded; access not opened")
                .await;
            return false;
        }
        let text = format!(
            "BREAK-GLASS: {} ({}) opened {} at {}/{} until {}: {} ({}; review it in the web UI)",
            bg.vendor,
            bg.org,
            bg.function,
            bg.site,
            bg.device,
            fmt_time(bg.valid_until),
            bg.reason,
            bg.id
        );
        (self.ctx.notifier)
            .notify(Event::BreakGlassOpened, &text, fields)
            .await;
        true
    }

    /// The same policy decision as at any session start. A refusal is told to the vendor (`None`).
    async fn allowed(&self) -> Option<Allowed> {
        let q = AccessRequest {
            vendor: self.target.vendor.clone(),
            site: self.target.site.clone(),
            device: self.target.device.clone(),
            function: Some(self.function.clone()),
            channel: None,
        };
        match PolicyGate::new(&self.ctx.store).check(&q).await {
            Ok(a) => Some(a),
            Err(Refusal::Unavailable(e)) => {
                tracing::warn!(error = %e, "request flow: control plane unavailable");
                self.dialogue.refuse(crate::session::OUTAGE).await;
                None
            }
            Err(Refusal::Deny(reason)) => {
                self.ctx.metrics.denied(reason.code());
                self.dialogue.refuse(&reason.to_string()).await;
                None
            }
        }
    }

    /// Access was granted while the vendor waited: the policy decides again, then the session
    /// starts (flagged when it is break-glass `breakglass`) and goes on to the device.
    async fn proceed(
        self,
        set_live: impl FnOnce(Arc<LiveSession>),
        banner: impl FnOnce(i64) -> String,
        breakglass: Option<String>,
    ) {
        let Some(allowed) = self.allowed().await else {
            return;
        };
        let Asking {
            ctx,
            target,
            source,
            dialogue,
            ..
        } = self;
        dialogue.say(&banner(allowed.window_end)).await;
        let started = LiveSession::start(
            &ctx,
            target,
            &allowed,
            source,
            Some(dialogue.handle().clone()),
        );
        let live = match started.await {
            Ok(l) => l,
            Err(e) => {
                dialogue.refuse(&format!("access denied: {e}")).await;
                return;
            }
        };
        if let Some(bg) = &breakglass
            && let Err(e) = ctx.store.flag_session_breakglass(&live.id, bg).await
        {
            tracing::warn!(session = %live.id, error = %e, "could not flag the break-glass session");
        }
        set_live(live.clone());
        connect(&ctx, &live, dialogue).await;
    }
}

/// Connects the session's channel to the device and starts proxying it: what the vendor's client
/// asked for and typed meanwhile goes first.
async fn connect(ctx: &Arc<Ctx>, live: &Arc<LiveSession>, dialogue: Dialogue) {
    let (vch, handle, kept) = dialogue.into_parts();
    let id = vch.id();
    let upstream = match live.upstream(ctx).await {
        Ok(u) => u,
        Err(e) => {
            let reason = e.to_string();
            proxy::refuse(&handle, id, &reason).await;
            live.request_close(reason);
            return;
        }
    };
    match upstream.channel_open_session().await {
        Ok(uch) => {
            let task = tokio::spawn(proxy::session_channel(
                ctx.clone(),
                live.clone(),
                vch,
                uch,
                kept,
            ));
            live.add_task(task.abort_handle());
        }
        Err(e) => {
            let message = format!("the device refused the session: {e}");
            proxy::refuse(&handle, id, &message).await;
            live.request_close("the device refused the session");
        }
    }
}
