//! The store behaves the same on SQLite and PostgreSQL. The PostgreSQL server is the local one
//! (`POSTERN_TEST_PG`, default postgres://postgres@127.0.0.1:5432/postgres); each test gets its own
//! fresh database, dropped at the end.

use approvals::{
    AccessRequest, ChannelSet, CredentialKind, Decision, Deny, NewDevice, NewGrant, RequestStatus,
    Store, StoreError, decide,
};
use sqlx::Connection;

const NOW: i64 = 1_800_000_000;

struct Db {
    store: Store,
    _dir: Option<tempfile::TempDir>,
    pg_name: Option<String>,
}

fn pg_admin_url() -> String {
    std::env::var("POSTERN_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

async fn sqlite() -> Db {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("p.db").display());
    Db {
        store: Store::open(&url)
            .await
            .unwrap()
            .unlock(&approvals::secrets::MasterKey::generate())
            .await
            .unwrap(),
        _dir: Some(dir),
        pg_name: None,
    }
}

async fn postgres() -> Db {
    sqlx::any::install_default_drivers();
    let admin = pg_admin_url();
    let name = format!("postern_test_{}", hex::encode(rand::random::<[u8; 6]>()));
    let mut conn = sqlx::AnyConnection::connect(&admin)
        .await
        .unwrap_or_else(|e| {
            panic!("PostgreSQL at {admin} is needed for the store tests (.ci/run starts it): {e}")
        });
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .unwrap();
    let base = admin.rsplit_once('/').map(|(b, _)| b.to_owned()).unwrap();
    let store = Store::open(&format!("{base}/{name}"))
        .await
        .unwrap()
        .unlock(&approvals::secrets::MasterKey::generate())
        .await
        .unwrap();
    Db {
        store,
        _dir: None,
        pg_name: Some(name),
    }
}

impl Db {
    async fn drop_pg(self) {
        self.store.close().await;
        if let Some(name) = self.pg_name {
            let mut conn = sqlx::AnyConnection::connect(&pg_admin_url()).await.unwrap();
            sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE {name}")))
                .execute(&mut conn)
                .await
                .unwrap();
        }
    }
}

async fn directory(s: &Store) {
    s.add_vendor("alice", "acme", None, "JBSWY3DPEHPK3PXP", NOW)
        .await
        .unwrap();
    s.add_site("store-1", Some("north"), NOW).await.unwrap();
    s.add_site("store-2", None, NOW).await.unwrap();
    for site in ["store-1", "store-2"] {
        s.add_device(
            &NewDevice {
                site: site.into(),
                name: "cam-01".into(),
                addr: "127.0.0.1:22".into(),
                login: "root".into(),
                credential_kind: CredentialKind::Password,
                credential: "secret".into(),
                host_key: "ssh-ed25519 AAAA".into(),
            },
            NOW,
        )
        .await
        .unwrap();
    }
    let allow = ChannelSet::parse("shell,exec,forward:8080").unwrap();
    s.add_function("maint", &allow, Some("maint"), 8 * 3600, None, NOW)
        .await
        .unwrap();
}

fn grant(from: i64, until: i64) -> NewGrant {
    NewGrant {
        vendor: "alice".into(),
        site: "store-1".into(),
        function: "maint".into(),
        valid_from: from,
        valid_until: until,
        granted_by: "operator".into(),
        reason: "ticket 42".into(),
        devices: vec![],
    }
}

fn req(site: &str) -> AccessRequest {
    AccessRequest {
        vendor: "alice".into(),
        site: site.into(),
        device: "cam-01".into(),
        function: None,
        channel: None,
    }
}

async fn directory_and_grants(db: Db) {
    let s = &db.store;
    directory(s).await;
    // Duplicates and dangling references are clear errors.
    assert!(
        matches!(s.add_vendor("alice", "x", None, "JBSWY3DPEHPK3PXP", NOW).await, Err(StoreError::Conflict(m)) if m.to_string().contains("already exists"))
    );
    assert!(matches!(
        s.add_site("bad name", None, NOW).await,
        Err(StoreError::Invalid(_))
    ));
    let mut dev = NewDevice {
        site: "nowhere".into(),
        name: "d".into(),
        addr: "x:1".into(),
        login: "r".into(),
        credential_kind: CredentialKind::Password,
        credential: "p".into(),
        host_key: "k".into(),
    };
    assert!(matches!(
        s.add_device(&dev, NOW).await,
        Err(StoreError::NotFound(_))
    ));
    dev.site = "store-1".into();
    dev.name = "cam-01".into();
    assert!(matches!(
        s.add_device(&dev, NOW).await,
        Err(StoreError::Conflict(_))
    ));

    // Windows longer than the function allows, or upside down, are refused.
    assert!(
        matches!(s.add_grant(&grant(NOW, NOW + 9 * 3600), NOW).await, Err(StoreError::Invalid(m)) if m.to_string().contains("longer"))
    );
    assert!(matches!(
        s.add_grant(&grant(NOW, NOW - 1), NOW).await,
        Err(StoreError::Invalid(_))
    ));
    let mut g = grant(NOW, NOW + 3600);
    g.function = "nope".into();
    assert!(matches!(
        s.add_grant(&g, NOW).await,
        Err(StoreError::NotFound(_))
    ));

    let r0 = s.revision().await.unwrap();
    let g = s
        .add_grant(&grant(NOW - 60, NOW + 3600), NOW)
        .await
        .unwrap();
    let facts = s.facts("alice", "store-1", "cam-01", None).await.unwrap();
    let d = decide(&req("store-1"), &facts, NOW);
    assert_eq!(
        d,
        Decision::Allow {
            grant: g.id.clone(),
            function: "maint".into(),
            window_end: NOW + 3600,
            login: "maint".into()
        }
    );
    // Other site: no grant there.
    let facts2 = s.facts("alice", "store-2", "cam-01", None).await.unwrap();
    assert!(matches!(
        decide(&req("store-2"), &facts2, NOW),
        Decision::Deny {
            reason: Deny::NoGrant { .. }
        }
    ));

    let revoked = s.revoke_grant(&g.id, "operator", NOW + 1).await.unwrap();
    assert_eq!(revoked.id, g.id);
    assert!(s.revision().await.unwrap() > r0);
    assert!(matches!(
        s.revoke_grant(&g.id, "operator", NOW + 2).await,
        Err(StoreError::Conflict(_))
    ));
    let facts = s.facts("alice", "store-1", "cam-01", None).await.unwrap();
    assert!(matches!(
        decide(&req("store-1"), &facts, NOW + 2),
        Decision::Deny {
            reason: Deny::Revoked { .. }
        }
    ));

    // Disabling revokes the remaining grants.
    let g2 = s.add_grant(&grant(NOW, NOW + 600), NOW).await.unwrap();
    let ids = s
        .disable_vendor("alice", "operator", NOW + 5)
        .await
        .unwrap();
    assert_eq!(ids, vec![g2.id]);
    let facts = s.facts("alice", "store-1", "cam-01", None).await.unwrap();
    assert!(matches!(
        decide(&req("store-1"), &facts, NOW + 5),
        Decision::Deny {
            reason: Deny::VendorDisabled
        }
    ));
    assert_eq!(s.grants().await.unwrap().len(), 2);
    db.drop_pg().await;
}

async fn totp_steps_are_single_use(db: Db) {
    let s = &db.store;
    directory(s).await;
    assert!(s.consume_totp_step("alice", 100).await.unwrap());
    assert!(
        !s.consume_totp_step("alice", 100).await.unwrap(),
        "replayed step must be refused"
    );
    assert!(
        !s.consume_totp_step("alice", 99).await.unwrap(),
        "older step must be refused"
    );
    assert!(s.consume_totp_step("alice", 101).await.unwrap());
    assert!(!s.consume_totp_step("nobody", 500).await.unwrap());
    db.drop_pg().await;
}

async fn sessions_live_kill_and_end(db: Db) {
    let s = &db.store;
    directory(s).await;
    let g = s.add_grant(&grant(NOW, NOW + 600), NOW).await.unwrap();
    let mk = |id: &str, node: &str| approvals::Session {
        id: id.into(),
        vendor: "alice".into(),
        site: "store-1".into(),
        device: "cam-01".into(),
        function: "maint".into(),
        grant_id: g.id.clone(),
        node: node.into(),
        source: "127.0.0.1:5555".into(),
        recording: format!("{id}.rec"),
        started: NOW,
        ended: None,
        end_reason: None,
        kill_requested: false,
        records: None,
        final_hash: None,
        breakglass: None,
    };
    s.start_session(&mk("s-1", "n1")).await.unwrap();
    s.start_session(&mk("s-2", "n1")).await.unwrap();
    s.start_session(&mk("s-3", "n2")).await.unwrap();
    assert_eq!(s.sessions(true).await.unwrap().len(), 3);
    s.request_kill("s-1").await.unwrap();
    assert_eq!(
        s.kill_requests("n1").await.unwrap(),
        vec!["s-1".to_string()]
    );
    assert!(s.kill_requests("n2").await.unwrap().is_empty());
    s.end_session("s-1", "killed", Some((12, "abcd")), NOW + 3)
        .await
        .unwrap();
    assert!(matches!(
        s.request_kill("s-1").await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        s.request_kill("s-9").await,
        Err(StoreError::NotFound(_))
    ));
    let done = s.session("s-1").await.unwrap().unwrap();
    assert_eq!(
        (done.ended, done.records, done.final_hash.as_deref()),
        (Some(NOW + 3), Some(12), Some("abcd"))
    );
    assert_eq!(
        s.end_orphaned_sessions("n1", NOW + 9).await.unwrap(),
        vec!["s-2".to_string()]
    );
    assert_eq!(s.sessions(true).await.unwrap().len(), 1);
    db.drop_pg().await;
}

macro_rules! both {
    ($name:ident) => {
        mod $name {
            #[tokio::test]
            async fn sqlite() {
                super::$name(super::sqlite().await).await
            }
            #[tokio::test]
            async fn postgres() {
                super::$name(super::postgres().await).await
            }
        }
    };
}

both!(directory_and_grants);
both!(totp_steps_are_single_use);
both!(sessions_live_kill_and_end);

#[tokio::test]
async fn unreachable_database_is_a_clear_error() {
    let r = Store::open("postgres://postgres@127.0.0.1:1/none").await;
    assert!(matches!(r, Err(StoreError::Db(_))));
    let r = Store::open("mysql://x").await;
    assert!(matches!(r, Err(StoreError::Invalid(m)) if m.to_string().contains("sqlite://")));
}

async fn command_log(db: Db) {
    let s = &db.store;
    let row = |session: &str, seq: i64, vendor: &str, site: &str, t: i64, cmd: &str| {
        approvals::CommandRow {
            session: session.into(),
            seq,
            vendor: vendor.into(),
            site: site.into(),
            device: "cam-01".into(),
            time_us: t,
            offset_ms: seq * 100,
            channel: 0,
            kind: "shell".into(),
            command: cmd.into(),
        }
    };
    s.set_commands(
        "s-1",
        &[
            row("s-1", 0, "alice", "store-1", 10, "uptime"),
            row("s-1", 1, "alice", "store-1", 20, "reboot"),
        ],
    )
    .await
    .unwrap();
    s.set_commands("s-2", &[row("s-2", 0, "bob", "store-2", 15, "ls")])
        .await
        .unwrap();
    assert_eq!(
        s.commands(None, None, None, None)
            .await
            .unwrap()
            .iter()
            .map(|r| r.command.as_str())
            .collect::<Vec<_>>(),
        vec!["uptime", "ls", "reboot"]
    );
    assert_eq!(
        s.commands(Some("alice"), None, None, Some(15))
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        s.commands(None, Some("store-2"), Some("cam-01"), None)
            .await
            .unwrap()[0]
            .command,
        "ls"
    );
    // Re-indexing a session replaces its rows.
    s.set_commands("s-1", &[row("s-1", 0, "alice", "store-1", 10, "uptime")])
        .await
        .unwrap();
    assert_eq!(
        s.commands(Some("alice"), None, None, None)
            .await
            .unwrap()
            .len(),
        1
    );
    db.drop_pg().await;
}

both!(command_log);

async fn approvers_and_requests(db: Db) {
    let s = &db.store;
    directory(s).await;
    // store-1 is in region north; store-2 has no region.
    let h = approvals::approvers::hash_password("pw").unwrap();
    s.add_approver("nina", &h, "JBSWY3DPEHPK3PXP", &[], &["north".into()], NOW)
        .await
        .unwrap();
    s.add_approver("sam", &h, "JBSWY3DPEHPK3PXP", &["store-2".into()], &[], NOW)
        .await
        .unwrap();
    assert!(matches!(
        s.add_approver("x", &h, "S", &[], &[], NOW).await,
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        s.add_approver("y", &h, "S", &["nowhere".into()], &[], NOW)
            .await,
        Err(StoreError::NotFound(_))
    ));
    assert!(s.may_approve("nina", "store-1").await.unwrap());
    assert!(!s.may_approve("nina", "store-2").await.unwrap());
    assert!(s.may_approve("sam", "store-2").await.unwrap());
    assert_eq!(
        s.approvers_of("store-1")
            .await
            .unwrap()
            .iter()
            .map(|a| a.name.as_str())
            .collect::<Vec<_>>(),
        vec!["nina"]
    );

    let ask = |reason: &str, duration: i64| approvals::NewRequest {
        vendor: "alice".into(),
        site: "store-1".into(),
        device: "cam-01".into(),
        function: "maint".into(),
        reason: reason.into(),
        duration,
    };
    // Requests are bounded by the function's longest window and need a reason.
    assert!(matches!(
        s.add_request(&ask("fix", 9 * 3600), NOW).await,
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        s.add_request(&ask("  ", 3600), NOW).await,
        Err(StoreError::Invalid(_))
    ));
    let r = s
        .add_request(&ask("camera offline", 3600), NOW)
        .await
        .unwrap();
    assert_eq!(r.status, RequestStatus::Pending);
    let (r2, g) = s
        .approve_request(&r.id, "nina", NOW + 30, NOW + 3630, NOW + 30)
        .await
        .unwrap();
    assert_eq!(
        (r2.status.as_str(), r2.latency(), r2.grant_id.as_deref()),
        ("approved", Some(30), Some(g.id.as_str()))
    );
    assert_eq!(
        (g.valid_from, g.valid_until, g.granted_by.as_str()),
        (NOW + 30, NOW + 3630, "nina")
    );
    assert!(matches!(
        s.approve_request(&r.id, "nina", NOW, NOW + 60, NOW + 31)
            .await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        s.deny_request(&r.id, "nina", "no", NOW + 31).await,
        Err(StoreError::Conflict(_))
    ));

    let d = s.add_request(&ask("again", 600), NOW + 40).await.unwrap();
    let d = s
        .deny_request(&d.id, "nina", "use the morning window", NOW + 100)
        .await
        .unwrap();
    assert_eq!(
        (d.status.as_str(), d.decision_reason.as_deref(), d.latency()),
        ("denied", Some("use the morning window"), Some(60))
    );
    assert_eq!(
        s.requests(Some(RequestStatus::Pending))
            .await
            .unwrap()
            .len(),
        0
    );
    assert_eq!(s.requests(None).await.unwrap().len(), 2);
    assert_eq!(
        s.requests_of_vendor("alice").await.unwrap()[0].id,
        d.id,
        "newest first"
    );
    db.drop_pg().await;
}

both!(approvers_and_requests);

/// Past `approval_slo` a pending request is escalated once, past `request_ttl` expired once,
/// however many nodes sweep at the same moment.
async fn requests_escalate_and_expire_once(db: Db) {
    use approvals::actions::{Deadlines, Swept};
    use approvals::{Actions, Actor, AuditLog, Notifier};
    let s = &db.store;
    directory(s).await;
    let h = approvals::approvers::hash_password("pw").unwrap();
    let totp = "JBSWY3DPEHPK3PXP";
    s.add_approver("nina", &h, totp, &[], &["north".into()], NOW)
        .await
        .unwrap();
    s.add_approver("sam", &h, totp, &["store-1".into()], &[], NOW)
        .await
        .unwrap();
    s.add_approver("boss", &h, totp, &["store-2".into()], &[], NOW)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let node = |n: &str| {
        let log = AuditLog::new(&dir.path().join(format!("{n}.log")), n);
        Actions::new(s.clone(), log, Notifier::new(s.clone(), true))
    };
    let (n1, n2) = (node("n1"), node("n2"));
    let (a1, a2) = (Actor::broker("n1"), Actor::broker("n2"));
    let r = s
        .add_request(
            &approvals::NewRequest {
                vendor: "alice".into(),
                site: "store-1".into(),
                device: "cam-01".into(),
                function: "maint".into(),
                reason: "camera offline".into(),
                duration: 3600,
            },
            NOW,
        )
        .await
        .unwrap();
    let d = Deadlines {
        request_ttl: 600,
        approval_slo: 60,
        escalate_to: vec!["boss".into(), "ghost".into()],
    };
    let none = Swept::default();
    assert_eq!(n1.enforce_deadlines(&a1, &d, NOW + 59).await.unwrap(), none);
    let (x, y) = tokio::join!(
        n1.enforce_deadlines(&a1, &d, NOW + 61),
        n2.enforce_deadlines(&a2, &d, NOW + 61)
    );
    let (x, y) = (x.unwrap(), y.unwrap());
    assert_eq!(x.escalated.len() + y.escalated.len(), 1, "{x:?} {y:?}");
    let now = s.request(&r.id).await.unwrap().unwrap();
    assert_eq!(now.escalated_at, Some(NOW + 61));
    assert!(now.overdue());
    let sent: Vec<serde_json::Value> = s
        .notifications()
        .await
        .unwrap()
        .iter()
        .filter(|n| n.event == "request.escalated")
        .map(|n| serde_json::from_str(&n.payload).unwrap())
        .collect();
    assert_eq!(sent.len(), 1);
    // The region's approver and `escalate_to` (an unknown name dropped); not the site's own.
    assert_eq!(sent[0]["approvers"], serde_json::json!(["nina", "boss"]));
    assert_eq!(
        n2.enforce_deadlines(&a2, &d, NOW + 120).await.unwrap(),
        none
    );

    let (x, y) = tokio::join!(
        n1.enforce_deadlines(&a1, &d, NOW + 601),
        n2.enforce_deadlines(&a2, &d, NOW + 601)
    );
    let (x, y) = (x.unwrap(), y.unwrap());
    assert_eq!(x.expired.len() + y.expired.len(), 1, "{x:?} {y:?}");
    let gone = s.request(&r.id).await.unwrap().unwrap();
    assert_eq!(gone.status, RequestStatus::Expired);
    assert_eq!(
        gone.decision_reason.as_deref(),
        Some("no approver decided within 10m")
    );
    assert!(!gone.overdue());
    assert_eq!(
        n1.enforce_deadlines(&a1, &d, NOW + 900).await.unwrap(),
        none
    );
    db.drop_pg().await;
}

both!(requests_escalate_and_expire_once);

async fn add_device(s: &Store, site: &str, name: &str) {
    s.add_device(
        &NewDevice {
            site: site.into(),
            name: name.into(),
            addr: "127.0.0.1:22".into(),
            login: "root".into(),
            credential_kind: CredentialKind::Password,
            credential: "secret".into(),
            host_key: "ssh-ed25519 AAAA".into(),
        },
        NOW,
    )
    .await
    .unwrap();
}

fn decide_for(facts: &approvals::policy::Facts, device: &str, at: i64) -> Decision {
    let mut q = req("store-1");
    q.device = device.into();
    decide(&q, facts, at)
}

/// A grant names the devices it covers; a request's grant covers the request's device only.
async fn grants_scoped_to_devices(db: Db) {
    let s = &db.store;
    directory(s).await;
    add_device(s, "store-1", "plc-critical").await;
    add_device(s, "store-1", "cam-02").await;

    // Every named device must exist at the site; a blank one never widens to the whole site.
    for (devices, want) in [
        (
            vec!["cam-01".to_owned(), "nope".to_owned()],
            "no device nope at store-1",
        ),
        (vec![" ".to_owned()], "empty device name"),
    ] {
        let mut g = grant(NOW, NOW + 3600);
        g.devices = devices;
        let e = s.add_grant(&g, NOW).await.unwrap_err();
        assert!(e.to_string().contains(want), "{e}");
    }
    let mut g = grant(NOW, NOW + 3600);
    g.devices = vec!["cam-02".into(), "cam-01".into(), "cam-01".into()];
    let two = s.add_grant(&g, NOW).await.unwrap();
    assert_eq!(two.device_list(), vec!["cam-01", "cam-02"]);
    assert_eq!(two.coverage(), "store-1/cam-01, store-1/cam-02");
    // Stored and read back the same way (on both dialects).
    assert_eq!(s.grant(&two.id).await.unwrap().unwrap(), two);
    let json = serde_json::to_value(&two).unwrap();
    assert_eq!(json["devices"], serde_json::json!(["cam-01", "cam-02"]));

    let facts = s
        .facts("alice", "store-1", "plc-critical", None)
        .await
        .unwrap();
    match decide_for(&facts, "plc-critical", NOW) {
        Decision::Deny { reason } => assert_eq!(
            reason.to_string(),
            format!(
                "access denied: grant {} covers store-1/cam-01, store-1/cam-02 only, not store-1/plc-critical",
                two.id
            )
        ),
        other => panic!("the sibling must be refused: {other:?}"),
    }
    let facts = s.facts("alice", "store-1", "cam-02", None).await.unwrap();
    assert!(matches!(
        decide_for(&facts, "cam-02", NOW),
        Decision::Allow { .. }
    ));

    // A request for store-1/cam-01, approved: the grant covers cam-01 and nothing else.
    s.revoke_grant(&two.id, "operator", NOW).await.unwrap();
    let ask = approvals::NewRequest {
        vendor: "alice".into(),
        site: "store-1".into(),
        device: "cam-01".into(),
        function: "maint".into(),
        reason: "camera offline".into(),
        duration: 3600,
    };
    let r = s.add_request(&ask, NOW).await.unwrap();
    let (_, g) = s
        .approve_request(&r.id, "nina", NOW, NOW + 3600, NOW + 1)
        .await
        .unwrap();
    assert_eq!((g.devices.as_str(), g.whole_site()), ("cam-01", false));
    let facts = s.facts("alice", "store-1", "cam-01", None).await.unwrap();
    assert!(matches!(
        decide_for(&facts, "cam-01", NOW + 2),
        Decision::Allow { ref grant, .. } if *grant == g.id
    ));
    let facts = s
        .facts("alice", "store-1", "plc-critical", None)
        .await
        .unwrap();
    assert!(matches!(
        decide_for(&facts, "plc-critical", NOW + 2),
        Decision::Deny { reason: Deny::DeviceNotCovered { ref grant, .. } } if *grant == g.id
    ));
    // A request for a device that does not exist is refused at once.
    let mut bad = ask.clone();
    bad.device = "ghost".into();
    assert!(matches!(
        s.add_request(&bad, NOW).await,
        Err(StoreError::NotFound(m)) if m.to_string().contains("no device ghost at store-1")
    ));

    // Break-glass for store-1/cam-02 opens cam-02 only.
    let allow = ChannelSet::parse("shell").unwrap();
    s.add_function(
        "emergency",
        &allow,
        None,
        3600,
        Some(&["acme".to_owned()]),
        NOW,
    )
    .await
    .unwrap();
    let (_, bg) = s
        .open_breakglass(
            &approvals::NewBreakGlass {
                vendor: "alice".into(),
                site: "store-1".into(),
                device: "cam-02".into(),
                function: "emergency".into(),
                reason: "freezer alarm".into(),
                duration: 600,
            },
            NOW,
        )
        .await
        .unwrap();
    assert_eq!(bg.device_list(), vec!["cam-02"]);

    // Without devices, the whole site, shown as such.
    let whole = s.add_grant(&grant(NOW, NOW + 600), NOW).await.unwrap();
    assert!(whole.whole_site() && whole.covers("plc-critical"));
    assert_eq!(whole.coverage(), "all devices at store-1");
    assert_eq!(
        serde_json::to_value(&whole).unwrap()["devices"],
        serde_json::json!([])
    );
    db.drop_pg().await;
}

both!(grants_scoped_to_devices);

/// One pending request per vendor, site, device and function; the second names the first.
async fn one_pending_request_at_a_time(db: Db) {
    let s = &db.store;
    directory(s).await;
    add_device(s, "store-1", "cam-02").await;
    let ask = |device: &str| approvals::NewRequest {
        vendor: "alice".into(),
        site: "store-1".into(),
        device: device.into(),
        function: "maint".into(),
        reason: "camera offline".into(),
        duration: 600,
    };
    let first = s.add_request(&ask("cam-01"), NOW).await.unwrap();
    match s.add_request(&ask("cam-01"), NOW + 1).await {
        Err(StoreError::Conflict(m)) => assert_eq!(
            m.to_string(),
            format!(
                "request {} for maint at store-1/cam-01 is already waiting for an approver",
                first.id
            )
        ),
        other => panic!("a second pending request must be refused: {other:?}"),
    }
    // Another device is another request.
    s.add_request(&ask("cam-02"), NOW + 2).await.unwrap();
    // Filed at the same moment from several connections: exactly one succeeds.
    let mut other = ask("cam-01");
    other.site = "store-2".into();
    let results = file_at_once(s, &other).await;
    assert_eq!(
        results.iter().filter(|r| r.is_ok()).count(),
        1,
        "{results:?}"
    );
    assert!(results.iter().filter_map(|r| r.as_ref().err()).all(
        |e| matches!(e, StoreError::Conflict(m) if m.to_string().contains("already waiting"))
    ));
    // Once decided, the next one may be filed.
    s.deny_request(&first.id, "nina", "not today", NOW + 3)
        .await
        .unwrap();
    let again = s.add_request(&ask("cam-01"), NOW + 4).await.unwrap();
    assert_eq!(again.status, RequestStatus::Pending);
    assert_eq!(
        s.requests(Some(RequestStatus::Pending))
            .await
            .unwrap()
            .len(),
        3
    );
    db.drop_pg().await;
}

async fn file_at_once(
    s: &Store,
    r: &approvals::NewRequest,
) -> Vec<Result<approvals::approvers::AccessRequestRow, StoreError>> {
    let tasks: Vec<_> = (0..4)
        .map(|i| {
            let (s, r) = (s.clone(), r.clone());
            tokio::spawn(async move { s.add_request(&r, NOW + 10 + i).await })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

both!(one_pending_request_at_a_time);

async fn breakglass_and_review(db: Db) {
    let s = &db.store;
    directory(s).await;
    s.add_vendor("gus", "globex", None, "JBSWY3DPEHPK3PXP", NOW)
        .await
        .unwrap();
    let allow = ChannelSet::parse("shell").unwrap();
    let orgs = ["acme".to_owned()];
    s.add_function("emergency", &allow, None, 2 * 3600, Some(&orgs), NOW)
        .await
        .unwrap();
    assert!(matches!(
        s.add_function("nobody", &allow, None, 3600, Some(&[]), NOW)
            .await,
        Err(StoreError::Invalid(_))
    ));
    let open =
        |vendor: &str, function: &str, reason: &str, duration: i64| approvals::NewBreakGlass {
            vendor: vendor.into(),
            site: "store-1".into(),
            device: "cam-01".into(),
            function: function.into(),
            reason: reason.into(),
            duration,
        };
    // Only a pre-approved org, only an emergency function, a reason, within the longest window.
    for (b, why) in [
        (open("gus", "emergency", "x", 600), "other org"),
        (
            open("alice", "maint", "x", 600),
            "not an emergency function",
        ),
        (open("alice", "emergency", " ", 600), "no reason"),
        (open("alice", "emergency", "x", 3 * 3600), "too long"),
    ] {
        assert!(
            matches!(
                s.open_breakglass(&b, NOW).await,
                Err(StoreError::Invalid(_))
            ),
            "{why}"
        );
    }
    let (bg, g) = s
        .open_breakglass(&open("alice", "emergency", "freezer alarm", 1800), NOW)
        .await
        .unwrap();
    assert_eq!((bg.org.as_str(), bg.valid_until), ("acme", NOW + 1800));
    assert_eq!(
        (g.granted_by.as_str(), g.valid_until),
        ("break-glass", NOW + 1800)
    );
    // The grant is an ordinary one to the policy decision.
    let facts = s
        .facts("alice", "store-1", "cam-01", Some("emergency"))
        .await
        .unwrap();
    let mut q = req("store-1");
    q.function = Some("emergency".into());
    assert!(matches!(
        decide(&q, &facts, NOW + 1),
        Decision::Allow { .. }
    ));
    assert_eq!(s.breakglass_list(true).await.unwrap().len(), 1);
    let r = s
        .review_breakglass(&bg.id, "nina", " checked ", NOW + 60)
        .await
        .unwrap();
    assert_eq!(
        (r.reviewed_by.as_deref(), r.review_note.as_deref()),
        (Some("nina"), Some("checked"))
    );
    assert!(matches!(
        s.review_breakglass(&bg.id, "sam", "", NOW + 61).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(s.breakglass_list(true).await.unwrap().is_empty());
    assert_eq!(s.breakglass_list(false).await.unwrap().len(), 1);
    db.drop_pg().await;
}

async fn web_logins(db: Db) {
    let s = &db.store;
    directory(s).await;
    let h = approvals::approvers::hash_password("pw").unwrap();
    s.add_approver(
        "nina",
        &h,
        "JBSWY3DPEHPK3PXP",
        &["store-1".into()],
        &[],
        NOW,
    )
    .await
    .unwrap();
    assert!(s.consume_approver_totp_step("nina", 10).await.unwrap());
    assert!(!s.consume_approver_totp_step("nina", 10).await.unwrap());
    assert!(!s.consume_approver_totp_step("nina", 9).await.unwrap());
    s.create_web_login("hash-1", "nina", "csrf-1", NOW, NOW + 100)
        .await
        .unwrap();
    let l = s.web_login("hash-1", NOW + 1).await.unwrap().unwrap();
    assert_eq!(
        (l.approver.name.as_str(), l.csrf.as_str()),
        ("nina", "csrf-1")
    );
    assert!(
        s.web_login("hash-1", NOW + 100).await.unwrap().is_none(),
        "expired"
    );
    assert!(s.web_login("other", NOW).await.unwrap().is_none());
    // A new sign-in clears expired ones; signing out ends one.
    s.create_web_login("hash-2", "nina", "csrf-2", NOW + 200, NOW + 300)
        .await
        .unwrap();
    assert!(s.web_login("hash-1", NOW).await.unwrap().is_none());
    s.end_web_login("hash-2").await.unwrap();
    assert!(s.web_login("hash-2", NOW + 201).await.unwrap().is_none());
    db.drop_pg().await;
}

async fn notification_outbox(db: Db) {
    let s = &db.store;
    let t = NOW * 1000;
    s.enqueue_notification("request.filed", r#"{"text":"a"}"#, t)
        .await
        .unwrap();
    s.enqueue_notification("vendor.disabled", r#"{"text":"b"}"#, t + 1)
        .await
        .unwrap();
    let due = s.due_notifications(t + 1, 10).await.unwrap();
    assert_eq!(due.len(), 2);
    assert_eq!(s.due_notifications(t, 10).await.unwrap().len(), 1);
    assert_eq!(s.due_notifications(t + 1, 1).await.unwrap().len(), 1);
    // Two nodes see the same row: one claim wins.
    let n = &due[0];
    assert!(s.claim_notification(n, t + 2).await.unwrap());
    assert!(!s.claim_notification(n, t + 2).await.unwrap());
    assert_eq!(
        s.due_notifications(t + 2, 10).await.unwrap().len(),
        1,
        "a claimed notification is leased"
    );
    // A failure is retried after the backoff, then given up after the last attempt.
    assert!(
        !s.notification_failed(&n.id, 1, "refused", t + 3)
            .await
            .unwrap()
    );
    assert!(s.due_notifications(t + 1000, 10).await.unwrap().len() == 1);
    assert_eq!(s.due_notifications(t + 1003, 10).await.unwrap().len(), 2);
    assert!(
        s.notification_failed(&n.id, approvals::notify::MAX_ATTEMPTS, "refused", t + 4)
            .await
            .unwrap()
    );
    s.notification_delivered(&due[1].id, NOW).await.unwrap();
    assert!(
        s.due_notifications(t + 10_000_000, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let all = s.notifications().await.unwrap();
    assert!(
        all.iter()
            .any(|x| x.failed_at.is_some() && x.last_error.as_deref() == Some("refused"))
    );
    assert!(all.iter().any(|x| x.delivered_at == Some(NOW)));
    db.drop_pg().await;
}

both!(breakglass_and_review);
both!(web_logins);
both!(notification_outbox);

/// Checkpoints shipped to the database: the webhook outbox gets each once, in the same
/// transaction; shipping again changes nothing; listed per node in order; the latest continues
/// the chain.
async fn checkpoints_shipped(db: Db) {
    use approvals::checkpoint::Checkpoint;
    let s = &db.store;
    let key = recorder::SealKey::from_seed(&[5; 32]);
    let first = Checkpoint::sign(&key, "inst", "node-a", 10, &[1; 32], 100, &[], None);
    let second = Checkpoint::sign(&key, "inst", "node-a", 20, &[2; 32], 160, &[], Some(&first));
    let other = Checkpoint::sign(&key, "inst", "node-b", 5, &[3; 32], 120, &[], None);
    let notifier = approvals::Notifier::new(s.clone(), true);
    for cp in [&second, &first, &other, &second] {
        s.ship_checkpoint(cp, &notifier).await.unwrap();
    }
    assert_eq!(
        s.checkpoints(None).await.unwrap(),
        vec![first.clone(), second.clone(), other.clone()]
    );
    assert_eq!(s.checkpoints(Some("node-b")).await.unwrap(), vec![other]);
    assert_eq!(
        s.latest_checkpoint("inst", "node-a").await.unwrap(),
        Some(second.clone())
    );
    assert_eq!(s.latest_checkpoint("other", "node-a").await.unwrap(), None);
    let sent = s.notifications().await.unwrap();
    assert_eq!(sent.len(), 3, "{sent:?}");
    assert!(sent.iter().all(|n| n.event == "checkpoint"));
    let body: serde_json::Value = serde_json::from_str(
        &sent
            .iter()
            .find(|n| n.payload.contains("\"seq\":20"))
            .unwrap()
            .payload,
    )
    .unwrap();
    let carried: Checkpoint = serde_json::from_value(body["checkpoint"].clone()).unwrap();
    assert_eq!(carried, second);
    assert!(carried.check_signature().is_ok());
    db.drop_pg().await;
}
both!(checkpoints_shipped);

/// Operator actions are all or nothing: with the audit log unwritable each is refused and changes
/// nothing (no state change, no notification, no revision bump); with it writable each makes its
/// change, queues its notification and leaves its audit record, with who acted.
async fn actions_are_all_or_nothing(db: Db) {
    use approvals::{ActionError, Actions, Actor, AuditLog, Notifier};
    let s = &db.store;
    directory(s).await;
    let allow = ChannelSet::parse("shell").unwrap();
    let orgs = ["acme".to_owned()];
    s.add_function("emergency", &allow, None, 2 * 3600, Some(&orgs), NOW)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.log");
    let notifier = Notifier::new(s.clone(), true);
    let ok = Actions::new(s.clone(), AuditLog::new(&log, "n1"), notifier.clone());
    // A directory where the audit log should be: every write fails, as on a broken disk.
    let refused = Actions::new(s.clone(), AuditLog::new(dir.path(), "n1"), notifier);
    // Approvers decide only where they are accountable: olga covers store-1.
    let h = approvals::approvers::hash_password("pw").unwrap();
    s.add_approver(
        "olga",
        &h,
        "JBSWY3DPEHPK3PXP",
        &["store-1".into()],
        &[],
        NOW,
    )
    .await
    .unwrap();
    let olga = Actor::web("olga");
    let root = Actor::operator("root");

    let g = s.add_grant(&grant(NOW, NOW + 600), NOW).await.unwrap();
    s.start_session(&approvals::Session {
        id: "s-1".into(),
        vendor: "alice".into(),
        site: "store-1".into(),
        device: "cam-01".into(),
        function: "maint".into(),
        grant_id: g.id.clone(),
        node: "n1".into(),
        source: "127.0.0.1:5555".into(),
        recording: "s-1.rec".into(),
        started: NOW,
        ended: None,
        end_reason: None,
        kill_requested: false,
        records: None,
        final_hash: None,
        breakglass: None,
    })
    .await
    .unwrap();
    // Two requests pending at once: for different functions (one per function at a time).
    let ask = |function: &str| approvals::NewRequest {
        vendor: "alice".into(),
        site: "store-1".into(),
        device: "cam-01".into(),
        function: function.into(),
        reason: "camera offline".into(),
        duration: 3600,
    };
    let r1 = s.add_request(&ask("maint"), NOW).await.unwrap();
    let r2 = s.add_request(&ask("emergency"), NOW).await.unwrap();
    let (bg, _) = s
        .open_breakglass(
            &approvals::NewBreakGlass {
                vendor: "alice".into(),
                site: "store-1".into(),
                device: "cam-01".into(),
                function: "emergency".into(),
                reason: "freezer alarm".into(),
                duration: 1800,
            },
            NOW,
        )
        .await
        .unwrap();
    let grants_before = s.grants().await.unwrap();
    let revision = s.revision().await.unwrap();
    let unwritable = |r: Result<(), ActionError>, what: &str| {
        assert!(
            matches!(r, Err(ActionError::AuditUnwritable(_))),
            "{what}: {r:?}"
        );
    };

    unwritable(
        refused
            .approve_request(&olga, &r1.id, NOW, None, NOW)
            .await
            .map(drop),
        "approve",
    );
    unwritable(
        refused
            .deny_request(&olga, &r2.id, "not today", NOW)
            .await
            .map(drop),
        "deny",
    );
    unwritable(
        refused.revoke_grant(&olga, &g.id, NOW).await.map(drop),
        "revoke",
    );
    unwritable(refused.kill_session(&olga, "s-1").await.map(drop), "kill");
    unwritable(
        refused.disable_vendor(&root, "alice", NOW).await.map(drop),
        "disable",
    );
    unwritable(
        refused
            .review_breakglass(&olga, &bg.id, "checked", NOW)
            .await
            .map(drop),
        "review",
    );
    unwritable(
        refused
            .add_grant(&root, &grant(NOW, NOW + 60), NOW)
            .await
            .map(drop),
        "grant add",
    );
    // Nothing happened.
    assert_eq!(
        s.request(&r1.id).await.unwrap().unwrap().status,
        RequestStatus::Pending
    );
    assert_eq!(
        s.request(&r2.id).await.unwrap().unwrap().status,
        RequestStatus::Pending
    );
    assert_eq!(s.grants().await.unwrap(), grants_before);
    let session = s.session("s-1").await.unwrap().unwrap();
    assert_eq!((session.kill_requested, session.ended), (false, None));
    assert!(!s.vendor("alice").await.unwrap().unwrap().is_disabled());
    assert!(
        s.breakglass(&bg.id)
            .await
            .unwrap()
            .unwrap()
            .reviewed_at
            .is_none()
    );
    assert!(s.notifications().await.unwrap().is_empty());
    assert_eq!(s.revision().await.unwrap(), revision);
    assert!(!log.exists());

    // The same actions with the audit log writable.
    let (r, granted) = ok
        .approve_request(&olga, &r1.id, NOW, None, NOW)
        .await
        .unwrap();
    assert_eq!(
        (r.status.as_str(), r.decided_by.as_deref()),
        ("approved", Some("olga"))
    );
    assert_eq!(granted.valid_until, NOW + 3600, "as long as asked for");
    assert!(matches!(
        ok.approve_request(&olga, &r1.id, NOW, None, NOW).await,
        Err(ActionError::Conflict(_))
    ));
    assert!(matches!(
        ok.deny_request(&olga, &r2.id, "  ", NOW).await,
        Err(ActionError::Invalid(_))
    ));
    ok.deny_request(&olga, &r2.id, "not today", NOW)
        .await
        .unwrap();
    ok.revoke_grant(&olga, &g.id, NOW).await.unwrap();
    assert!(matches!(
        ok.revoke_grant(&olga, "g-none", NOW).await,
        Err(ActionError::NotFound(_))
    ));
    ok.kill_session(&olga, "s-1").await.unwrap();
    ok.review_breakglass(&olga, &bg.id, "checked", NOW)
        .await
        .unwrap();
    let added = ok
        .add_grant(&root, &grant(NOW, NOW + 60), NOW)
        .await
        .unwrap();
    assert_eq!(added.granted_by, "operator:root");
    let revoked = ok.disable_vendor(&root, "alice", NOW).await.unwrap();
    assert!(revoked.contains(&added.id) && revoked.contains(&granted.id));
    assert!(s.session("s-1").await.unwrap().unwrap().kill_requested);
    assert!(s.revision().await.unwrap() > revision);
    let mut events: Vec<String> = s
        .notifications()
        .await
        .unwrap()
        .into_iter()
        .map(|n| n.event)
        .collect();
    events.sort();
    assert_eq!(
        events,
        [
            "request.denied",
            "request.granted",
            "session.terminated",
            "vendor.disabled"
        ]
    );
    let records: Vec<serde_json::Value> = recorder::Reader::open(&log)
        .unwrap()
        .map(|r| r.unwrap().json().unwrap())
        .collect();
    let names: Vec<&str> = records
        .iter()
        .map(|r| r["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "request.approve",
            "request.deny",
            "grant.revoke",
            "session.kill_requested",
            "breakglass.review",
            "grant.add",
            "vendor.disable"
        ]
    );
    assert_eq!(records[0]["actor"], "web:olga");
    assert_eq!(records[0]["grant"], granted.id.as_str());
    assert_eq!(records[1]["reason"], "not today");
    assert_eq!(records[6]["actor"], "operator:root");
    db.drop_pg().await;
}

both!(actions_are_all_or_nothing);

/// Directory changes are actions too: refused with the audit log unwritable (nothing added, no
/// certificate registered, no approver reset, disabled or signed out), made with their record
/// otherwise. An import is one change: sites it adds are seen by its later devices, and a list
/// with one bad line adds nothing.
async fn directory_actions_are_all_or_nothing(db: Db) {
    use approvals::{ActionError, Actions, Actor, AuditLog, IssuedCertificate, Notifier};
    let s = &db.store;
    directory(s).await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.log");
    let notifier = Notifier::new(s.clone(), false);
    let ok = Actions::new(s.clone(), AuditLog::new(&log, "n1"), notifier.clone());
    let refused = Actions::new(s.clone(), AuditLog::new(dir.path(), "n1"), notifier);
    let root = Actor::operator("root");
    s.add_approver("olga", "hash", "OLGASECRET", &["store-1".into()], &[], NOW)
        .await
        .unwrap();
    s.create_web_login("tok", "olga", "csrf", NOW, NOW + 600)
        .await
        .unwrap();
    let device = |site: &str, name: &str| NewDevice {
        site: site.into(),
        name: name.into(),
        addr: "127.0.0.1:22".into(),
        login: "root".into(),
        credential_kind: CredentialKind::Password,
        credential: "DEVICEPASSWORD".into(),
        host_key: "ssh-ed25519 AAAA".into(),
    };
    let cert = IssuedCertificate {
        serial: "42".into(),
        vendor: "alice".into(),
        key_id: "alice-42".into(),
        key_fingerprint: "SHA256:k".into(),
        valid_after: NOW,
        valid_before: NOW + 3600,
        revoked: false,
        created: NOW,
        ca: "SHA256:ca".into(),
    };
    let list = [
        (2, device("store-9", "cam-01")),
        (3, device("store-9", "cam-02")),
    ];
    let allow = ChannelSet::parse("shell").unwrap();
    let unwritable = |r: Result<(), ActionError>, what: &str| {
        assert!(
            matches!(r, Err(ActionError::AuditUnwritable(_))),
            "{what}: {r:?}"
        );
    };
    let vendors = s.vendors().await.unwrap();
    let approvers = s.approvers().await.unwrap();
    let sites = s.sites().await.unwrap();
    let devices = s.devices().await.unwrap();
    let functions = s.functions().await.unwrap();

    unwritable(
        refused
            .add_vendor(&root, "bob", "acme", None, "BOBSECRET", NOW)
            .await,
        "vendor add",
    );
    unwritable(refused.issue_certificate(&root, &cert).await, "vendor cert");
    unwritable(
        refused
            .add_approver(
                &root,
                "pat",
                "hash",
                "PATSECRET",
                &[],
                &["north".into()],
                NOW,
            )
            .await,
        "approver add",
    );
    unwritable(
        refused
            .reset_approver(&root, "olga", "hash2", "NEWSECRET")
            .await,
        "approver reset",
    );
    unwritable(
        refused.disable_approver(&root, "olga").await,
        "approver disable",
    );
    unwritable(
        refused.add_site(&root, "store-3", None, NOW).await,
        "site add",
    );
    unwritable(
        refused
            .add_device(
                &root,
                &device("store-1", "cam-02"),
                "SHA256:h",
                "from file",
                None,
                NOW,
            )
            .await,
        "device add",
    );
    unwritable(
        refused
            .import_devices(&root, "list.csv", "root", Some("south"), &list, NOW)
            .await
            .map(drop),
        "device import",
    );
    unwritable(
        refused
            .add_function(&root, "diag", &allow, None, 3600, None, NOW)
            .await,
        "function add",
    );
    assert_eq!(s.vendors().await.unwrap(), vendors);
    assert!(s.certificates_for_key("SHA256:k").await.unwrap().is_empty());
    assert_eq!(s.approvers().await.unwrap(), approvers);
    assert!(
        s.web_login("tok", NOW).await.unwrap().is_some(),
        "signed out"
    );
    assert_eq!(s.sites().await.unwrap(), sites);
    assert_eq!(s.devices().await.unwrap(), devices);
    assert_eq!(s.functions().await.unwrap(), functions);
    assert!(!log.exists());

    // A list with a bad line (a duplicate) adds nothing, not even its new site.
    let bad = [
        (2, device("store-9", "cam-01")),
        (3, device("store-9", "cam-01")),
    ];
    let e = ok
        .import_devices(&root, "list.csv", "root", Some("south"), &bad, NOW)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ActionError::Conflict(m) if m.starts_with("list.csv line 3: ")),
        "{e:?}"
    );
    assert_eq!(s.sites().await.unwrap(), sites);
    assert_eq!(s.devices().await.unwrap(), devices);

    // What refers to nothing is refused and leaves nothing behind.
    let e = ok
        .add_device(
            &root,
            &device("store-8", "cam-01"),
            "SHA256:h",
            "from file",
            None,
            NOW,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ActionError::NotFound(m) if m.starts_with("no site named store-8")),
        "{e:?}"
    );
    let e = ok
        .add_approver(
            &root,
            "pat",
            "hash",
            "PATSECRET",
            &["store-8".into()],
            &[],
            NOW,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ActionError::NotFound(m) if m == "no site named store-8"),
        "{e:?}"
    );
    assert_eq!(s.approvers().await.unwrap(), approvers);
    assert_eq!(s.devices().await.unwrap(), devices);
    let e = ok
        .issue_certificate(
            &root,
            &IssuedCertificate {
                vendor: "nobody".into(),
                ..cert.clone()
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ActionError::NotFound(m) if m == "no vendor named nobody"),
        "{e:?}"
    );

    // With the log writable, each goes through.
    ok.add_vendor(&root, "bob", "acme", None, "BOBSECRET", NOW)
        .await
        .unwrap();
    ok.issue_certificate(&root, &cert).await.unwrap();
    ok.add_approver(
        &root,
        "pat",
        "hash",
        "PATSECRET",
        &[],
        &["north".into()],
        NOW,
    )
    .await
    .unwrap();
    ok.reset_approver(&root, "olga", "hash2", "NEWSECRET")
        .await
        .unwrap();
    assert!(s.web_login("tok", NOW).await.unwrap().is_none());
    ok.disable_approver(&root, "olga").await.unwrap();
    ok.add_site(&root, "store-3", None, NOW).await.unwrap();
    ok.add_device(
        &root,
        &device("store-1", "cam-02"),
        "SHA256:h",
        "from file",
        None,
        NOW,
    )
    .await
    .unwrap();
    let done = ok
        .import_devices(&root, "list.csv", "root", Some("south"), &list, NOW)
        .await
        .unwrap();
    assert_eq!((done.devices, done.new_sites), (2, 1));
    ok.add_function(&root, "diag", &allow, None, 3600, None, NOW)
        .await
        .unwrap();
    assert!(s.vendor("bob").await.unwrap().is_some());
    assert_eq!(
        s.certificates_for_key("SHA256:k").await.unwrap(),
        std::slice::from_ref(&cert)
    );
    let olga = s.approver("olga").await.unwrap().unwrap();
    assert_eq!(
        (olga.totp_secret.as_str(), olga.disabled),
        ("NEWSECRET", true)
    );
    assert!(s.approver("pat").await.unwrap().is_some());
    assert!(s.device("store-9", "cam-02").await.unwrap().is_some());
    assert!(s.function("diag").await.unwrap().is_some());
    // A certificate for a disabled vendor is refused.
    s.disable_vendor("bob", "root", NOW).await.unwrap();
    let for_bob = IssuedCertificate {
        serial: "43".into(),
        vendor: "bob".into(),
        ..cert.clone()
    };
    assert!(matches!(
        ok.issue_certificate(&root, &for_bob).await,
        Err(ActionError::Conflict(_))
    ));

    let text = String::from_utf8_lossy(&std::fs::read(&log).unwrap()).into_owned();
    for secret in [
        "BOBSECRET",
        "PATSECRET",
        "NEWSECRET",
        "DEVICEPASSWORD",
        "hash2",
    ] {
        assert!(!text.contains(secret), "{secret} is in the audit log");
    }
    let records: Vec<serde_json::Value> = recorder::Reader::open(&log)
        .unwrap()
        .map(|r| r.unwrap().json().unwrap())
        .collect();
    let names: Vec<&str> = records
        .iter()
        .map(|r| r["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "vendor.add",
            "vendor.cert",
            "approver.add",
            "approver.reset",
            "approver.disable",
            "site.add",
            "device.add",
            "device.import",
            "function.add"
        ]
    );
    assert!(records.iter().all(|r| r["actor"] == "operator:root"));
    assert_eq!(records[1]["serial"], "42");
    assert_eq!(records[6]["credential"], "password");
    assert_eq!(records[7]["devices"], 2);
    db.drop_pg().await;
}

both!(directory_actions_are_all_or_nothing);

/// The SQLite files hold TOTP secrets and device credentials: owner-only, -wal and -shm included,
/// and a file left readable by an older version is tightened.
#[tokio::test]
async fn sqlite_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("p.db");
    let s = Store::open(&format!("sqlite://{}?mode=rwc", db.display()))
        .await
        .unwrap()
        .unlock(&approvals::secrets::MasterKey::generate())
        .await
        .unwrap();
    directory(&s).await;
    let mode = |name: &str| {
        std::fs::metadata(dir.path().join(name))
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .permissions()
            .mode()
            & 0o777
    };
    for f in ["p.db", "p.db-wal", "p.db-shm"] {
        assert_eq!(mode(f), 0o600, "{f}");
    }
    s.close().await;
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
    let s = Store::open(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    assert_eq!(mode("p.db"), 0o600);
    s.close().await;
}

/// Certificates: listing, revoking one or all (each once), the revision moving so live sessions
/// are re-checked, a vendor's disable revoking them all, the contract end capping them, and a
/// retired CA revoking what it signed and leaving the trusted set for good.
async fn certificates_revoked_and_cas_retired(db: Db) {
    use approvals::{ActionError, Actions, Actor, AuditLog, IssuedCertificate, Notifier};
    let s = &db.store;
    directory(s).await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.log");
    let ok = Actions::new(
        s.clone(),
        AuditLog::new(&log, "n1"),
        Notifier::new(s.clone(), false),
    );
    let root = Actor::operator("root");
    let cert = |serial: &str, ca: &str| IssuedCertificate {
        serial: serial.into(),
        vendor: "alice".into(),
        key_id: format!("postern:alice:{serial}"),
        key_fingerprint: format!("SHA256:key{serial}"),
        valid_after: NOW,
        valid_before: NOW + 3600,
        revoked: false,
        created: NOW,
        ca: ca.into(),
    };
    for c in [
        cert("1", "SHA256:old"),
        cert("2", "SHA256:old"),
        cert("3", "SHA256:new"),
    ] {
        ok.issue_certificate(&root, &c).await.unwrap();
    }
    let listed = s.certificates_of("alice").await.unwrap();
    assert_eq!(listed.len(), 3);
    assert_eq!(listed[0].ca, "SHA256:old");

    let rev = s.revision().await.unwrap();
    let one = ok.revoke_certificates(&root, "alice", Some("1")).await;
    assert_eq!(one.unwrap(), ["1"]);
    assert!(
        s.revision().await.unwrap() > rev,
        "revocation moves the revision"
    );
    let all: Vec<String> = ["1", "2", "3"].map(String::from).into();
    assert_eq!(s.revoked_among(&all).await.unwrap(), ["1"]);
    let again = ok.revoke_certificates(&root, "alice", Some("1")).await;
    assert!(
        matches!(&again, Err(ActionError::Conflict(m)) if m.contains("already revoked")),
        "{again:?}"
    );
    let none = ok.revoke_certificates(&root, "alice", Some("99")).await;
    assert!(
        matches!(&none, Err(ActionError::NotFound(m)) if m.contains("no certificate with serial 99")),
        "{none:?}"
    );
    let nobody = ok.revoke_certificates(&root, "nobody", None).await;
    assert!(matches!(nobody, Err(ActionError::NotFound(_))));

    // Retiring the old CA revokes what it signed and still holds; the key stays out for good.
    let (old, new) = ("ssh-ed25519 OLD", "ssh-ed25519 NEW");
    s.register_vendor_ca(old, "n1", NOW).await.unwrap();
    ok.rotate_vendor_ca(&root, new, "SHA256:new", "n1", NOW + 1)
        .await
        .unwrap();
    let twice = ok
        .rotate_vendor_ca(&root, new, "SHA256:new", "n1", NOW + 1)
        .await;
    assert!(matches!(twice, Err(ActionError::Conflict(_))));
    assert_eq!(s.vendor_cas().await.unwrap(), [old, new]);
    let retired = ok
        .retire_vendor_ca(&root, old, "SHA256:old", NOW + 2)
        .await
        .unwrap();
    assert_eq!(retired, ["2"]);
    assert_eq!(s.vendor_cas().await.unwrap(), [new]);
    let rows = s.vendor_ca_rows().await.unwrap();
    assert_eq!(rows[0].retired, Some(NOW + 2));
    s.register_vendor_ca(old, "n1", NOW + 3).await.unwrap();
    assert_eq!(
        s.vendor_cas().await.unwrap(),
        [new],
        "a retired key is not trusted again"
    );
    let again = ok.retire_vendor_ca(&root, old, "SHA256:old", NOW + 4).await;
    assert!(matches!(again, Err(ActionError::Conflict(_))));

    // Disabling the vendor revokes the rest; the contract end caps new certificates.
    ok.issue_certificate(&root, &cert("4", "SHA256:new"))
        .await
        .unwrap();
    ok.disable_vendor(&root, "alice", NOW + 5).await.unwrap();
    assert!(
        s.certificates_of("alice")
            .await
            .unwrap()
            .iter()
            .all(|c| c.revoked)
    );
    s.add_vendor("carol", "acme", Some(NOW + 600), "JBSWY3DPEHPK3PXP", NOW)
        .await
        .unwrap();
    let long = IssuedCertificate {
        vendor: "carol".into(),
        ..cert("5", "SHA256:new")
    };
    let e = ok.issue_certificate(&root, &long).await;
    assert!(
        matches!(&e, Err(ActionError::Conflict(m)) if m.contains("outlive the contract")),
        "{e:?}"
    );

    let records: Vec<serde_json::Value> = recorder::Reader::open(&log)
        .unwrap()
        .map(|r| r.unwrap().json().unwrap())
        .collect();
    let names: Vec<&str> = records
        .iter()
        .map(|r| r["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "vendor.cert",
            "vendor.cert",
            "vendor.cert",
            "vendor.revoke_cert",
            "ca.rotate",
            "ca.retire",
            "vendor.cert",
            "vendor.disable"
        ]
    );
    assert_eq!(records[5]["certificates_revoked"], serde_json::json!(["2"]));
    assert_eq!(
        records[7]["certificates_revoked"],
        serde_json::json!(["3", "4"])
    );
    db.drop_pg().await;
}

both!(certificates_revoked_and_cas_retired);
/// Contract and role changes (issue 13): vendor update and enable, approver coverage, function
/// channels and longest window with grants cut to it; each bumps the revision nodes poll.
async fn lifecycle_changes(db: Db) {
    let s = &db.store;
    directory(s).await;
    let g = s.add_grant(&grant(NOW, NOW + 6 * 3600), NOW).await.unwrap();
    let rev = s.revision().await.unwrap();

    let mut tx = s.begin().await.unwrap();
    let c = s
        .update_vendor_in(&mut tx, "alice", Some("acme2"), Some(Some(NOW + 60)))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        (c.before.contract_end, c.after.contract_end),
        (None, Some(NOW + 60))
    );
    assert_eq!(c.after.org, "acme2");
    assert!(s.revision().await.unwrap() > rev);
    let mut tx = s.begin().await.unwrap();
    let c = s
        .update_vendor_in(&mut tx, "alice", None, Some(None))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(c.after.contract_end, None);
    let mut tx = s.begin().await.unwrap();
    let e = s
        .update_vendor_in(&mut tx, "nobody", None, Some(None))
        .await;
    assert!(matches!(e, Err(StoreError::NotFound(_))), "{e:?}");
    drop(tx);

    let mut tx = s.begin().await.unwrap();
    let e = s.enable_vendor_in(&mut tx, "alice").await;
    assert!(matches!(e, Err(StoreError::Conflict(_))), "{e:?}");
    drop(tx);
    s.disable_vendor("alice", "op", NOW).await.unwrap();
    let mut tx = s.begin().await.unwrap();
    s.enable_vendor_in(&mut tx, "alice").await.unwrap();
    tx.commit().await.unwrap();
    assert!(!s.vendor("alice").await.unwrap().unwrap().is_disabled());

    s.add_approver(
        "olga",
        "h",
        "JBSWY3DPEHPK3PXP",
        &["store-1".into()],
        &[],
        NOW,
    )
    .await
    .unwrap();
    let mut tx = s.begin().await.unwrap();
    let a = s
        .update_approver_in(&mut tx, "olga", Some(&[]), Some(&["north".into()]))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!((a.sites.as_str(), a.regions.as_str()), ("", "north"));
    let mut tx = s.begin().await.unwrap();
    let e = s.update_approver_in(&mut tx, "olga", None, Some(&[])).await;
    assert!(matches!(e, Err(StoreError::Invalid(_))), "{e:?}");
    drop(tx);
    assert_eq!(s.approver("olga").await.unwrap().unwrap().regions, "north");

    // The grant was revoked by the disable: a new one, cut to a 1h longest window.
    let g2 = s.add_grant(&grant(NOW, NOW + 6 * 3600), NOW).await.unwrap();
    let mut tx = s.begin().await.unwrap();
    let allow = ChannelSet::parse("exec").unwrap();
    let f = s
        .update_function_in(&mut tx, "maint", Some(&allow), Some(3600), NOW + 10)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        (f.function.allow.as_str(), f.function.max_window),
        ("exec", 3600)
    );
    let cut: Vec<&str> = f.cut.iter().map(|c| c.grant.id.as_str()).collect();
    assert_eq!(
        cut,
        vec![g2.id.as_str()],
        "revoked grant {} is left alone",
        g.id
    );
    assert_eq!(
        s.grant(&g2.id).await.unwrap().unwrap().valid_until,
        NOW + 3600
    );
    db.drop_pg().await;
}
both!(lifecycle_changes);

/// A device's credential is replaced and its rotations recorded: a failure keeps the credential
/// and its date, a success dates it; the last attempt is what is listed.
async fn device_rotation(db: Db) {
    let s = &db.store;
    s.add_site("rot", None, NOW).await.unwrap();
    add_device(s, "rot", "d1").await;
    assert!(s.device_rotations().await.unwrap().is_empty());
    let failed = approvals::store::RotationOutcome::Failed {
        step: "verify",
        error: "device gone",
    };
    let mut tx = s.begin().await.unwrap();
    s.record_rotation_in(&mut tx, "rot", "d1", NOW + 10, failed)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let r = &s.device_rotations().await.unwrap()[0];
    assert_eq!((r.credential_set, r.last_result.as_str()), (None, "verify"));
    assert_eq!(r.last_error.as_deref(), Some("device gone"));

    let mut tx = s.begin().await.unwrap();
    s.set_device_credential_in(&mut tx, "rot", "d1", CredentialKind::Password, "new")
        .await
        .unwrap();
    let ok = approvals::store::RotationOutcome::Ok;
    s.record_rotation_in(&mut tx, "rot", "d1", NOW + 20, ok)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        s.device("rot", "d1").await.unwrap().unwrap().credential,
        "new"
    );
    let mut tx = s.begin().await.unwrap();
    s.record_rotation_in(&mut tx, "rot", "d1", NOW + 30, failed)
        .await
        .unwrap();
    assert!(
        s.set_device_credential_in(&mut tx, "rot", "nope", CredentialKind::Key, "x")
            .await
            .is_err(),
        "no such device"
    );
    tx.commit().await.unwrap();
    let r = &s.device_rotations().await.unwrap()[0];
    assert_eq!(r.credential_set, Some(NOW + 20), "a failure keeps the date");
    assert_eq!((r.last_at, r.last_result.as_str()), (NOW + 30, "verify"));
    db.drop_pg().await;
}

both!(device_rotation);

/// Unbrokered paths: a path found stays open with its first sighting, a later scan that does not
/// find it closes it, and the open count follows.
async fn unbrokered_paths(db: Db) {
    use approvals::store::FoundPath;
    let s = &db.store;
    s.add_site("site-s", None, NOW).await.unwrap();
    add_device(s, "site-s", "d1").await;
    let key = FoundPath {
        kind: "key".into(),
        location: "~/.ssh/authorized_keys".into(),
        ident: "SHA256:foreign".into(),
        comment: "someone@laptop".into(),
        options: "from=\"10.0.0.0/8\"".into(),
    };
    let record = |found: Vec<FoundPath>, at: i64| async move {
        let mut tx = s.begin().await.unwrap();
        s.record_scan_in(&mut tx, "site-s", "d1", &found, at)
            .await
            .unwrap();
        tx.commit().await.unwrap();
    };
    assert_eq!(s.open_unbrokered_count().await.unwrap(), 0);
    record(vec![key.clone()], NOW).await;
    record(vec![key.clone()], NOW + 60).await;
    let open = s.open_unbrokered_paths().await.unwrap();
    assert_eq!(open.len(), 1);
    assert_eq!((open[0].first_seen, open[0].last_seen), (NOW, NOW + 60));
    assert_eq!(open[0].path, key);
    assert_eq!(s.open_unbrokered_count().await.unwrap(), 1);
    record(Vec::new(), NOW + 120).await;
    assert_eq!(s.open_unbrokered_count().await.unwrap(), 0);
    assert!(s.open_unbrokered_paths().await.unwrap().is_empty());
    db.drop_pg().await;
}

both!(unbrokered_paths);
/// A scheduled rotation's claim: one node at a time holds a device; a stale claim (a node that
/// died mid-rotation) is taken over; releasing leaves another node's claim alone.
async fn rotation_claims(db: Db) {
    let s = &db.store;
    s.add_site("rot", None, NOW).await.unwrap();
    add_device(s, "rot", "d1").await;
    assert!(s.device_rotation("rot", "d1").await.unwrap().is_none());
    assert!(
        s.claim_rotation("rot", "d1", "a", NOW, NOW - 600)
            .await
            .unwrap()
    );
    assert!(
        !s.claim_rotation("rot", "d1", "b", NOW + 1, NOW + 1 - 600)
            .await
            .unwrap(),
        "held by a"
    );
    s.release_rotation("rot", "d1", "b").await.unwrap();
    assert!(
        !s.claim_rotation("rot", "d1", "b", NOW + 2, NOW + 2 - 600)
            .await
            .unwrap(),
        "b's release does not free a's claim"
    );
    assert!(
        s.claim_rotation("rot", "d1", "b", NOW + 700, NOW + 100)
            .await
            .unwrap(),
        "a stale claim is taken over"
    );
    s.release_rotation("rot", "d1", "b").await.unwrap();
    assert!(
        s.claim_rotation("rot", "d1", "a", NOW + 701, NOW + 101)
            .await
            .unwrap()
    );
    let mut tx = s.begin().await.unwrap();
    s.record_rotation_in(
        &mut tx,
        "rot",
        "d1",
        NOW + 20,
        approvals::store::RotationOutcome::Ok,
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let r = s.device_rotation("rot", "d1").await.unwrap().unwrap();
    assert_eq!(r.credential_set, Some(NOW + 20));

    // `--rotate-after-session`: off unless set, per function, and only for a function that exists.
    let allow = ChannelSet::parse("shell").unwrap();
    s.add_function("once", &allow, None, 3600, None, NOW)
        .await
        .unwrap();
    assert!(!s.function_rotates_after_session("once").await.unwrap());
    for on in [true, false, true] {
        let mut tx = s.begin().await.unwrap();
        s.set_function_rotate_after_session_in(&mut tx, "once", on)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        assert_eq!(s.function_rotates_after_session("once").await.unwrap(), on);
    }
    let mut tx = s.begin().await.unwrap();
    assert!(
        s.set_function_rotate_after_session_in(&mut tx, "nope", true)
            .await
            .is_err()
    );
    drop(tx);
    db.drop_pg().await;
}

both!(rotation_claims);
