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
use sqlx::Connection;

struct Sizes {
    sites: usize,
    vendors: usize,
    grants: usize,
    decisions: usize,
    pg: bool,
}

fn sizes() -> Sizes {
    let mut s = Sizes {
        sites: 30_000,
        vendors: 2_000,
        grants: 1_000_000,
        decisions: 5_000,
        pg: true,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let value = || -> usize {
            args.get(i + 1)
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{} needs a number", args[i]))
        };
        match args[i].as_str() {
            "--sites" => s.sites = value(),
            "--vendors" => s.vendors = value(),
            "--grants" => s.grants = value(),
            "--decisions" => s.decisions = value(),
            "--no-pg" => {
                s.pg = false;
                i -= 1;
            }
            "--bench" => i -= 1, // passed by `cargo bench`
            other => panic!("unknown argument {other}"),
        }
        i += 2;
    }
    s
}

const NOW: i64 = 1_900_000_000;
const FUNCTIONS: [&str; 5] = ["maint", "firmware", "camera", "pos", "network"];

/// Inserts rows in multi-row statements. SQLite gets `?` placeholders: it looks up `$N` ones by
/// name, which makes a statement with thousands of them quadratic.
async fn bulk(
    pool: &sqlx::AnyPool,
    sqlite: bool,
    table: &str,
    columns: &[&str],
    rows: impl Iterator<Item = Vec<String>>,
) {
    let per = 30_000 / columns.len().max(1);
    let mut rows = rows.peekable();
    while rows.peek().is_some() {
        let batch: Vec<Vec<String>> = rows.by_ref().take(per).collect();
        let mut sql = format!("INSERT INTO {table} ({}) VALUES ", columns.join(", "));
        let mut n = 0;
        for (r, row) in batch.iter().enumerate() {
            if r > 0 {
                sql.push_str(", ");
            }
            sql.push('(');
            for c in 0..row.len() {
                n += 1;
                if c > 0 {
                    sql.push_str(", ");
                }
                if sqlite {
                    sql.push('?');
                } else {
                    sql.push_str(&format!("${n}"));
                }
            }
            sql.push(')');
        }
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for row in &batch {
            for v in row {
                // Integers are bound as integers (the columns are BIGINT).
                q = match v.parse::<i64>() {
                    Ok(i) if !v.starts_with('0') || v == "0" => q.bind(i),
                    _ => q.bind(v.clone()),
                };
            }
        }
        q.execute(pool).await.expect("bulk insert");
    }
}

async fn populate(store: &Store, url: &str, s: &Sizes) -> Vec<(usize, usize, usize)> {
    // The directory rows the broker's CLI would create, inserted in bulk.
    let pool = sqlx::any::AnyPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await
        .expect("bulk connection");
    let sqlite = url.starts_with("sqlite:");
    if sqlite {
        sqlx::query("PRAGMA synchronous=OFF")
            .execute(&pool)
            .await
            .ok();
    }
    for f in FUNCTIONS {
        store
            .add_function(
                f,
                &approvals::ChannelSet::parse("shell,exec,sftp").unwrap(),
                None,
                8 * 3600,
                None,
                NOW,
            )
            .await
            .unwrap();
    }
    bulk(
        &pool,
        sqlite,
        "vendors",
        &[
            "name",
            "org",
            "disabled",
            "totp_secret",
            "totp_last_step",
            "created",
        ],
        (0..s.vendors).map(|v| {
            vec![
                format!("v{v}"),
                format!("org{}", v % 50),
                "0".into(),
                "JBSWY3DPEHPK3PXP".into(),
                "-1".into(),
                NOW.to_string(),
            ]
        }),
    )
    .await;
    bulk(
        &pool,
        sqlite,
        "sites",
        &["name", "region", "created"],
        (0..s.sites).map(|i| vec![format!("s{i}"), format!("r{}", i % 40), NOW.to_string()]),
    )
    .await;
    bulk(
        &pool,
        sqlite,
        "devices",
        &[
            "site",
            "name",
            "addr",
            "login",
            "credential_kind",
            "credential",
            "host_key",
            "created",
        ],
        (0..s.sites).map(|i| {
            vec![
                format!("s{i}"),
                "d".into(),
                "10.0.0.1:22".into(),
                "root".into(),
                "password".into(),
                "x".into(),
                "ssh-ed25519 AAAA".into(),
                NOW.to_string(),
            ]
        }),
    )
    .await;
    let mut rng = rand::rng();
    let picks: Vec<(usize, usize, usize)> = (0..s.grants)
        .map(|_| {
            (
                rng.random_range(0..s.vendors),
                rng.random_range(0..s.sites),
                rng.random_range(0..FUNCTIONS.len()),
            )
        })
        .collect();
    bulk(
        &pool,
        sqlite,
        "grants",
        &[
            "id",
            "vendor",
            "site",
            "function",
            "valid_from",
            "valid_until",
            "granted_by",
            "reason",
            "created",
        ],
        picks.iter().enumerate().map(|(i, &(v, site, f))| {
            // Most grants are in the past, some current, some future: a realistic mix.
            let start = NOW - 86_400 * 30 + (i as i64 % 40) * 86_400;
            vec![
                format!("g{i}"),
                format!("v{v}"),
                format!("s{site}"),
                FUNCTIONS[f].into(),
                start.to_string(),
                (start + 4 * 3600).to_string(),
                "bench".into(),
                "load".into(),
                NOW.to_string(),
            ]
        }),
    )
    .await;
    if url.starts_with("postgres") {
        sqlx::query("ANALYZE").execute(&pool).await.ok();
    }
    pool.close().await;
    picks
}

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
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("bench.db").display()
    );
    let store = Store::open(&url)
        .await
        .unwrap()
        .unlock(&approvals::secrets::MasterKey::generate())
        .await
        .unwrap();
    rows.push(measure("SQLite", &store, &url, &s).await);
    store.close().await;
    if s.pg {
        sqlx::any::install_default_drivers();
        let admin = std::env::var("POSTERN_TEST_PG")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let name = format!("postern_bench_{}", hex::encode(rand::random::<[u8; 4]>()));
        let mut conn = sqlx::AnyConnection::connect(&admin)
            .await
            .expect("PostgreSQL (use --no-pg to skip)");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .unwrap();
        let base = admin.rsplit_once('/').map(|(b, _)| b.to_owned()).unwrap();
        let url = format!("{base}/{name}");
        let store = Store::open(&url)
            .await
            .unwrap()
            .unlock(&approvals::secrets::MasterKey::generate())
            .await
            .unwrap();
        rows.push(measure("PostgreSQL", &store, &url, &s).await);
        store.close().await;
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE {name}")))
            .execute(&mut conn)
            .await
            .ok();
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
