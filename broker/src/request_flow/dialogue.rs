//! The vendor's terminal while the broker asks its questions: lines typed and echoed, what the
//! vendor's client asked for meanwhile (kept for the device), and waiting for a decision.

use std::collections::VecDeque;
use std::time::Duration;

use approvals::AccessRequestRow;
use approvals::time::parse_duration;
use russh::server::{Handle, Msg};
use russh::{Channel, ChannelId, ChannelMsg};

use crate::proxy;

async fn say(handle: &Handle, id: ChannelId, text: &str) {
    let _ = handle.data(id, text.as_bytes().to_vec()).await;
}

/// How waiting for an approver ended.
pub(super) enum Waited {
    Decided(Box<AccessRequestRow>),
    /// The vendor pressed Ctrl-C, or the wait ran out.
    GaveUp,
    /// The channel closed.
    Gone,
}

/// The vendor's terminal while the broker asks its questions.
pub(super) struct Dialogue {
    vch: Channel<Msg>,
    handle: Handle,
    /// Window changes (and the client's early requests) kept for the device.
    kept: Vec<ChannelMsg>,
    /// What the vendor typed past the end of the last answer: the next answer, or keystrokes
    /// meant for the device (it gets them once the session opens).
    typed: VecDeque<u8>,
}

impl Dialogue {
    pub(super) fn new(vch: Channel<Msg>, handle: Handle) -> Dialogue {
        Dialogue {
            vch,
            handle,
            kept: Vec::new(),
            typed: VecDeque::new(),
        }
    }

    pub(super) fn handle(&self) -> &Handle {
        &self.handle
    }

    pub(super) async fn say(&self, text: &str) {
        say(&self.handle, self.vch.id(), text).await;
    }

    /// Tells the vendor why and closes the channel (see [`proxy::refuse`]).
    pub(super) async fn refuse(&self, message: &str) {
        proxy::refuse(&self.handle, self.vch.id(), message).await;
    }

    /// Until the shell request, keeps what the vendor's client asks for (the device gets it
    /// later), answering the pty and shell requests. `false`, the vendor told why, when there is
    /// no terminal to ask in: a command or subsystem, no pty, or the channel closed.
    pub(super) async fn until_shell(&mut self, refusal: &str) -> bool {
        let id = self.vch.id();
        let mut pty = false;
        loop {
            match self.vch.wait().await {
                Some(m @ ChannelMsg::RequestPty { .. }) => {
                    pty = true;
                    let _ = self.handle.channel_success(id).await;
                    self.kept.push(m);
                }
                Some(m @ (ChannelMsg::SetEnv { .. } | ChannelMsg::WindowChange { .. })) => {
                    self.kept.push(m)
                }
                Some(m @ ChannelMsg::RequestShell { .. }) => {
                    let _ = self.handle.channel_success(id).await;
                    self.kept.push(m);
                    break;
                }
                Some(ChannelMsg::Exec { .. } | ChannelMsg::RequestSubsystem { .. }) => {
                    let message = format!(
                        "{refusal} (to request access, connect with a terminal and no command)"
                    );
                    self.refuse(&message).await;
                    return false;
                }
                Some(ChannelMsg::Close | ChannelMsg::Eof) | None => return false,
                Some(_) => {}
            }
        }
        if !pty {
            let message = format!("{refusal} (to request access, connect with a terminal: ssh -t)");
            self.refuse(&message).await;
        }
        pty
    }

    /// Reads the vendor's terminal while the request waits: Ctrl-C stops waiting, window changes
    /// are kept for the device, anything else typed is dropped (it was not meant for the device).
    /// `None` until one of those ends the wait.
    pub(super) async fn while_waiting(&mut self) -> Option<Waited> {
        self.typed.clear();
        match self.vch.wait().await {
            Some(ChannelMsg::Data { data }) if data.contains(&0x03) => Some(Waited::GaveUp),
            Some(m @ ChannelMsg::WindowChange { .. }) => {
                self.kept.push(m);
                None
            }
            Some(ChannelMsg::Close | ChannelMsg::Eof) | None => Some(Waited::Gone),
            _ => None,
        }
    }

    /// The channel, its handle, and what the device gets first: the client's kept requests, then
    /// what the vendor typed ahead after the last answer (for the device's shell).
    pub(super) fn into_parts(self) -> (Channel<Msg>, Handle, Vec<ChannelMsg>) {
        let Dialogue {
            vch,
            handle,
            mut kept,
            typed,
        } = self;
        if !typed.is_empty() {
            kept.push(ChannelMsg::Data {
                data: Vec::from(typed).into(),
            });
        }
        (vch, handle, kept)
    }

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
    pub(super) async fn ask(
        &mut self,
        heading: &str,
        max: i64,
        default: i64,
    ) -> Option<(String, i64)> {
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
