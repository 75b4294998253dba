//! Proxying one vendor channel to one device channel.
//!
//! Each channel is driven by one task that owns both ends and loops on their messages, so every
//! request, reply, exit status and EOF passes in order and each is recorded as it passes.
//! Backpressure is end to end: a write towards a slow peer waits for its SSH window, and while it
//! waits this task reads nothing more from the other side, whose bounded channel buffer then stops
//! its connection from reading the socket.

use std::collections::VecDeque;
use std::sync::Arc;

use approvals::time::{fmt_time, now};
use approvals::{Channel as Kind2, PolicyGate, Refusal};
use recorder::Kind;
use russh::server::Msg;
use russh::{Channel, ChannelId, ChannelMsg};
use serde_json::json;

use crate::session::{Ctx, LiveSession};

/// How a session channel's bytes are recorded.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Content {
    /// Not yet known (before shell/exec/subsystem).
    Unknown,
    /// Terminal or command I/O: recorded in full.
    Terminal,
    /// File transfer (sftp, scp): recorded in full as transfer bytes (not shown as terminal
    /// output), plus each file's path, size and hash.
    Transfer,
}

impl Content {
    /// The record kind for bytes of `terminal` kind (input or output) on this channel: every
    /// channel's bytes are recorded, a transfer's as transfer bytes.
    fn kind(self, terminal: Kind) -> Option<Kind> {
        match (self, terminal) {
            (Content::Unknown, _) => None,
            (Content::Terminal, k) => Some(k),
            (Content::Transfer, Kind::Input) => Some(Kind::TransferIn),
            (Content::Transfer, _) => Some(Kind::TransferOut),
        }
    }
}

/// Asks the policy whether this channel kind may be opened now; audits the answer.
pub async fn allowed(ctx: &Ctx, live: &LiveSession, channel: Kind2) -> Result<(), String> {
    let req = live.request(Some(channel));
    let refusal = match PolicyGate::new(&ctx.store).check(&req).await {
        Ok(_) => None,
        Err(Refusal::Deny(reason)) => Some(reason.to_string()),
        Err(Refusal::Unavailable(e)) => {
            tracing::warn!(session = %live.id, error = %e, "channel decision: control plane unavailable");
            return Err(crate::frontdoor::OUTAGE.to_owned());
        }
    };
    audited_answer(ctx, live, &channel.to_string(), refusal).await
}

/// Writes the channel decision to the audit log (failing closed if it cannot) and returns it.
pub async fn audited_answer(
    ctx: &Ctx,
    live: &LiveSession,
    channel: &str,
    refusal: Option<String>,
) -> Result<(), String> {
    let event = if refusal.is_none() {
        "channel.allow"
    } else {
        "channel.deny"
    };
    let fields = json!({"session": live.id, "vendor": live.target.vendor, "channel": channel, "reason": refusal});
    if !ctx.audit(event, fields).await {
        return Err("the audit log cannot be written".into());
    }
    let _ = live.recording.json(
        Kind::Event,
        0,
        &json!({"event": event, "channel": channel, "reason": refusal}),
    );
    match refusal {
        None => Ok(()),
        Some(reason) => Err(reason),
    }
}

/// What a file-transfer channel is parsed as.
enum Transfers {
    None,
    Sftp(crate::transfer::SftpTracker),
    Scp(crate::transfer::ScpTracker),
}

impl Transfers {
    fn vendor_sent(&mut self, data: &[u8]) -> Vec<crate::transfer::Transfer> {
        match self {
            Transfers::Sftp(t) => t.vendor_sent(data),
            Transfers::Scp(t) if t.is_upload() => t.push(data),
            _ => Vec::new(),
        }
    }

    fn device_sent(&mut self, data: &[u8]) -> Vec<crate::transfer::Transfer> {
        match self {
            Transfers::Sftp(t) => t.device_sent(data),
            Transfers::Scp(t) if !t.is_upload() => t.push(data),
            _ => Vec::new(),
        }
    }
}

/// Each completed file transfer goes into the recording and the audit log.
async fn record_transfers(
    ctx: &Ctx,
    live: &LiveSession,
    ch: u32,
    done: Vec<crate::transfer::Transfer>,
) {
    for t in done {
        let mut v = json!(t);
        v["event"] = json!("transfer");
        let _ = live.recording.json(Kind::Event, ch, &v);
        ctx.audit("file.transfer", json!({"session": live.id, "vendor": live.target.vendor, "site": live.target.site, "device": live.target.device,
                                          "direction": t.direction, "path": t.path, "size": t.size, "sha256": t.sha256}))
            .await;
    }
}

/// Tells the vendor why a channel is refused, on stderr, and closes it with exit status 1.
pub async fn refuse(handle: &russh::server::Handle, id: ChannelId, message: &str) {
    let _ = handle
        .extended_data(id, 1, format!("postern: {message}\r\n").into_bytes())
        .await;
    let _ = handle.channel_failure(id).await;
    let _ = handle.exit_status_request(id, 1).await;
    let _ = handle.eof(id).await;
    let _ = handle.close(id).await;
}

/// Refuses a channel in answer to the client's first real request (shell, exec, subsystem), when
/// it waits for the reply and prints what comes before it. Refusing earlier races the request.
pub async fn refuse_when_asked(
    handle: &russh::server::Handle,
    mut vch: Channel<Msg>,
    message: &str,
) {
    let id = vch.id();
    let asked = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        loop {
            match vch.wait().await {
                Some(
                    ChannelMsg::RequestShell { .. }
                    | ChannelMsg::Exec { .. }
                    | ChannelMsg::RequestSubsystem { .. },
                ) => return true,
                Some(ChannelMsg::Close | ChannelMsg::Eof) | None => return false,
                Some(_) => {}
            }
        }
    })
    .await
    .unwrap_or(true);
    if asked {
        refuse(handle, id, message).await;
    }
}

fn env_allowed(ctx: &Ctx, name: &str) -> bool {
    ctx.env_allow.iter().any(|p| match p.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => p == name,
    })
}

/// Drives a session channel (shell, exec, sftp) between the vendor and the device.
/// `initial` holds requests the vendor already sent on this channel before it was connected to
/// the device (while filing an access request); they are handled first, in order. The broker has
/// already answered the requests among them, so the device's answers to those are not passed on.
pub async fn session_channel(
    ctx: Arc<Ctx>,
    live: Arc<LiveSession>,
    mut vch: Channel<Msg>,
    mut uch: Channel<russh::client::Msg>,
    initial: Vec<ChannelMsg>,
) {
    let mut initial = initial.into_iter();
    let mut stopping = live.stopping();
    let id = vch.id();
    let ch = u32::from(id);
    let handle = live.handle.clone();
    let rec = &live.recording;
    // Requests forwarded to the device, in order, and whether the vendor still awaits the reply.
    let mut pending: VecDeque<(&'static str, bool)> = VecDeque::new();
    let mut content = Content::Unknown;
    let mut transfers = Transfers::None;
    let (mut bytes_in, mut bytes_out) = (0u64, 0u64);
    let mut failed_record = None;
    // The device's connection ended under this channel (not a channel close).
    let mut device_gone = false;
    // A legacy scp exec, until the device's first byte proves it is an scp server.
    let mut scp_unproven: Option<crate::transfer::ScpInvocation> = None;
    let _ = rec.json(Kind::ChannelOpen, ch, &json!({"type": "session"}));
    loop {
        tokio::select! {
            _ = async { let _ = stopping.wait_for(|s| *s).await; } => {
                // The supervisor is closing the session: hold the channels open for its notice.
                std::future::pending::<()>().await;
            }
            msg = async { match initial.next() { Some(m) => Some((true, m)), None => vch.wait().await.map(|m| (false, m)) } } => {
                let Some((answered, msg)) = msg else { break };
                let owed = !answered;
                match msg {
                    ChannelMsg::Data { data } => {
                        bytes_in += data.len() as u64;
                        record_transfers(&ctx, &live, ch, transfers.vendor_sent(&data)).await;
                        if let Some(kind) = content.kind(Kind::Input) && let Err(e) = rec.bytes(kind, ch, &data) {
                            failed_record = Some(e);
                            break;
                        }
                        if uch.data_bytes(data).await.is_err() { break }
                    }
                    ChannelMsg::Eof => { let _ = uch.eof().await; }
                    ChannelMsg::Close => { let _ = uch.close().await; break }
                    ChannelMsg::RequestPty { .. } if !live.permits().pty => {
                        // As sshd: no terminal for a certificate without permit-pty. The channel
                        // goes on without one (OpenSSH says "PTY allocation request failed").
                        let _ = audited_answer(&ctx, &live, "pty", Some("a terminal is not permitted by your certificate (no permit-pty)".into())).await;
                        if owed {
                            let _ = handle.channel_failure(id).await;
                        }
                    }
                    ChannelMsg::RequestPty { term, col_width, row_height, pix_width, pix_height, terminal_modes, .. } => {
                        let _ = rec.json(Kind::Resize, ch, &json!({"cols": col_width, "rows": row_height, "term": term}));
                        live.mark_interactive(id);
                        if uch.request_pty(true, &term, col_width, row_height, pix_width, pix_height, &terminal_modes).await.is_err() { break }
                        pending.push_back(("pty-req", owed));
                    }
                    ChannelMsg::RequestShell { .. } => {
                        if let Err(reason) = allowed(&ctx, &live, Kind2::Shell).await {
                            refuse(&handle, id, &reason).await;
                            break;
                        }
                        content = Content::Terminal;
                        live.mark_interactive(id);
                        let _ = rec.json(Kind::Event, ch, &json!({"event": "shell"}));
                        let banner = format!(
                            "postern: session {} to {}/{} as {} (function {}, grant {}); access until {}\r\n",
                            live.id, live.target.site, live.target.device, live.login, live.function, live.grant, fmt_time(live.window_end)
                        );
                        let _ = handle.extended_data(id, 1, banner.into_bytes()).await;
                        if uch.request_shell(true).await.is_err() { break }
                        pending.push_back(("shell", owed));
                    }
                    ChannelMsg::Exec { command, .. } => {
                        let line = String::from_utf8_lossy(&command).into_owned();
                        // A file transfer only if the line is exactly an scp server invocation;
                        // anything else is an exec, allowed or refused as one.
                        let scp = crate::transfer::ScpInvocation::parse(&line);
                        let kind = if scp.is_some() { Kind2::Sftp } else { Kind2::Exec };
                        let _ = rec.json(Kind::Exec, ch, &json!({"command": line, "transfer": scp.is_some()}));
                        if let Err(reason) = allowed(&ctx, &live, kind).await {
                            refuse(&handle, id, &reason).await;
                            break;
                        }
                        content = if scp.is_some() { Content::Transfer } else { Content::Terminal };
                        if let Some(inv) = &scp {
                            transfers = Transfers::Scp(crate::transfer::ScpTracker::new(inv));
                        }
                        scp_unproven = scp;
                        if uch.exec(true, command).await.is_err() { break }
                        pending.push_back(("exec", owed));
                    }
                    ChannelMsg::RequestSubsystem { name, .. } => {
                        let _ = rec.json(Kind::Event, ch, &json!({"event": "subsystem", "name": name}));
                        let verdict = if name == "sftp" { allowed(&ctx, &live, Kind2::Sftp).await } else { Err(format!("subsystem {name} is not supported")) };
                        if let Err(reason) = verdict {
                            refuse(&handle, id, &reason).await;
                            break;
                        }
                        content = Content::Transfer;
                        transfers = Transfers::Sftp(Default::default());
                        if uch.request_subsystem(true, name).await.is_err() { break }
                        pending.push_back(("subsystem", owed));
                    }
                    ChannelMsg::SetEnv { variable_name, variable_value, .. } if env_allowed(&ctx, &variable_name) => {
                        let _ = uch.set_env(false, variable_name, variable_value).await;
                    }
                    ChannelMsg::WindowChange { col_width, row_height, pix_width, pix_height } => {
                        let _ = rec.json(Kind::Resize, ch, &json!({"cols": col_width, "rows": row_height}));
                        let _ = uch.window_change(col_width, row_height, pix_width, pix_height).await;
                    }
                    ChannelMsg::Signal { signal } => {
                        let _ = rec.json(Kind::Event, ch, &json!({"event": "signal", "signal": format!("{signal:?}")}));
                        let _ = uch.signal(signal).await;
                    }
                    ChannelMsg::AgentForward { .. } | ChannelMsg::RequestX11 { .. } => {
                        let _ = handle.channel_failure(id).await;
                    }
                    _ => {}
                }
            }
            msg = uch.wait() => {
                let Some(msg) = msg else { device_gone = true; break };
                match msg {
                    ChannelMsg::Data { data } => {
                        bytes_out += data.len() as u64;
                        if let Some(inv) = scp_unproven.take_if(|_| !data.is_empty()) && !inv.answers_like_scp(data[0]) {
                            // Whatever runs on the device is not an scp server: stop before a
                            // byte of it reaches the vendor.
                            let _ = rec.bytes(Kind::TransferOut, ch, &data);
                            let _ = audited_answer(&ctx, &live, "sftp", Some("the device did not answer as an scp server; closing the channel".into())).await;
                            refuse(&handle, id, "the device did not answer as an scp server").await;
                            break;
                        }
                        record_transfers(&ctx, &live, ch, transfers.device_sent(&data)).await;
                        if let Some(kind) = content.kind(Kind::Output) && let Err(e) = rec.bytes(kind, ch, &data) {
                            failed_record = Some(e);
                            break;
                        }
                        if vch.data_bytes(data).await.is_err() { break }
                    }
                    ChannelMsg::ExtendedData { data, ext } => {
                        bytes_out += data.len() as u64;
                        if content != Content::Unknown && let Err(e) = rec.bytes(Kind::Stderr, ch, &data) {
                            failed_record = Some(e);
                            break;
                        }
                        if vch.extended_data_bytes(ext, data).await.is_err() { break }
                    }
                    ChannelMsg::Eof => { let _ = vch.eof().await; }
                    ChannelMsg::Close => break,
                    ChannelMsg::ExitStatus { exit_status } => {
                        let _ = rec.json(Kind::Exit, ch, &json!({"status": exit_status}));
                        let _ = vch.exit_status(exit_status).await;
                    }
                    ChannelMsg::ExitSignal { signal_name, core_dumped, error_message, lang_tag } => {
                        let _ = rec.json(Kind::Exit, ch, &json!({"signal": format!("{signal_name:?}"), "core_dumped": core_dumped}));
                        let _ = handle.exit_signal_request(id, signal_name, core_dumped, error_message, lang_tag).await;
                    }
                    ChannelMsg::Success => {
                        let owed = pending.pop_front().is_none_or(|(_, owed)| owed);
                        if owed {
                            let _ = handle.channel_success(id).await;
                        }
                    }
                    ChannelMsg::Failure => {
                        let (what, owed) = pending.pop_front().unwrap_or(("request", true));
                        let _ = rec.json(Kind::Event, ch, &json!({"event": "device_refused", "request": what}));
                        if owed {
                            let _ = handle.channel_failure(id).await;
                        } else if what == "shell" || what == "pty-req" {
                            // The vendor was told yes already: say why nothing will happen.
                            refuse(&handle, id, &format!("the device refused the {what} request")).await;
                            break;
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    if device_gone {
        // The session ends for that, named by the upstream watcher (disconnected or stopped
        // answering); keep the vendor's channel open so they read why. Should the watcher not
        // have said anything in two seconds, say it here.
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        live.request_close(crate::session::EndReason::DeviceDisconnected);
        std::future::pending::<()>().await;
    }
    if let Some(e) = failed_record {
        // The supervisor tells the vendor why and disconnects; keep the channel open for that
        // notice (this task is stopped when the session closes).
        live.request_close(format!("the recording cannot be written ({e}); closing"));
        std::future::pending::<()>().await;
    }
    if let Transfers::Sftp(t) = &mut transfers {
        record_transfers(&ctx, &live, ch, t.close()).await;
    }
    let _ = rec.json(
        Kind::ChannelClose,
        ch,
        &json!({"bytes_in": bytes_in, "bytes_out": bytes_out}),
    );
    let _ = vch.close().await;
    let _ = uch.close().await;
}

/// Counts bytes read through it, so counts survive an abrupt end of the copy.
struct Counted<S> {
    inner: S,
    read: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Counted<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        self.read.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        r
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Drives a direct-tcpip channel (`ssh -L`): bytes both ways, counted and recorded at close.
pub async fn forward_channel(
    live: Arc<LiveSession>,
    vch: Channel<Msg>,
    uch: Channel<russh::client::Msg>,
    port: u32,
) {
    use std::sync::atomic::{AtomicU64, Ordering};
    let ch = u32::from(vch.id());
    let started = now();
    let (to_device, to_vendor) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut a = Counted {
        inner: vch.into_stream(),
        read: to_device.clone(),
    };
    let mut b = Counted {
        inner: uch.into_stream(),
        read: to_vendor.clone(),
    };
    let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
    let (to_device, to_vendor) = (
        to_device.load(Ordering::Relaxed),
        to_vendor.load(Ordering::Relaxed),
    );
    let summary = json!({"type": "direct-tcpip", "port": port, "bytes_to_device": to_device, "bytes_to_vendor": to_vendor,
                         "opened": fmt_time(started), "closed": fmt_time(now())});
    let _ = live.recording.json(Kind::ChannelClose, ch, &summary);
}
