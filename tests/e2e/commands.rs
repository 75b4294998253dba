//! The command log shows what the device ran, after line editing, completion and history, found
//! across sessions by `postern commands` and linked to a replay offset; lines the screen never
//! showed (echo off, bursts, typed ahead, no terminal) are logged from the keystrokes, and the
//! input view shows every key.

use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

use crate::harness::{self, World};
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
    w.wait_all_recorded();

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
    let shell: Vec<&str> = rows
        .iter()
        .filter(|r| r["kind"] == "shell")
        .map(|r| r["command"].as_str().unwrap())
        .collect();
    assert_eq!(shell, want, "terminal:\n{}", sh.screen());
    // The secret's line is marked where it was typed, without the secret.
    let others: Vec<(&str, &str)> = rows
        .iter()
        .filter(|r| r["kind"] != "shell")
        .map(|r| (r["kind"].as_str().unwrap(), r["command"].as_str().unwrap()))
        .collect();
    assert_eq!(
        others,
        vec![(
            "secret",
            "(typed at \"password:\": withheld here, kept in the recording)"
        )],
        "{got:?}"
    );
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

/// Waits until the shell has drawn its prompt (and a little more, as a person would).
fn wait_prompt(sh: &harness::Pty) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !sh.screen().trim_end().ends_with(['#', '$']) {
        assert!(
            std::time::Instant::now() < deadline,
            "no shell prompt:\n{}",
            sh.screen()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
}

/// Keys the screen never showed as typed are logged: typed with echo off, sent in one burst with
/// editing keys, typed ahead, and fed to a shell without a terminal. The input view shows every
/// key: `replay --input`, `export --input` ("i" events, accepted by asciinema) and the web page.
#[test]
fn keys_the_screen_did_not_show_are_logged_and_viewable() {
    let w = World::new(9, "5m");
    let v = w.vendor("eve", &[]);
    w.grant("eve", "site-a", "maint");
    let t = Duration::from_secs(10);
    let settle = || std::thread::sleep(Duration::from_millis(400));

    let mut sh = w.shell(&v, "eve:site-a/dev");
    sh.expect("access until", Duration::from_secs(15));
    wait_prompt(&sh);
    // Echo off at the shell: the command and its line end never appear on the screen.
    sh.send("stty -echo\r");
    settle();
    sh.send("echo hidden-$((6*7))\r");
    sh.expect("hidden-42", t);
    settle();
    sh.send("stty echo\r");
    settle();
    // One burst each: a backspace, then a line killed with Ctrl-U and replaced.
    sh.send("echo burstx\x7f-ok-$((1+1))\r");
    sh.expect("burst-ok-2", t);
    settle();
    sh.send("echo never-run\x15echo killed-$((2+3))\r");
    sh.expect("killed-5", t);
    settle();
    // Two lines in one burst (a paste).
    sh.send("echo ahead-$((1+1))\recho ahead-$((2+1))\r");
    sh.expect("ahead-3", t);
    settle();
    // A password prompt: what is typed there is withheld from the log.
    sh.send("read -s -p 'Password: ' PW; echo len-${#PW}\r");
    sh.expect("Password: ", t);
    settle();
    sh.send("s3cret-pw-77\r");
    sh.expect("len-12", t);
    settle();
    sh.send("exit\r");
    sh.wait_exit(t);
    w.wait_sealed(1);

    // Without a terminal: `ssh -T host bash` and `ssh -T host`, commands on stdin.
    let piped = |command: Option<&str>, stdin: &str| {
        let mut cmd = w.client("ssh", &v, &v.next_code());
        cmd.arg("-T").arg("eve:site-a/dev@127.0.0.1");
        cmd.args(command);
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        let o = child.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let out = piped(Some("bash"), "echo notty-$((3*3))\nid -u >/dev/null\n");
    assert!(out.contains("notty-9"), "{out}");
    w.wait_sealed(2);
    let out = piped(None, "echo plain-$((4*4))\n");
    assert!(out.contains("plain-16"), "{out}");
    w.wait_sealed(3);

    let rows: Vec<Value> =
        serde_json::from_str(&w.ok(&["commands", "--vendor", "eve", "--json"])).unwrap();
    let got: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| (r["kind"].as_str().unwrap(), r["command"].as_str().unwrap()))
        .collect();
    let has = |kinds: &[&str], command: &str| {
        assert!(
            got.iter().any(|(k, c)| kinds.contains(k) && *c == command),
            "{command:?} as {kinds:?} not in the log:\n{got:#?}\nterminal:\n{}",
            sh.screen()
        )
    };
    has(&["shell"], "stty -echo");
    has(&["input"], "echo hidden-$((6*7))");
    has(&["input"], "stty echo");
    // A burst is echoed after the fact: shown as the shell drew it or rebuilt from the keys.
    has(&["shell", "input"], "echo burst-ok-$((1+1))");
    has(&["shell", "input"], "echo killed-$((2+3))");
    has(&["shell", "input"], "echo ahead-$((1+1))");
    has(&["shell", "input"], "echo ahead-$((2+1))");
    has(
        &["secret"],
        "(typed at \"Password:\": withheld here, kept in the recording)",
    );
    has(&["exec"], "bash");
    has(&["input"], "echo notty-$((3*3))");
    has(&["input"], "id -u >/dev/null");
    has(&["input"], "echo plain-$((4*4))");
    assert!(
        !got.iter().any(|(_, c)| c.contains("never-run")),
        "{got:#?}"
    );
    let all = w.ok(&["commands", "--vendor", "eve"]);
    assert!(
        !all.contains("s3cret-pw"),
        "the password must not be logged:\n{all}"
    );
    assert!(all.contains(" input "), "{all}");

    // Each logged line keeps its offset: replay jumps to it and the echo-off command's output
    // is on the screen there.
    let hidden = rows
        .iter()
        .find(|r| r["command"] == "echo hidden-$((6*7))")
        .unwrap();
    let session = hidden["session"].as_str().unwrap();
    let at = format!(
        "{:.3}",
        hidden["offset_ms"].as_i64().unwrap() as f64 / 1000.0
    );
    let replay = w.ok(&["replay", session, "--at", &at, "--speed", "100"]);
    assert!(replay.contains("hidden-42"), "{replay}");
    assert!(!replay.contains("keys: "), "no input view unless asked");

    // The input view in the terminal: every key, escaped, echoed or not, the password included.
    let replay = w.ok(&["replay", session, "--input", "--speed", "100"]);
    for keys in [
        "keys: echo hidden-$((6*7))\\r",
        "keys: echo burstx\\x7f-ok-$((1+1))\\r",
        "keys: s3cret-pw-77\\r",
    ] {
        assert!(replay.contains(keys), "{keys:?} not in:\n{replay}");
    }
    assert!(!replay.contains("\x7f"), "keys are escaped");

    // asciicast with "i" events, still accepted by asciinema.
    let cast = w.dir.path().join("input.cast");
    let text = w.ok(&["export", session, "--input"]);
    std::fs::write(&cast, &text).unwrap();
    let inputs: Vec<String> = text
        .lines()
        .skip(1)
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|e| e[1] == "i")
        .map(|e| e[2].as_str().unwrap().to_owned())
        .collect();
    assert!(
        inputs.concat().contains("echo hidden-$((6*7))\r"),
        "{inputs:?}"
    );
    let plain = w.ok(&["export", session]);
    assert!(!plain.contains(r#","i","#), "input only when asked");
    assert!(harness::asciinema_cat(&cast).contains("hidden-42"));

    // The web page: the keystroke list with replay links, and the player's keystroke toggle.
    let olga = w.approver("olga", &["--sites", "site-a"]);
    let web = w.web();
    assert_eq!(web.login(&olga).status, 303);
    let page = web.get(&format!("/sessions/{session}"));
    assert_eq!(page.status, 200);
    for needle in [
        r#"id="showkeys""#,
        r#"id="keylines""#,
        "<code>echo hidden-$((6*7))\\r</code>",
        "<code>s3cret-pw-77\\r</code>",
        r#"<span class="kind">input</span> <code>echo hidden-$((6*7))</code>"#,
    ] {
        assert!(
            page.body.contains(needle),
            "{needle:?} not in:\n{}",
            page.body
        );
    }
    // An approver of another site sees neither the session nor its keys.
    let bob = w.approver("bob", &["--sites", "site-b"]);
    let bob_web = w.web();
    assert_eq!(bob_web.login(&bob).status, 303);
    assert_eq!(bob_web.get(&format!("/sessions/{session}")).status, 404);
}
