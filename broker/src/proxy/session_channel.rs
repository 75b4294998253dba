//! One session channel (shell, exec, sftp, scp) proxied between the vendor and the device: a
//! [`SessionChannel`] holds the channel's state, and the loop in [`session_channel`] hands each
//! message from either side to one of its methods.

use approvals::audit::AuditEvent;
use recorder::events;
use std::collections::VecDeque;
use std::sync::Arc;

use approvals::Channel as ChannelKind;
use approvals::time::fmt_time;
use recorder::Kind;
use russh::server::Msg;
use russh::{Channel, ChannelId, ChannelMsg};
use serde_json::json;

use super::held_input::HeldInput;
use super::{ChannelRefused, allowed, audited_answer, disallowed, refuse, revoked};
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
        let _ = live
            .recording
            .write(ch, &events::Event::Transfer(t.clone()));
        ctx.audit(AuditEvent::FileTransfer, json!({"session": live.id, "vendor": live.target.vendor, "site": live.target.site, "device": live.target.device,
                                          "direction": t.direction, "path": t.path, "size": t.size, "sha256": t.sha256}))
            .await;
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
    vch: Channel<Msg>,
    uch: Channel<russh::client::Msg>,
    initial: Vec<ChannelMsg>,
) {
    // Only SSH sessions have channels (a device web UI session has no vendor connection).
    let Some(handle) = live.handle.clone() else {
        return;
    };
    let mut initial = initial.into_iter();
    let mut stopping = live.stopping();
    let mut function_allows = live.watch_channels();
    let mut chan = SessionChannel::new(ctx, live, vch, uch, handle);
    let _ = chan.record(&events::ChannelOpen::Session);
    // The steps are boxed: an idle channel's task then holds only the wait in this loop, not the
    // kilobytes that handling one message needs (BENCHMARKS.md §12).
    let stop = loop {
        tokio::select! {
            _ = async { let _ = stopping.wait_for(|s| *s).await; } => {
                // The supervisor is closing the session: hold the channels open for its notice.
                hold_open().await;
            }
            msg = next_from_vendor(&mut initial, &mut chan.vch), if chan.held.has_room() => {
                let Some((owed, msg)) = msg else { break Stop::Closed };
                if let Err(stop) = Box::pin(chan.on_vendor(msg, owed)).await {
                    break stop;
                }
            }
            msg = chan.uch.wait() => {
                let Some(msg) = msg else { break Stop::DeviceGone };
                if let Err(stop) = Box::pin(chan.on_device(msg)).await {
                    break stop;
                }
            }
            Ok(()) = function_allows.changed() => {
                let set = function_allows.borrow_and_update().clone();
                if let Err(stop) = chan.on_function_change(set).await {
                    break stop;
                }
            }
        }
    };
    Box::pin(chan.finish(stop)).await;
}

/// The vendor's next message on the channel: first those kept from before the device was
/// connected (already answered by the broker), then live ones (`true`: the vendor awaits the
/// answer to a request among them).
async fn next_from_vendor(
    initial: &mut std::vec::IntoIter<ChannelMsg>,
    vch: &mut Channel<Msg>,
) -> Option<(bool, ChannelMsg)> {
    match initial.next() {
        Some(m) => Some((false, m)),
        None => vch.wait().await.map(|m| (true, m)),
    }
}

/// Waits until this task is stopped (when the session closes).
async fn hold_open() {
    std::future::pending::<()>().await;
}

/// Why a session channel's loop ended.
enum Stop {
    /// Either side closed the channel, a request was refused or a write failed: close both ends.
    Closed,
    /// The device's connection ended under this channel (not a channel close).
    DeviceGone,
    /// A record could not be written: the session must end.
    RecordFailed(recorder::WriteError),
}

/// One session channel's state while it is proxied.
struct SessionChannel {
    ctx: Arc<Ctx>,
    live: Arc<LiveSession>,
    vch: Channel<Msg>,
    uch: Channel<russh::client::Msg>,
    id: ChannelId,
    /// The channel number in the recording.
    ch: u32,
    handle: russh::server::Handle,
    /// Requests forwarded to the device, in order, and whether the vendor still awaits the reply.
    pending: VecDeque<(&'static str, bool)>,
    content: Content,
    /// The kind the policy admitted this channel as (shell, exec, sftp), once it did.
    kind: Option<ChannelKind>,
    transfers: Transfers,
    bytes_in: u64,
    bytes_out: u64,
    /// A legacy scp exec, until the device's first byte proves it is an scp server.
    scp_unproven: Option<crate::transfer::ScpInvocation>,
    held: HeldInput,
}

impl SessionChannel {
    fn new(
        ctx: Arc<Ctx>,
        live: Arc<LiveSession>,
        vch: Channel<Msg>,
        uch: Channel<russh::client::Msg>,
        handle: russh::server::Handle,
    ) -> SessionChannel {
        let id = vch.id();
        SessionChannel {
            ctx,
            live,
            vch,
            uch,
            id,
            ch: u32::from(id),
            handle,
            pending: VecDeque::new(),
            content: Content::Unknown,
            kind: None,
            transfers: Transfers::None,
            bytes_in: 0,
            bytes_out: 0,
            scp_unproven: None,
            held: HeldInput::default(),
        }
    }

    fn record<T: events::Payload>(&self, value: &T) -> Result<(), recorder::WriteError> {
        self.live.recording.write(self.ch, value)
    }

    /// Records bytes of `terminal` kind as this channel's content says (nothing before it is known).
    fn record_bytes(&self, terminal: Kind, data: &[u8]) -> Result<(), Stop> {
        match self.content.kind(terminal) {
            Some(kind) => self
                .live
                .recording
                .bytes(kind, self.ch, data)
                .map_err(Stop::RecordFailed),
            None => Ok(()),
        }
    }

    /// Refuses the channel (see [`refuse`]); the loop then ends.
    async fn refuse(&self, refused: &ChannelRefused) -> Stop {
        refuse(&self.handle, self.id, &refused.to_string()).await;
        Stop::Closed
    }

    /// Asks the policy for `kind`; a refusal is told to the vendor and ends the channel.
    async fn admit(&mut self, kind: ChannelKind) -> Result<(), Stop> {
        match allowed(&self.ctx, &self.live, kind).await {
            Ok(()) => {
                self.kind = Some(kind);
                Ok(())
            }
            Err(refused) => Err(self.refuse(&refused).await),
        }
    }

    /// One message from the vendor. `owed`: the vendor awaits the answer to a request.
    async fn on_vendor(&mut self, msg: ChannelMsg, owed: bool) -> Result<(), Stop> {
        match msg {
            m @ (ChannelMsg::Data { .. } | ChannelMsg::Eof) => match self.held.hold(m) {
                Some(m) => self.input_to_device(m).await,
                None => Ok(()),
            },
            ChannelMsg::Close => {
                let _ = self.uch.close().await;
                Err(Stop::Closed)
            }
            m @ ChannelMsg::RequestPty { .. } => self.pty(m, owed).await,
            ChannelMsg::RequestShell { .. } => self.shell(owed).await,
            ChannelMsg::Exec { command, .. } => self.exec(command, owed).await,
            ChannelMsg::RequestSubsystem { name, .. } => self.subsystem(name, owed).await,
            ChannelMsg::SetEnv {
                variable_name,
                variable_value,
                ..
            } if env_allowed(&self.ctx, &variable_name) => {
                let _ = self.uch.set_env(false, variable_name, variable_value).await;
                Ok(())
            }
            ChannelMsg::WindowChange {
                col_width,
                row_height,
                pix_width,
                pix_height,
            } => {
                let _ = self.record(&events::Resize {
                    cols: col_width,
                    rows: row_height,
                    term: None,
                });
                let _ = (self.uch)
                    .window_change(col_width, row_height, pix_width, pix_height)
                    .await;
                Ok(())
            }
            ChannelMsg::Signal { signal } => {
                let _ = self.record(&events::Event::Signal {
                    signal: format!("{signal:?}"),
                });
                let _ = self.uch.signal(signal).await;
                Ok(())
            }
            ChannelMsg::AgentForward { .. } | ChannelMsg::RequestX11 { .. } => {
                let _ = self.handle.channel_failure(self.id).await;
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Counts and records the vendor's bytes (and the files they send) before they are passed on.
    /// Passes the vendor's data or EOF to the device (once it has started the channel's program).
    async fn input_to_device(&mut self, msg: ChannelMsg) -> Result<(), Stop> {
        match msg {
            ChannelMsg::Data { data } => {
                self.vendor_data(&data).await?;
                self.uch.data_bytes(data).await.map_err(|_| Stop::Closed)
            }
            ChannelMsg::Eof => {
                let _ = self.uch.eof().await;
                Ok(())
            }
            _ => Ok(()),
        }
    }

    async fn vendor_data(&mut self, data: &[u8]) -> Result<(), Stop> {
        self.bytes_in += data.len() as u64;
        let done = self.transfers.vendor_sent(data);
        record_transfers(&self.ctx, &self.live, self.ch, done).await;
        self.record_bytes(Kind::Input, data)
    }

    async fn pty(&mut self, msg: ChannelMsg, owed: bool) -> Result<(), Stop> {
        let ChannelMsg::RequestPty {
            term,
            col_width,
            row_height,
            pix_width,
            pix_height,
            terminal_modes,
            ..
        } = msg
        else {
            return Ok(());
        };
        if !self.live.permits().pty {
            // As sshd: no terminal for a certificate without permit-pty. The channel goes on
            // without one (OpenSSH says "PTY allocation request failed").
            let refusal = "a terminal is not permitted by your certificate (no permit-pty)";
            let _ = audited_answer(&self.ctx, &self.live, "pty", Some(refusal.into())).await;
            if owed {
                let _ = self.handle.channel_failure(self.id).await;
            }
            return Ok(());
        }
        let _ = self.record(&events::Resize {
            cols: col_width,
            rows: row_height,
            term: Some(term.clone()),
        });
        self.live.mark_interactive(self.id);
        let (cols, rows, modes) = (col_width, row_height, &terminal_modes);
        (self.uch)
            .request_pty(true, &term, cols, rows, pix_width, pix_height, modes)
            .await
            .map_err(|_| Stop::Closed)?;
        self.pending.push_back(("pty-req", owed));
        Ok(())
    }

    async fn shell(&mut self, owed: bool) -> Result<(), Stop> {
        self.admit(ChannelKind::Shell).await?;
        self.content = Content::Terminal;
        self.live.mark_interactive(self.id);
        let _ = self.record(&events::Event::Shell);
        let live = &self.live;
        let banner = format!(
            "postern: session {} to {}/{} as {} (function {}, grant {}); access until {}\r\n",
            live.id,
            live.target.site,
            live.target.device,
            live.login,
            live.function,
            live.grant,
            fmt_time(live.ends_at())
        );
        let _ = self
            .handle
            .extended_data(self.id, 1, banner.into_bytes())
            .await;
        self.uch
            .request_shell(true)
            .await
            .map_err(|_| Stop::Closed)?;
        self.pending.push_back(("shell", owed));
        Ok(())
    }

    async fn exec(&mut self, command: Vec<u8>, owed: bool) -> Result<(), Stop> {
        let line = String::from_utf8_lossy(&command).into_owned();
        // A file transfer only if the line is exactly an scp server invocation; anything else is
        // an exec, allowed or refused as one.
        let scp = crate::transfer::ScpInvocation::parse(&line);
        let _ = self.record(&events::Exec {
            command: line.clone(),
            transfer: scp.is_some(),
        });
        let kind = if scp.is_some() {
            ChannelKind::Sftp
        } else {
            ChannelKind::Exec
        };
        self.admit(kind).await?;
        self.content = if scp.is_some() {
            Content::Transfer
        } else {
            Content::Terminal
        };
        if let Some(inv) = &scp {
            self.transfers = Transfers::Scp(crate::transfer::ScpTracker::new(inv));
        }
        self.scp_unproven = scp;
        self.uch
            .exec(true, command)
            .await
            .map_err(|_| Stop::Closed)?;
        self.pending.push_back(("exec", owed));
        Ok(())
    }

    async fn subsystem(&mut self, name: String, owed: bool) -> Result<(), Stop> {
        let _ = self.record(&events::Event::Subsystem { name: name.clone() });
        if name != "sftp" {
            return Err(self.refuse(&ChannelRefused::Subsystem(name)).await);
        }
        self.admit(ChannelKind::Sftp).await?;
        self.content = Content::Transfer;
        self.transfers = Transfers::Sftp(Default::default());
        (self.uch)
            .request_subsystem(true, name)
            .await
            .map_err(|_| Stop::Closed)?;
        self.pending.push_back(("subsystem", owed));
        Ok(())
    }

    /// The session's function changed: a channel it no longer allows is closed, saying why; a
    /// shell or exec ends the whole session (its terminal is what the function was for).
    async fn on_function_change(&mut self, set: Option<approvals::ChannelSet>) -> Result<(), Stop> {
        let Some(kind) = self.kind else {
            return Ok(());
        };
        let Some(why) = disallowed(&self.live, set.as_ref(), kind) else {
            return Ok(());
        };
        revoked(&self.ctx, &self.live, self.ch, &kind.to_string(), &why).await;
        if matches!(kind, ChannelKind::Shell | ChannelKind::Exec) {
            // The supervisor tells the vendor and closes everything; this channel stays open
            // for that notice.
            self.live
                .request_close(format!("{why}; this session is over"));
            return Ok(());
        }
        refuse(&self.handle, self.id, &why).await;
        Err(Stop::Closed)
    }

    /// One message from the device.
    async fn on_device(&mut self, msg: ChannelMsg) -> Result<(), Stop> {
        match msg {
            ChannelMsg::Data { data } => {
                self.device_data(&data).await?;
                self.vch.data_bytes(data).await.map_err(|_| Stop::Closed)
            }
            ChannelMsg::ExtendedData { data, ext } => {
                self.bytes_out += data.len() as u64;
                if self.content != Content::Unknown {
                    (self.live.recording)
                        .bytes(Kind::Stderr, self.ch, &data)
                        .map_err(Stop::RecordFailed)?;
                }
                (self.vch)
                    .extended_data_bytes(ext, data)
                    .await
                    .map_err(|_| Stop::Closed)
            }
            ChannelMsg::Eof => {
                let _ = self.vch.eof().await;
                Ok(())
            }
            ChannelMsg::Close => Err(Stop::Closed),
            ChannelMsg::ExitStatus { exit_status } => {
                let _ = self.record(&events::Exit::Status {
                    status: exit_status,
                });
                let _ = self.vch.exit_status(exit_status).await;
                Ok(())
            }
            ChannelMsg::ExitSignal {
                signal_name,
                core_dumped,
                error_message,
                lang_tag,
            } => {
                let _ = self.record(&events::Exit::Signal {
                    signal: format!("{signal_name:?}"),
                    core_dumped,
                });
                let _ = (self.handle)
                    .exit_signal_request(self.id, signal_name, core_dumped, error_message, lang_tag)
                    .await;
                Ok(())
            }
            ChannelMsg::Success => {
                let (what, owed) = self.pending.pop_front().unwrap_or(("request", true));
                if owed {
                    let _ = self.handle.channel_success(self.id).await;
                }
                for m in self.held.started_by(what) {
                    self.input_to_device(m).await?;
                }
                Ok(())
            }
            ChannelMsg::Failure => self.device_refused().await,
            _ => Ok(()),
        }
    }

    /// Counts and records the device's bytes (and the files it sends) before they are passed on.
    async fn device_data(&mut self, data: &[u8]) -> Result<(), Stop> {
        self.bytes_out += data.len() as u64;
        if let Some(inv) = self.scp_unproven.take_if(|_| !data.is_empty())
            && !inv.answers_like_scp(data[0])
        {
            // Whatever runs on the device is not an scp server: stop before a byte of it reaches
            // the vendor.
            let _ = self.live.recording.bytes(Kind::TransferOut, self.ch, data);
            let why = "the device did not answer as an scp server; closing the channel";
            let _ = audited_answer(&self.ctx, &self.live, "sftp", Some(why.into())).await;
            refuse(
                &self.handle,
                self.id,
                "the device did not answer as an scp server",
            )
            .await;
            return Err(Stop::Closed);
        }
        let done = self.transfers.device_sent(data);
        record_transfers(&self.ctx, &self.live, self.ch, done).await;
        self.record_bytes(Kind::Output, data)
    }

    /// The device refused the oldest request forwarded to it.
    async fn device_refused(&mut self) -> Result<(), Stop> {
        let (what, owed) = self.pending.pop_front().unwrap_or(("request", true));
        let _ = self.record(&events::Event::DeviceRefused {
            request: what.to_owned(),
        });
        self.held.refused_by(what);
        if owed {
            let _ = self.handle.channel_failure(self.id).await;
        } else if what == "shell" || what == "pty-req" {
            // The vendor was told yes already: say why nothing will happen.
            let message = format!("the device refused the {what} request");
            refuse(&self.handle, self.id, &message).await;
            return Err(Stop::Closed);
        }
        Ok(())
    }

    /// Ends the channel as `stop` says: closes both ends, or keeps them open while the session
    /// ends (this task is stopped when the session closes).
    async fn finish(mut self, stop: Stop) {
        match stop {
            Stop::Closed => {}
            Stop::DeviceGone => {
                // The session ends for that, named by the upstream watcher (disconnected or
                // stopped answering); keep the vendor's channel open so they read why. Should the
                // watcher not have said anything in two seconds, say it here.
                tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                (self.live).request_close(crate::session::EndReason::DeviceDisconnected);
                hold_open().await;
            }
            Stop::RecordFailed(e) => {
                // The supervisor tells the vendor why and disconnects; keep the channel open for
                // that notice.
                (self.live)
                    .request_close(crate::session::EndReason::RecordingFailed(e.to_string()));
                hold_open().await;
            }
        }
        if let Transfers::Sftp(t) = &mut self.transfers {
            record_transfers(&self.ctx, &self.live, self.ch, t.close()).await;
        }
        let _ = self.record(&events::ChannelClose::Channel(events::ChannelBytes {
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
        }));
        let _ = self.vch.close().await;
        let _ = self.uch.close().await;
    }
}
