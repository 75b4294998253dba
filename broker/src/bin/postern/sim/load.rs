//! `postern bench-load`: many vendor sessions from one process, for the concurrency benchmark.
//!
//! One OpenSSH client process per session caps a benchmark at a few hundred sessions on a small
//! machine. This opens them in-process instead, with the same protocol steps a vendor's OpenSSH
//! takes: a certificate signed by the broker's CA, then the TOTP code over keyboard-interactive,
//! then an interactive shell with a pty. Each session is a fresh vendor with a grant, since a
//! TOTP code works once. Benchmark use only: it writes vendors and grants into the data dir.
//!
//! With `--every`, the held sessions keep typing: each runs a command every so many seconds and
//! waits for its answer, and a line per `--report` interval says how many were answered (the soak
//! benchmark reads these lines while it samples the broker's memory).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use approvals::NewGrant;
use approvals::time::now;
use russh::client;
use russh::client::{AuthResult, KeyboardInteractiveAuthResponse};
use russh::keys::PublicKeyOrCertificate;
use tokio::sync::Semaphore;

use crate::commands::{Env, operator};
use broker::keys;

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
    channel: russh::Channel<client::Msg>,
}

/// What held sessions do once they are all up.
pub struct Activity {
    /// How long to hold the sessions open.
    pub hold: Duration,
    /// Each session types a command this often (`None`: the sessions stay idle).
    pub every: Option<Duration>,
    /// How often to print the count of commands answered.
    pub report: Duration,
    /// How many sessions type (0: all); the others are held idle.
    pub typists: usize,
}

/// Commands typed by the held sessions, tallied per report interval.
/// A load vendor: name, TOTP secret, key and certificate.
type Vendor = (
    String,
    String,
    Arc<russh::keys::PrivateKey>,
    russh::keys::Certificate,
);

#[derive(Default)]
struct Tally {
    answered: AtomicU64,
    failed: AtomicU64,
    /// Round trips of this interval, in microseconds.
    rtt_us: Mutex<Vec<u64>>,
}

/// Opens `sessions` interactive sessions to `target` (`SITE/DEVICE:FUNCTION`) through the broker
/// at `broker`, `parallel` at a time; prints the setup rate, then holds them as `activity` says.
pub async fn run(
    env: &Env,
    broker: SocketAddr,
    target: &str,
    sessions: usize,
    parallel: usize,
    activity: Activity,
) -> Result<()> {
    let (site_device, function) = target
        .split_once(':')
        .ok_or_else(|| anyhow!("--target must be SITE/DEVICE:FUNCTION"))?;
    let (site, _) = site_device
        .split_once('/')
        .ok_or_else(|| anyhow!("--target must be SITE/DEVICE:FUNCTION"))?;
    broker::sys::raise_open_files_limit();
    let vendors = enrol(env, site, function, sessions).await?;
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
    let Some(every) = activity.every else {
        tokio::time::sleep(activity.hold).await;
        return Ok(());
    };
    let typing = match activity.typists {
        0 => held.len(),
        n => n.min(held.len()),
    };
    let idle = held.split_off(typing);
    keep_typing(held, every, activity.hold, activity.report).await?;
    drop(idle);
    Ok(())
}

/// A vendor, a grant and a registered certificate per session: the broker sees as many distinct
/// people as sessions.
async fn enrol(env: &Env, site: &str, function: &str, sessions: usize) -> Result<Vec<Vendor>> {
    let ca = keys::load_private(&env.data.ca_key())?;
    let run = hex::encode(rand::random::<[u8; 3]>());
    let t = now();
    let mut vendors = Vec::with_capacity(sessions);
    for i in 0..sessions {
        let name = format!("load-{run}-{i}");
        let secret = approvals::totp::new_secret();
        // Through the same actions as the CLI: the benchmark's people are on the audit record.
        let actions = env.actions();
        let op = operator();
        actions
            .add_vendor(&op, &name, "bench-load", None, &secret, t)
            .await?;
        actions
            .add_grant(
                &op,
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
        actions
            .issue_certificate(
                &op,
                &approvals::IssuedCertificate {
                    serial: issued.serial.to_string(),
                    vendor: name.clone(),
                    key_id: issued.key_id.clone(),
                    key_fingerprint: keys::fingerprint(key.public_key()),
                    valid_after: t - 60,
                    valid_before: t + 7200,
                    revoked: false,
                    created: t,
                    ca: keys::fingerprint(ca.public_key()),
                },
            )
            .await?;
        let cert = issued.cert;
        vendors.push((name, secret, Arc::new(key), cert));
    }
    Ok(vendors)
}

/// Each held session runs `echo` every `every` until `hold` has passed, waiting at most ten
/// seconds for each answer; a line per `report` interval tells how many were answered.
async fn keep_typing(
    held: Vec<Held>,
    every: Duration,
    hold: Duration,
    report: Duration,
) -> Result<()> {
    let tally = Arc::new(Tally::default());
    let start = tokio::time::Instant::now();
    let stop = start + hold;
    let n = held.len().max(1) as u32;
    let mut typists = tokio::task::JoinSet::new();
    for (i, h) in held.into_iter().enumerate() {
        let tally = tally.clone();
        // Spread the sessions evenly over one period, so the load is steady rather than bursts.
        let first = start + every * (i as u32) / n;
        typists.spawn(type_commands(h, i, first, every, stop, tally));
    }
    let mut tick = tokio::time::interval_at(start + report, report);
    let mut total = 0u64;
    loop {
        let at = tick.tick().await;
        let answered = tally.answered.swap(0, Ordering::Relaxed);
        let failed = tally.failed.swap(0, Ordering::Relaxed);
        let mut rtt = std::mem::take(&mut *tally.rtt_us.lock().unwrap_or_else(|p| p.into_inner()));
        rtt.sort_unstable();
        let q = |p: f64| {
            rtt.get(((rtt.len() as f64 * p) as usize).min(rtt.len().saturating_sub(1)))
                .map_or(0.0, |us| *us as f64 / 1000.0)
        };
        total += answered;
        println!(
            "bench-load: at {:.0} s: {answered} commands answered, {failed} failed, total {total}, \
             round trip p50 {:.2} ms p99 {:.2} ms",
            (at - start).as_secs_f64(),
            q(0.5),
            q(0.99)
        );
        if at >= stop {
            break;
        }
    }
    // Every typist stops at `stop` or within one answer timeout after it.
    while typists.join_next().await.is_some() {}
    Ok(())
}

/// One held session typing `echo` commands until `stop`.
async fn type_commands(
    mut h: Held,
    index: usize,
    first: tokio::time::Instant,
    every: Duration,
    stop: tokio::time::Instant,
    tally: Arc<Tally>,
) {
    let mut next = first;
    let mut seq = 0u64;
    while next < stop {
        tokio::time::sleep_until(next).await;
        next += every;
        seq += 1;
        // The output line, not the echo of the typed line: that one has `echo ` before the marker.
        let marker = format!("s{index}-{seq}");
        let want = format!("\r\n{marker}\r\n");
        let sent = tokio::time::Instant::now();
        let deadline = sent + Duration::from_secs(10);
        // Bounded like the wait for the answer: input the broker never takes is a failure, not
        // a benchmark that never ends.
        let typed = tokio::time::timeout_at(
            deadline,
            h.channel.data(format!("echo {marker}\r").as_bytes()),
        )
        .await;
        if !matches!(typed, Ok(Ok(()))) {
            eprintln!("bench-load: session {index}: command {seq} not accepted: {typed:?}");
            tally.failed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let mut seen = Vec::new();
        let answered = loop {
            match tokio::time::timeout_at(deadline, h.channel.wait()).await {
                Ok(Some(russh::ChannelMsg::Data { data })) => {
                    seen.extend_from_slice(&data);
                    if seen.windows(want.len()).any(|w| w == want.as_bytes()) {
                        break true;
                    }
                }
                Ok(Some(russh::ChannelMsg::Close | russh::ChannelMsg::Eof)) | Ok(None) => {
                    tally.failed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Ok(Some(_)) => {}
                Err(_) => break false,
            }
        };
        if answered {
            tally.answered.fetch_add(1, Ordering::Relaxed);
            let us = sent.elapsed().as_micros() as u64;
            tally
                .rtt_us
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(us);
        } else {
            tally.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
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
    let code = approvals::totp::code_at(&secret, now() as u64)?;
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
        channel,
    })
}
