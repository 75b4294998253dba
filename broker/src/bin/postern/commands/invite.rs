//! `postern vendor invite NAME [--ttl 24h]`: a one-time enrolment code for self-service
//! enrolment over ssh (`ssh -i KEY enroll:CODE@broker > KEY-cert.pub`).

use anyhow::{Context, Result};
use approvals::store::invite_hash;
use approvals::time::{fmt_time, now, parse_duration};
use serde_json::json;

use super::{Env, operator};

/// Prints the code once; only its hash is stored, and the invite is audited.
pub async fn run(env: &Env, name: &str, ttl: Option<&str>) -> Result<()> {
    let ttl = ttl.unwrap_or(&env.cfg.invite_ttl);
    let secs = parse_duration(ttl).context("--ttl")?;
    anyhow::ensure!(secs > 0, "--ttl must be positive");
    let code = new_code();
    let t = now();
    let expires = t.saturating_add(secs);
    env.actions()
        .invite_vendor(&operator(), name, &invite_hash(&code), t, expires)
        .await?;
    if env.json {
        println!(
            "{}",
            json!({"vendor": name, "code": code, "expires": fmt_time(expires)})
        );
    } else {
        println!(
            "enrolment code for {name} (single use, until {}):",
            fmt_time(expires)
        );
        println!("{code}");
        println!("the vendor runs: ssh -i KEY -p PORT enroll:{code}@BROKER > KEY-cert.pub");
    }
    Ok(())
}

/// 96 random bits as 24 lowercase hex digits in four groups: valid in an SSH user name and
/// easy to read out.
fn new_code() -> String {
    let bytes: [u8; 12] = rand::random();
    let hex = hex::encode(bytes);
    let groups: Vec<&str> = (0..4).map(|i| &hex[i * 6..i * 6 + 6]).collect();
    groups.join("-")
}
