//! Signed checkpoints of the audit log's head, shipped off the host: the real broker makes them
//! while sessions run, the webhook and the checkpoint file get them, `checkpoints export` copies
//! them off the host; then, as an insider with the broker stopped, the audit log's tail is cut and
//! the log is rewritten with its whole chain recomputed. The log then checks out on its own;
//! `verify --checkpoints` finds both, and passes on the intact log saying how old the newest is.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::harness::{Receiver, World};
use serde_json::Value;

/// Serves `body` to one GET on loopback (an off-host store the auditor fetches from).
fn serve_once(body: String) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "http://{}/checkpoints.jsonl",
        listener.local_addr().unwrap()
    );
    std::thread::spawn(move || {
        if let Ok((mut stream, _)) = listener.accept() {
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
            }
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    url
}

/// The audit log's records (seq, parsed payload).
fn audit_records(path: &Path) -> Vec<(u64, Value)> {
    recorder::Reader::open(path)
        .unwrap()
        .map(|r| r.unwrap())
        .map(|r| (r.seq, r.json().unwrap()))
        .collect()
}

/// Rewrites the audit log as an insider would: every record through `edit` (None drops it),
/// times kept, the whole chain recomputed from the same header.
fn rewrite(path: &Path, edit: impl Fn(u64, &str) -> Option<String>) {
    let reader = recorder::Reader::open(path).unwrap();
    let stream = reader.stream_id().to_owned();
    let records: Vec<recorder::Record> = reader.map(|r| r.unwrap()).collect();
    std::fs::remove_file(path).unwrap();
    let mut w = recorder::Writer::create(path, &stream).unwrap();
    for r in records {
        if let Some(p) = edit(r.seq, std::str::from_utf8(&r.payload).unwrap()) {
            w.append_at(r.time_us, r.kind, r.channel, p.as_bytes())
                .unwrap();
        }
    }
    w.finish().unwrap();
}

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn shipped_checkpoints_expose_a_cut_tail_and_a_rechained_audit_log() {
    let rx = Receiver::start(false);
    let (hook, bodies) = (rx.url.clone(), rx.bodies.clone());
    let offhost = tempfile::tempdir().unwrap();
    let sink = offhost.path().join("sink.jsonl");
    let mut w = World::with_config(
        9,
        "5m",
        &format!(
            "webhook_url = \"{hook}\"\ncheckpoint_interval = \"1s\"\ncheckpoint_every_events = 1000\ncheckpoint_file = \"{}\"\n",
            sink.display()
        ),
    );
    let rae = w.vendor("rae", &[]);
    let sam = w.vendor("sam", &[]);
    w.grant("rae", "site-a", "maint");
    w.grant("sam", "site-a", "maint");
    for (v, login) in [(&rae, "rae:site-a/dev"), (&sam, "sam:site-a/dev")] {
        let o = w.ssh(v, login, &["echo", "checked"]);
        assert!(o.status.success(), "{}", text(&o));
    }
    w.wait_sealed(2);
    let log = w.data.join("audit.log");
    let last_seal = audit_records(&log)
        .into_iter()
        .filter(|(_, e)| e["event"] == "session.seal")
        .map(|(seq, _)| seq)
        .max()
        .unwrap();

    // Within a couple of intervals a checkpoint covers both seals, in the database, the webhook
    // and the checkpoint file alike.
    let deadline = Instant::now() + Duration::from_secs(15);
    let exported = loop {
        let out = w.ok(&["checkpoints", "export"]);
        let covered = out.lines().any(|l| {
            serde_json::from_str::<Value>(l).unwrap()["seq"]
                .as_u64()
                .unwrap()
                >= last_seal
        });
        if covered {
            break out;
        }
        assert!(
            Instant::now() < deadline,
            "no checkpoint covers record {last_seal}: {out}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let shipped: Vec<Value> = exported
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        shipped
            .iter()
            .map(|c| c["seals"].as_u64().unwrap())
            .sum::<u64>(),
        2,
        "every seal is in exactly one checkpoint: {exported}"
    );
    assert!(shipped[0]["prev"].is_null(), "{exported}");
    for c in &shipped {
        assert_eq!(c["node"], shipped[0]["node"]);
        assert!(
            c["key"]
                .as_str()
                .unwrap()
                .starts_with("postern-seal-ed25519 ")
        );
        assert_eq!(c["signature"].as_str().unwrap().len(), 128);
    }
    // Each checkpoint is in the audit log too.
    let logged: Vec<Value> = audit_records(&log)
        .into_iter()
        .filter(|(_, e)| e["event"] == "audit.checkpoint")
        .map(|(_, e)| e["checkpoint"].clone())
        .collect();
    assert_eq!(
        logged[..shipped.len()],
        shipped[..],
        "audit log vs database"
    );
    // The webhook gets each whole signed checkpoint.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let got: Vec<Value> = bodies
            .lock()
            .unwrap()
            .iter()
            .filter(|b| b["event"] == "checkpoint")
            .map(|b| b["checkpoint"].clone())
            .collect();
        if shipped.iter().all(|c| got.contains(c)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "webhook got {got:?}, shipped {shipped:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    w.terminate_broker();
    // The checkpoint file holds the same lines the database does.
    let filed = std::fs::read_to_string(&sink).unwrap();
    let filed: Vec<Value> = filed
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(filed[..shipped.len()], shipped[..]);

    // The auditor's copy, off the host.
    let export = offhost.path().join("export.jsonl");
    std::fs::write(&export, w.ok(&["checkpoints", "export"])).unwrap();
    let exp = export.to_str().unwrap();
    let newest = w
        .ok(&["checkpoints", "export"])
        .lines()
        .last()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .unwrap();

    let o = w.postern(&["verify", "--checkpoints", exp]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(
        out.contains(&format!("last shipped checkpoint: seq {newest}, ")) && out.contains(" ago"),
        "{out}"
    );
    let original = std::fs::read(&log).unwrap();

    // 1. The insider cuts the audit log's tail: the last session's events and all after them.
    let sam_first = audit_records(&log)
        .into_iter()
        .find(|(_, e)| e["vendor"] == "sam")
        .map(|(seq, _)| seq)
        .unwrap();
    rewrite(&log, |seq, p| (seq < sam_first).then(|| p.to_owned()));
    let o = w.postern(&["verify", "--checkpoints", exp]);
    let out = text(&o);
    assert!(!o.status.success(), "{out}");
    assert!(
        out.contains("OK     audit log: chain intact"),
        "the cut log checks out on its own: {out}"
    );
    assert!(
        out.contains(&format!("FAILED checkpoints ({exp})"))
            && out.contains("the head shipped in the checkpoint of")
            && out.contains("is missing: the audit log ends at record"),
        "{out}"
    );

    // 2. The insider rewrites an event (another vendor named) and recomputes the whole chain.
    std::fs::write(&log, &original).unwrap();
    rewrite(&log, |_, p| {
        Some(p.replace("\"vendor\":\"rae\"", "\"vendor\":\"sam\""))
    });
    assert!(recorder::verify_file(&log).unwrap().problem.is_none());
    let o = w.postern(&["verify", "--checkpoints", exp]);
    let out = text(&o);
    assert!(!o.status.success(), "{out}");
    assert!(
        out.contains("has another hash now: the log was rewritten at or before record"),
        "{out}"
    );
    // The same checkpoints fetched from a URL say the same.
    let url = serve_once(std::fs::read_to_string(&export).unwrap());
    let o = w.postern(&["verify", "--checkpoints", &url]);
    assert!(
        !o.status.success() && text(&o).contains("rewritten"),
        "{}",
        text(&o)
    );

    // 3. The intact log passes against the off-host copy, and says how old it is.
    std::fs::write(&log, &original).unwrap();
    let o = w.postern(&["verify", "--checkpoints", exp]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(
        out.contains(&format!(
            "OK     checkpoints ({exp}): last shipped checkpoint: seq {newest}, "
        )),
        "{out}"
    );
    // Without --checkpoints, the database's are used, labelled as a hint.
    let o = w.postern(&["verify"]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("checkpoints (database, a hint"), "{out}");
    // A file with none of this node's checkpoints proves nothing: a failure, not a pass.
    let empty = offhost.path().join("empty.jsonl");
    std::fs::write(&empty, "").unwrap();
    let o = w.postern(&["verify", "--checkpoints", empty.to_str().unwrap()]);
    assert!(!o.status.success(), "{}", text(&o));
}
