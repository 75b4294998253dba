//! A scripted device for scale runs: a prompt and a few commands, no process per session. Exec
//! commands it does not script (administration: reading and writing the login's authorized_keys)
//! run in a real shell in the login's home, so rotation and scans work on it as on a real device.

use std::sync::Arc;

use russh::Channel;
use russh::ChannelMsg;
use russh::server::{Handle, Msg};

/// What a scripted device answers to one command line, and the exit status.
fn scripted(line: &str, name: &str) -> (String, u32) {
    let line = line.trim();
    let (cmd, rest) = line.split_once(' ').unwrap_or((line, ""));
    match cmd {
        "" | "true" => (String::new(), 0),
        "false" => (String::new(), 1),
        "echo" => (format!("{rest}\n"), 0),
        "hostname" => (format!("{name}\n"), 0),
        "uptime" => (
            " 12:00:00 up 42 days,  1 user,  load average: 0.00, 0.01, 0.05\n".into(),
            0,
        ),
        "uname" => ("Linux\n".into(), 0),
        _ => (format!("sim: {cmd}: command not found\n"), NOT_FOUND),
    }
}

const NOT_FOUND: u32 = 127;

/// A session on a scripted device: exec answers at once; a shell shows a prompt, echoes what is
/// typed and answers each line. No process is started.
pub async fn channel(
    mut ch: Channel<Msg>,
    handle: Handle,
    name: Arc<str>,
    login: Arc<super::device::SimLogin>,
) {
    let id = ch.id();
    loop {
        let Some(msg) = ch.wait().await else { return };
        match msg {
            ChannelMsg::RequestPty { .. } => {
                let _ = handle.channel_success(id).await;
            }
            ChannelMsg::Exec { command, .. } => {
                let command = String::from_utf8_lossy(&command);
                let (out, status) = scripted(&command, &name);
                if status == NOT_FOUND {
                    super::device::exec_real(ch, handle, &name, &login, &command).await;
                    return;
                }
                let _ = handle.channel_success(id).await;
                let _ = ch.data(out.as_bytes()).await;
                let _ = ch.exit_status(status).await;
                let _ = ch.eof().await;
                let _ = ch.close().await;
                return;
            }
            ChannelMsg::RequestShell { .. } => {
                let _ = handle.channel_success(id).await;
                break;
            }
            ChannelMsg::Close | ChannelMsg::Eof => return,
            ChannelMsg::SetEnv { .. } | ChannelMsg::WindowChange { .. } => {}
            _ => {
                let _ = handle.channel_failure(id).await;
            }
        }
    }
    let prompt = format!("{name}$ ");
    let _ = ch.data(prompt.as_bytes()).await;
    let mut line = String::new();
    while let Some(msg) = ch.wait().await {
        let ChannelMsg::Data { data } = msg else {
            if matches!(msg, ChannelMsg::Close | ChannelMsg::Eof) {
                break;
            }
            continue;
        };
        let mut echo = Vec::new();
        for &b in data.iter() {
            match b {
                b'\r' | b'\n' => {
                    echo.extend_from_slice(b"\r\n");
                    if line.trim() == "exit" {
                        let _ = ch.data(&echo[..]).await;
                        let _ = ch.exit_status(0).await;
                        let _ = ch.eof().await;
                        let _ = ch.close().await;
                        return;
                    }
                    let (out, _) = scripted(&line, &name);
                    echo.extend_from_slice(out.replace('\n', "\r\n").as_bytes());
                    echo.extend_from_slice(prompt.as_bytes());
                    line.clear();
                }
                0x7f | 0x08 if !line.is_empty() => {
                    line.pop();
                    echo.extend_from_slice(b"\x08 \x08");
                }
                0x03 => {
                    line.clear();
                    echo.extend_from_slice(b"^C\r\n");
                    echo.extend_from_slice(prompt.as_bytes());
                }
                0x20..=0x7e if line.len() < 4096 => {
                    line.push(b as char);
                    echo.push(b);
                }
                _ => {}
            }
        }
        if ch.data(&echo[..]).await.is_err() {
            break;
        }
    }
    let _ = ch.close().await;
}
