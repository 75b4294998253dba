//! `postern demo`: a data directory, a simulated device, a vendor, an approver and a grant, then
//! the broker itself, so that a newcomer can try every path with stock `ssh` in one terminal.

use approvals::audit::AuditEvent;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, anyhow};
use broker::config::DataDir;
use broker::keys;
use serde_json::json;
use tokio::net::TcpListener;

use super::device::{SimLogin, serve_sim};

use crate::commands::{Env, operator};

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
pub async fn run(
    cli: &crate::args::Cli,
    code_of: Option<bool>,
    ssh: &str,
    web: Option<&str>,
) -> Result<ExitCode> {
    let data = DataDir::new(&cli.data);
    let paths = DemoPaths {
        dir: data.root.join("demo"),
    };
    if let Some(approver) = code_of {
        return print_code(&data, &paths, approver);
    }
    if !data.is_initialised() {
        broker::init::init(&data, &operator()).await?;
        println!("initialised {}", data.root.display());
    }
    let env = Env::open(cli).await?;
    certify_demo_seal_key(&env).await?;
    let first = !paths.dir.exists();
    if first {
        make_keys(&paths)?;
    }
    let (sim, sim_addr) = start_device(&paths).await?;
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
    let web = web
        .map(str::to_owned)
        .unwrap_or_else(|| env.cfg.web_listen.clone());
    print_guide(&data, &paths, ssh_port, &web);
    let code = crate::commands::serve::serve(env, ssh, &web, "off", "off").await;
    sim.abort();
    code
}

/// `postern demo code [--approver]`: the current TOTP code of the demo's vendor or approver.
fn print_code(data: &DataDir, paths: &DemoPaths, approver: bool) -> Result<ExitCode> {
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
    Ok(ExitCode::SUCCESS)
}

/// The broker's key for the device, the device's host key, the vendor's key.
fn make_keys(paths: &DemoPaths) -> Result<()> {
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
    Ok(())
}

/// The simulated device, on the port it had last time so the enrolled address stays right.
async fn start_device(
    paths: &DemoPaths,
) -> Result<(tokio::task::JoinHandle<()>, std::net::SocketAddr)> {
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
    let login = std::sync::Arc::new(SimLogin::create(
        paths.dir.join("sim-home"),
        &broker_device_pub,
    )?);
    let sim = tokio::spawn(async move {
        if let Err(e) = serve_sim(sim_listener, sim_key, login, DEVICE, false).await {
            tracing::warn!(error = %e, "simulated device stopped");
        }
    });
    Ok((sim, sim_addr))
}

/// What to try, with commands that work as printed.
fn print_guide(data: &DataDir, paths: &DemoPaths, ssh_port: &str, web: &str) {
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
    crate::commands::keys::run(
        env,
        &crate::args::KeysAction::Certify {
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
    let op = operator();
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
            None,
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
    broker::config::write_private(&paths.totp(), secret.as_bytes())?;
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
    broker::config::write_private(&paths.approver_password(), password.as_bytes())?;
    broker::config::write_private(&paths.approver_totp(), approver_secret.as_bytes())?;
    broker::enrol::issue_certificate(
        env,
        &op,
        VENDOR,
        &paths.vendor_key().with_extension("pub"),
        now - 60,
        30 * 86_400,
        keys::Restrictions::default(),
    )
    .await?;
    env.audit(
        AuditEvent::DemoSetup,
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
                &operator(),
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
