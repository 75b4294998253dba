//! Access requests from ssh: a vendor without a grant who names a function is offered, in their
//! own terminal, to file a request (reason and duration). The connection then waits with a status
//! line; once an approver grants it the session goes straight on to the device, and if they deny
//! it the vendor sees their reason.
//!
//! A vendor whose organisation is pre-approved for an emergency function is offered break-glass
//! instead: a reason, and the session opens at once, flagged for review, with every approver of
//! the site notified.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use approvals::time::{fmt_time, now, parse_duration};
use approvals::{AccessRequest, Event, NewBreakGlass, NewRequest, PolicyGate, Refusal};
use russh::server::{Handle, Msg};
use russh::{Channel, ChannelId, ChannelMsg};
use serde_json::json;

use crate::login::Target;
use crate::proxy;
use crate::session::{Ctx, LiveSession};

async fn say(handle: &Handle, id: ChannelId, text: &str) {
    let _ = handle.data(id, text.as_bytes().to_vec()).await;
}

/// Runs the request dialogue on a session channel. `set_live` registers the session once it starts.
pub async fn offer(
    ctx: Arc<Ctx>,
    target: Target,
    refusal: String,
    mut vch: Channel<Msg>,
    handle: Handle,
    source: String,
    set_live: impl FnOnce(Arc<LiveSession>),
) {
    let id = vch.id();
    let Some(function) = target.function.clone() else {
        return;
    };
    // Until the shell request, keep what the vendor's client asks for; the device gets it later.
    let mut kept = Vec::new();
    let mut pty = false;
    loop {
        match vch.wait().await {
            Some(m @ ChannelMsg::RequestPty { .. }) => {
                pty = true;
                let _ = handle.channel_success(id).await;
                kept.push(m);
            }
            Some(m @ (ChannelMsg::SetEnv { .. } | ChannelMsg::WindowChange { .. })) => kept.push(m),
            Some(m @ ChannelMsg::RequestShell { .. }) => {
                let _ = handle.channel_success(id).await;
                kept.push(m);
                break;
            }
            Some(ChannelMsg::Exec { .. } | ChannelMsg::RequestSubsystem { .. }) => {
                proxy::refuse(
                    &handle,
                    id,
                    &format!(
                        "{refusal} (to request access, connect with a terminal and no command)"
                    ),
                )
                .await;
                return;
            }
            Some(ChannelMsg::Close | ChannelMsg::Eof) | None => return,
            Some(_) => {}
        }
    }
    if !pty {
        proxy::refuse(
            &handle,
            id,
            &format!("{refusal} (to request access, connect with a terminal: ssh -t)"),
        )
        .await;
        return;
    }
    let (max, breakglass) = match ctx.store.function(&function).await {
        Ok(Some(f)) => {
            let org = match ctx.store.vendor(&target.vendor).await {
                Ok(Some(v)) => v.org,
                _ => String::new(),
            };
            (f.max_window, f.emergency_open_to(&org))
        }
        _ => {
            proxy::refuse(&handle, id, &refusal).await;
            return;
        }
    };
    let mut dialogue = Dialogue {
        vch,
        handle: handle.clone(),
        kept,
        typed: VecDeque::new(),
    };
    if breakglass {
        let heading = format!(
            "postern: {refusal}.\r\n{function} is an emergency function your organisation may open at once (break-glass).\r\nEvery approver of {site} is notified and the session is flagged for review.\r\nReason for the emergency (empty to cancel): ",
            site = target.site
        );
        let Some((reason, duration)) = dialogue.ask(&heading, max, max).await else {
            proxy::refuse(&handle, id, "break-glass not opened").await;
            return;
        };
        open_breakglass(
            ctx, target, function, reason, duration, dialogue, source, set_live,
        )
        .await;
        return;
    }
    // One open request per vendor, device and function: say so before asking anything. (The
    // database refuses a second one anyway, should two connections race past this check.)
    match ctx
        .store
        .pending_request(&target.vendor, &target.site, &target.device, &function)
        .await
    {
        Ok(None) => {}
        Ok(Some(p)) => {
            proxy::refuse(
                &handle,
                id,
                &format!(
                    "{refusal}; {} (connect again once it is decided)",
                    p.already_waiting()
                ),
            )
            .await;
            return;
        }
        Err(e) => {
            tracing::warn!(error = %e, "request flow: control plane unavailable");
            proxy::refuse(&handle, id, crate::frontdoor::OUTAGE).await;
            return;
        }
    }
    let heading =
        format!("postern: {refusal}.\r\nYou can ask for access now. Reason (empty to cancel): ");
    let Some((reason, duration)) = dialogue.ask(&heading, max, max.min(3600)).await else {
        proxy::refuse(&handle, id, "no request filed").await;
        return;
    };
    let ask = NewRequest {
        vendor: target.vendor.clone(),
        site: target.site.clone(),
        device: target.device.clone(),
        function: function.clone(),
        reason,
        duration,
    };
    let req = match ctx.store.add_request(&ask, now()).await {
        Ok(r) => r,
        Err(e) => {
            proxy::refuse(&handle, id, &format!("the request could not be filed: {e}")).await;
            return;
        }
    };
    let approvers = approvers_of(&ctx, &target.site).await;
    ctx.audit(
        "request.filed",
        json!({"request": req.id, "vendor": req.vendor, "site": req.site, "device": req.device, "function": req.function,
               "reason": req.reason, "duration": req.duration, "approvers": approvers}),
    )
    .await;
    ctx.notifier
        .notify(
            Event::RequestFiled,
            &format!(
                "{} asks for {} at {}/{} for {}: {} (request {})",
                req.vendor,
                req.function,
                req.site,
                req.device,
                humantime::format_duration(Duration::from_secs(req.duration.max(0) as u64)),
                req.reason,
                req.id
            ),
            json!({"request": req.id, "vendor": req.vendor, "site": req.site, "device": req.device, "function": req.function,
                   "reason": req.reason, "duration": req.duration, "approvers": approvers}),
        )
        .await;
    // Wait for a decision, showing how long it has been. Keys pressed while waiting (other than
    // Ctrl-C) are not for the device.
    dialogue.typed.clear();
    let started = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let decided = loop {
        tokio::select! {
            _ = tick.tick() => {
                match ctx.store.request(&req.id).await {
                    Ok(Some(r)) if r.status != approvals::RequestStatus::Pending => break Some(r),
                    _ => {}
                }
                if started.elapsed() > ctx.request_wait {
                    break None;
                }
                let s = started.elapsed().as_secs();
                say(&handle, id, &format!("\r\x1b[Kpostern: request {} is waiting for an approver ({}:{:02}; Ctrl-C stops waiting)", req.id, s / 60, s % 60)).await;
            }
            msg = dialogue.vch.wait() => match msg {
                Some(ChannelMsg::Data { data }) if data.contains(&0x03) => break None,
                Some(m @ ChannelMsg::WindowChange { .. }) => dialogue.kept.push(m),
                Some(ChannelMsg::Close | ChannelMsg::Eof) | None => return,
                _ => {}
            },
        }
    };
    say(&handle, id, "\r\x1b[K").await;
    let Some(decided) = decided else {
        proxy::refuse(
            &handle,
            id,
            &format!(
                "request {} is still waiting for an approver; connect again once it is granted",
                req.id
            ),
        )
        .await;
        return;
    };
    if decided.status != approvals::RequestStatus::Approved {
        let why = decided.decision_reason.unwrap_or_default();
        let by = decided.decided_by.unwrap_or_default();
        proxy::refuse(
            &handle,
            id,
            &format!("request {} was denied by {by}: {why}", req.id),
        )
        .await;
        return;
    }
    let by = decided.decided_by.unwrap_or_default();
    proceed(
        ctx,
        target,
        function,
        dialogue,
        source,
        set_live,
        |end| {
            format!(
                "postern: request {} granted by {by} until {}.\r\n",
                req.id,
                fmt_time(end)
            )
        },
        None,
    )
    .await;
}

async fn approvers_of(ctx: &Ctx, site: &str) -> Vec<String> {
    ctx.store
        .approvers_of(site)
        .await
        .map(|a| a.into_iter().map(|a| a.name).collect())
        .unwrap_or_default()
}

/// The vendor's terminal while the broker asks its questions.
struct Dialogue {
    vch: Channel<Msg>,
    handle: Handle,
    /// Window changes (and the client's early requests) kept for the device.
    kept: Vec<ChannelMsg>,
    /// What the vendor typed past the end of the last answer: the next answer, or keystrokes
    /// meant for the device (it gets them once the session opens).
    typed: VecDeque<u8>,
}

impl Dialogue {
    /// Reads one line typed in the vendor's terminal, echoing it (the broker is the terminal's
    /// far end here). `None` if the vendor cancels (Ctrl-C, Ctrl-D) or the channel closes.
    async fn read_line(&mut self) -> Option<String> {
        let id = self.vch.id();
        let mut line = String::new();
        loop {
            while let Some(b) = self.typed.pop_front() {
                match b {
                    b'\r' | b'\n' => {
                        if b == b'\r' && self.typed.front() == Some(&b'\n') {
                            self.typed.pop_front();
                        }
                        say(&self.handle, id, "\r\n").await;
                        return Some(line);
                    }
                    0x03 | 0x04 => {
                        say(&self.handle, id, "^C\r\n").await;
                        return None;
                    }
                    0x7f | 0x08 if !line.is_empty() => {
                        line.pop();
                        say(&self.handle, id, "\x08 \x08").await;
                    }
                    0x20..=0x7e if line.len() < 200 => {
                        line.push(b as char);
                        let _ = self.handle.data(id, vec![b]).await;
                    }
                    _ => {}
                }
            }
            match self.vch.wait().await? {
                ChannelMsg::Data { data } => self.typed.extend(data.iter()),
                m @ ChannelMsg::WindowChange { .. } => self.kept.push(m),
                ChannelMsg::Close | ChannelMsg::Eof => return None,
                _ => {}
            }
        }
    }

    /// Asks for a reason (after `heading`) and a duration of at most `max` seconds. `None` if the
    /// vendor cancels.
    async fn ask(&mut self, heading: &str, max: i64, default: i64) -> Option<(String, i64)> {
        let id = self.vch.id();
        say(&self.handle, id, heading).await;
        let reason = self.read_line().await.filter(|r| !r.trim().is_empty())?;
        for _ in 0..3 {
            say(
                &self.handle,
                id,
                &format!(
                    "For how long? (at most {}) [{}]: ",
                    humantime::format_duration(Duration::from_secs(max as u64)),
                    humantime::format_duration(Duration::from_secs(default as u64))
                ),
            )
            .await;
            let text = self.read_line().await?;
            match if text.trim().is_empty() {
                Ok(default)
            } else {
                parse_duration(&text)
            } {
                Ok(d) if d <= max => return Some((reason, d)),
                Ok(_) => {
                    say(
                        &self.handle,
                        id,
                        "That is longer than this function allows.\r\n",
                    )
                    .await
                }
                Err(e) => say(&self.handle, id, &format!("{e}\r\n")).await,
            }
        }
        None
    }
}

/// Opens break-glass access at once: the grant, the flagged record, the notification to every
/// approver of the site, then the session.
#[allow(clippy::too_many_arguments)]
async fn open_breakglass(
    ctx: Arc<Ctx>,
    target: Target,
    function: String,
    reason: String,
    duration: i64,
    dialogue: Dialogue,
    source: String,
    set_live: impl FnOnce(Arc<LiveSession>),
) {
    let id = dialogue.vch.id();
    let handle = dialogue.handle.clone();
    let ask = NewBreakGlass {
        vendor: target.vendor.clone(),
        site: target.site.clone(),
        device: target.device.clone(),
        function: function.clone(),
        reason,
        duration,
    };
    let (bg, grant) = match ctx.store.open_breakglass(&ask, now()).await {
        Ok(x) => x,
        Err(e) => {
            proxy::refuse(
                &handle,
                id,
                &format!("break-glass could not be opened: {e}"),
            )
            .await;
            return;
        }
    };
    let approvers = approvers_of(&ctx, &target.site).await;
    let fields = json!({"breakglass": bg.id, "vendor": bg.vendor, "org": bg.org, "site": bg.site, "device": bg.device,
                        "function": bg.function, "reason": bg.reason, "grant": grant.id, "until": bg.valid_until,
                        "approvers": approvers});
    if !ctx.audit("breakglass.open", fields.clone()).await {
        // Fail closed: emergency access that is not on record is withdrawn.
        let _ = ctx
            .store
            .revoke_grant(&grant.id, "break-glass", now())
            .await;
        proxy::refuse(
            &handle,
            id,
            "break-glass could not be recorded; access not opened",
        )
        .await;
        return;
    }
    ctx.notifier
        .notify(
            Event::BreakGlassOpened,
            &format!(
                "BREAK-GLASS: {} ({}) opened {} at {}/{} until {}: {} ({}; review it in the web UI)",
                bg.vendor,
                bg.org,
                bg.function,
                bg.site,
                bg.device,
                fmt_time(bg.valid_until),
                bg.reason,
                bg.id
            ),
            fields,
        )
        .await;
    let bg_id = bg.id.clone();
    proceed(
        ctx,
        target,
        function,
        dialogue,
        source,
        set_live,
        |end| {
            format!(
                "postern: break-glass {bg_id} open until {}; every approver of the site has been told and this session is flagged for review.\r\n",
                fmt_time(end)
            )
        },
        Some(bg.id),
    )
    .await;
}

/// Access was granted while the vendor waited: the same policy decision as at any session start,
/// then on to the device.
#[allow(clippy::too_many_arguments)]
async fn proceed(
    ctx: Arc<Ctx>,
    target: Target,
    function: String,
    dialogue: Dialogue,
    source: String,
    set_live: impl FnOnce(Arc<LiveSession>),
    banner: impl FnOnce(i64) -> String,
    breakglass: Option<String>,
) {
    let Dialogue {
        vch,
        handle,
        mut kept,
        typed,
    } = dialogue;
    if !typed.is_empty() {
        // Typed ahead after the last answer: for the device's shell.
        kept.push(ChannelMsg::Data {
            data: Vec::from(typed).into(),
        });
    }
    let id = vch.id();
    let q = AccessRequest {
        vendor: target.vendor.clone(),
        site: target.site.clone(),
        device: target.device.clone(),
        function: Some(function),
        channel: None,
    };
    let allowed = match PolicyGate::new(&ctx.store).check(&q).await {
        Ok(a) => a,
        Err(Refusal::Unavailable(e)) => {
            tracing::warn!(error = %e, "request flow: control plane unavailable");
            proxy::refuse(&handle, id, crate::frontdoor::OUTAGE).await;
            return;
        }
        Err(Refusal::Deny(reason)) => {
            proxy::refuse(&handle, id, &reason.to_string()).await;
            return;
        }
    };
    say(&handle, id, &banner(allowed.window_end)).await;
    let live = match LiveSession::start(&ctx, target, &allowed, source, handle.clone()).await {
        Ok(l) => l,
        Err(e) => {
            proxy::refuse(&handle, id, &format!("access denied: {e}")).await;
            return;
        }
    };
    if let Some(bg) = &breakglass
        && let Err(e) = ctx.store.flag_session_breakglass(&live.id, bg).await
    {
        tracing::warn!(session = %live.id, error = %e, "could not flag the break-glass session");
    }
    set_live(live.clone());
    let upstream = match live.upstream(&ctx).await {
        Ok(u) => u,
        Err(e) => {
            proxy::refuse(&handle, id, &e.to_string()).await;
            live.request_close(e);
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
            proxy::refuse(&handle, id, &format!("the device refused the session: {e}")).await;
            live.request_close("the device refused the session");
        }
    }
}
