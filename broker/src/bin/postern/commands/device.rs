//! `postern device`: enrol devices (address, login, broker-held credential, pinned host key), list and remove them.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use approvals::time::now;
use approvals::{CredentialKind, NewDevice};
use broker::device_web::{self, WebEndpoint};
use broker::keys;

use super::{Env, operator};
use crate::args::*;

pub async fn run(env: &Env, action: &DeviceAction) -> Result<()> {
    match action {
        DeviceAction::Import {
            file,
            login,
            key,
            region,
        } => import(env, file, login, key, region.as_deref()).await,
        DeviceAction::Add { .. } => add_from_args(env, action).await,
        DeviceAction::List => list(env).await,
        DeviceAction::Web {
            target,
            url,
            cert,
            user,
            password_file,
        } => {
            let basic = basic_auth(user, password_file)?;
            let web = web_pin(url, cert.as_deref(), basic).await?;
            set_web(env, target, web).await
        }
        DeviceAction::RotateCommand {
            devices,
            set,
            clear: _,
        } => {
            let which = super::device_rotate::Which::of(devices);
            let devices: Vec<(String, String)> = super::device_rotate::select(env, &which)
                .await?
                .into_iter()
                .map(|d| (d.site, d.name))
                .collect();
            set_rotate_command(env, &devices, set.as_deref()).await
        }
        DeviceAction::Rotate {
            devices,
            dry_run,
            concurrency,
        } => {
            let which = super::device_rotate::Which::of(devices);
            super::device_rotate::run(env, which, *dry_run, *concurrency).await
        }
    }
}

/// `postern device import FILE`: devices from a CSV list, all sharing one key and login.
async fn import(
    env: &Env,
    file: &Path,
    login: &str,
    key: &Path,
    region: Option<&str>,
) -> Result<()> {
    let text = Credential::read(Some(key), None)?.secret;
    let list =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
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
                login: login.to_owned(),
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
            region,
            &devices,
            now(),
        )
        .await?;
    let (added, new_sites) = (done.devices, done.new_sites);
    println!("{added} devices imported ({new_sites} new sites)");
    Ok(())
}

fn target_of(target: &str) -> Result<(String, String)> {
    let (site, name) = target
        .split_once('/')
        .ok_or_else(|| anyhow!("'{target}' is not SITE/DEVICE"))?;
    Ok((site.to_owned(), name.to_owned()))
}

/// `device rotate-command`: one audited action per device.
async fn set_rotate_command(
    env: &Env,
    devices: &[(String, String)],
    command: Option<&str>,
) -> Result<()> {
    let actions = env.actions();
    for (site, name) in devices {
        actions
            .set_device_rotate_command(&operator(), site, name, command)
            .await
            .with_context(|| format!("{site}/{name}: rotate command not changed"))?;
    }
    match command {
        Some(_) => println!("rotate command set for {} device(s)", devices.len()),
        None => println!("rotate command removed from {} device(s)", devices.len()),
    }
    Ok(())
}

/// A device's credential as the operator gave it: a key file or a password file.
struct Credential {
    kind: CredentialKind,
    secret: String,
}

impl Credential {
    fn read(key: Option<&Path>, password_file: Option<&Path>) -> Result<Credential> {
        match (key, password_file) {
            (Some(k), None) => {
                let text = std::fs::read_to_string(k)
                    .with_context(|| format!("reading {}", k.display()))?;
                keys::parse_private(&text).with_context(|| {
                    format!("{} is not an unencrypted OpenSSH private key", k.display())
                })?;
                Ok(Credential {
                    kind: CredentialKind::Key,
                    secret: text,
                })
            }
            (None, Some(p)) => Ok(Credential {
                kind: CredentialKind::Password,
                secret: read_password(p)?,
            }),
            _ => bail!("give exactly one of --key FILE or --password-file FILE"),
        }
    }
}

/// `postern device add` with its arguments: the credential read, the web UI pinned, then one
/// action; the rotation command set after it, if given.
async fn add_from_args(env: &Env, action: &DeviceAction) -> Result<()> {
    let DeviceAction::Add {
        target,
        addr,
        login,
        key,
        password_file,
        host_key,
        rotate_command,
        web,
        web_cert,
        web_user,
        web_password_file,
    } = action
    else {
        return Ok(());
    };
    if let Some(c) = rotate_command {
        approvals::actions::template::check(c).context("--rotate-command")?;
    }
    let credential = Credential::read(key.as_deref(), password_file.as_deref())?;
    // Pinned before anything is added: an unreachable or malformed UI adds nothing.
    let basic = basic_auth(web_user, web_password_file)?;
    let web = match web {
        Some(url) => Some(web_pin(url, web_cert.as_deref(), basic).await?),
        None => None,
    };
    add(
        env,
        target,
        addr,
        login,
        credential,
        host_key.as_deref(),
        web,
    )
    .await?;
    match rotate_command {
        Some(c) => set_rotate_command(env, &[target_of(target)?], Some(c)).await,
        None => Ok(()),
    }
}

/// `postern device add SITE/DEVICE`: the host key pinned from a file or on first contact.
async fn add(
    env: &Env,
    target: &str,
    addr: &str,
    login: &str,
    credential: Credential,
    host_key: Option<&Path>,
    web: Option<WebPin>,
) -> Result<()> {
    let (site, name) = target
        .split_once('/')
        .ok_or_else(|| anyhow!("'{target}' is not SITE/DEVICE"))?;
    let (kind, credential) = (credential.kind, credential.secret);
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
    let web_row = web.as_ref().map(|w| w.row(site, name));
    let web_arg = web_row.as_ref().zip(web.as_ref().map(|w| w.how));
    env.actions()
        .add_device(
            &operator(),
            &NewDevice {
                site: site.into(),
                name: name.into(),
                addr: addr.to_owned(),
                login: login.to_owned(),
                credential_kind: kind,
                credential,
                host_key: host_key_line,
            },
            &fp,
            how,
            web_arg,
            now(),
        )
        .await?;
    println!("device {site}/{name} added; host key {fp} pinned ({how})");
    if let Some(w) = &web {
        w.print();
    }
    Ok(())
}

/// A password file's first line (a trailing newline is not part of the password).
fn read_password(p: &Path) -> Result<String> {
    let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
    let pw = text.trim_end_matches(['\n', '\r']).to_owned();
    if pw.is_empty() {
        bail!("{} is empty", p.display());
    }
    Ok(pw)
}

/// The basic-auth user and password a web UI is signed in to with, if given.
fn basic_auth(user: &Option<String>, file: &Option<PathBuf>) -> Result<Option<(String, String)>> {
    match (user, file) {
        (Some(u), Some(f)) if !u.is_empty() && !u.contains(':') => {
            Ok(Some((u.clone(), read_password(f)?)))
        }
        (Some(u), Some(_)) => bail!("'{u}' cannot be a basic-auth user (empty, or holds ':')"),
        _ => Ok(None),
    }
}

/// A device web UI, its certificate's pin and how it was obtained.
struct WebPin {
    endpoint: WebEndpoint,
    pin: Option<String>,
    how: &'static str,
    /// HTTP basic auth Postern signs in with: user and password.
    basic: Option<(String, String)>,
}

impl WebPin {
    fn row(&self, site: &str, device: &str) -> approvals::store::DeviceWeb {
        approvals::store::DeviceWeb {
            site: site.to_owned(),
            device: device.to_owned(),
            url: self.endpoint.to_string(),
            cert_sha256: self.pin.clone(),
            created: now(),
            basic_user: self.basic.as_ref().map(|(u, _)| u.clone()),
            basic_password: self.basic.as_ref().map(|(_, p)| p.clone()),
        }
    }

    fn print(&self) {
        match &self.pin {
            Some(pin) => println!(
                "web UI {}: certificate {} pinned ({})",
                self.endpoint,
                device_web::shown(pin),
                self.how
            ),
            None => println!("web UI {} ({})", self.endpoint, self.how),
        }
        if let Some((user, _)) = &self.basic {
            println!("web UI signed in to as {user} (basic auth; the password is stored sealed)");
        }
    }
}

async fn web_pin(
    url: &str,
    cert: Option<&Path>,
    basic: Option<(String, String)>,
) -> Result<WebPin> {
    let endpoint = WebEndpoint::parse(url)?;
    if basic.is_some() && !endpoint.https {
        bail!(
            "basic auth is only for an https:// web UI: over plain HTTP its password would cross the site's network in the clear"
        );
    }
    let (pin, how) = match (endpoint.https, cert) {
        (false, Some(_)) => bail!("--web-cert is for an https:// web UI"),
        (false, None) => (None, "plain HTTP: no certificate"),
        (true, Some(f)) => (Some(device_web::pem_fingerprint(f)?), "from file"),
        (true, None) => (
            Some(device_web::fetch_fingerprint(&endpoint).await?),
            "fetched on first use",
        ),
    };
    Ok(WebPin {
        endpoint,
        pin,
        how,
        basic,
    })
}

/// `postern device web SITE/DEVICE`: sets (or replaces) an enrolled device's web UI, its
/// certificate pinned (one audited action).
async fn set_web(env: &Env, target: &str, web: WebPin) -> Result<()> {
    let (site, device) = target_of(target)?;
    env.actions()
        .set_device_web(&operator(), &web.row(&site, &device), web.how)
        .await?;
    web.print();
    Ok(())
}

/// `postern device list`: with each credential's age and the last rotation's result.
async fn list(env: &Env) -> Result<()> {
    let devices = env.store.devices().await?;
    let mut rows =
        super::device_rotate::list_rows(&devices, env.store.device_rotations().await?, now());
    let mut webs: std::collections::HashMap<(String, String), approvals::store::DeviceWeb> =
        (env.store.device_webs().await?)
            .into_iter()
            .map(|w| ((w.site.clone(), w.device.clone()), w))
            .collect();
    for r in &mut rows {
        if let Some(w) = webs.remove(&(r.device.site.clone(), r.device.name.clone())) {
            r.web = Some(w.url);
            r.web_cert_sha256 = w.cert_sha256;
        }
    }
    env.print_list(
        &rows,
        &[
            "SITE/DEVICE",
            "ADDR",
            "LOGIN",
            "CREDENTIAL",
            "AGE",
            "LAST ROTATION",
            "WEB UI",
        ],
        |r| {
            vec![
                format!("{}/{}", r.device.site, r.device.name),
                r.device.addr.clone(),
                r.device.login.clone(),
                r.device.credential_kind.to_string(),
                super::device_rotate::age(r.credential_age),
                r.last_rotation.clone().unwrap_or_else(|| "-".into()),
                r.web.clone().unwrap_or_else(|| "-".into()),
            ]
        },
    )
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
    let cfg = broker::upstream::client_config(Duration::from_secs(15));
    let attempt = russh::client::connect(cfg, addr, Capture(seen.clone()));
    let _ = tokio::time::timeout(Duration::from_secs(10), attempt).await;
    let key = seen.lock().unwrap_or_else(|p| p.into_inner()).take();
    key.ok_or_else(|| {
        anyhow!("could not read the host key of {addr}: give it with --host-key FILE")
    })
}
