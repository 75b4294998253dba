//! Postern's device simulator and `postern demo`.
//!
//! The simulator is an SSH server on loopback that behaves like a maintained device: it accepts
//! one authorised key (the broker's credential), runs a real shell in a pty, runs exec commands,
//! serves sftp with the system's sftp-server when present, and forwards to loopback ports.
//!
//! `postern simulate` runs a fleet of them in one process, each device on its own port with its
//! own host key. For scale runs, a device can answer with a scripted shell instead (a prompt and
//! a few commands, no process per session).

use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use russh::keys::{PrivateKey, PublicKey};
use russh::server::{Auth, ChannelOpenHandle, Handle, Msg, Session};
use russh::{Channel, ChannelMsg};
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::cli::Env;
use crate::keys;

#[derive(Clone)]
struct SimConn {
    authorized: Arc<PublicKey>,
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
        Ok(if key.public_key.key_data() == self.authorized.key_data() {
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
            tokio::spawn(scripted_channel(
                channel,
                session.handle(),
                self.name.clone(),
            ));
        } else {
            tokio::spawn(sim_channel(channel, session.handle(), self.name.clone()));
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

async fn sim_channel(mut ch: Channel<Msg>, handle: Handle, name: Arc<str>) {
    let id = ch.id();
    let mut pty: Option<(String, u16, u16)> = None;
    let mut env: Vec<(String, String)> = Vec::new();
    let shell = if Path::new("/bin/bash").exists() {
        "/bin/bash"
    } else {
        "/bin/sh"
    };
    // Wait for what to run.
    let running = loop {
        let Some(msg) = ch.wait().await else { return };
        let started = match msg {
            ChannelMsg::RequestPty {
                term,
                col_width,
                row_height,
                ..
            } => {
                pty = Some((
                    term,
                    col_width.min(u16::MAX as u32) as u16,
                    row_height.min(u16::MAX as u32) as u16,
                ));
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
            ChannelMsg::RequestShell { .. } => {
                let args: &[&str] = if shell.ends_with("bash") {
                    &["--noprofile", "--norc", "-i"]
                } else {
                    &["-i"]
                };
                spawn(shell, args, pty.clone(), &env, &name)
            }
            ChannelMsg::Exec { command, .. } => {
                let cmd = String::from_utf8_lossy(&command).into_owned();
                spawn("/bin/sh", &["-c", &cmd], pty.clone(), &env, &name)
            }
            ChannelMsg::RequestSubsystem { name: sub, .. } if sub == "sftp" => {
                let server = [
                    "/usr/lib/openssh/sftp-server",
                    "/usr/libexec/openssh/sftp-server",
                    "/usr/libexec/sftp-server",
                ]
                .into_iter()
                .find(|p| Path::new(p).exists());
                match server {
                    Some(p) => spawn(p, &[], None, &env, &name),
                    None => Err(std::io::Error::other("no sftp-server on this machine")),
                }
            }
            ChannelMsg::Close | ChannelMsg::Eof => return,
            _ => {
                let _ = handle.channel_failure(id).await;
                continue;
            }
        };
        match started {
            Ok(r) => {
                let _ = handle.channel_success(id).await;
                break r;
            }
            Err(e) => {
                let _ = handle
                    .extended_data(id, 1, format!("{e}\r\n").into_bytes())
                    .await;
                let _ = handle.channel_failure(id).await;
                let _ = handle.exit_status_request(id, 127).await;
                let _ = handle.close(id).await;
                return;
            }
        }
    };
    let Running {
        mut child,
        mut input,
        mut out,
        mut err,
        pty: pty_ctl,
    } = running;
    let mut status: Option<u32> = None;
    let (mut buf, mut ebuf) = (vec![0u8; 32 * 1024], vec![0u8; 32 * 1024]);
    loop {
        if status.is_some() && out.is_none() && err.is_none() {
            break;
        }
        tokio::select! {
            msg = ch.wait() => match msg {
                Some(ChannelMsg::Data { data }) => {
                    if let Some(w) = input.as_mut() && w.write_all(&data).await.is_err() {
                        input = None;
                    }
                }
                Some(ChannelMsg::Eof) => {
                    if let Some(mut w) = input.take() {
                        let _ = w.shutdown().await;
                    }
                }
                Some(ChannelMsg::WindowChange { col_width, row_height, .. }) => {
                    if let Some(w) = &input {
                        w.resize(col_width.min(u16::MAX as u32) as u16, row_height.min(u16::MAX as u32) as u16);
                    }
                }
                Some(ChannelMsg::Signal { .. }) => {
                    let _ = child.start_kill();
                }
                Some(ChannelMsg::Close) | None => {
                    let _ = child.start_kill();
                    return;
                }
                _ => {}
            },
            n = read_some(&mut out, &mut buf) => match n {
                Some(n) => { if ch.data(&buf[..n]).await.is_err() { break } }
                None => out = None,
            },
            n = read_some(&mut err, &mut ebuf) => match n {
                Some(n) => { if ch.extended_data(1, &ebuf[..n]).await.is_err() { break } }
                None => err = None,
            },
            st = child.wait(), if status.is_none() => {
                status = Some(st.ok().and_then(|s| s.code()).unwrap_or(255) as u32);
                // A pty's reader only ends when every holder closes it; don't wait on orphans.
                if pty_ctl {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(50), async { match out.as_mut() { Some(r) => r.read(&mut buf).await, None => Ok(0) } }).await {
                        if n == 0 || ch.data(&buf[..n]).await.is_err() { break }
                    }
                    out = None;
                }
            },
        }
    }
    let _ = ch.exit_status(status.unwrap_or(0)).await;
    let _ = ch.eof().await;
    let _ = ch.close().await;
}

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
        _ => (format!("sim: {cmd}: command not found\n"), 127),
    }
}

/// A session on a scripted device: exec answers at once; a shell shows a prompt, echoes what is
/// typed and answers each line. No process is started.
async fn scripted_channel(mut ch: Channel<Msg>, handle: Handle, name: Arc<str>) {
    let id = ch.id();
    loop {
        let Some(msg) = ch.wait().await else { return };
        match msg {
            ChannelMsg::RequestPty { .. } => {
                let _ = handle.channel_success(id).await;
            }
            ChannelMsg::Exec { command, .. } => {
                let _ = handle.channel_success(id).await;
                let (out, status) = scripted(&String::from_utf8_lossy(&command), &name);
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

/// Serves simulated devices on `listener` until the task is dropped.
pub async fn serve_sim(
    listener: TcpListener,
    host_key: PrivateKey,
    authorized: PublicKey,
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
        authorized: Arc::new(authorized),
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

pub async fn run_standalone(listen: &str, host_key: &Path, authorized: &Path) -> Result<()> {
    let key = keys::load_private(host_key)?;
    let auth = keys::load_public(authorized)?;
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    println!("device-sim: listening on {}", listener.local_addr()?);
    serve_sim(listener, key, auth, "sim", false).await?;
    Ok(())
}

/// `postern simulate`: `sites` x `devices` simulated devices on loopback, each on its own port
/// with its own host key, trusting `authorized`. The enrolment list (`site,device,addr,host_key`
/// per line, for `postern device import`) is written to `out` once every device listens.
pub async fn run_fleet(
    sites: usize,
    devices: usize,
    authorized: &Path,
    out: &Path,
    scripted: bool,
) -> Result<()> {
    let auth = keys::load_public(authorized)?;
    crate::sys::raise_open_files_limit();
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
            let auth = auth.clone();
            tasks.spawn(async move { serve_sim(listener, key, auth, &name, scripted).await });
        }
    }
    let tmp = out.with_extension("tmp");
    std::fs::write(&tmp, list).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, out)?;
    println!(
        "simulate: {} devices at {sites} sites on loopback ({} shell); enrolment list in {}",
        sites * devices,
        if scripted { "scripted" } else { "real" },
        out.display()
    );
    if let Some(r) = tasks.join_next().await {
        r.map_err(|e| anyhow!("{e}"))??;
    }
    Ok(())
}

// ---- the demo ----

const ORG: &str = "Acme Maintenance";
const VENDOR: &str = "alice";
const SITE: &str = "demo-site";
const DEVICE: &str = "sim-01";

struct DemoPaths {
    dir: PathBuf,
}

impl DemoPaths {
    fn vendor_key(&self) -> PathBuf {
        self.dir.join("alice_ed25519")
    }
    fn totp(&self) -> PathBuf {
        self.dir.join("alice.totp")
    }
    fn device_key(&self) -> PathBuf {
        self.dir.join("broker_device_ed25519")
    }
    fn sim_host_key(&self) -> PathBuf {
        self.dir.join("sim_host_ed25519")
    }
    fn sim_port(&self) -> PathBuf {
        self.dir.join("sim.port")
    }
    fn known_hosts(&self) -> PathBuf {
        self.dir.join("known_hosts")
    }
    fn approver_totp(&self) -> PathBuf {
        self.dir.join("ops.totp")
    }
    fn approver_password(&self) -> PathBuf {
        self.dir.join("ops.password")
    }
}

/// `postern demo`: with `code_of`, only print the vendor's (false) or approver's (true) code.
pub async fn demo(
    cli: &crate::Cli,
    code_of: Option<bool>,
    ssh: &str,
    web: Option<&str>,
) -> Result<ExitCode> {
    let data = crate::config::DataDir::new(&cli.data);
    let paths = DemoPaths {
        dir: data.root.join("demo"),
    };
    if let Some(approver) = code_of {
        let file = if approver {
            paths.approver_totp()
        } else {
            paths.totp()
        };
        let secret = std::fs::read_to_string(file).with_context(|| {
            format!(
                "no demo in {} (run `postern demo` first)",
                data.root.display()
            )
        })?;
        let code = approvals::totp::code_at(secret.trim(), approvals::time::now() as u64)?;
        println!("{code}");
        return Ok(ExitCode::SUCCESS);
    }
    if !data.is_initialised() {
        crate::cli::init(&data).await?;
        println!("initialised {}", data.root.display());
    }
    let env = Env::open(cli).await?;
    certify_demo_seal_key(&env).await?;
    let first = !paths.dir.exists();
    if first {
        std::fs::create_dir_all(&paths.dir)?;
        keys::write_keypair(
            &paths.device_key(),
            &keys::generate_ed25519("postern-demo-broker")?,
        )?;
        keys::write_keypair(
            &paths.sim_host_key(),
            &keys::generate_ed25519("postern-demo-device")?,
        )?;
        keys::write_keypair(&paths.vendor_key(), &keys::generate_ed25519("alice@acme")?)?;
    }
    // The simulated device keeps its port across runs so the enrolled address stays right.
    let port: u16 = std::fs::read_to_string(paths.sim_port())
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    let sim_listener = TcpListener::bind(("127.0.0.1", port))
        .await
        .with_context(|| format!("starting the simulated device on 127.0.0.1:{port}"))?;
    let sim_addr = sim_listener.local_addr()?;
    std::fs::write(paths.sim_port(), sim_addr.port().to_string())?;
    let sim_key = keys::load_private(&paths.sim_host_key())?;
    let broker_device_pub = keys::load_public(&paths.device_key().with_extension("pub"))?;
    let sim = tokio::spawn(async move {
        if let Err(e) = serve_sim(sim_listener, sim_key, broker_device_pub, DEVICE, false).await {
            tracing::warn!(error = %e, "simulated device stopped");
        }
    });
    if first {
        setup_directory(&env, &paths, &sim_addr.to_string()).await?;
    }
    ensure_grant(&env).await?;
    let ssh_port = ssh.rsplit_once(':').map(|(_, p)| p).unwrap_or("2222");
    let host_pub = std::fs::read_to_string(data.host_key().with_extension("pub"))?;
    std::fs::write(
        paths.known_hosts(),
        format!("[127.0.0.1]:{ssh_port} {}", host_pub.trim()),
    )?;
    let d = data.root.display();
    println!();
    println!(
        "Postern demo: vendor {VENDOR} may reach {SITE}/{DEVICE} (a simulated device with a real shell) for one hour."
    );
    println!("In another terminal, connect as the vendor:");
    println!();
    println!(
        "  ssh -i {k} -o IdentitiesOnly=yes -o UserKnownHostsFile={kh} -p {ssh_port} '{VENDOR}:{SITE}/{DEVICE}@127.0.0.1'",
        k = paths.vendor_key().display(),
        kh = paths.known_hosts().display()
    );
    println!();
    println!("and answer the TOTP prompt with the code from:  postern demo code --data {d}");
    println!(
        "Afterwards:  postern sessions --data {d}   postern replay ID --data {d}   postern verify --data {d}"
    );
    println!();
    let web = web
        .map(str::to_owned)
        .unwrap_or_else(|| env.cfg.web_listen.clone());
    println!(
        "Just-in-time access: connect as '{VENDOR}:{SITE}/{DEVICE}:firmware@127.0.0.1' (no grant yet) and file a request;"
    );
    println!(
        "approve it in the web UI at http://{web}/ as approver 'ops', password in {}, code from:  postern demo code --approver --data {d}",
        paths.approver_password().display()
    );
    println!(
        "Break-glass: connect as '{VENDOR}:{SITE}/{DEVICE}:emergency@127.0.0.1'; it opens at once and waits for review in the web UI."
    );
    println!();
    crate::cli::serve(env, ssh, &web, Some(sim)).await
}

/// The demo plays the operator too: it makes a root key beside the data directory
/// (`DATA/../postern-demo-root`) and certifies the seal key with it, so that `serve` starts. A
/// real operator keeps the root key off the broker.
async fn certify_demo_seal_key(env: &Env) -> Result<()> {
    let seal = keys::seal_key(&env.data.seal_key())?.public();
    if keys::require_certified(&env.data, &seal, approvals::time::now()).is_ok() {
        return Ok(());
    }
    let root = env
        .data
        .root
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."))
        .join("postern-demo-root");
    if !root.exists() {
        keys::root_init(&root, &env.data)?;
    }
    crate::cli::keys_command(
        env,
        &crate::KeysAction::Certify {
            root: root.clone(),
            valid_for: "365d".into(),
            from: None,
        },
    )
    .await?;
    println!(
        "demo root key (certifies the seal key; keep a real one off the broker): {}",
        root.display()
    );
    Ok(())
}

async fn setup_directory(env: &Env, paths: &DemoPaths, sim_addr: &str) -> Result<()> {
    let now = approvals::time::now();
    // The same actions as the CLI's: each change has its audit record, or does not happen.
    let actions = env.actions();
    let op = crate::cli::operator();
    actions.add_site(&op, SITE, Some("demo"), now).await?;
    let host_key = keys::load_public(&paths.sim_host_key().with_extension("pub"))?;
    let login = std::env::var("USER").unwrap_or_else(|_| "demo".into());
    actions
        .add_device(
            &op,
            &approvals::NewDevice {
                site: SITE.into(),
                name: DEVICE.into(),
                addr: sim_addr.into(),
                login,
                credential_kind: approvals::CredentialKind::Key,
                credential: std::fs::read_to_string(paths.device_key())?,
                host_key: host_key.to_openssh().map_err(|e| anyhow!("{e}"))?,
            },
            &keys::fingerprint(&host_key),
            "from file",
            now,
        )
        .await?;
    let allow = approvals::ChannelSet::parse("shell,exec,sftp,forward:8080")?;
    actions
        .add_function(&op, "maint", &allow, None, 8 * 3600, None, now)
        .await?;
    // Functions without a grant, to try requests and break-glass.
    let shell = approvals::ChannelSet::parse("shell,exec,sftp")?;
    actions
        .add_function(&op, "firmware", &shell, None, 4 * 3600, None, now)
        .await?;
    let orgs = [ORG.to_owned()];
    actions
        .add_function(&op, "emergency", &shell, None, 2 * 3600, Some(&orgs), now)
        .await?;
    let secret = approvals::totp::new_secret();
    actions
        .add_vendor(&op, VENDOR, ORG, None, &secret, now)
        .await?;
    crate::config::write_private(&paths.totp(), secret.as_bytes())?;
    // The site's approver, for the web UI.
    let password = hex::encode(rand::random::<[u8; 12]>());
    let approver_secret = approvals::totp::new_secret();
    actions
        .add_approver(
            &op,
            "ops",
            &approvals::approvers::hash_password(&password)?,
            &approver_secret,
            &[SITE.to_owned()],
            &[],
            now,
        )
        .await?;
    crate::config::write_private(&paths.approver_password(), password.as_bytes())?;
    crate::config::write_private(&paths.approver_totp(), approver_secret.as_bytes())?;
    crate::cli::issue_certificate(
        env,
        VENDOR,
        &paths.vendor_key().with_extension("pub"),
        now - 60,
        30 * 86_400,
        crate::keys::Restrictions::default(),
    )
    .await?;
    env.audit(
        "demo.setup",
        json!({"site": SITE, "device": DEVICE, "vendor": VENDOR}),
    )?;
    Ok(())
}

/// A one-hour grant, unless one is already active.
async fn ensure_grant(env: &Env) -> Result<()> {
    let now = approvals::time::now();
    let active = env.store.grants().await?.into_iter().any(|g| {
        g.vendor == VENDOR && g.site == SITE && g.is_active(now) && g.valid_until - now > 600
    });
    if !active {
        // An operator action like `postern grant add`: recorded, or not granted.
        env.actions()
            .add_grant(
                &crate::cli::operator(),
                &approvals::NewGrant {
                    vendor: VENDOR.into(),
                    site: SITE.into(),
                    function: "maint".into(),
                    valid_from: now,
                    valid_until: now + 3600,
                    granted_by: "demo".into(),
                    reason: "postern demo".into(),
                    devices: Vec::new(),
                },
                now,
            )
            .await?;
    }
    Ok(())
}
