//! `postern audit`: print the audit log, checking its chain as it reads.

use std::io::Write;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use approvals::time::{now, parse_time};
use serde_json::{Value, json};

use super::Env;
use super::output::printable;

/// Prints the audit log, checking its chain as it reads; with `follow`, keeps printing new events.
pub async fn run(env: &Env, follow: bool, since: Option<&str>) -> Result<()> {
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
