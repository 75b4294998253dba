//! The operator commands. Each opens the data directory, does one thing, audits it, and prints a
//! result (a table, or JSON with --json). Errors propagate to one line on stderr.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use approvals::time::{fmt_time, now, parse_duration, parse_time};
use approvals::verify::Finding;
use approvals::{AuditLog, ChannelSet, NewDevice, NewGrant, Store};
use serde_json::{Value, json};

use crate::config::{Config, DataDir};
use crate::{
    ApproverAction, Cli, Command, DeviceAction, FunctionAction, GrantAction, RequestAction,
    SessionsAction, SiteAction, VendorAction, keys,
};

/// An opened data directory.
pub struct Env {
    pub data: DataDir,
    pub cfg: Config,
    pub store: Store,
    pub audit: AuditLog,
    pub notifier: approvals::Notifier,
    pub json: bool,
}

impl Env {
    pub async fn open(cli: &Cli) -> Result<Env> {
        let data = DataDir::new(&cli.data);
        let cfg = data.load_config(cli.config.as_deref())?;
        let url = data.database_url(&cfg);
        let store = Store::open(&url).await.context("opening the database")?;
        let audit = AuditLog::new(&data.audit_log(), &cfg.node);
        let notifier = approvals::Notifier::new(store.clone(), cfg.webhook_url.is_some());
        Ok(Env {
            data,
            cfg,
            store,
            audit,
            notifier,
            json: cli.json,
        })
    }

    /// Records an operator action; the command fails if the audit log cannot be written.
    pub fn audit(&self, event: &str, fields: Value) -> Result<()> {
        let mut fields = fields;
        if let Value::Object(m) = &mut fields {
            m.insert("actor".into(), json!(actor()));
        }
        self.audit
            .record(event, fields)
            .map(|_| ())
            .map_err(|e| anyhow!("{e}"))
    }

    /// Where operator actions are taken (the same code the web form uses).
    pub(crate) fn actions(&self) -> approvals::Actions {
        approvals::Actions::new(
            self.store.clone(),
            self.audit.clone(),
            self.notifier.clone(),
        )
    }

    /// Where this node's evidence is, for the verifier.
    fn evidence(&self) -> approvals::verify::Evidence {
        approvals::verify::Evidence {
            audit_log: self.data.audit_log(),
            recordings: self.data.recordings(),
            local_seal_key: Some(self.data.seal_key().with_extension("pub")),
        }
    }

    fn print_list<T: serde::Serialize>(
        &self,
        rows: &[T],
        headers: &[&str],
        cells: impl Fn(&T) -> Vec<String>,
    ) -> Result<()> {
        if self.json {
            println!("{}", serde_json::to_string_pretty(rows)?);
            return Ok(());
        }
        let body: Vec<Vec<String>> = rows.iter().map(cells).collect();
        print_table(headers, &body);
        Ok(())
    }
}

/// Who ran an operator command, for the audit log.
fn actor() -> String {
    operator().tag().to_owned()
}

/// The operator running this command, as the actor of an action.
pub(crate) fn operator() -> approvals::Actor {
    approvals::Actor::operator(
        &std::env::var("SUDO_USER")
            .or_else(|_| std::env::var("USER"))
            .unwrap_or_else(|_| "unknown".into()),
    )
}

/// Text as it may reach an operator's terminal: control characters (escape sequences that clear
/// the screen or forge lines) and bidirectional overrides are shown escaped, never acted on.
/// Every human-readable output goes through this; attacker-supplied names and reasons end up in
/// tables and the audit log.
pub fn printable(s: &str) -> std::borrow::Cow<'_, str> {
    let unsafe_char = |c: char| {
        c.is_control()
            || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    if !s.chars().any(unsafe_char) {
        return std::borrow::Cow::Borrowed(s);
    }
    std::borrow::Cow::Owned(
        s.chars()
            .map(|c| {
                if unsafe_char(c) {
                    c.escape_default().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect(),
    )
}

pub fn print_table(headers: &[&str], rows: &[Vec<String>]) {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.iter().map(|c| printable(c).into_owned()).collect())
        .collect();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let parts: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(headers.to_vec());
    for r in &rows {
        line(r.iter().map(String::as_str).collect());
    }
}

fn opt_time(t: Option<i64>) -> String {
    t.map(fmt_time).unwrap_or_else(|| "-".into())
}

pub async fn run(cli: Cli) -> Result<ExitCode> {
    match &cli.command {
        Command::Init => {
            let data = DataDir::new(&cli.data);
            init(&data).await?;
            println!("initialised {}", data.root.display());
            println!(
                "vendor CA public key: {}",
                data.ca_key().with_extension("pub").display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo { action, ssh, web } => {
            let code_of = action
                .as_ref()
                .map(|crate::DemoAction::Code { approver }| *approver);
            crate::devicesim::demo(&cli, code_of, ssh, web.as_deref()).await
        }
        Command::Serve { ssh, web } => {
            let env = Env::open(&cli).await?;
            let addr = ssh.clone().unwrap_or_else(|| env.cfg.ssh_listen.clone());
            let web = web.clone().unwrap_or_else(|| env.cfg.web_listen.clone());
            serve(env, &addr, &web, None).await
        }
        Command::Verify {
            file: Some(file),
            public_key: Some(key),
            ..
        } => verify_standalone(file, key, cli.json),
        Command::SealKey => {
            let data = DataDir::new(&cli.data);
            let key = keys::seal_key(&data.seal_key())
                .with_context(|| format!("no seal key in {}", data.root.display()))?;
            println!("{}", key.public().export());
            Ok(ExitCode::SUCCESS)
        }
        Command::BenchLoad {
            broker,
            target,
            sessions,
            parallel,
            hold,
            every,
            report,
        } => {
            let env = Env::open(&cli).await?;
            let activity = crate::loadgen::Activity {
                hold: Duration::from_secs(*hold),
                every: (*every > 0.0).then(|| Duration::from_secs_f64(*every)),
                report: Duration::from_secs((*report).max(1)),
            };
            crate::loadgen::run(&env, *broker, target, *sessions, *parallel, activity).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Simulate {
            sites,
            devices,
            authorized_key,
            out,
            scripted,
        } => {
            crate::devicesim::run_fleet(*sites, *devices, authorized_key, out, *scripted).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::DeviceSim {
            listen,
            host_key,
            authorized_key,
        } => {
            crate::devicesim::run_standalone(listen, host_key, authorized_key).await?;
            Ok(ExitCode::SUCCESS)
        }
        _ => {
            let env = Env::open(&cli).await?;
            let code = command(&env, &cli.command).await;
            env.store.close().await;
            code
        }
    }
}

async fn command(env: &Env, command: &Command) -> Result<ExitCode> {
    match command {
        Command::Vendor { action } => vendor(env, action).await?,
        Command::Site { action } => site(env, action).await?,
        Command::Device { action } => device(env, action).await?,
        Command::Function { action } => function(env, action).await?,
        Command::Grant { action } => grant(env, action).await?,
        Command::Approver { action } => approver(env, action).await?,
        Command::Request { action } => request(env, action).await?,
        Command::Sessions { live, action } => sessions(env, *live, action.as_ref()).await?,
        Command::Replay {
            id,
            speed,
            idle_limit,
            at,
            input,
        } => replay(env, id, *speed, *idle_limit, *at, *input).await?,
        Command::Notifications => {
            let rows = env.store.notifications().await?;
            env.print_list(
                &rows,
                &[
                    "NOTIFICATION",
                    "EVENT",
                    "FILED",
                    "STATUS",
                    "ATTEMPTS",
                    "LAST ERROR",
                ],
                |n| {
                    vec![
                        n.id.clone(),
                        n.event.clone(),
                        fmt_time(n.created),
                        if n.delivered_at.is_some() {
                            "delivered".into()
                        } else if n.failed_at.is_some() {
                            "given up".into()
                        } else if n.attempts > 0 {
                            "retrying".into()
                        } else {
                            "queued".into()
                        },
                        n.attempts.to_string(),
                        n.last_error.clone().unwrap_or_default(),
                    ]
                },
            )?;
        }
        Command::Breakglass => {
            let rows = env.store.breakglass_list(false).await?;
            env.print_list(
                &rows,
                &[
                    "BREAK-GLASS",
                    "VENDOR",
                    "ORG",
                    "TARGET",
                    "FUNCTION",
                    "OPENED",
                    "REVIEW",
                    "REASON",
                ],
                |b| {
                    vec![
                        b.id.clone(),
                        b.vendor.clone(),
                        b.org.clone(),
                        format!("{}/{}", b.site, b.device),
                        b.function.clone(),
                        fmt_time(b.opened),
                        b.reviewed_by
                            .as_ref()
                            .map(|r| format!("reviewed by {r}"))
                            .unwrap_or_else(|| "WAITING".into()),
                        b.reason.clone(),
                    ]
                },
            )?;
        }
        Command::Commands {
            vendor,
            site,
            device,
            since,
            grep,
        } => {
            commands(
                env,
                vendor.as_deref(),
                site.as_deref(),
                device.as_deref(),
                since.as_deref(),
                grep.as_deref(),
            )
            .await?
        }
        Command::Export { id, input } => export(env, id, *input).await?,
        Command::Audit { follow, since } => audit(env, *follow, since.as_deref()).await?,
        Command::Verify { id, .. } => return verify(env, id.as_deref()).await,
        Command::Init
        | Command::Demo { .. }
        | Command::Serve { .. }
        | Command::DeviceSim { .. }
        | Command::Simulate { .. }
        | Command::BenchLoad { .. }
        | Command::SealKey => unreachable!("handled in run"),
    }
    Ok(ExitCode::SUCCESS)
}

/// Creates a data directory. Everything is built in a sibling temporary directory and renamed
/// into place at the end, so a failure leaves nothing half-written.
pub async fn init(data: &DataDir) -> Result<()> {
    let root = &data.root;
    if root.join("postern.toml").exists() {
        bail!("{} is already initialised", root.display());
    }
    if root.exists() && std::fs::read_dir(root)?.next().is_some() {
        bail!(
            "{} exists and is not empty; choose another --data directory",
            root.display()
        );
    }
    let parent = root
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let staging = parent.join(format!(".postern-init-{}", std::process::id()));
    let result = build_data_dir(&DataDir::new(&staging)).await;
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(e);
    }
    if root.exists() {
        std::fs::remove_dir(root)?;
    }
    std::fs::rename(&staging, root)
        .with_context(|| format!("moving the new data directory to {}", root.display()))?;
    Ok(())
}

async fn build_data_dir(d: &DataDir) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .mode(0o700)
        .recursive(true)
        .create(&d.root)?;
    std::fs::DirBuilder::new().mode(0o700).create(d.keys())?;
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(d.recordings())?;
    let cfg = Config::default();
    let text = format!(
        "# Postern configuration. See deploy/postern.toml for every option.\n{}",
        toml::to_string_pretty(&cfg).context("writing config")?
    );
    std::fs::write(d.config_file(), text)?;
    keys::write_keypair(&d.host_key(), &keys::generate_ed25519("postern-host")?)?;
    keys::write_keypair(&d.ca_key(), &keys::generate_ed25519("postern-vendor-ca")?)?;
    keys::seal_key(&d.seal_key())?;
    // The database lives in the final directory; create it there after the rename would leave a
    // window, so create it here: SQLite paths are not stored anywhere but derived at each start.
    let store = Store::open(&d.sqlite_url())
        .await
        .context("creating the database")?;
    store.close().await;
    AuditLog::new(&d.audit_log(), &cfg.node)
        .record("init", json!({"actor": actor()}))
        .map_err(|e| anyhow!("{e}"))?;
    Ok(())
}

// ---- vendors ----

async fn vendor(env: &Env, action: &VendorAction) -> Result<()> {
    match action {
        VendorAction::Add {
            name,
            org,
            contract_end,
        } => {
            let end = contract_end
                .as_deref()
                .map(|t| parse_time(t, now()))
                .transpose()
                .map_err(|e| anyhow!("--contract-end: {e}"))?;
            let secret = approvals::totp::new_secret();
            let uri = approvals::totp::otpauth_uri(&secret, name).map_err(|e| anyhow!(e))?;
            env.actions()
                .add_vendor(&operator(), name, org, end, &secret, now())
                .await?;
            if env.json {
                println!("{}", json!({"vendor": name, "org": org, "otpauth": uri}));
            } else {
                println!("vendor {name} ({org}) added.");
                println!("TOTP enrolment (shown once; scan it in an authenticator app):\n{uri}\n");
                print_qr(&uri);
            }
        }
        VendorAction::Cert {
            name,
            pubkey,
            validity,
            from,
            no_pty,
            no_port_forwarding,
        } => {
            let v = env
                .store
                .vendor(name)
                .await?
                .ok_or_else(|| anyhow!("no vendor named {name}"))?;
            if v.is_disabled() {
                bail!("vendor {name} is disabled");
            }
            let secs = parse_duration(validity).map_err(|e| anyhow!("--validity: {e}"))?;
            let start = match from {
                Some(t) => parse_time(t, now()).map_err(|e| anyhow!("--from: {e}"))?,
                None => now() - 60,
            };
            let restrict = keys::Restrictions {
                no_pty: *no_pty,
                no_port_forwarding: *no_port_forwarding,
            };
            let (out, issued) = issue_certificate(env, name, pubkey, start, secs, restrict).await?;
            if env.json {
                println!(
                    "{}",
                    json!({"certificate": out, "serial": issued.serial.to_string(), "key_id": issued.key_id, "valid_before": fmt_time(start + secs)})
                );
            } else {
                println!("{}", out.display());
            }
        }
        VendorAction::Disable { name } => {
            let revoked = env
                .actions()
                .disable_vendor(&operator(), name, now())
                .await?;
            if env.json {
                println!(
                    "{}",
                    json!({"vendor": name, "disabled": true, "grants_revoked": revoked})
                );
            } else {
                println!(
                    "vendor {name} disabled; {} grant(s) revoked; live sessions close within a second",
                    revoked.len()
                );
            }
        }
        VendorAction::List => {
            let rows = env.store.vendors().await?;
            env.print_list(&rows, &["VENDOR", "ORG", "CONTRACT END", "STATUS"], |v| {
                vec![
                    v.name.clone(),
                    v.org.clone(),
                    opt_time(v.contract_end),
                    if v.is_disabled() {
                        "disabled".into()
                    } else {
                        "enabled".into()
                    },
                ]
            })?;
        }
    }
    Ok(())
}

/// Signs a user certificate for `vendor`'s public key with the vendor CA, records it in the
/// registry and the audit log (one action), and only then writes it next to the key as
/// `KEY-cert.pub` (where OpenSSH looks for it): a refused action leaves no certificate behind.
/// Returns the certificate's path.
pub async fn issue_certificate(
    env: &Env,
    vendor: &str,
    pubkey: &Path,
    start: i64,
    secs: i64,
    restrict: keys::Restrictions,
) -> Result<(PathBuf, keys::IssuedCert)> {
    let subject = keys::load_public(pubkey)?;
    let ca = keys::load_private(&env.data.ca_key())?;
    let end = start
        .checked_add(secs)
        .ok_or_else(|| anyhow!("certificate validity out of range"))?;
    let issued = keys::sign_user_cert(
        &ca,
        &subject,
        vendor,
        start.max(0) as u64,
        end.max(0) as u64,
        restrict,
    )?;
    let text = issued
        .cert
        .to_openssh()
        .map_err(|e| anyhow!("encoding certificate: {e}"))?;
    let fp = keys::fingerprint(&subject);
    env.actions()
        .issue_certificate(
            &operator(),
            &approvals::IssuedCertificate {
                serial: issued.serial.to_string(),
                vendor: vendor.to_owned(),
                key_id: issued.key_id.clone(),
                key_fingerprint: fp,
                valid_after: start,
                valid_before: end,
                revoked: 0,
                created: now(),
            },
        )
        .await?;
    let out = cert_path(pubkey);
    let tmp = out.with_extension("tmp");
    std::fs::write(&tmp, format!("{text}\n"))
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &out).with_context(|| format!("writing {}", out.display()))?;
    Ok((out, issued))
}

/// `id_ed25519.pub` -> `id_ed25519-cert.pub`, where OpenSSH looks for it.
fn cert_path(pubkey: &Path) -> PathBuf {
    let s = pubkey.to_string_lossy();
    match s.strip_suffix(".pub") {
        Some(base) => PathBuf::from(format!("{base}-cert.pub")),
        None => PathBuf::from(format!("{s}-cert.pub")),
    }
}

fn print_qr(uri: &str) {
    use qrcode::QrCode;
    use qrcode::render::unicode::Dense1x2;
    if let Ok(code) = QrCode::new(uri.as_bytes()) {
        let img = code.render::<Dense1x2>().quiet_zone(true).build();
        println!("{img}");
    }
}

// ---- sites, devices, functions ----

async fn site(env: &Env, action: &SiteAction) -> Result<()> {
    match action {
        SiteAction::Add { site, region } => {
            env.actions()
                .add_site(&operator(), site, region.as_deref(), now())
                .await?;
            println!("site {site} added");
        }
        SiteAction::List => {
            let rows = env.store.sites().await?;
            env.print_list(&rows, &["SITE", "REGION"], |s| {
                vec![
                    s.name.clone(),
                    s.region.clone().unwrap_or_else(|| "-".into()),
                ]
            })?;
        }
    }
    Ok(())
}

async fn device(env: &Env, action: &DeviceAction) -> Result<()> {
    match action {
        DeviceAction::Import {
            file,
            login,
            key,
            region,
        } => {
            let text = std::fs::read_to_string(key)
                .with_context(|| format!("reading {}", key.display()))?;
            keys::parse_private(&text).with_context(|| {
                format!(
                    "{} is not an unencrypted OpenSSH private key",
                    key.display()
                )
            })?;
            let list = std::fs::read_to_string(file)
                .with_context(|| format!("reading {}", file.display()))?;
            let mut devices = Vec::new();
            for (n, line) in list.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || (n == 0 && line.starts_with("site,")) {
                    continue;
                }
                let mut f = line.splitn(4, ',');
                let (Some(site), Some(device), Some(addr), Some(host_key)) =
                    (f.next(), f.next(), f.next(), f.next())
                else {
                    bail!(
                        "{} line {}: expected site,device,addr,host_key",
                        file.display(),
                        n + 1
                    );
                };
                let pinned = russh::keys::PublicKey::from_openssh(host_key.trim())
                    .map_err(|e| anyhow!("{} line {}: host key: {e}", file.display(), n + 1))?;
                devices.push((
                    n + 1,
                    NewDevice {
                        site: site.into(),
                        name: device.into(),
                        addr: addr.into(),
                        login: login.clone(),
                        credential_kind: "key".into(),
                        credential: text.clone(),
                        host_key: pinned.to_openssh().map_err(|e| anyhow!("{e}"))?,
                    },
                ));
            }
            // All or nothing, with one record: a list refused halfway leaves no devices behind.
            let done = env
                .actions()
                .import_devices(
                    &operator(),
                    &file.display().to_string(),
                    login,
                    region.as_deref(),
                    &devices,
                    now(),
                )
                .await?;
            let (added, new_sites) = (done.devices, done.new_sites);
            println!("{added} devices imported ({new_sites} new sites)");
        }
        DeviceAction::Add {
            target,
            addr,
            login,
            key,
            password_file,
            host_key,
        } => {
            let (site, name) = target
                .split_once('/')
                .ok_or_else(|| anyhow!("'{target}' is not SITE/DEVICE"))?;
            let (kind, credential) = match (key, password_file) {
                (Some(k), None) => {
                    let text = std::fs::read_to_string(k)
                        .with_context(|| format!("reading {}", k.display()))?;
                    keys::parse_private(&text).with_context(|| {
                        format!("{} is not an unencrypted OpenSSH private key", k.display())
                    })?;
                    ("key", text)
                }
                (None, Some(p)) => {
                    let text = std::fs::read_to_string(p)
                        .with_context(|| format!("reading {}", p.display()))?;
                    let pw = text.trim_end_matches(['\n', '\r']).to_owned();
                    if pw.is_empty() {
                        bail!("{} is empty", p.display());
                    }
                    ("password", pw)
                }
                _ => bail!("give exactly one of --key FILE or --password-file FILE"),
            };
            addr.parse::<std::net::SocketAddr>()
                .map(|_| ())
                .or_else(|_| {
                    addr.rsplit_once(':')
                        .and_then(|(_, p)| p.parse::<u16>().ok())
                        .map(|_| ())
                        .ok_or(())
                })
                .map_err(|_| anyhow!("--addr '{addr}' is not HOST:PORT"))?;
            let (pinned, how) = match host_key {
                Some(f) => (keys::load_public(f)?, "from file"),
                None => (fetch_host_key(addr).await?, "fetched on first use"),
            };
            let host_key_line = pinned.to_openssh().map_err(|e| anyhow!("{e}"))?;
            let fp = keys::fingerprint(&pinned);
            env.actions()
                .add_device(
                    &operator(),
                    &NewDevice {
                        site: site.into(),
                        name: name.into(),
                        addr: addr.clone(),
                        login: login.clone(),
                        credential_kind: kind.into(),
                        credential,
                        host_key: host_key_line,
                    },
                    &fp,
                    how,
                    now(),
                )
                .await?;
            println!("device {site}/{name} added; host key {fp} pinned ({how})");
        }
        DeviceAction::List => {
            let rows = env.store.devices().await?;
            env.print_list(
                &rows,
                &["SITE/DEVICE", "ADDR", "LOGIN", "CREDENTIAL"],
                |d| {
                    vec![
                        format!("{}/{}", d.site, d.name),
                        d.addr.clone(),
                        d.login.clone(),
                        d.credential_kind.clone(),
                    ]
                },
            )?;
        }
    }
    Ok(())
}

/// Connects to a device just far enough to read its host key (trust on first use at enrolment).
async fn fetch_host_key(addr: &str) -> Result<russh::keys::PublicKey> {
    struct Capture(Arc<std::sync::Mutex<Option<russh::keys::PublicKey>>>);
    impl russh::client::Handler for Capture {
        type Error = russh::Error;
        async fn check_server_key(
            &mut self,
            key: &russh::keys::PublicKeyOrCertificate,
        ) -> Result<bool, Self::Error> {
            if let russh::keys::PublicKeyOrCertificate::PublicKey { key, .. } = key {
                *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(key.clone());
            }
            Ok(false)
        }
    }
    let seen = Arc::new(std::sync::Mutex::new(None));
    let cfg = crate::upstream::client_config(Duration::from_secs(15));
    let attempt = russh::client::connect(cfg, addr, Capture(seen.clone()));
    let _ = tokio::time::timeout(Duration::from_secs(10), attempt).await;
    let key = seen.lock().unwrap_or_else(|p| p.into_inner()).take();
    key.ok_or_else(|| {
        anyhow!("could not read the host key of {addr}: give it with --host-key FILE")
    })
}

async fn function(env: &Env, action: &FunctionAction) -> Result<()> {
    match action {
        FunctionAction::Add {
            name,
            allow,
            login,
            max_window,
            emergency,
            orgs,
        } => {
            let set = ChannelSet::parse(allow).map_err(|e| anyhow!("--allow: {e}"))?;
            let max = parse_duration(max_window).map_err(|e| anyhow!("--max-window: {e}"))?;
            let orgs: Vec<String> = orgs
                .iter()
                .map(|o| o.trim().to_owned())
                .filter(|o| !o.is_empty())
                .collect();
            env.actions()
                .add_function(
                    &operator(),
                    name,
                    &set,
                    login.as_deref(),
                    max,
                    emergency.then_some(orgs.as_slice()),
                    now(),
                )
                .await?;
            println!("function {name} added (allows {set})");
        }
        FunctionAction::List => {
            let rows = env.store.functions().await?;
            env.print_list(
                &rows,
                &["FUNCTION", "ALLOWS", "LOGIN", "MAX WINDOW", "EMERGENCY"],
                |f| {
                    vec![
                        f.name.clone(),
                        f.allow.clone(),
                        f.login.clone().unwrap_or_else(|| "(device)".into()),
                        humantime::format_duration(Duration::from_secs(f.max_window.max(0) as u64))
                            .to_string(),
                        if f.emergency != 0 {
                            format!("yes: {}", f.emergency_orgs)
                        } else {
                            "no".into()
                        },
                    ]
                },
            )?;
        }
    }
    Ok(())
}

async fn grant(env: &Env, action: &GrantAction) -> Result<()> {
    match action {
        GrantAction::Add {
            vendor,
            site,
            function,
            from,
            until,
            reason,
            devices,
        } => {
            let t = now();
            let from = parse_time(from, t).map_err(|e| anyhow!("--from: {e}"))?;
            let until = parse_time(until, t).map_err(|e| anyhow!("--until: {e}"))?;
            let g = env
                .actions()
                .add_grant(
                    &operator(),
                    &NewGrant {
                        vendor: vendor.clone(),
                        site: site.clone(),
                        function: function.clone(),
                        valid_from: from,
                        valid_until: until,
                        granted_by: actor(),
                        reason: reason.clone(),
                        devices: devices.clone(),
                    },
                    t,
                )
                .await?;
            if env.json {
                println!("{}", serde_json::to_string(&g)?);
            } else {
                println!("{}", g.id);
            }
        }
        GrantAction::List => {
            let rows = env.store.grants().await?;
            let t = now();
            env.print_list(
                &rows,
                &[
                    "GRANT", "VENDOR", "SITE", "DEVICES", "FUNCTION", "FROM", "UNTIL", "STATE",
                    "BY",
                ],
                |g| {
                    let state = if g.revoked_at.is_some() {
                        "revoked"
                    } else if g.valid_until <= t {
                        "ended"
                    } else if g.valid_from > t {
                        "future"
                    } else {
                        "active"
                    };
                    vec![
                        g.id.clone(),
                        g.vendor.clone(),
                        g.site.clone(),
                        if g.whole_site() {
                            "all devices".into()
                        } else {
                            g.device_list().join(",")
                        },
                        g.function.clone(),
                        fmt_time(g.valid_from),
                        fmt_time(g.valid_until),
                        state.into(),
                        g.granted_by.clone(),
                    ]
                },
            )?;
        }
        GrantAction::Revoke { id } => {
            env.actions().revoke_grant(&operator(), id, now()).await?;
            println!("grant {id} revoked; live sessions under it close within a second");
        }
    }
    Ok(())
}

async fn approver(env: &Env, action: &ApproverAction) -> Result<()> {
    match action {
        ApproverAction::Add {
            name,
            sites,
            regions,
        } => {
            let creds = ApproverCredentials::new(name)?;
            env.actions()
                .add_approver(
                    &operator(),
                    name,
                    &creds.hash,
                    &creds.secret,
                    sites,
                    regions,
                    now(),
                )
                .await?;
            creds.show(env, name, "added");
        }
        ApproverAction::Reset { name } => {
            let creds = ApproverCredentials::new(name)?;
            env.actions()
                .reset_approver(&operator(), name, &creds.hash, &creds.secret)
                .await?;
            creds.show(env, name, "reset; signed out everywhere");
        }
        ApproverAction::Disable { name } => {
            env.actions().disable_approver(&operator(), name).await?;
            println!("approver {name} disabled and signed out");
        }
        ApproverAction::List => {
            let rows = env.store.approvers().await?;
            env.print_list(&rows, &["APPROVER", "SITES", "REGIONS", "STATUS"], |a| {
                vec![
                    a.name.clone(),
                    a.sites.clone(),
                    a.regions.clone(),
                    if a.disabled != 0 {
                        "disabled".into()
                    } else {
                        "active".into()
                    },
                ]
            })?;
        }
    }
    Ok(())
}

/// A new approver password (random, shown once; only its argon2 hash is stored) and TOTP secret.
struct ApproverCredentials {
    password: String,
    hash: String,
    secret: String,
    uri: String,
}

impl ApproverCredentials {
    fn new(name: &str) -> Result<ApproverCredentials> {
        let password = hex::encode(rand::random::<[u8; 12]>());
        let hash = approvals::approvers::hash_password(&password)?;
        let secret = approvals::totp::new_secret();
        let uri = approvals::totp::otpauth_uri(&secret, name).map_err(|e| anyhow!(e))?;
        Ok(ApproverCredentials {
            password,
            hash,
            secret,
            uri,
        })
    }

    fn show(&self, env: &Env, name: &str, what: &str) {
        if env.json {
            println!(
                "{}",
                json!({"approver": name, "password": self.password, "otpauth": self.uri})
            );
        } else {
            println!("approver {name} {what}.");
            println!("password (shown once): {}", self.password);
            println!(
                "TOTP enrolment (shown once; scan it in an authenticator app):\n{}\n",
                self.uri
            );
            print_qr(&self.uri);
        }
    }
}

async fn request(env: &Env, action: &RequestAction) -> Result<()> {
    match action {
        RequestAction::List { status } => {
            let rows = env.store.requests(status.as_deref()).await?;
            env.print_list(
                &rows,
                &[
                    "REQUEST", "VENDOR", "TARGET", "FUNCTION", "ASKED", "STATUS", "LATENCY",
                    "REASON",
                ],
                |r| {
                    vec![
                        r.id.clone(),
                        r.vendor.clone(),
                        format!("{}/{}", r.site, r.device),
                        r.function.clone(),
                        humantime::format_duration(Duration::from_secs(r.duration.max(0) as u64))
                            .to_string(),
                        r.status.clone(),
                        r.latency()
                            .map(|l| format!("{l}s"))
                            .unwrap_or_else(|| "-".into()),
                        r.reason.clone(),
                    ]
                },
            )?;
        }
        RequestAction::Approve { id, from, until } => {
            let t = now();
            let from = from
                .as_deref()
                .map(|f| parse_time(f, t))
                .transpose()
                .map_err(|e| anyhow!("--from: {e}"))?
                .unwrap_or(t);
            let until = until
                .as_deref()
                .map(|u| parse_time(u, t))
                .transpose()
                .map_err(|e| anyhow!("--until: {e}"))?;
            let (_, grant) = env
                .actions()
                .approve_request(&operator(), id, from, until, t)
                .await?;
            println!(
                "request {id} approved: grant {} until {}",
                grant.id,
                fmt_time(grant.valid_until)
            );
        }
        RequestAction::Deny { id, reason } => {
            env.actions()
                .deny_request(&operator(), id, reason, now())
                .await?;
            println!("request {id} denied");
        }
    }
    Ok(())
}

async fn sessions(env: &Env, live: bool, action: Option<&SessionsAction>) -> Result<()> {
    if let Some(SessionsAction::Kill { id }) = action {
        let s = env.actions().kill_session(&operator(), id).await?;
        println!("session {id} is being closed (node {})", s.node);
        return Ok(());
    }
    let rows = env.store.sessions(live).await?;
    env.print_list(
        &rows,
        &[
            "SESSION", "VENDOR", "TARGET", "FUNCTION", "STARTED", "ENDED", "REASON",
        ],
        |s| {
            vec![
                s.id.clone(),
                s.vendor.clone(),
                format!("{}/{}", s.site, s.device),
                s.function.clone(),
                fmt_time(s.started),
                opt_time(s.ended),
                s.end_reason.clone().unwrap_or_else(|| "live".into()),
            ]
        },
    )
}

// ---- evidence ----

async fn recording_path(env: &Env, id: &str) -> Result<PathBuf> {
    let s = env
        .store
        .session(id)
        .await?
        .ok_or_else(|| anyhow!("no session with id {id}"))?;
    Ok(env.data.recordings().join(&s.recording))
}

fn load_events(path: &Path, input: bool) -> Result<recorder::TerminalEvents> {
    let reader = recorder::Reader::open(path).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    Ok(recorder::terminal_events(reader, input))
}

async fn export(env: &Env, id: &str, input: bool) -> Result<()> {
    let path = recording_path(env, id).await?;
    let te = load_events(&path, input)?;
    let stdout = std::io::stdout();
    recorder::export_asciicast(&te, stdout.lock())?;
    if let Some(p) = te.problem {
        bail!("recording {id} is damaged; exported up to the damage: {p}");
    }
    Ok(())
}

/// Keyboard control of a replay in a terminal: space pauses and resumes, q quits.
struct Keys {
    paused: std::sync::Arc<std::sync::atomic::AtomicBool>,
    quit: std::sync::Arc<std::sync::atomic::AtomicBool>,
    saved: Option<libc::termios>,
}

impl Keys {
    /// Takes the keyboard if stdin is a terminal; otherwise replay simply runs.
    fn take() -> Keys {
        use std::sync::atomic::{AtomicBool, Ordering};
        let paused = std::sync::Arc::new(AtomicBool::new(false));
        let quit = std::sync::Arc::new(AtomicBool::new(false));
        let mut keys = Keys {
            paused: paused.clone(),
            quit: quit.clone(),
            saved: None,
        };
        // SAFETY: isatty/tcgetattr/tcsetattr on fd 0 with a valid termios struct.
        unsafe {
            if libc::isatty(0) != 1 {
                return keys;
            }
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut t) != 0 {
                return keys;
            }
            keys.saved = Some(t);
            t.c_lflag &= !(libc::ICANON | libc::ECHO);
            t.c_cc[libc::VMIN] = 1;
            t.c_cc[libc::VTIME] = 0;
            libc::tcsetattr(0, libc::TCSANOW, &t);
        }
        std::thread::spawn(move || {
            use std::io::Read;
            let mut b = [0u8; 1];
            while std::io::stdin()
                .read(&mut b)
                .map(|n| n == 1)
                .unwrap_or(false)
            {
                match b[0] {
                    b' ' => {
                        paused.fetch_xor(true, Ordering::SeqCst);
                    }
                    b'q' | 3 => {
                        quit.store(true, Ordering::SeqCst);
                        break;
                    }
                    _ => {}
                }
            }
        });
        keys
    }

    fn paused(&self) -> bool {
        self.paused.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn quit(&self) -> bool {
        self.quit.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for Keys {
    fn drop(&mut self) {
        if let Some(t) = self.saved {
            // SAFETY: restoring the attributes read in `take`.
            unsafe {
                libc::tcsetattr(0, libc::TCSANOW, &t);
            }
        }
    }
}

/// The input view of a replay: the keys of the line being typed, escaped, in reverse video on
/// the bottom row, which is kept out of the scrolling region so output does not carry it away.
struct KeyBar {
    cols: usize,
    rows: usize,
    keys: String,
    /// The last line was ended by Enter: the next key starts a new one.
    entered: bool,
}

impl KeyBar {
    fn new(cols: u32, rows: u32) -> KeyBar {
        KeyBar {
            cols: (cols as usize).max(20),
            rows: (rows as usize).max(3),
            keys: String::new(),
            entered: false,
        }
    }

    /// Reserves the bottom row (also after a resize).
    fn reserve(&self, out: &mut impl Write) -> std::io::Result<()> {
        write!(out, "\x1b7\x1b[1;{}r\x1b8", self.rows - 1)
    }

    fn resize(&mut self, size: &str, out: &mut impl Write) -> std::io::Result<()> {
        if let Some((c, r)) = size.split_once('x')
            && let (Ok(c), Ok(r)) = (c.parse::<usize>(), r.parse::<usize>())
        {
            self.cols = c.max(20);
            self.rows = r.max(3);
            self.reserve(out)?;
            self.draw(out)?;
        }
        Ok(())
    }

    fn keys(&mut self, typed: &str, out: &mut impl Write) -> std::io::Result<()> {
        if self.entered {
            self.keys.clear();
        }
        self.keys.push_str(typed);
        self.entered = typed.ends_with(['\r', '\n']);
        self.draw(out)
    }

    fn draw(&self, out: &mut impl Write) -> std::io::Result<()> {
        let shown = recorder::escape_keys(&self.keys);
        let room = self.cols.saturating_sub(8);
        let n = shown.chars().count();
        let tail: String = shown.chars().skip(n.saturating_sub(room)).collect();
        write!(
            out,
            "\x1b7\x1b[{};1H\x1b[0m\x1b[2K\x1b[7m keys: {tail}\x1b[0m\x1b8",
            self.rows
        )
    }

    fn finish(&self, out: &mut impl Write) -> std::io::Result<()> {
        write!(out, "\x1b[r\x1b[{};1H\r\n", self.rows)
    }
}

async fn replay(
    env: &Env,
    id: &str,
    speed: f64,
    idle_limit: f64,
    at: f64,
    input: bool,
) -> Result<()> {
    if !(speed > 0.0 && speed.is_finite()) {
        bail!("--speed must be a positive number");
    }
    if !(at >= 0.0 && at.is_finite()) {
        bail!("--at must be a number of seconds from the start");
    }
    let path = recording_path(env, id).await?;
    let te = load_events(&path, input)?;
    let mut out = std::io::stdout().lock();
    let keys = Keys::take();
    if keys.saved.is_some() {
        eprintln!("postern: replaying {id}; space pauses and resumes, q quits");
    }
    let mut bar = input.then(|| KeyBar::new(te.width, te.height));
    if let Some(b) = &bar {
        b.reserve(&mut out)?;
    }
    let mut prev = at;
    let shown = |e: &&recorder::AsciicastEvent| e.code == "o" || (input && e.code != "m");
    for e in te.events.iter().filter(shown) {
        // Before --at: drawn at once, to rebuild the screen as it was.
        let pause = if e.time <= at {
            0.0
        } else {
            ((e.time - prev).min(idle_limit.max(0.0)) / speed).max(0.0)
        };
        prev = e.time;
        if pause > 0.0 {
            out.flush()?;
            tokio::time::sleep(Duration::from_secs_f64(pause)).await;
        }
        while keys.paused() && !keys.quit() {
            out.flush()?;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if keys.quit() {
            break;
        }
        match (e.code, bar.as_mut()) {
            ("i", Some(b)) => b.keys(&e.data, &mut out)?,
            ("r", Some(b)) => b.resize(&e.data, &mut out)?,
            ("o", _) => out.write_all(e.data.as_bytes())?,
            _ => {}
        }
    }
    if let Some(b) = &bar {
        b.finish(&mut out)?;
    }
    out.flush()?;
    if let Some(p) = te.problem {
        bail!("recording {id} is damaged; replayed up to the damage: {p}");
    }
    Ok(())
}

async fn commands(
    env: &Env,
    vendor: Option<&str>,
    site: Option<&str>,
    device: Option<&str>,
    since: Option<&str>,
    grep: Option<&str>,
) -> Result<()> {
    let since_us = since
        .map(|t| parse_time(t, now()).map(|s| s * 1_000_000))
        .transpose()
        .map_err(|e| anyhow!("--since: {e}"))?;
    let pattern = grep
        .map(regex::Regex::new)
        .transpose()
        .map_err(|e| anyhow!("--grep: {e}"))?;
    let rows: Vec<approvals::CommandRow> = env
        .store
        .commands(vendor, site, device, since_us)
        .await?
        .into_iter()
        .filter(|r| pattern.as_ref().is_none_or(|p| p.is_match(&r.command)))
        .collect();
    env.print_list(
        &rows,
        &[
            "TIME", "SESSION", "AT", "VENDOR", "TARGET", "KIND", "COMMAND",
        ],
        |r| {
            vec![
                fmt_time(r.time_us / 1_000_000),
                r.session.clone(),
                format!("{:.1}", r.offset_ms as f64 / 1000.0),
                r.vendor.clone(),
                format!("{}/{}", r.site, r.device),
                r.kind.clone(),
                // Control characters would act on the auditor's terminal: show them escaped.
                r.command
                    .chars()
                    .flat_map(|c| {
                        if c.is_control() {
                            c.escape_default().collect::<Vec<_>>()
                        } else {
                            vec![c]
                        }
                    })
                    .collect(),
            ]
        },
    )?;
    if !env.json && !rows.is_empty() {
        println!(
            "(replay from a command: postern replay SESSION --at AT; add --input for the keys)"
        );
        if rows
            .iter()
            .any(|r| matches!(r.kind.as_str(), "input" | "unreconstructed" | "secret"))
        {
            // Kinds that come from keystrokes rather than the screen: say what each means.
            println!(
                "(input: rebuilt from the keys, the screen did not show it; unreconstructed: raw keys, escaped; secret: typed at a password prompt, withheld)"
            );
        }
    }
    Ok(())
}

/// Prints the audit log, checking its chain as it reads; with `follow`, keeps printing new events.
async fn audit(env: &Env, follow: bool, since: Option<&str>) -> Result<()> {
    let since = since
        .map(|t| parse_time(t, now()))
        .transpose()
        .map_err(|e| anyhow!("--since: {e}"))?;
    let path = env.data.audit_log();
    let mut reader =
        recorder::Reader::open(&path).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    let mut out = std::io::stdout().lock();
    loop {
        while let Some(item) = reader.next_record() {
            let r = match item {
                Ok(r) => r,
                // An append in progress (or a crash's torn tail): wait for it when following.
                Err(recorder::ReadError::Torn { .. }) if follow => break,
                Err(e) => bail!("audit log damaged: {e}"),
            };
            let Some(mut v) = r.json() else { continue };
            if since.is_some_and(|s| r.time_us / 1_000_000 < s) {
                continue;
            }
            if env.json {
                if let Value::Object(m) = &mut v {
                    m.insert("seq".into(), json!(r.seq));
                }
                writeln!(out, "{v}")?;
            } else {
                let time = v["time"].as_str().unwrap_or("").to_owned();
                let event = v["event"].as_str().unwrap_or("").to_owned();
                let mut details: Vec<String> = Vec::new();
                if let Value::Object(m) = &v {
                    for (k, val) in m
                        .iter()
                        .filter(|(k, _)| !matches!(k.as_str(), "time" | "event" | "node"))
                    {
                        // JSON text of non-strings escapes control characters already.
                        let text = match val {
                            Value::String(s) => printable(s).into_owned(),
                            other => other.to_string(),
                        };
                        details.push(format!("{}={text}", printable(k)));
                    }
                }
                writeln!(
                    out,
                    "{}  {:<22} {}",
                    printable(&time),
                    printable(&event),
                    details.join(" ")
                )?;
            }
        }
        out.flush()?;
        if !follow {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        reader = recorder::Reader::resume(&path, &reader.position())
            .map_err(|e| anyhow!("{}: {e}", path.display()))?;
    }
}

fn report(findings: &[Finding], json: bool) -> Result<ExitCode> {
    let failed = findings.iter().filter(|f| !f.ok).count();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({"ok": failed == 0, "findings": findings}))?
        );
    } else {
        for f in findings {
            println!("{}", f.line());
        }
    }
    if failed > 0 {
        eprintln!("postern: verification failed for {failed} item(s)");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// Checks one recording file with only a seal public key: no data directory, no database.
pub fn verify_standalone(file: &Path, public_key: &Path, json: bool) -> Result<ExitCode> {
    let key_text = std::fs::read_to_string(public_key)
        .with_context(|| format!("reading {}", public_key.display()))?;
    let key = recorder::SealPublicKey::parse(&key_text)
        .map_err(|e| anyhow!("{}: {e}", public_key.display()))?;
    let item = file.display().to_string();
    let finding = match recorder::verify_file(file) {
        Err(e) => Finding::bad(&item, 0, e.to_string()),
        Ok(r) => match (&r.problem, &r.tail) {
            (Some(p), _) => Finding::bad(&item, r.records, p.to_string()),
            (None, recorder::Tail::Torn { offset, .. }) => Finding::bad(
                &item,
                r.records,
                format!("record {}: incomplete at byte {offset}", r.records),
            ),
            (None, recorder::Tail::Clean) => match r.seal(&[key]) {
                Ok(seal) => Finding::ok(
                    &item,
                    r.records,
                    format!(
                        "session {}: chain intact; sealed over {} records by this key",
                        seal.stream, seal.records
                    ),
                ),
                Err(e) => Finding::bad(&item, r.records, e.to_string()),
            },
        },
    };
    report(&[finding], json)
}

pub async fn verify(env: &Env, id: Option<&str>) -> Result<ExitCode> {
    let findings = approvals::verify::verify(&env.store, &env.evidence(), id).await?;
    let failed = findings.iter().filter(|f| !f.ok).count();
    // The verification itself is evidence.
    let _ = env.audit(
        "verify",
        json!({"session": id, "checked": findings.len(), "failed": failed}),
    );
    report(&findings, env.json)
}

// ---- serving ----

/// Runs the SSH front door until interrupted. `extra` runs alongside (the demo's device).
pub async fn serve(
    env: Env,
    ssh_addr: &str,
    web_addr: &str,
    extra: Option<tokio::task::JoinHandle<()>>,
) -> Result<ExitCode> {
    crate::raise_open_files_limit();
    let host_key = keys::load_private(&env.data.host_key())?;
    let ca = keys::load_public(&env.data.ca_key().with_extension("pub"))?;
    let limits = env.cfg.limits().map_err(|e| anyhow!("{e}"))?;
    let warn_before = limits.warn_before;
    let seal = keys::seal_key(&env.data.seal_key())?;
    env.store
        .register_seal_key(&seal.public().export(), &env.cfg.node, now())
        .await?;
    // Session ends the database missed (an outage, a crash) go in first, with their true end
    // times; only sessions with no end anywhere are then marked as cut short.
    let journal = crate::journal::Journal::open(&env.data.journal())
        .with_context(|| format!("opening the journal {}", env.data.journal().display()))?;
    for end in journal.pending() {
        if crate::journal::apply(&env.store, &env.data.recordings(), &journal, &end).await {
            tracing::info!(session = %end.session, reason = %end.reason, "session end recorded from the journal");
        } else {
            bail!(
                "the journal holds the end of session {} but the database does not take it",
                end.session
            );
        }
    }
    let orphans = env
        .store
        .end_orphaned_sessions(&env.cfg.node, now())
        .await?;
    for id in &orphans {
        crate::recording::index_commands(&env.store, &env.data.recordings(), id).await;
    }
    if !orphans.is_empty() {
        env.audit("session.crash_recovered", json!({"sessions": orphans}))?;
    }
    let ctx = Arc::new(crate::session::Ctx {
        store: env.store.clone(),
        audit: env.audit.clone(),
        node: env.cfg.node.clone(),
        recordings: env.data.recordings(),
        ca: ca.fingerprint(russh::keys::HashAlg::Sha256),
        warn_before,
        seal,
        request_wait: Duration::from_secs(
            parse_duration(&env.cfg.request_wait).map_err(|e| anyhow!("request_wait: {e}"))? as u64,
        ),
        env_allow: env.cfg.env_allow.clone(),
        // 30 failures before the first factor per address in 5 minutes.
        source_limiter: approvals::ratelimit::RateLimiter::new(
            Duration::from_secs(300),
            30,
            100_000,
        ),
        admission: crate::admission::Admission::new(limits.startups, limits.penalty_exempt.clone()),
        login_grace: limits.login_grace,
        throttled: approvals::audit::Tally::default(),
        detail_budget: approvals::ratelimit::EventBudget::default(),
        journal: journal.clone(),
        upstream_config: crate::upstream::client_config(limits.device_keepalive),
        notifier: env.notifier.clone(),
        live: Default::default(),
    });
    let tls = env
        .cfg
        .web_tls_cert
        .clone()
        .zip(env.cfg.web_tls_key.clone());
    let https = tls.is_some();
    let client_address = approvals::web::ClientAddress::new(
        limits.trusted_proxies.clone(),
        &env.cfg.forwarded_header,
    )
    .map_err(|e| anyhow!("forwarded_header: {e}"))?;
    let web_state = Arc::new(
        approvals::web::WebState::new(
            env.store.clone(),
            env.audit.clone(),
            env.notifier.clone(),
            env.data.recordings(),
            https,
        )
        .with_client_address(client_address)
        .with_local_seal_key(env.data.seal_key().with_extension("pub")),
    );
    // The web listener's own caps: connections in all and per client, idle and header timeouts.
    let web_limits = crate::web::Limits {
        admission: crate::admission::Admission::new(
            crate::admission::Limits {
                start: env.cfg.web_max_connections,
                rate: 100,
                full: env.cfg.web_max_connections,
                per_source: env.cfg.web_per_source_connections,
                penalties: false,
            },
            // A trusted proxy carries every approver's connections.
            limits.trusted_proxies.clone(),
        ),
        idle: limits.web_idle_timeout,
        header: limits.web_header_timeout,
    };
    // `off` serves SSH only (a node whose approvers use another node's web UI).
    let web = if web_addr == "off" {
        None
    } else {
        Some(crate::web::bind(web_state.clone(), web_addr, tls, web_limits.clone()).await?)
    };
    let listener = tokio::net::TcpListener::bind(ssh_addr)
        .await
        .with_context(|| format!("listening on {ssh_addr}"))?;
    let local = listener.local_addr()?;
    let web_url = match &web {
        Some((addr, _)) => format!("{}://{addr}", if https { "https" } else { "http" }),
        None => "off".to_owned(),
    };
    env.audit(
        "serve.start",
        json!({"ssh": local.to_string(), "web": web_url}),
    )?;
    tracing::info!(ssh = %local, web = %web_url, node = %env.cfg.node, "postern serving");
    // Tests and scripts wait for these lines (the vendors' line comes last).
    if web.is_some() {
        println!("postern: web UI for approvers on {web_url}");
    }
    println!("postern: listening for vendors on {local}");
    std::io::stdout().flush()?;
    tokio::spawn(crate::session::watch_revocations(ctx.clone()));
    tokio::spawn(crate::journal::drain(
        env.store.clone(),
        env.data.recordings(),
        journal.clone(),
    ));
    tokio::spawn(write_summaries(
        ctx.clone(),
        web_state.clone(),
        web_limits.admission.clone(),
        limits.audit_summary_interval,
    ));
    let web_serving: crate::web::Serving = match web {
        Some((_, serving)) => serving,
        None => Box::pin(std::future::pending()),
    };
    if let Some(url) = env.cfg.webhook_url.clone() {
        tokio::spawn(crate::webhook::deliver(
            env.store.clone(),
            env.audit.clone(),
            url,
        ));
    }
    let config = crate::frontdoor::server_config(host_key);
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    // A listener that stops is a failure (non-zero exit, so the service manager restarts the
    // node); a signal is a clean stop.
    let (reason, failed) = tokio::select! {
        r = crate::frontdoor::serve(ctx.clone(), config, listener) => (format!("SSH listener failed: {r:?}"), true),
        r = web_serving => (format!("web listener failed: {r:?}"), true),
        _ = tokio::signal::ctrl_c() => ("interrupted".to_string(), false),
        _ = sigterm.recv() => ("terminated".to_string(), false),
    };
    if failed {
        tracing::error!(reason, "a listener stopped; shutting down");
    }
    tracing::info!(reason, "shutting down");
    for live in ctx.live_sessions() {
        live.request_close(crate::session::EndReason::ShuttingDown);
    }
    // Give supervisors a moment to seal recordings and write their ends to the audit log and the
    // journal (they do not wait for the database; the next start applies the journal).
    for _ in 0..100 {
        if ctx.live_sessions().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if let Some(h) = extra {
        h.abort();
    }
    let _ = env.audit("serve.stop", json!({"reason": reason}));
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Writes what the front doors refused or throttled since the last time as one audit event per
/// kind and interval: a flood is visible to the auditor without being able to fill the disk.
async fn write_summaries(
    ctx: Arc<crate::session::Ctx>,
    web: Arc<approvals::web::WebState>,
    web_admission: Arc<crate::admission::Admission>,
    every: Duration,
) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tick.tick().await;
        for (event, tally) in [
            ("frontdoor.refused", &ctx.admission.tally),
            ("auth.throttled", &ctx.throttled),
            ("web.refused", &web_admission.tally),
            ("web.throttled", &web.throttled),
        ] {
            if let Some(mut fields) = tally.take() {
                fields["interval_seconds"] = json!(every.as_secs());
                ctx.audit(event, fields).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::printable;

    #[test]
    fn hostile_text_is_shown_escaped() {
        assert_eq!(printable("alice"), "alice");
        let shown = printable("x\u{1b}[2J\u{1b}[1;1Hforged\r\nline\u{202e}cba");
        assert!(
            !shown.chars().any(|c| c.is_control() || c == '\u{202e}'),
            "{shown}"
        );
        assert!(shown.contains("\\u{1b}[2J"), "{shown}");
        assert!(shown.contains("\\r\\n"), "{shown}");
        assert!(shown.contains("\\u{202e}"), "{shown}");
    }
}
