//! Policy decision time at scale: loading the facts for one (vendor, site, device, function) and
//! deciding, the way the broker does at every session start and every new channel.
//!
//! ```text
//! cargo bench -p approvals --bench decision                     # 30,000 sites, 2,000 vendors, 1,000,000 grants
//! cargo bench -p approvals --bench decision -- --grants 10000 --sites 1000 --vendors 100 --decisions 200   # smoke
//! ```
//!
//! Runs on SQLite (a temporary file) and on PostgreSQL (a fresh database on `POSTERN_TEST_PG`,
//! default postgres://postgres@127.0.0.1:5432/postgres; `--no-pg` skips it), and prints one table
//! row per database: load time, then p50 / p99 / max per decision over `--decisions` random
//! requests, half of them for a (vendor, site) that holds a grant.

use std::time::{Duration, Instant};

use approvals::{AccessRequest, Decision, Store, decide};
use rand::Rng;

mod estate;

use estate::{FUNCTIONS, NOW, Sizes, populate, sizes};

struct Row {
    db: &'static str,
    load: Duration,
    p50: Duration,
    p99: Duration,
    max: Duration,
    allowed: usize,
}

async fn measure(db: &'static str, store: &Store, url: &str, s: &Sizes) -> Row {
    let t = Instant::now();
    let picks = populate(store, url, s).await;
    let load = t.elapsed();
    let mut rng = rand::rng();
    let mut times = Vec::with_capacity(s.decisions);
    let mut allowed = 0;
    // Warm the pool and the caches a little, as a running broker would be.
    for _ in 0..50 {
        let _ = store.facts("v0", "s0", "d", Some("maint")).await;
    }
    for i in 0..s.decisions {
        let (v, site, f) = if i % 2 == 0 {
            picks[rng.random_range(0..picks.len())]
        } else {
            (
                rng.random_range(0..s.vendors),
                rng.random_range(0..s.sites),
                rng.random_range(0..FUNCTIONS.len()),
            )
        };
        let req = AccessRequest {
            vendor: format!("v{v}"),
            site: format!("s{site}"),
            device: "d".into(),
            function: Some(FUNCTIONS[f].into()),
            channel: None,
        };
        let t = Instant::now();
        let facts = store
            .facts(&req.vendor, &req.site, &req.device, req.function.as_deref())
            .await
            .expect("facts");
        let d = decide(&req, &facts, NOW);
        times.push(t.elapsed());
        if matches!(d, Decision::Allow { .. }) {
            allowed += 1;
        }
    }
    times.sort();
    let pct = |p: f64| times[((times.len() as f64 * p) as usize).min(times.len() - 1)];
    Row {
        db,
        load,
        p50: pct(0.50),
        p99: pct(0.99),
        max: times[times.len() - 1],
        allowed,
    }
}

#[tokio::main]
async fn main() {
    let s = sizes();
    println!(
        "policy decision: {} sites, {} vendors, {} grants; {} decisions per database",
        s.sites, s.vendors, s.grants, s.decisions
    );
    let mut rows = Vec::new();
    let dir = tempfile::tempdir().unwrap();
    let db = estate::Db::sqlite(dir.path()).await;
    rows.push(measure("SQLite", &db.store, &db.url, &s).await);
    db.close().await;
    if s.pg {
        let db = estate::Db::postgres().await;
        rows.push(measure("PostgreSQL", &db.store, &db.url, &s).await);
        db.close().await;
    }
    println!(
        "{:<11} {:>9} {:>10} {:>10} {:>10} {:>8}",
        "database", "load", "p50", "p99", "max", "allowed"
    );
    for r in rows {
        println!(
            "{:<11} {:>8.1}s {:>8.3}ms {:>8.3}ms {:>8.3}ms {:>7.0}%",
            r.db,
            r.load.as_secs_f64(),
            r.p50.as_secs_f64() * 1e3,
            r.p99.as_secs_f64() * 1e3,
            r.max.as_secs_f64() * 1e3,
            100.0 * r.allowed as f64 / s.decisions as f64
        );
    }
}
