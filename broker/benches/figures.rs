//! The operator's figures at the estate's scale: what one refresh of the metrics job costs (the
//! database figures, read every 15 seconds), what a scrape costs (it only encodes what the last
//! refresh set), and `postern report`, on an empty store and on one with 30,000 sites, 2,000
//! vendors and 1,000,000 grants plus the exceptions, requests, sessions, edges and measurements
//! of a busy month. The empty store is the baseline of the same run.
//!
//! ```text
//! cargo bench -p broker --bench figures                       # 30,000 sites, 1,000,000 grants
//! cargo bench -p broker --bench figures -- --no-pg --sites 1000 --vendors 100 --grants 10000   # small
//! ```

use std::time::{Duration, Instant};

use approvals::exceptions::ExceptionLimits;
use broker::metrics::Metrics;
use broker::metrics::refresh::Local;
use estate::{NOW, Sizes, bulk, populate, sizes};

#[path = "../../approvals/benches/estate/mod.rs"]
mod estate;

/// One month of the estate's activity on top of its directory, scaled to its size.
async fn busy_month(url: &str, s: &Sizes) {
    let (pool, sqlite) = estate::bulk_pool(url).await;
    let (sites, vendors) = (s.sites.max(1), s.vendors.max(1));
    let day = 86_400;
    // Standing grants: 1% of sites hold one for a month.
    let standing = (sites / 100).max(1);
    bulk(
        &pool,
        sqlite,
        "grants",
        &estate::GRANT_COLUMNS,
        (0..standing).map(|i| {
            vec![
                format!("sg{i}"),
                format!("v{}", i % vendors),
                format!("s{}", i * 97 % sites),
                "maint".into(),
                (NOW - 10 * day).to_string(),
                (NOW + 20 * day).to_string(),
                "bench".into(),
                "standing".into(),
                NOW.to_string(),
            ]
        }),
    )
    .await;
    // Requests: three per site in the month, decided within minutes to hours; 100 pending, 20
    // of them escalated.
    let decided = sites * 3;
    bulk(
        &pool,
        sqlite,
        "requests",
        &[
            "id",
            "vendor",
            "site",
            "device",
            "function",
            "reason",
            "duration",
            "status",
            "created",
            "decided_at",
            "decided_by",
            "grant_id",
        ],
        (0..decided).map(|i| {
            let created = NOW - 30 * day + (i as i64 * 30 * day / decided as i64);
            let status = if i % 10 == 0 { "denied" } else { "approved" };
            vec![
                format!("r{i}"),
                format!("v{}", i % vendors),
                format!("s{}", i % sites),
                "d".into(),
                "maint".into(),
                "bench".into(),
                "3600".into(),
                status.into(),
                created.to_string(),
                (created + 30 + (i as i64 * 37) % 7200).to_string(),
                "olga".into(),
                format!("g{i}"),
            ]
        }),
    )
    .await;
    bulk(
        &pool,
        sqlite,
        "requests",
        &[
            "id",
            "vendor",
            "site",
            "device",
            "function",
            "reason",
            "duration",
            "status",
            "created",
            "escalated_at",
        ],
        (0..100).map(|i| {
            let created = NOW - i * 60;
            let escalated = if i >= 80 { created + 900 } else { 0 };
            vec![
                format!("p{i}"),
                format!("v{}", i as usize % vendors),
                format!("s{}", i as usize % sites),
                "d".into(),
                "maint".into(),
                "bench".into(),
                "3600".into(),
                "pending".into(),
                created.to_string(),
                escalated.to_string(),
            ]
        }),
    )
    .await;
    sqlx::query("UPDATE requests SET escalated_at = NULL WHERE escalated_at = 0")
        .execute(&pool)
        .await
        .expect("escalations");
    // Sessions: five per site in the month, a few break-glass; 50 break-glass openings unreviewed.
    let sessions = sites * 5;
    bulk(
        &pool,
        sqlite,
        "sessions",
        &[
            "id",
            "vendor",
            "site",
            "device",
            "function",
            "grant_id",
            "node",
            "source",
            "recording",
            "started",
            "ended",
            "end_reason",
        ],
        (0..sessions).map(|i| {
            let started = NOW - 30 * day + (i as i64 * 30 * day / sessions as i64);
            vec![
                format!("x{i}"),
                format!("v{}", i % vendors),
                format!("s{}", i % sites),
                "d".into(),
                "maint".into(),
                format!("g{i}"),
                "n1".into(),
                "10.0.0.1:5000".into(),
                format!("x{i}.rec"),
                started.to_string(),
                (started + 1800).to_string(),
                "vendor disconnected".into(),
            ]
        }),
    )
    .await;
    bulk(
        &pool,
        sqlite,
        "breakglass",
        &[
            "id",
            "vendor",
            "org",
            "site",
            "device",
            "function",
            "reason",
            "grant_id",
            "opened",
            "valid_until",
        ],
        (0..50).map(|i| {
            vec![
                format!("b{i}"),
                format!("v{}", i % vendors),
                "org0".into(),
                format!("s{}", i * 13 % sites),
                "d".into(),
                "maint".into(),
                "emergency".into(),
                format!("bg{i}"),
                (NOW - i as i64 * 3600).to_string(),
                (NOW - i as i64 * 3600 + 7200).to_string(),
            ]
        }),
    )
    .await;
    // Unbrokered paths: one device in 60 has a foreign key.
    bulk(
        &pool,
        sqlite,
        "unbrokered_paths",
        &[
            "site",
            "device",
            "kind",
            "location",
            "ident",
            "comment",
            "options",
            "first_seen",
            "last_seen",
        ],
        (0..(sites / 60).max(1)).map(|i| {
            vec![
                format!("s{}", i * 60),
                "d".into(),
                "key".into(),
                "/root/.ssh/authorized_keys".into(),
                format!("SHA256:k{i}"),
                String::new(),
                String::new(),
                (NOW - i as i64 * 3600).to_string(),
                NOW.to_string(),
            ]
        }),
    )
    .await;
    // Edges: one per 30 sites, one in ten offline, each reporting its buffered evidence.
    let edges = (sites / 30).max(1);
    bulk(
        &pool,
        sqlite,
        "edges",
        &["name", "created", "ttl", "last_seen", "buffered_bytes"],
        (0..edges).map(|i| {
            let seen = if i % 10 == 0 { NOW - 2 * day } else { NOW };
            vec![
                format!("e{i}"),
                (NOW - 30 * day).to_string(),
                day.to_string(),
                seen.to_string(),
                (i * 1000).to_string(),
            ]
        }),
    )
    .await;
    bulk(
        &pool,
        sqlite,
        "edge_sites",
        &["site", "edge"],
        (0..edges * 30)
            .filter(|i| *i < sites)
            .map(|i| vec![format!("s{i}"), format!("e{}", i / 30)]),
    )
    .await;
    // Measurements: an issuance per vendor, a propagation per edge and per revocation.
    for (kind, n) in [
        ("certificate_issuance", vendors),
        ("edge_propagation", edges),
        ("revocation_propagation", 500),
    ] {
        bulk(
            &pool,
            sqlite,
            "slo_samples",
            &["kind", "at_ms", "millis", "subject"],
            (0..n).map(|i| {
                vec![
                    kind.into(),
                    ((NOW - 30 * day) * 1000 + i as i64 * 1000).to_string(),
                    (40 + i % 300).to_string(),
                    format!("{kind}{i}"),
                ]
            }),
        )
        .await;
    }
    if !sqlite {
        sqlx::query("ANALYZE").execute(&pool).await.ok();
    }
    pool.close().await;
}

struct Figures {
    first: Duration,
    steady: Duration,
    scrape: Duration,
    bytes: usize,
    report: Duration,
    exceptions: usize,
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

async fn measure(store: &approvals::Store) -> Figures {
    let limits = ExceptionLimits::default();
    let local = Local {
        evidence_node: Some("n1"),
        live_sites: (0..100).map(|i| format!("s{i}")).collect(),
        audit_failures: 0,
    };
    let metrics = Metrics::default();
    let t = Instant::now();
    metrics
        .refresh_from(store, limits, NOW, &local)
        .await
        .expect("refresh");
    let first = t.elapsed();
    let mut steady = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        metrics
            .refresh_from(store, limits, NOW, &local)
            .await
            .expect("refresh");
        steady.push(t.elapsed());
    }
    let mut scrapes = Vec::new();
    let mut bytes = 0;
    for _ in 0..200 {
        let t = Instant::now();
        bytes = metrics.text().len();
        scrapes.push(t.elapsed());
    }
    let mut reports = Vec::new();
    let mut exceptions = 0;
    for _ in 0..3 {
        let t = Instant::now();
        let r = store
            .report(limits, NOW, NOW - 30 * 86_400)
            .await
            .expect("report");
        reports.push(t.elapsed());
        exceptions = r.exceptions_open;
    }
    Figures {
        first,
        steady: median(steady),
        scrape: median(scrapes),
        bytes,
        report: median(reports),
        exceptions,
    }
}

fn row(db: &str, what: &str, f: &Figures, base: Option<&Figures>) {
    let ratio = |a: Duration, b: Option<Duration>| {
        b.map_or(String::new(), |b| {
            format!("{:.1}x", a.as_secs_f64() / b.as_secs_f64().max(1e-9))
        })
    };
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{db:<11} {what:<8} {:>9.1} {:>9.1} {:>6} {:>9.3} {:>6} {:>8} {:>9.1} {:>6} {:>10}",
        ms(f.first),
        ms(f.steady),
        ratio(f.steady, base.map(|b| b.steady)),
        ms(f.scrape),
        ratio(f.scrape, base.map(|b| b.scrape)),
        f.bytes,
        ms(f.report),
        ratio(f.report, base.map(|b| b.report)),
        f.exceptions
    );
}

/// What one refresh's reads cost, one by one (ms), on the loaded estate.
async fn breakdown(store: &approvals::Store) -> String {
    use approvals::store::SloKind;
    let limits = ExceptionLimits::default();
    let mut out = Vec::new();
    macro_rules! timed {
        ($name:expr, $e:expr) => {{
            let t = Instant::now();
            let _ = $e.await.expect($name);
            out.push(format!("{} {:.1}", $name, t.elapsed().as_secs_f64() * 1e3));
        }};
    }
    timed!("exceptions", store.exceptions(limits, NOW, None));
    timed!("unbrokered", store.open_unbrokered_count());
    timed!("decisions", store.decided_requests_since(NOW - 30));
    timed!("escalated", store.escalated_requests());
    timed!(
        "pending",
        store.requests(Some(approvals::RequestStatus::Pending))
    );
    timed!(
        "samples",
        store.samples_since(SloKind::EdgePropagation, NOW * 1000 - 30_000)
    );
    timed!("edges", store.edges());
    timed!("regions", store.site_regions());
    timed!("evidence lag", store.oldest_unstored_end("n1"));
    out.join(", ")
}

async fn run(db: estate::Db, name: &str, s: &Sizes) {
    let empty = measure(&db.store).await;
    let t = Instant::now();
    populate(&db.store, &db.url, s).await;
    busy_month(&db.url, s).await;
    eprintln!("{name}: estate loaded in {:.1}s", t.elapsed().as_secs_f64());
    let full = measure(&db.store).await;
    let detail = breakdown(&db.store).await;
    row(name, "empty", &empty, None);
    row(name, "estate", &full, Some(&empty));
    println!("{:<11} reads of one refresh (ms): {detail}", "");
    db.close().await;
}

#[tokio::main]
async fn main() {
    let s = sizes();
    println!(
        "operator figures: {} sites, {} vendors, {} grants and a busy month; times in ms, ratios against the empty store",
        s.sites, s.vendors, s.grants
    );
    println!(
        "{:<11} {:<8} {:>9} {:>9} {:>6} {:>9} {:>6} {:>8} {:>9} {:>6} {:>10}",
        "database",
        "store",
        "refresh1",
        "refresh",
        "",
        "scrape",
        "",
        "bytes",
        "report",
        "",
        "exceptions"
    );
    let dir = tempfile::tempdir().unwrap();
    run(estate::Db::sqlite(dir.path()).await, "SQLite", &s).await;
    if s.pg {
        run(estate::Db::postgres().await, "PostgreSQL", &s).await;
    }
}
