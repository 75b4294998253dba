//! `postern bench-load`: many vendor sessions from one process, for the concurrency benchmark.
//!
//! One OpenSSH client process per session caps a benchmark at a few hundred sessions on a small
//! machine. This opens them in-process instead, with the same protocol steps a vendor's OpenSSH
//! takes: a certificate signed by the broker's CA, then the TOTP code over keyboard-interactive,
//! then an interactive shell with a pty. Each session is a fresh vendor with a grant, since a
//! TOTP code works once. Benchmark use only: it writes vendors and grants into the data dir.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use approvals::NewGrant;
use approvals::time::now;
use russh::client;
use russh::client::{AuthResult, KeyboardInteractiveAuthResponse};
use russh::keys::PublicKeyOrCertificate;
use tokio::sync::Semaphore;

use crate::cli::Env;
use crate::keys;

/// Trusts the broker it was pointed at (the benchmark runs on loopback).
struct AnyHost;

impl client::Handler for AnyHost {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        _key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        Ok(true)
    }
}

/// A logged-in vendor session, held open.
struct Held {
    _handle: client::Handle<AnyHost>,
    _channel: russh::Channel<client::Msg>,
}

/// Opens `sessions` interactive sessions to `target` (`SITE/DEVICE:FUNCTION`) through the broker
/// at `broker`, `parallel` at a time; prints the setup rate, then holds them for `hold`.
pub async fn run(
    env: &Env,
    broker: SocketAddr,
    target: &str,
    sessions: usize,
    parallel: usize,
    hold: Duration,
) -> Result<()> {
    let (site_device, function) = target
        .split_once(':')
        .ok_or_else(|| anyhow!("--target must be SITE/DEVICE:FUNCTION"))?;
    let (site, _) = site_device
        .split_once('/')
        .ok_or_else(|| anyhow!("--target must be SITE/DEVICE:FUNCTION"))?;
    crate::raise_open_files_limit();
    let ca = keys::load_private(&env.data.ca_key())?;
    let run = hex::encode(rand::random::<[u8; 3]>());
    let t = now();
    let mut vendors = Vec::with_capacity(sessions);
    for i in 0..sessions {
        let name = format!("load-{run}-{i}");
        let secret = approvals::totp::new_secret();
        env.store
            .add_vendor(&name, "bench-load", None, &secret, t)
            .await?;
        env.store
            .add_grant(
                &NewGrant {
                    vendor: name.clone(),
                    site: site.into(),
                    function: function.into(),
                    valid_from: t - 60,
                    valid_until: t + 7200,
                    granted_by: "bench-load".into(),
                    reason: "concurrency benchmark".into(),
                    devices: Vec::new(),
                },
                t,
            )
            .await?;
        let key = keys::generate_ed25519(&name)?;
        let issued = keys::sign_user_cert(
            &ca,
            key.public_key(),
            &name,
            (t - 60) as u64,
            (t + 7200) as u64,
            keys::Restrictions::default(),
        )?;
        // The broker accepts only certificates in its registry of issued ones.
        env.store
            .record_certificate(&approvals::IssuedCertificate {
                serial: issued.serial.to_string(),
                vendor: name.clone(),
                key_id: issued.key_id.clone(),
                key_fingerprint: keys::fingerprint(key.public_key()),
                valid_after: t - 60,
                valid_before: t + 7200,
                revoked: 0,
                created: t,
            })
            .await?;
        let cert = issued.cert;
        vendors.push((name, secret, Arc::new(key), cert));
    }
    let config = Arc::new(client::Config {
        inactivity_timeout: None,
        nodelay: true,
        ..Default::default()
    });
    let gate = Arc::new(Semaphore::new(parallel.max(1)));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (name, secret, key, cert) in vendors {
        let (config, gate) = (config.clone(), gate.clone());
        let login = format!("{name}:{target}");
        tasks.spawn(async move {
            let _permit = gate.acquire_owned().await;
            open_one(config, broker, login, secret, key, cert).await
        });
    }
    let mut held = Vec::with_capacity(sessions);
    while let Some(r) = tasks.join_next().await {
        held.push(r.map_err(|e| anyhow!("{e}"))??);
    }
    let el = started.elapsed();
    println!(
        "bench-load: {} sessions up in {:.2} s ({:.1} per second)",
        held.len(),
        el.as_secs_f64(),
        held.len() as f64 / el.as_secs_f64()
    );
    tokio::time::sleep(hold).await;
    Ok(())
}

async fn open_one(
    config: Arc<client::Config>,
    broker: SocketAddr,
    login: String,
    secret: String,
    key: Arc<russh::keys::PrivateKey>,
    cert: russh::keys::Certificate,
) -> Result<Held> {
    let mut handle = client::connect(config, broker, AnyHost)
        .await
        .with_context(|| format!("connecting to {broker}"))?;
    match handle.authenticate_openssh_cert(&login, key, cert).await? {
        AuthResult::Failure {
            partial_success: true,
            ..
        } => {}
        other => bail!("{login}: certificate step: {other:?}"),
    }
    let code = approvals::totp::code_at(&secret, now() as u64).map_err(|e| anyhow!(e))?;
    let mut reply = handle
        .authenticate_keyboard_interactive_start(&login, None)
        .await?;
    for _ in 0..3 {
        match reply {
            KeyboardInteractiveAuthResponse::InfoRequest { prompts, .. } => {
                let answers = prompts.iter().map(|_| code.clone()).collect();
                reply = handle
                    .authenticate_keyboard_interactive_respond(answers)
                    .await?;
            }
            KeyboardInteractiveAuthResponse::Success => break,
            other => bail!("{login}: TOTP step: {other:?}"),
        }
    }
    if !matches!(reply, KeyboardInteractiveAuthResponse::Success) {
        bail!("{login}: not authenticated");
    }
    let mut channel = handle.channel_open_session().await?;
    channel
        .request_pty(true, "xterm", 80, 24, 0, 0, &[])
        .await?;
    channel.request_shell(true).await?;
    // Up once the device's shell has said something (its prompt).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        match tokio::time::timeout_at(deadline, channel.wait()).await {
            Ok(Some(russh::ChannelMsg::Data { .. })) => break,
            Ok(Some(russh::ChannelMsg::Close | russh::ChannelMsg::Eof)) | Ok(None) => {
                bail!("{login}: the session closed before the shell answered")
            }
            Ok(Some(_)) => {}
            Err(_) => bail!("{login}: no shell prompt within 60 s"),
        }
    }
    Ok(Held {
        _handle: handle,
        _channel: channel,
    })
}
