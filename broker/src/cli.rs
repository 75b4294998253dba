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
        let audit = AuditLog::of_installation(
            &data.audit_log(),
            &cfg.node,
            data.installation_id().as_deref(),
        );
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
            node: self.cfg.node.clone(),
            audit_log: self.data.audit_log(),
            recordings: self.data.recordings(),
            local_seal_key: Some(self.data.seal_key().with_extension("pub")),
            keyring: Some(keys::keyring_path(&self.data)),
            // The node's pinned copy; `verify --root` takes the auditor's own.
            root: keys::load_root_public(&keys::root_pub_path(&self.data)).ok(),
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
            expect_session,
            ..
        } => verify_standalone(
            file,
            &FileTrust::Key(key),
            expect_session.as_deref(),
            cli.json,
        ),
        Command::Verify {
            file: Some(file),
            keyring: Some(keyring),
            root: Some(root),
            expect_session,
            ..
        } => verify_standalone(
            file,
            &FileTrust::Keyring { keyring, root },
            expect_session.as_deref(),
            cli.json,
        ),
        Command::SealKey { current: true } => {
            let data = DataDir::new(&cli.data);
            let key = keys::seal_key(&data.seal_key())
                .with_context(|| format!("no seal key in {}", data.root.display()))?;
            println!("{}", key.public().export());
            Ok(ExitCode::SUCCESS)
        }
        Command::SealKey { current: false } => {
            seal_keyring_export(&DataDir::new(&cli.data), cli.json)
        }
        Command::Keys {
            action:
                crate::KeysAction::Root {
                    action: crate::RootAction::Init { out },
                },
        } => {
            let public = keys::root_init(out, &DataDir::new(&cli.data))?;
            println!("{}", public.export());
            println!("fingerprint {}", public.fingerprint());
            println!(
                "root private key in {} (keep it off the broker); public key in {}",
                out.display(),
                keys::root_pub_beside(out).display()
            );
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
        Command::Verify {
            id,
            root,
            checkpoints,
            ..
        } => {
            return verify(env, id.as_deref(), root.as_deref(), checkpoints.as_deref()).await;
        }
        Command::Keys { action } => keys_command(env, action).await?,
        Command::Checkpoints {
            action: crate::CheckpointsAction::Export { node },
        } => {
            for cp in env.store.checkpoints(node.as_deref()).await? {
                println!("{}", serde_json::to_string(&cp)?);
            }
        }
        Command::Init
        | Command::Demo { .. }
        | Command::Serve { .. }
        | Command::DeviceSim { .. }
        | Command::Simulate { .. }
        | Command::BenchLoad { .. }
        | Command::SealKey { .. } => unreachable!("handled in run"),
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
    let installation = hex::encode(rand::random::<[u8; 16]>());
    crate::config::write_private(
        &d.installation_file(),
        format!("{installation}\n").as_bytes(),
    )?;
    // The database lives in the final directory; create it there after the rename would leave a
    // window, so create it here: SQLite paths are not stored anywhere but derived at each start.
    let store = Store::open(&d.sqlite_url())
        .await
        .context("creating the database")?;
    store.close().await;
    AuditLog::of_installation(&d.audit_log(), &cfg.node, Some(&installation))
        .record(
            "init",
            json!({"actor": actor(), "installation": installation}),
        )
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
                .context("--contract-end")?;
            let secret = approvals::totp::new_secret();
            let uri = approvals::totp::otpauth_uri(&secret, name)?;
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
            let secs = parse_duration(validity).context("--validity")?;
            let start = match from {
                Some(t) => parse_time(t, now()).context("--from")?,
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
                revoked: false,
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
                        credential_kind: approvals::CredentialKind::Key,
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
                    (approvals::CredentialKind::Key, text)
                }
                (None, Some(p)) => {
                    let text = std::fs::read_to_string(p)
                        .with_context(|| format!("reading {}", p.display()))?;
                    let pw = text.trim_end_matches(['\n', '\r']).to_owned();
                    if pw.is_empty() {
                        bail!("{} is empty", p.display());
                    }
                    (approvals::CredentialKind::Password, pw)
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
                        credential_kind: kind,
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
                        d.credential_kind.to_string(),
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
            let set = ChannelSet::parse(allow).context("--allow")?;
            let max = parse_duration(max_window).context("--max-window")?;
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
                        if f.emergency {
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
            let from = parse_time(from, t).context("--from")?;
            let until = parse_time(until, t).context("--until")?;
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
                    if a.disabled {
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
        let uri = approvals::totp::otpauth_uri(&secret, name)?;
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
            let rows = match status.as_deref().map(str::parse) {
                Some(Err(_)) => Vec::new(), // no request is in a state that does not exist
                known => env.store.requests(known.and_then(Result::ok)).await?,
            };
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
                        r.status.to_string(),
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
                .context("--from")?
                .unwrap_or(t);
            let until = until
                .as_deref()
                .map(|u| parse_time(u, t))
                .transpose()
                .context("--until")?;
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
    /// The terminal's mode, restored when dropped; `None` when stdin is not a terminal.
    raw: Option<crate::sys::RawInput>,
}

impl Keys {
    /// Takes the keyboard if stdin is a terminal; otherwise replay simply runs.
    fn take() -> Keys {
        use std::sync::atomic::{AtomicBool, Ordering};
        let paused = std::sync::Arc::new(AtomicBool::new(false));
        let quit = std::sync::Arc::new(AtomicBool::new(false));
        let raw = crate::sys::RawInput::take();
        let taken = raw.is_some();
        let keys = Keys {
            paused: paused.clone(),
            quit: quit.clone(),
            raw,
        };
        if !taken {
            return keys;
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
    if keys.raw.is_some() {
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
        .context("--since")?;
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
        .context("--since")?;
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
                    // The record's chain hash, so an auditor can compare with a shipped head.
                    m.insert("hash".into(), json!(hex::encode(r.hash)));
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
    report_with(findings, json, false)
}

/// Prints the findings; `summary` adds a count line (sessions kept on other nodes apart: they
/// are neither checked nor failed here).
fn report_with(findings: &[Finding], json: bool, summary: bool) -> Result<ExitCode> {
    let failed = findings.iter().filter(|f| !f.ok).count();
    let elsewhere = findings.iter().filter(|f| f.elsewhere.is_some()).count();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &json!({"ok": failed == 0, "failed": failed, "elsewhere": elsewhere, "findings": findings})
            )?
        );
    } else {
        for f in findings {
            println!("{}", f.line());
        }
        if summary {
            println!(
                "{} checked: {} OK, {failed} failed; {elsewhere} recorded on other nodes",
                findings.len() - elsewhere,
                findings.len() - elsewhere - failed
            );
        }
    }
    if failed > 0 {
        eprintln!("postern: verification failed for {failed} item(s)");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// What a third party trusts to check one recording file.
pub enum FileTrust<'a> {
    /// One seal public key, taken on trust.
    Key(&'a Path),
    /// A keyring and the checker's own copy of the root public key: the keys the root certified
    /// for the time the recording was sealed.
    Keyring { keyring: &'a Path, root: &'a Path },
}

/// Checks one recording file with only a seal public key, or a keyring and a root public key:
/// no data directory, no database.
pub fn verify_standalone(
    file: &Path,
    trust: &FileTrust<'_>,
    expect_session: Option<&str>,
    json: bool,
) -> Result<ExitCode> {
    let item = file.display().to_string();
    let (key, ring) = match trust {
        FileTrust::Key(public_key) => {
            let key_text = std::fs::read_to_string(public_key)
                .with_context(|| format!("reading {}", public_key.display()))?;
            let key = recorder::SealPublicKey::parse(&key_text)
                .map_err(|e| anyhow!("{}: {e}", public_key.display()))?;
            (Some(key), None)
        }
        FileTrust::Keyring { keyring, root } => {
            let root = keys::load_root_public(root)?;
            if !keyring.exists() {
                bail!("reading {}: no such file", keyring.display());
            }
            let ring = recorder::keyring::Keyring::load(keyring)?;
            (None, Some((ring, root)))
        }
    };
    if let Some((ring, root)) = &ring {
        // A keyring that does not check against the auditor's root proves nothing.
        if let Err(e) = ring.check(root) {
            return report(&[Finding::bad(&item, 0, e.to_string())], json);
        }
    }
    let finding = match recorder::verify_file(file) {
        Err(e) => Finding::bad(&item, 0, e.to_string()),
        Ok(r) if expect_session.is_some_and(|want| want != r.stream_id) => Finding::bad(
            &item,
            r.records,
            format!(
                "the file is session {}, not {} (a recording of another session)",
                r.stream_id,
                expect_session.unwrap_or_default()
            ),
        ),
        Ok(r) => match (&r.problem, &r.tail) {
            (Some(p), _) => Finding::bad(&item, r.records, p.to_string()),
            (None, recorder::Tail::Torn { offset, .. }) => Finding::bad(
                &item,
                r.records,
                format!("record {}: incomplete at byte {offset}", r.records),
            ),
            (None, recorder::Tail::Clean) => match (&key, &ring) {
                (Some(key), _) => match r.seal(&[*key]) {
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
                (None, Some((ring, root))) => sealed_by_keyring(&item, &r, ring, root),
                (None, None) => Finding::bad(&item, r.records, "no key to check the seal with"),
            },
        },
    };
    report(&[finding], json)
}

pub async fn verify(
    env: &Env,
    id: Option<&str>,
    root: Option<&Path>,
    checkpoints: Option<&str>,
) -> Result<ExitCode> {
    let mut evidence = env.evidence();
    if let Some(root) = root {
        evidence.root = Some(keys::load_root_public(root)?);
    }
    let mut findings = approvals::verify::verify(&env.store, &evidence, id).await?;
    if id.is_none() || checkpoints.is_some() {
        findings.extend(verify_checkpoints(env, checkpoints).await?);
    }
    let failed = findings.iter().filter(|f| !f.ok).count();
    let elsewhere = findings.iter().filter(|f| f.elsewhere.is_some()).count();
    // The verification itself is evidence, but verify never changes what it judged: with the
    // audit log damaged or cut, appending (which would cut an incomplete tail) is left out.
    let log_damaged = approvals::verify::audit_log_damaged(&env.evidence().audit_log);
    if !log_damaged {
        let _ = env.audit(
        "verify",
            json!({"session": id, "checked": findings.len() - elsewhere, "failed": failed, "elsewhere": elsewhere}),
        );
    }
    report_with(&findings, env.json, id.is_none())
}

/// The audit log against shipped checkpoints: from `source` (a file or an http(s) URL of JSON
/// lines), or the database's, which whoever runs this host can change (a hint, labelled so).
async fn verify_checkpoints(env: &Env, source: Option<&str>) -> Result<Vec<Finding>> {
    let (list, label, required) = match source {
        None => (
            env.store.checkpoints(None).await?,
            "database, a hint: only an off-host copy binds".to_owned(),
            false,
        ),
        Some(s) => {
            let text = if s.starts_with("http://") || s.starts_with("https://") {
                let r = reqwest::Client::builder()
                    .timeout(Duration::from_secs(30))
                    .build()?
                    .get(s)
                    .send()
                    .await
                    .with_context(|| format!("fetching {s}"))?;
                if !r.status().is_success() {
                    bail!("fetching {s}: {}", r.status());
                }
                r.text().await.with_context(|| format!("reading {s}"))?
            } else {
                std::fs::read_to_string(s).with_context(|| format!("reading {s}"))?
            };
            let list =
                approvals::checkpoint::parse_lines(&text).map_err(|e| anyhow!("{s}: {e}"))?;
            (list, s.to_owned(), true)
        }
    };
    let (path, node) = (env.data.audit_log(), env.cfg.node.clone());
    let evidence = env.evidence();
    tokio::task::spawn_blocking(move || {
        let mut findings =
            approvals::checkpoint::verify_log(&path, &node, &list, &label, required, now());
        findings.extend(checkpoint_keys(&evidence, &node, &list));
        findings
    })
    .await
    .map_err(|e| anyhow!("{e}"))
}

/// A checkpoint counts only if the root certified its key for the time it was made (as seals
/// do): a key an insider made and signed checkpoints with proves nothing.
fn checkpoint_keys(
    evidence: &approvals::verify::Evidence,
    node: &str,
    list: &[approvals::checkpoint::Checkpoint],
) -> Vec<Finding> {
    let (Some(root), Some(path)) = (&evidence.root, &evidence.keyring) else {
        return Vec::new();
    };
    let ring = match recorder::keyring::Keyring::load(path) {
        Ok(r) => r,
        Err(e) => return vec![Finding::bad("checkpoint keys", 0, e.to_string())],
    };
    list.iter()
        .filter(|cp| cp.node == node)
        .filter_map(|cp| {
            let key = recorder::SealPublicKey::parse(&cp.key).ok()?;
            let trusted = ring
                .trusted(root, cp.time)
                .is_ok_and(|keys| keys.iter().any(|(k, _)| *k == key));
            (!trusted).then(|| {
                let why = ring
                    .status(root, &key, cp.time)
                    .map(|s| s.to_string())
                    .unwrap_or_else(|e| e.to_string());
                Finding::bad(
                    &format!("checkpoint seq {}", cp.seq),
                    0,
                    format!("signed by a key the root did not certify for its time: {why}"),
                )
            })
        })
        .collect()
}

// ---- serving ----

/// Runs the SSH front door until interrupted. `extra` runs alongside (the demo's device).
pub async fn serve(
    env: Env,
    ssh_addr: &str,
    web_addr: &str,
    extra: Option<tokio::task::JoinHandle<()>>,
) -> Result<ExitCode> {
    crate::sys::raise_open_files_limit();
    let host_key = keys::load_private(&env.data.host_key())?;
    // The CA private key is needed only where certificates are issued; a node trusts every vendor
    // CA registered in the database, its own (if it has one) registered here.
    let ca_pub = env.data.ca_key().with_extension("pub");
    let own_ca = if ca_pub.exists() {
        let ca = keys::load_public(&ca_pub)?;
        env.store
            .register_vendor_ca(&ca.to_openssh()?, &env.cfg.node, now())
            .await?;
        Some(ca.fingerprint(russh::keys::HashAlg::Sha256))
    } else {
        None
    };
    let ca = Arc::new(crate::vendor_ca::VendorCas::load(&env.store, own_ca).await?);
    tokio::spawn(ca.clone().watch(env.store.clone()));
    let limits = env.cfg.limits().map_err(|e| anyhow!("{e}"))?;
    let warn_before = limits.warn_before;
    let seal = keys::seal_key(&env.data.seal_key())?;
    // Sealing with a key no root vouches for would make evidence nobody can trust: refuse.
    let seal_id = keys::require_certified(&env.data, &seal.public(), now())?;
    tracing::info!(key_id = %seal_id, "seal key certified by the pinned root");
    // A hint for listings; verifiers trust the keyring, not this row.
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
        ca,
        warn_before,
        seal,
        request_wait: Duration::from_secs(
            parse_duration(&env.cfg.request_wait).context("request_wait")? as u64,
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
        .with_local_seal_key(env.data.seal_key().with_extension("pub"))
        .with_keyring(
            keys::keyring_path(&env.data),
            keys::load_root_public(&keys::root_pub_path(&env.data)).ok(),
        ),
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
    crate::checkpointer::spawn(&env)?;
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
    // Summaries the audit log could not take (descriptors or disk exhausted: exactly when floods
    // happen) wait for the next interval instead of being lost; at most a few hundred are kept.
    const MAX_PENDING: usize = 256;
    let mut pending: std::collections::VecDeque<(&'static str, Value)> = Default::default();
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
                fields["counted_until"] = json!(fmt_time(now()));
                pending.push_back((event, fields));
            }
        }
        while pending.len() > MAX_PENDING {
            pending.pop_front();
        }
        while let Some((event, fields)) = pending.pop_front() {
            if !ctx.audit(event, fields.clone()).await {
                pending.push_front((event, fields));
                break;
            }
        }
    }
}

/// A recording's seal checked against the keys `root` certified for the time it was sealed (the
/// seal record's time).
fn sealed_by_keyring(
    item: &str,
    r: &recorder::VerifyReport,
    ring: &recorder::keyring::Keyring,
    root: &recorder::keyring::RootPublicKey,
) -> Finding {
    let at = r.last.as_ref().map(|l| l.time_us / 1_000_000).unwrap_or(0);
    let trusted = match ring.trusted(root, at) {
        Ok(t) => t,
        Err(e) => return Finding::bad(item, r.records, e.to_string()),
    };
    let keys: Vec<recorder::SealPublicKey> = trusted.iter().map(|(k, _)| *k).collect();
    match r.seal(&keys) {
        Ok(seal) => {
            let id = recorder::SealPublicKey::parse(&seal.key)
                .map(|k| recorder::keyring::KeyId::of(&k).to_string())
                .unwrap_or_default();
            Finding::ok(
                item,
                r.records,
                format!(
                    "session {}: chain intact; sealed over {} records at {} by key {id}, certified by root {} at that time",
                    seal.stream,
                    seal.records,
                    fmt_time(at),
                    root.fingerprint()
                ),
            )
        }
        Err(recorder::SealError::UnknownKey { seq, key }) => {
            // Say why the keyring does not vouch for this key then.
            let why = match recorder::SealPublicKey::parse(&key) {
                Err(_) => "an unreadable key".to_owned(),
                Ok(k) => match ring.status(root, &k, at) {
                    Ok(recorder::keyring::KeyStatus::NotCertified(id)) => {
                        format!("key {id}, which the root never certified")
                    }
                    Ok(recorder::keyring::KeyStatus::Revoked { key_id, at: from }) => {
                        format!("key {key_id}, revoked from {}", fmt_time(from))
                    }
                    Ok(recorder::keyring::KeyStatus::Expired { key_id, at: end }) => {
                        format!("key {key_id}, whose certificate ended at {}", fmt_time(end))
                    }
                    Ok(recorder::keyring::KeyStatus::NotYetValid { key_id, from }) => {
                        format!("key {key_id}, certified only from {}", fmt_time(from))
                    }
                    Ok(recorder::keyring::KeyStatus::Trusted(id)) => format!("key {id}"),
                    Err(e) => e.to_string(),
                },
            };
            Finding::bad(
                item,
                r.records,
                format!(
                    "record {seq}: sealed at {} with {why}: not trusted",
                    fmt_time(at)
                ),
            )
        }
        Err(e) => Finding::bad(item, r.records, e.to_string()),
    }
}

// ---- seal-key trust ----

/// `postern seal-key`: the keyring as signed lines an auditor checks with their own root public
/// key, each key's history in comments first.
fn seal_keyring_export(data: &DataDir, json: bool) -> Result<ExitCode> {
    let ring = recorder::keyring::Keyring::load(&keys::keyring_path(data))?;
    let current = keys::seal_key(&data.seal_key())
        .with_context(|| format!("no seal key in {}", data.root.display()))?
        .public();
    let current_id = recorder::keyring::KeyId::of(&current);
    let root = keys::pinned_root(data)?;
    let history = match &root {
        Some(root) => ring.history(root).map_err(|e| e.to_string()),
        None => Err("no root public key is pinned here".to_owned()),
    };
    if json {
        let entries: Vec<&recorder::keyring::Entry> = ring.entries().collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "current": {"key_id": current_id, "key": current.export()},
                "pinned_root": root.map(|r| r.fingerprint()),
                "keys": history.as_ref().ok(),
                "problem": history.as_ref().err(),
                "entries": entries,
            }))?
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "# Postern seal keyring. Check it with your own copy of the operator's root public key:"
    );
    println!("#   postern verify --file RECORDING --keyring THIS_FILE --root ROOT_PUB");
    match (&root, &history) {
        (Some(root), Ok(history)) => {
            println!("# Pinned on this node: root {}", root.fingerprint());
            for h in history {
                let windows: Vec<String> = h
                    .windows
                    .iter()
                    .map(|(a, b)| format!("{} to {}", fmt_time(*a), fmt_time(*b)))
                    .collect();
                let mut line = format!(
                    "# {} node {} certified {}",
                    h.key_id,
                    printable(&h.node),
                    windows.join(", ")
                );
                if let Some(r) = h.revoked {
                    line.push_str(&format!("; revoked from {}", fmt_time(r)));
                }
                if let Some((from, at)) = &h.replaces {
                    line.push_str(&format!("; replaced {from} at {}", fmt_time(*at)));
                }
                if let Some((to, at)) = &h.replaced_by {
                    line.push_str(&format!("; replaced by {to} at {}", fmt_time(*at)));
                }
                if h.key_id == current_id {
                    line.push_str("; sealing now");
                }
                println!("{line}");
            }
        }
        (_, Err(problem)) => println!("# WARNING: {problem}"),
        (None, Ok(_)) => {}
    }
    if !ring
        .entries()
        .any(|e| matches!(e, recorder::keyring::Entry::Certify(c) if c.key_id == current_id))
    {
        println!(
            "# The key sealing now ({current_id}) is not certified: run `postern keys certify --root ROOT_KEY_FILE`"
        );
    }
    for e in ring.entries() {
        println!("{}", e.line());
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn keys_command(env: &Env, action: &crate::KeysAction) -> Result<()> {
    use crate::KeysAction;
    let now = now();
    let ring_path = keys::keyring_path(&env.data);
    match action {
        // Handled before the data directory is opened.
        KeysAction::Root { .. } => unreachable!("handled in run"),
        KeysAction::Pin { root_pub } => {
            let root = keys::load_root_public(root_pub)?;
            env.audit("keys.pin", json!({"root": root.fingerprint()}))?;
            if keys::pin_root(&env.data, &root)? {
                println!(
                    "pinned root {} in {} (for this broker's start-up check; auditors use their own copy)",
                    root.fingerprint(),
                    keys::root_pub_path(&env.data).display()
                );
            } else {
                println!("root {} was already pinned", root.fingerprint());
            }
        }
        KeysAction::Certify {
            root,
            valid_for,
            from,
        } => {
            let root = keys::load_root_key(root)?;
            let public = root.public();
            if let Some(pinned) = keys::pinned_root(&env.data)?
                && pinned != public
            {
                bail!(
                    "this node pins another root key ({}) in {}; certify with that one, or remove the file to change roots",
                    pinned.fingerprint(),
                    keys::root_pub_path(&env.data).display()
                );
            }
            let ring = open_keyring(&ring_path, &public)?;
            let valid_for = parse_duration(valid_for).context("--valid-for")?;
            let from = match from {
                Some(f) => parse_time(f, now).context("--from")?,
                None => now,
            };
            let seal = keys::seal_key(&env.data.seal_key())?.public();
            let entry = keys::certify_entry(&root, &seal, &env.cfg.node, from, valid_for, now)?;
            let recorder::keyring::Entry::Certify(cert) = &entry else {
                bail!("internal: certify made no certificate");
            };
            drop(ring);
            env.audit(
                "keys.certify",
                json!({
                    "key_id": cert.key_id, "key": cert.key, "node": cert.node,
                    "not_before": cert.not_before, "not_after": cert.not_after,
                    "root": public.fingerprint(),
                }),
            )?;
            let pinned = keys::pin_root(&env.data, &public)?;
            recorder::keyring::Keyring::append(&ring_path, std::slice::from_ref(&entry))?;
            // The database row is only a hint for other nodes' listings; trust is the keyring.
            env.store
                .register_seal_key(&cert.key, &env.cfg.node, now)
                .await?;
            println!(
                "certified seal key {} of node {} from {} to {} by root {}",
                cert.key_id,
                printable(&cert.node),
                fmt_time(cert.not_before),
                fmt_time(cert.not_after),
                public.fingerprint()
            );
            if pinned {
                println!(
                    "pinned root {} in {} (for this broker's start-up check; auditors use their own copy)",
                    public.fingerprint(),
                    keys::root_pub_path(&env.data).display()
                );
            }
        }
        KeysAction::Revoke {
            key_id,
            root,
            at,
            reason,
        } => {
            let root = keys::load_root_key(root)?;
            let ring = open_keyring(&ring_path, &root.public())?;
            let id = recorder::keyring::KeyId(key_id.clone());
            if !ring
                .entries()
                .any(|e| matches!(e, recorder::keyring::Entry::Certify(c) if c.key_id == id))
            {
                bail!("no key {} in {}", printable(key_id), ring_path.display());
            }
            let at = match at {
                Some(a) => parse_time(a, now).context("--at")?,
                None => now,
            };
            let entry = recorder::keyring::Entry::Revoke(root.revoke(&id, at, now, reason));
            env.audit(
                "keys.revoke",
                json!({"key_id": id, "not_after": at, "reason": reason, "root": root.public().fingerprint()}),
            )?;
            recorder::keyring::Keyring::append(&ring_path, std::slice::from_ref(&entry))?;
            println!(
                "revoked seal key {id}: its seals from {} on are not trusted",
                fmt_time(at)
            );
        }
        KeysAction::Rotate {
            root,
            valid_for,
            overlap,
        } => {
            let root = keys::load_root_key(root)?;
            let ring = open_keyring(&ring_path, &root.public())?;
            let valid_for = parse_duration(valid_for).context("--valid-for")?;
            let overlap = parse_duration(overlap).context("--overlap")?;
            let old_seed = keys::seal_seed(&env.data.seal_key())?;
            let old_id =
                recorder::keyring::KeyId::of(&recorder::SealKey::from_seed(&old_seed).public());
            if !ring
                .entries()
                .any(|e| matches!(e, recorder::keyring::Entry::Certify(c) if c.key_id == old_id))
            {
                bail!(
                    "the current seal key {old_id} was never certified: certify it with `postern keys certify --root ROOT_KEY_FILE` instead"
                );
            }
            let rot = keys::rotation(&root, &old_seed, &env.cfg.node, valid_for, overlap, now)?;
            let entries: Vec<Value> = rot
                .entries
                .iter()
                .map(|e| serde_json::to_value(e).unwrap_or(Value::Null))
                .collect();
            // The transition, signed by both keys, goes into the audit log as well as the keyring.
            env.audit(
                "keys.rotate",
                json!({"from": rot.from, "to": rot.to, "at": now, "old_not_after": now.saturating_add(overlap), "entries": entries}),
            )?;
            recorder::keyring::Keyring::append(&ring_path, &rot.entries)?;
            keys::install_seal_seed(&env.data.seal_key(), &rot.new_seed)?;
            let new_public = recorder::SealKey::from_seed(&rot.new_seed).public();
            env.store
                .register_seal_key(&new_public.export(), &env.cfg.node, now)
                .await?;
            println!(
                "rotated seal key {} to {}; {} stays trusted until {}: restart the broker before then",
                rot.from,
                rot.to,
                rot.from,
                fmt_time(now.saturating_add(overlap))
            );
        }
    }
    Ok(())
}

/// The data directory's keyring, refused if it does not check against the root about to sign
/// into it: never extend a keyring someone has tampered with.
fn open_keyring(
    path: &Path,
    root: &recorder::keyring::RootPublicKey,
) -> Result<recorder::keyring::Keyring> {
    let ring = recorder::keyring::Keyring::load(path)?;
    ring.check(root)
        .with_context(|| format!("{} does not check against this root key", path.display()))?;
    Ok(ring)
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
