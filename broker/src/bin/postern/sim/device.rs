//! Postern's device simulator and `postern demo`.
//!
//! The simulator is an SSH server on loopback that behaves like a maintained device: its login has
//! a home directory whose `.ssh/authorized_keys` decides which keys may log in (so rotation and the
//! unbrokered-access scan change and read it exactly as on a real device), it runs a real shell in
//! a pty, runs exec commands, serves sftp with the system's sftp-server when present, and forwards
//! to loopback ports.
//!
//! `postern simulate` runs a fleet of them in one process, each device on its own port with its
//! own host key. For scale runs, a device can answer with a scripted shell instead (a prompt and
//! a few commands, no process per session).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use russh::keys::{PrivateKey, PublicKey};
use russh::server::{Auth, ChannelOpenHandle, Handle, Msg, Session};
use russh::{Channel, ChannelMsg};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

use broker::device_admin::AuthorizedKeys;
use broker::keys;

/// A simulated device's login: its home directory. Who may log in is whatever
/// `HOME/.ssh/authorized_keys` says at the moment of the attempt, as with sshd.
#[derive(Debug)]
pub struct SimLogin {
    pub home: PathBuf,
}

impl SimLogin {
    /// Makes `home/.ssh` and, if there is none yet, an authorized_keys file trusting `initial`.
    pub fn create(home: PathBuf, initial: &PublicKey) -> Result<SimLogin> {
        let ssh = home.join(".ssh");
        std::fs::create_dir_all(&ssh).with_context(|| format!("creating {}", ssh.display()))?;
        let file = ssh.join("authorized_keys");
        if !file.exists() {
            let line = initial.to_openssh().map_err(|e| anyhow!("{e}"))?;
            std::fs::write(&file, format!("{line}\n"))
                .with_context(|| format!("writing {}", file.display()))?;
        }
        Ok(SimLogin { home })
    }

    async fn accepts(&self, key: &PublicKey) -> bool {
        let file = self.home.join(".ssh").join("authorized_keys");
        match tokio::fs::read_to_string(&file).await {
            Ok(text) => AuthorizedKeys::parse(&text).contains(key),
            Err(_) => false,
        }
    }

    /// The environment every process on this device starts with.
    fn env(&self) -> Vec<(String, String)> {
        vec![("HOME".into(), self.home.display().to_string())]
    }
}

#[derive(Clone)]
struct SimConn {
    login: Arc<SimLogin>,
    name: Arc<str>,
    scripted: bool,
}

impl russh::server::Handler for SimConn {
    type Error = russh::Error;

    async fn auth_publickey(
        &mut self,
        _user: &str,
        key: russh::server::VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(if self.login.accepts(key.public_key).await {
            Auth::Accept
        } else {
            Auth::reject()
        })
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        reply.accept().await;
        if self.scripted {
            tokio::spawn(super::scripted::channel(
                channel,
                session.handle(),
                self.name.clone(),
                self.login.clone(),
            ));
        } else {
            tokio::spawn(sim_channel(
                channel,
                session.handle(),
                self.name.clone(),
                self.login.clone(),
            ));
        }
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host: &str,
        port: u32,
        _oa: &str,
        _op: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let loopback = matches!(host, "localhost" | "127.0.0.1" | "::1");
        let Ok(port) = u16::try_from(port) else {
            reply.reject(russh::ChannelOpenFailure::ConnectFailed).await;
            return Ok(());
        };
        match tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            Ok(mut tcp) if loopback => {
                reply.accept().await;
                tokio::spawn(async move {
                    let mut s = channel.into_stream();
                    let _ = tokio::io::copy_bidirectional(&mut s, &mut tcp).await;
                });
            }
            _ => reply.reject(russh::ChannelOpenFailure::ConnectFailed).await,
        }
        Ok(())
    }
}

type Reader = Box<dyn AsyncRead + Unpin + Send>;
type Writer = Box<dyn ChildInput>;

/// Where a channel's input goes: a pipe, or a pty (which can also be resized).
trait ChildInput: AsyncWrite + Unpin + Send {
    fn resize(&self, _cols: u16, _rows: u16) {}
}

impl ChildInput for tokio::process::ChildStdin {}

struct PtyInput(pty_process::OwnedWritePty);

impl ChildInput for PtyInput {
    fn resize(&self, cols: u16, rows: u16) {
        let _ = self
            .0
            .resize(pty_process::Size::new(rows.max(1), cols.max(1)));
    }
}

impl AsyncWrite for PtyInput {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

struct Running {
    child: tokio::process::Child,
    input: Option<Writer>,
    out: Option<Reader>,
    err: Option<Reader>,
    /// With a pty, input goes to its write half, which also carries resizes.
    pty: bool,
}

fn spawn(
    program: &str,
    args: &[&str],
    pty: Option<(String, u16, u16)>,
    env: &[(String, String)],
    name: &str,
) -> std::io::Result<Running> {
    let ps1 = format!("{name}:\\w\\$ ");
    match pty {
        Some((term, cols, rows)) => {
            let (pty, pts) = pty_process::open().map_err(std::io::Error::other)?;
            pty.resize(pty_process::Size::new(rows.max(1), cols.max(1)))
                .map_err(std::io::Error::other)?;
            let mut cmd = pty_process::Command::new(program)
                .args(args)
                .env("TERM", term)
                .env("PS1", &ps1);
            for (k, v) in env {
                cmd = cmd.env(k, v);
            }
            let child = cmd
                .kill_on_drop(true)
                .spawn(pts)
                .map_err(std::io::Error::other)?;
            let (r, w) = pty.into_split();
            Ok(Running {
                child,
                input: Some(Box::new(PtyInput(w))),
                out: Some(Box::new(r)),
                err: None,
                pty: true,
            })
        }
        None => {
            let mut cmd = tokio::process::Command::new(program);
            cmd.args(args)
                .env("PS1", &ps1)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .kill_on_drop(true);
            for (k, v) in env {
                cmd.env(k, v);
            }
            let mut child = cmd.spawn()?;
            let input = child.stdin.take().map(|s| Box::new(s) as Writer);
            let out = child.stdout.take().map(|s| Box::new(s) as Reader);
            let err = child.stderr.take().map(|s| Box::new(s) as Reader);
            Ok(Running {
                child,
                input,
                out,
                err,
                pty: false,
            })
        }
    }
}

async fn read_some(r: &mut Option<Reader>, buf: &mut [u8]) -> Option<usize> {
    match r {
        Some(r) => match r.read(buf).await {
            Ok(0) | Err(_) => None,
            Ok(n) => Some(n),
        },
        None => std::future::pending().await,
    }
}

/// One session channel of a simulated device: wait for what to run, run it, pump its bytes.
async fn sim_channel(mut ch: Channel<Msg>, handle: Handle, name: Arc<str>, login: Arc<SimLogin>) {
    let Some(running) = wait_for_start(&mut ch, &handle, &name, &login).await else {
        return;
    };
    pump(ch, running).await;
}

/// Runs `command` in a real `/bin/sh` in the login's home (what a scripted device does with the
/// commands it does not script, such as the administration of its authorized_keys).
pub async fn exec_real(
    ch: Channel<Msg>,
    handle: Handle,
    name: &str,
    login: &SimLogin,
    command: &str,
) {
    let id = ch.id();
    match spawn("/bin/sh", &["-c", command], None, &login.env(), name) {
        Ok(running) => {
            let _ = handle.channel_success(id).await;
            pump(ch, running).await;
        }
        Err(e) => {
            let _ = handle.channel_failure(id).await;
            let _ = ch.extended_data(1, format!("{e}\n").as_bytes()).await;
            let _ = ch.exit_status(127).await;
            let _ = ch.close().await;
        }
    }
}

async fn pump(ch: Channel<Msg>, running: Running) {
    let mut pump = Pump {
        ch,
        running,
        status: None,
        buf: vec![0u8; 32 * 1024],
        ebuf: vec![0u8; 32 * 1024],
    };
    pump.run().await;
}

/// The channel's requests before it runs anything: a pty, environment, then shell, exec or sftp.
async fn wait_for_start(
    ch: &mut Channel<Msg>,
    handle: &Handle,
    name: &str,
    login: &SimLogin,
) -> Option<Running> {
    let id = ch.id();
    let mut pty: Option<(String, u16, u16)> = None;
    let mut env: Vec<(String, String)> = login.env();
    loop {
        let started = match ch.wait().await? {
            ChannelMsg::RequestPty {
                term,
                col_width,
                row_height,
                ..
            } => {
                pty = Some((term, clamp(col_width), clamp(row_height)));
                let _ = handle.channel_success(id).await;
                continue;
            }
            ChannelMsg::SetEnv {
                variable_name,
                variable_value,
                ..
            } => {
                env.push((variable_name, variable_value));
                continue;
            }
            ChannelMsg::RequestShell { .. } => start_shell(pty.clone(), &env, name),
            ChannelMsg::Exec { command, .. } => {
                let cmd = String::from_utf8_lossy(&command).into_owned();
                spawn("/bin/sh", &["-c", &cmd], pty.clone(), &env, name)
            }
            ChannelMsg::RequestSubsystem { name: sub, .. } if sub == "sftp" => {
                start_sftp(&env, name)
            }
            ChannelMsg::Close | ChannelMsg::Eof => return None,
            _ => {
                let _ = handle.channel_failure(id).await;
                continue;
            }
        };
        return match started {
            Ok(r) => {
                let _ = handle.channel_success(id).await;
                Some(r)
            }
            Err(e) => {
                let _ = handle
                    .extended_data(id, 1, format!("{e}\r\n").into_bytes())
                    .await;
                let _ = handle.channel_failure(id).await;
                let _ = handle.exit_status_request(id, 127).await;
                let _ = handle.close(id).await;
                None
            }
        };
    }
}

fn clamp(n: u32) -> u16 {
    n.min(u16::MAX as u32) as u16
}

fn start_shell(
    pty: Option<(String, u16, u16)>,
    env: &[(String, String)],
    name: &str,
) -> std::io::Result<Running> {
    let shell = if Path::new("/bin/bash").exists() {
        "/bin/bash"
    } else {
        "/bin/sh"
    };
    let args: &[&str] = if shell.ends_with("bash") {
        &["--noprofile", "--norc", "-i"]
    } else {
        &["-i"]
    };
    spawn(shell, args, pty, env, name)
}

fn start_sftp(env: &[(String, String)], name: &str) -> std::io::Result<Running> {
    let server = [
        "/usr/lib/openssh/sftp-server",
        "/usr/libexec/openssh/sftp-server",
        "/usr/libexec/sftp-server",
    ]
    .into_iter()
    .find(|p| Path::new(p).exists());
    match server {
        Some(p) => spawn(p, &[], None, env, name),
        None => Err(std::io::Error::other("no sftp-server on this machine")),
    }
}

/// A running command's bytes to and from its channel, until it exits and its output ends.
struct Pump {
    ch: Channel<Msg>,
    running: Running,
    status: Option<u32>,
    buf: Vec<u8>,
    ebuf: Vec<u8>,
}

/// What the pump does after one event.
enum Next {
    Go,
    /// Stop pumping and close the channel with the exit status.
    Finish,
    /// The client closed the channel: nothing more to send.
    Gone,
}

impl Pump {
    async fn run(&mut self) {
        loop {
            let r = &mut self.running;
            if self.status.is_some() && r.out.is_none() && r.err.is_none() {
                break;
            }
            let next = tokio::select! {
                msg = self.ch.wait() => self.client_sent(msg).await,
                n = read_some(&mut r.out, &mut self.buf) => match n {
                    Some(n) => sent(self.ch.data(&self.buf[..n]).await),
                    None => { r.out = None; Next::Go }
                },
                n = read_some(&mut r.err, &mut self.ebuf) => match n {
                    Some(n) => sent(self.ch.extended_data(1, &self.ebuf[..n]).await),
                    None => { r.err = None; Next::Go }
                },
                st = r.child.wait(), if self.status.is_none() => self.exited(st).await,
            };
            match next {
                Next::Go => {}
                Next::Finish => break,
                Next::Gone => return,
            }
        }
        let _ = self.ch.exit_status(self.status.unwrap_or(0)).await;
        let _ = self.ch.eof().await;
        let _ = self.ch.close().await;
    }

    async fn client_sent(&mut self, msg: Option<ChannelMsg>) -> Next {
        let r = &mut self.running;
        match msg {
            Some(ChannelMsg::Data { data }) => {
                if let Some(w) = r.input.as_mut()
                    && w.write_all(&data).await.is_err()
                {
                    r.input = None;
                }
            }
            Some(ChannelMsg::Eof) => {
                if let Some(mut w) = r.input.take() {
                    let _ = w.shutdown().await;
                }
            }
            Some(ChannelMsg::WindowChange {
                col_width,
                row_height,
                ..
            }) => {
                if let Some(w) = &r.input {
                    w.resize(clamp(col_width), clamp(row_height));
                }
            }
            Some(ChannelMsg::Signal { .. }) => {
                let _ = r.child.start_kill();
            }
            Some(ChannelMsg::Close) | None => {
                let _ = r.child.start_kill();
                return Next::Gone;
            }
            _ => {}
        }
        Next::Go
    }

    async fn exited(&mut self, st: std::io::Result<std::process::ExitStatus>) -> Next {
        self.status = Some(st.ok().and_then(|s| s.code()).unwrap_or(255) as u32);
        // A pty's reader only ends when every holder closes it; don't wait on orphans.
        if self.running.pty {
            tokio::time::sleep(Duration::from_millis(50)).await;
            while let Ok(Some(n)) =
                tokio::time::timeout(Duration::from_millis(50), self.read_out()).await
            {
                if n == 0 || self.ch.data(&self.buf[..n]).await.is_err() {
                    break;
                }
            }
            self.running.out = None;
        }
        Next::Go
    }

    async fn read_out(&mut self) -> Option<usize> {
        match self.running.out.as_mut() {
            Some(r) => r.read(&mut self.buf).await.ok(),
            None => Some(0),
        }
    }
}

fn sent<E>(r: Result<(), E>) -> Next {
    if r.is_ok() { Next::Go } else { Next::Finish }
}

/// Serves simulated devices on `listener` until the task is dropped.
pub async fn serve_sim(
    listener: TcpListener,
    host_key: PrivateKey,
    login: Arc<SimLogin>,
    name: &str,
    scripted: bool,
) -> std::io::Result<()> {
    let config = Arc::new(russh::server::Config {
        keys: vec![host_key],
        methods: russh::MethodSet::from(&[russh::MethodKind::PublicKey][..]),
        auth_rejection_time: Duration::from_millis(50),
        auth_rejection_time_initial: Some(Duration::ZERO),
        inactivity_timeout: None,
        nodelay: true,
        ..Default::default()
    });
    let conn = SimConn {
        login,
        name: name.into(),
        scripted,
    };
    loop {
        let (stream, _) = listener.accept().await?;
        let (config, conn) = (config.clone(), conn.clone());
        tokio::spawn(async move {
            if let Ok(running) = russh::server::run_stream(config, stream, conn).await {
                let _ = running.await;
            }
        });
    }
}

pub async fn run_standalone(
    listen: &str,
    host_key: &Path,
    authorized: &Path,
    home: &Path,
) -> Result<()> {
    let key = keys::load_private(host_key)?;
    let login = Arc::new(SimLogin::create(
        home.to_owned(),
        &keys::load_public(authorized)?,
    )?);
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    println!("device-sim: listening on {}", listener.local_addr()?);
    serve_sim(listener, key, login, "sim", false).await?;
    Ok(())
}

/// `postern simulate`: `sites` x `devices` simulated devices on loopback, each on its own port
/// with its own host key and its own login home under `homes` (`SITE/DEVICE`), whose
/// authorized_keys starts out trusting `authorized`. The enrolment list
/// (`site,device,addr,host_key` per line, for `postern device import`) is written to `out` once
/// every device listens.
pub async fn run_fleet(
    sites: usize,
    devices: usize,
    authorized: &Path,
    out: &Path,
    homes: &Path,
    scripted: bool,
) -> Result<()> {
    let auth = keys::load_public(authorized)?;
    broker::sys::raise_open_files_limit();
    let mut list = String::from("site,device,addr,host_key\n");
    let mut tasks = tokio::task::JoinSet::new();
    for s in 0..sites {
        for d in 0..devices {
            let (site, device) = (format!("site-{s:04}"), format!("dev-{d:02}"));
            let name = format!("{site}/{device}");
            let key = keys::generate_ed25519(&name)?;
            let host_key = key.public_key().to_openssh().map_err(|e| anyhow!("{e}"))?;
            let listener = TcpListener::bind("127.0.0.1:0").await.context(
                "opening a port for a simulated device (too many open files? raise ulimit -n)",
            )?;
            list.push_str(&format!(
                "{site},{device},{},{host_key}\n",
                listener.local_addr()?
            ));
            let login = Arc::new(SimLogin::create(homes.join(&site).join(&device), &auth)?);
            tasks.spawn(async move { serve_sim(listener, key, login, &name, scripted).await });
        }
    }
    let tmp = out.with_extension("tmp");
    std::fs::write(&tmp, list).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, out)?;
    println!(
        "simulate: {} devices at {sites} sites on loopback ({} shell); enrolment list in {}; \
         logins' homes under {}",
        sites * devices,
        if scripted { "scripted" } else { "real" },
        out.display(),
        homes.display()
    );
    if let Some(r) = tasks.join_next().await {
        r.map_err(|e| anyhow!("{e}"))??;
    }
    Ok(())
}
