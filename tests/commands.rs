//! The command log shows what the device ran, after line editing, completion and history, found
//! across sessions by `postern commands` and linked to a replay offset.

mod harness;

use std::time::Duration;

use harness::World;
use serde_json::Value;

#[test]
fn edited_commands_are_logged_as_the_device_ran_them() {
    let w = World::new(9, "5m");
    let v = w.vendor("ed", &[]);
    w.grant("ed", "site-a", "maint");
    let dir = w.dir.path().join("files");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("uniquefile-xyz.txt"), "found-it\n").unwrap();

    let mut sh = w.shell(&v, "ed:site-a/dev");
    sh.expect("access until", Duration::from_secs(15));
    let t = Duration::from_secs(10);
    let settle = || std::thread::sleep(Duration::from_millis(300));
    // Wait for the shell's prompt before typing, as a person does (type-ahead before the prompt is
    // not reconstructed; see the command log's docs).
    let deadline = std::time::Instant::now() + t;
    while !sh.screen().trim_end().ends_with(['#', '$']) {
        assert!(
            std::time::Instant::now() < deadline,
            "no shell prompt:\n{}",
            sh.screen()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    settle();
    sh.send("echo ready-$((1+1))\r");
    sh.expect("ready-2", t);
    settle();

    // Backspace.
    sh.send("echo hellp");
    settle();
    sh.send("\x7fo world\r");
    sh.expect("hello world", t);
    settle();
    // Arrow keys: two left, insert.
    sh.send("echo abc");
    settle();
    sh.send("\x1b[D\x1b[DX\r");
    sh.expect("aXbc", t);
    settle();
    // Ctrl-A and Ctrl-E.
    sh.send("cho start");
    settle();
    sh.send("\x01e\x05 end\r");
    sh.expect("start end", t);
    settle();
    // Tab completion of a path.
    sh.send(&format!("cat {}/uniq", dir.display()));
    settle();
    sh.send("\t");
    settle();
    sh.send("\r");
    sh.expect("found-it", t);
    settle();
    // History recall.
    sh.send("\x1b[A");
    settle();
    sh.send("\r");
    settle();
    // A secret typed at a no-echo prompt is not a command.
    sh.send("read -s -p 'password: ' PW; echo got-${#PW}\r");
    sh.expect("password: ", t);
    settle();
    sh.send("hunter2-secret\r");
    sh.expect("got-14", t);
    settle();
    sh.send("exit\r");
    sh.wait_exit(t);
    // The command log is indexed when the session is sealed.
    w.wait_audit("the session's seal", |e| e["event"] == "session.seal");

    let rows: Vec<Value> =
        serde_json::from_str(&w.ok(&["commands", "--vendor", "ed", "--json"])).unwrap();
    let got: Vec<&str> = rows
        .iter()
        .map(|r| r["command"].as_str().unwrap())
        .collect();
    let cat = format!("cat {}/uniquefile-xyz.txt", dir.display());
    let want = vec![
        "echo ready-$((1+1))",
        "echo hello world",
        "echo aXbc",
        "echo start end",
        cat.as_str(),
        cat.as_str(),
        "read -s -p 'password: ' PW; echo got-${#PW}",
        "exit",
    ];
    assert_eq!(got, want, "terminal:\n{}", sh.screen());
    assert!(rows.iter().all(|r| r["kind"] == "shell"));
    assert!(
        !w.ok(&["commands", "--json"]).contains("hunter2"),
        "the secret must not be logged"
    );

    // Search across sessions, linked to the session and the offset for replay.
    let hits: Vec<Value> =
        serde_json::from_str(&w.ok(&["commands", "--grep", "^echo a.bc$", "--json"])).unwrap();
    assert_eq!(hits.len(), 1);
    let session = hits[0]["session"].as_str().unwrap();
    let at = format!(
        "{:.3}",
        hits[0]["offset_ms"].as_i64().unwrap() as f64 / 1000.0
    );
    let replay = w.ok(&["replay", session, "--at", &at, "--speed", "100"]);
    assert!(replay.contains("aXbc"), "{replay}");
    // Other filters narrow it to nothing.
    let none: Vec<Value> =
        serde_json::from_str(&w.ok(&["commands", "--site", "site-b", "--json"])).unwrap();
    assert!(none.is_empty());
    // An exec line is logged exactly.
    let o = w.ssh(&v, "ed:site-a/dev", &["printf '%s\\n' 'a  b' | wc -c"]);
    assert!(o.status.success());
    w.wait_sealed(2);
    let hits: Vec<Value> =
        serde_json::from_str(&w.ok(&["commands", "--grep", "wc -c", "--json"])).unwrap();
    assert_eq!(hits[0]["command"], "printf '%s\\n' 'a  b' | wc -c");
    assert_eq!(hits[0]["kind"], "exec");
}
