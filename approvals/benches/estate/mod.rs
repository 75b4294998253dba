//! The estate both benchmarks load: the directory rows the broker's CLI would create (sites,
//! vendors, devices, functions, grants), inserted in bulk, with the sizes from the command line.

use approvals::Store;
use rand::Rng;
use sqlx::Connection;

pub struct Sizes {
    pub sites: usize,
    pub vendors: usize,
    pub grants: usize,
    pub decisions: usize,
    pub pg: bool,
}

pub fn sizes() -> Sizes {
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

pub const NOW: i64 = 1_900_000_000;
/// The columns of a bulk-inserted grant row.
pub const GRANT_COLUMNS: [&str; 9] = [
    "id",
    "vendor",
    "site",
    "function",
    "valid_from",
    "valid_until",
    "granted_by",
    "reason",
    "created",
];
pub const FUNCTIONS: [&str; 5] = ["maint", "firmware", "camera", "pos", "network"];

/// Inserts rows in multi-row statements. SQLite gets `?` placeholders: it looks up `$N` ones by
/// name, which makes a statement with thousands of them quadratic.
pub async fn bulk(
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

/// One connection for bulk inserts (SQLite without fsync: a benchmark's load, not evidence),
/// and whether the database is SQLite.
pub async fn bulk_pool(url: &str) -> (sqlx::AnyPool, bool) {
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
    (pool, sqlite)
}

pub async fn populate(store: &Store, url: &str, s: &Sizes) -> Vec<(usize, usize, usize)> {
    // The directory rows the broker's CLI would create, inserted in bulk.
    let (pool, sqlite) = bulk_pool(url).await;
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
        &GRANT_COLUMNS,
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

/// A fresh database for a run: a temporary SQLite file, or a new database on PostgreSQL
/// (`POSTERN_TEST_PG`, default postgres://postgres@127.0.0.1:5432/postgres), dropped at the end.
pub struct Db {
    pub store: Store,
    pub url: String,
    pg: Option<(sqlx::AnyConnection, String)>,
}

impl Db {
    pub async fn sqlite(dir: &std::path::Path) -> Db {
        let url = format!("sqlite://{}?mode=rwc", dir.join("bench.db").display());
        Db {
            store: open(&url).await,
            url,
            pg: None,
        }
    }

    pub async fn postgres() -> Db {
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
        Db {
            store: open(&url).await,
            url,
            pg: Some((conn, name)),
        }
    }

    pub async fn close(self) {
        self.store.close().await;
        if let Some((mut conn, name)) = self.pg {
            sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE {name}")))
                .execute(&mut conn)
                .await
                .ok();
        }
    }
}

async fn open(url: &str) -> Store {
    Store::open(url)
        .await
        .unwrap()
        .unlock(&approvals::secrets::MasterKey::generate())
        .await
        .unwrap()
}
