//! The command log from recorded sessions: terminals, input without one, stated entries.

use super::*;
use crate::format::HASH_LEN;

fn rec(seq: u64, kind: Kind, payload: &[u8]) -> Record {
    Record {
        seq,
        time_us: seq as i64 * 1000,
        kind,
        channel: 0,
        payload: payload.to_vec(),
        hash: [0; HASH_LEN],
    }
}

/// A shell session as (input?, bytes) steps, the way readline echoes.
fn session(steps: &[(bool, &str)]) -> Vec<CommandEntry> {
    let mut recs = vec![
        rec(0, Kind::Resize, br#"{"cols":80,"rows":24,"term":"xterm"}"#),
        rec(1, Kind::Event, br#"{"event":"shell"}"#),
    ];
    for (i, (input, bytes)) in steps.iter().enumerate() {
        recs.push(rec(
            i as u64 + 2,
            if *input { Kind::Input } else { Kind::Output },
            bytes.as_bytes(),
        ));
    }
    extract_commands(recs.into_iter().map(Ok)).0
}

#[test]
fn backspace_and_cursor_moves_give_the_final_line() {
    let log = session(&[
        (false, "dev:~$ "),
        (true, "ls -x"),
        (false, "ls -x"),
        (true, "\x7f"),
        (false, "\x08\x1b[K"),
        (true, "l"),
        (false, "l"),
        (true, "\x1b[D\x1b[D\x1b[D"),
        (false, "\x08\x08\x08"),
        (true, "a"),
        (false, "\x1b[1@a"),
        (true, "\r"),
        (false, "\r\nfile1\r\ndev:~$ "),
    ]);
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].command, "lsa -l");
    assert_eq!(log[0].kind, "shell");
}

fn kinds(log: &[CommandEntry]) -> Vec<(&str, &str)> {
    log.iter().map(|e| (e.kind, e.command.as_str())).collect()
}

#[test]
fn a_password_at_a_no_echo_prompt_is_withheld() {
    let log = session(&[
        (false, "Password: "),
        (true, "hunter2\r"),
        (false, "\r\n"),
        (false, "dev:~$ "),
        (true, "id\r"),
        (false, "id\r\nuid=0\r\n"),
    ]);
    assert_eq!(
        kinds(&log),
        vec![
            (
                "secret",
                "(typed at \"Password:\": withheld here, kept in the recording)"
            ),
            ("shell", "id")
        ]
    );
}

#[test]
fn output_after_a_no_echo_prompt_is_not_a_command() {
    // `read -s` hides the typed secret and the line end; the next output lands on that line.
    let log = session(&[
        (false, "password: "),
        (true, "hunter2\r"),
        (false, "got-7\r\n$ "),
    ]);
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].kind, "secret");
    assert!(!log[0].command.contains("hunter2"));
}

#[test]
fn echo_off_at_a_shell_is_logged_as_input() {
    let log = session(&[
        (false, "dev:~$ "),
        (true, "stty -echo\r"),
        (false, "stty -echo\r\ndev:~$ "),
        (true, "cat /etc/shad"),
        (true, "ow\r"),
        (false, "root:x:0\r\ndev:~$ "),
        (true, "ls -x\x7fl\r"),
        (false, "\r\nfile1\r\ndev:~$ "),
    ]);
    assert_eq!(
        kinds(&log),
        vec![
            ("shell", "stty -echo"),
            ("input", "cat /etc/shadow"),
            ("input", "ls -l")
        ]
    );
}

#[test]
fn a_burst_with_editing_keys_is_reconstructed() {
    // The whole line, edits and Enter arrive in one packet; readline echoes it afterwards.
    let log = session(&[
        (false, "$ "),
        (true, "ls -x\x7fl\r"),
        (false, "ls -x\x08\x1b[Kl\r\nfile1\r\n$ "),
        (true, "rm -rf /tmp/x\x15id -u\r"),
        (
            false,
            "rm -rf /tmp/x\x08\x08\x08\x08\x08\x08\x08\x08\x08\x08\x08\x08\x08\x1b[Kid -u\r\n0\r\n$ ",
        ),
    ]);
    assert_eq!(kinds(&log), vec![("shell", "ls -l"), ("shell", "id -u")]);
    // Bash redraws a killed line from the start of the row: a carriage return is no line end.
    let log = session(&[
        (false, "root@vm:~# "),
        (true, "echo never-run\x15echo killed\r"),
        (
            false,
            "echo never-run\rroot@vm:~# \x1b[Kecho killed\r\n\x1b[?2004l\rkilled\r\n",
        ),
    ]);
    assert_eq!(kinds(&log), vec![("shell", "echo killed")]);
    // The same with echo off: rebuilt from the keys.
    let log = session(&[
        (false, "$ "),
        (true, "cat /etc/shadow\x17passwd\x1b[D\x1b[D\x1b[3~\r"),
        (false, "root:x:0\r\n$ "),
    ]);
    assert_eq!(kinds(&log), vec![("input", "cat passd")]);
}

#[test]
fn keys_that_cannot_be_replayed_are_logged_raw() {
    let log = session(&[
        (false, "$ "),
        (true, "\x1b[A\r"),
        (false, "uid=0\r\n$ "),
        (true, "cat /etc/pas\t\r"),
        (false, "ls -la\r\ntotal 0\r\n$ "),
    ]);
    assert_eq!(
        kinds(&log),
        vec![
            ("unreconstructed", "\\e[A (line shown: uid=0)"),
            ("unreconstructed", "cat /etc/pas\\t (line shown: ls -la)")
        ]
    );
}

#[test]
fn lines_typed_ahead_are_each_logged() {
    let log = session(&[
        (false, "$ "),
        (true, "echo one\recho two\x0fsudo id\rhunter2\r"),
        (
            false,
            "echo one\r\none\r\n$ echo two\r\ntwo\r\n$ sudo id\r\n",
        ),
        (false, "[sudo] password for ed: \r\nuid=0\r\n$ "),
    ]);
    assert_eq!(
        kinds(&log),
        vec![
            ("shell", "echo one"),
            ("shell", "echo two"),
            ("shell", "sudo id"),
            (
                "secret",
                "(typed at \"[sudo] password for ed:\": withheld here, kept in the recording)"
            )
        ]
    );
    // With echo off nothing shows them: they come from the keys.
    let log = session(&[
        (false, "$ "),
        (true, "stty -echo\r"),
        (false, "stty -echo\r\n$ "),
        (true, "echo one\recho two\r"),
        (false, "one\r\n$ two\r\n$ "),
    ]);
    assert_eq!(
        kinds(&log),
        vec![
            ("shell", "stty -echo"),
            ("input", "echo one"),
            ("input", "echo two")
        ]
    );
}

fn chan(seq: u64, kind: Kind, channel: u32, payload: &[u8]) -> Record {
    Record {
        channel,
        ..rec(seq, kind, payload)
    }
}

#[test]
fn input_without_a_terminal_is_logged_line_by_line() {
    let log = extract_commands(
        vec![
            // `ssh -T host` (a shell without a pty) and `ssh -T host bash` (an exec).
            chan(0, Kind::Event, 1, br#"{"event":"shell"}"#),
            chan(1, Kind::Input, 1, b"id\nuname"),
            chan(2, Kind::Input, 1, b" -a\r\n\n\tprintf '\\e'\n"),
            chan(3, Kind::Exec, 2, br#"{"command":"bash","transfer":false}"#),
            chan(4, Kind::Input, 2, b"echo last-without-newline"),
            chan(5, Kind::ChannelClose, 1, br#"{"bytes_in":1}"#),
            // scp's stdin is file data, not lines.
            chan(
                6,
                Kind::Exec,
                3,
                br#"{"command":"scp -t /tmp","transfer":true}"#,
            ),
            chan(7, Kind::Input, 3, b"C0644 3 x\n"),
        ]
        .into_iter()
        .map(Ok),
    )
    .0;
    assert_eq!(
        kinds(&log),
        vec![
            ("input", "id"),
            ("input", "uname -a"),
            ("input", "\\tprintf '\\e'"),
            ("exec", "bash"),
            ("input", "echo last-without-newline"),
            ("exec", "scp -t /tmp"),
        ]
    );
    assert_eq!(log[1].time_us, 2000);
    assert!((log[1].offset - 0.002).abs() < 1e-9, "{:?}", log[1]);
}

#[test]
fn a_password_asked_for_without_a_terminal_is_withheld() {
    let log = extract_commands(
        vec![
            chan(
                0,
                Kind::Exec,
                1,
                br#"{"command":"sudo -S id","transfer":false}"#,
            ),
            chan(1, Kind::Stderr, 1, b"[sudo] password for ed: "),
            chan(2, Kind::Input, 1, b"hunter2\n"),
            chan(3, Kind::Output, 1, b"uid=0(root)\n"),
            chan(4, Kind::Input, 1, b"more\n"),
        ]
        .into_iter()
        .map(Ok),
    )
    .0;
    assert_eq!(
        kinds(&log),
        vec![
            ("exec", "sudo -S id"),
            (
                "secret",
                "(typed at \"[sudo] password for ed:\": withheld here, kept in the recording)"
            ),
            ("input", "more")
        ]
    );
}

#[test]
fn an_exec_with_a_pty_is_a_terminal() {
    let log = extract_commands(
        vec![
            rec(0, Kind::Resize, br#"{"cols":80,"rows":24,"term":"xterm"}"#),
            rec(1, Kind::Exec, br#"{"command":"bash","transfer":false}"#),
            rec(2, Kind::Output, b"$ "),
            rec(3, Kind::Input, b"id\r"),
            rec(4, Kind::Output, b"id\r\nuid=0\r\n$ "),
        ]
        .into_iter()
        .map(Ok),
    )
    .0;
    assert_eq!(kinds(&log), vec![("exec", "bash"), ("shell", "id")]);
}

#[test]
fn floods_of_input_are_summarised_not_dropped() {
    let mut recs = vec![rec(0, Kind::Event, br#"{"event":"shell"}"#)];
    let blob: Vec<u8> = (0..MAX_RAW_LINES + 5)
        .flat_map(|i| format!("line {i}\n").into_bytes())
        .collect();
    recs.push(rec(1, Kind::Input, &blob));
    recs.push(chan(2, Kind::Event, 5, br#"{"event":"shell"}"#));
    let long = vec![b'x'; MAX_LINE + 10];
    recs.push(chan(3, Kind::Input, 5, &long));
    let log = extract_commands(recs.into_iter().map(Ok)).0;
    assert_eq!(log.len(), MAX_RAW_LINES + 2);
    assert!(
        log.iter()
            .any(|e| e.command.ends_with("x ... (10 more bytes)"))
    );
    assert!(
        log.iter()
            .any(|e| e.command.starts_with("(5 more input lines")),
        "{:?}",
        log.last()
    );
}

#[test]
fn lines_the_device_never_answers_are_logged_in_bounded_memory() {
    let burst: String = (0..MAX_WAITING + 50)
        .map(|i| format!("echo {i}\r"))
        .collect();
    let log = session(&[(false, "$ "), (true, &burst)]);
    assert_eq!(log.len(), MAX_WAITING + 50);
    assert_eq!(log[0].command, "echo 0");
    assert_eq!(
        log.last().unwrap().command,
        format!("echo {}", MAX_WAITING + 49)
    );
    assert!(log.iter().all(|e| e.kind == "input"));
}

#[test]
fn arbitrary_keys_and_output_never_panic() {
    // A small LCG: the same noise every run, biased towards control and escape bytes.
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (x >> 33) as u8
    };
    let mut recs = vec![
        chan(0, Kind::Resize, 1, br#"{"cols":5,"rows":2,"term":"xterm"}"#),
        chan(1, Kind::Event, 1, br#"{"event":"shell"}"#),
        chan(2, Kind::Event, 2, br#"{"event":"shell"}"#),
    ];
    let alphabet = b"\r\n\x1b[~ODCABH\x7f\x08\x15\x17\x03\x04\tab :$#";
    for i in 0..3000u64 {
        let len = usize::from(next() % 40);
        let bytes: Vec<u8> = (0..len)
            .map(|_| match next() % 4 {
                0 => next(),
                _ => alphabet[usize::from(next()) % alphabet.len()],
            })
            .collect();
        let kind = if next() % 2 == 0 {
            Kind::Input
        } else {
            Kind::Output
        };
        recs.push(chan(i + 3, kind, 1 + u32::from(next() % 2), &bytes));
        if next() % 200 == 0 {
            recs.push(chan(i + 3, Kind::Resize, 1, br#"{"cols":3,"rows":1}"#));
        }
    }
    let (log, _) = extract_commands(recs.into_iter().map(Ok));
    assert!(log.windows(2).all(|w| w[0].time_us <= w[1].time_us));
}

#[test]
fn echo_arriving_after_enter_is_waited_for() {
    let log = session(&[
        (false, "$ "),
        (true, "uptime\r"),
        (false, "upt"),
        (false, "ime\r\n 10:00 up\r\n$ "),
    ]);
    assert_eq!(log[0].command, "uptime");
}

#[test]
fn exec_lines_are_logged_exactly() {
    let log = extract_commands(vec![Ok(rec(
        0,
        Kind::Exec,
        br#"{"command":"cat /etc/os-release | head -1"}"#,
    ))])
    .0;
    assert_eq!(
        (log[0].kind, log[0].command.as_str()),
        ("exec", "cat /etc/os-release | head -1")
    );
}

#[test]
fn transfers_and_forwards_are_logged_as_stated() {
    let log = extract_commands(
        vec![
            chan(
                0,
                Kind::Event,
                1,
                br#"{"event":"transfer","direction":"upload","path":"/tmp/x\u001b","size":3,"sha256":null}"#,
            ),
            chan(
                1,
                Kind::Event,
                1,
                br#"{"event":"transfer","direction":"download","path":"a","size":0,"sha256":"e3b0"}"#,
            ),
            chan(
                2,
                Kind::ChannelClose,
                4,
                br#"{"type":"direct-tcpip","port":443,"bytes_to_device":5,"bytes_to_vendor":6,"opened":"t0","closed":"t1"}"#,
            ),
            chan(3, Kind::ChannelClose, 1, br#"{"bytes_in":1,"bytes_out":2}"#),
        ]
        .into_iter()
        .map(Ok),
    )
    .0;
    assert_eq!(
        kinds(&log),
        vec![
            ("upload", "/tmp/x\\e (3 bytes, sha256 unknown)"),
            ("download", "a (0 bytes, sha256 e3b0)"),
            (
                "forward",
                "localhost:443 (5 bytes to the device, 6 to the vendor, t0 to t1)"
            ),
        ]
    );
    assert_eq!(log[2].channel, 4);
}
