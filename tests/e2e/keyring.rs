//! Seal keys are trusted only through a keyring signed by an operator root key kept off the
//! broker: `serve` refuses an uncertified, expired or revoked key; an auditor's own copy of the
//! root public key decides which seals count; rotation links old and new keys in a record both
//! sign; `seal-key` exports the whole history.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::harness::{World, postern_bin, run, unix_now};
use recorder::keyring::{Entry, KeyId, Keyring, KeyringError, RootKey, RootPublicKey};

fn postern(data: &Path, args: &[&str]) -> Output {
    run(Command::new(postern_bin())
        .args(args)
        .arg("--data")
        .arg(data))
}

fn ok(data: &Path, args: &[&str]) -> String {
    let o = postern(data, args);
    assert!(
        o.status.success(),
        "postern {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Starts `serve`: `Ok(())` once it listens (then stops it), `Err(stderr)` if it exits first.
fn serve(data: &Path) -> Result<(), String> {
    let mut child = Command::new(postern_bin())
        .args([
            "serve",
            "--ssh",
            "127.0.0.1:0",
            "--web",
            "off",
            "--edge",
            "off",
            "--data",
        ])
        .arg(data)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.starts_with("postern: listening for vendors on ") {
                let _ = tx.send(());
            }
        }
    });
    let listening = rx.recv_timeout(Duration::from_secs(30)).is_ok();
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    if listening {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn refused(data: &Path, needles: &[&str]) {
    let err = serve(data).expect_err("serve must refuse");
    assert_eq!(
        err.trim().lines().count(),
        1,
        "one clear line, not a trace: {err}"
    );
    for n in needles {
        assert!(err.contains(n), "expected '{n}' in: {err}");
    }
}

fn current_key_id(data: &Path) -> String {
    let key = recorder::SealPublicKey::parse(&ok(data, &["seal-key", "--current"])).unwrap();
    KeyId::of(&key).0
}

#[test]
fn serve_refuses_a_seal_key_the_pinned_root_has_not_certified_for_now() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    ok(&data, &["init"]);
    refused(&data, &["uncertified", "postern keys certify --root"]);

    // The root key may not be made inside the data directory.
    let inside = data.join("root.key");
    let o = postern(
        &data,
        &["keys", "root", "init", "--out", inside.to_str().unwrap()],
    );
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("inside a Postern data directory"));
    assert!(!inside.exists());

    let root = dir.path().join("root.key");
    let out = ok(
        &data,
        &["keys", "root", "init", "--out", root.to_str().unwrap()],
    );
    let public =
        RootPublicKey::parse(&std::fs::read_to_string(dir.path().join("root.key.pub")).unwrap())
            .unwrap();
    assert!(out.contains(&public.fingerprint()), "{out}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&root).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    // A root public key alone pinned, nothing certified yet: still refused.
    ok(
        &data,
        &[
            "keys",
            "pin",
            dir.path().join("root.key.pub").to_str().unwrap(),
        ],
    );
    refused(
        &data,
        &["is not certified by the root", &public.fingerprint()],
    );

    let certified = ok(
        &data,
        &["keys", "certify", "--root", root.to_str().unwrap()],
    );
    assert!(certified.contains(&current_key_id(&data)), "{certified}");
    serve(&data).expect("serve with a certified key");

    // A deleted seal key is replaced by a new one, but nothing vouches for it.
    std::fs::remove_file(data.join("keys/seal_ed25519")).unwrap();
    refused(&data, &["is not certified"]);
    // Another root cannot certify on this node: it pins the first.
    let rogue = dir.path().join("rogue.key");
    ok(
        &data,
        &["keys", "root", "init", "--out", rogue.to_str().unwrap()],
    );
    let o = postern(
        &data,
        &["keys", "certify", "--root", rogue.to_str().unwrap()],
    );
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("pins another root key"));
    refused(&data, &["is not certified"]);
    ok(
        &data,
        &["keys", "certify", "--root", root.to_str().unwrap()],
    );
    serve(&data).expect("serve once the new key is certified");

    // Revoked: refused, and told to rotate; a rotation gives a certified key again.
    let id = current_key_id(&data);
    ok(
        &data,
        &["keys", "revoke", &id, "--root", root.to_str().unwrap()],
    );
    refused(&data, &["was revoked", "postern keys rotate"]);
    ok(&data, &["keys", "rotate", "--root", root.to_str().unwrap()]);
    assert_ne!(current_key_id(&data), id);
    serve(&data).expect("serve after rotation");

    // Expired: a certificate that has ended does not count.
    let d2 = dir.path().join("d2");
    ok(&d2, &["init"]);
    ok(
        &d2,
        &[
            "keys",
            "certify",
            "--root",
            root.to_str().unwrap(),
            "--from",
            "-2d",
            "--valid-for",
            "1d",
        ],
    );
    refused(&d2, &["certificate of seal key", "ended at"]);

    // The keyring tampered with (a line edited): the broker will not start on it.
    let ring_path = data.join("keys/keyring");
    let text = std::fs::read_to_string(&ring_path).unwrap();
    std::fs::write(
        &ring_path,
        text.replacen("\"not_after\":", "\"not_after\":1", 1),
    )
    .unwrap();
    refused(&data, &["does not check against the pinned root"]);
}

fn recording(w: &World, id: &str) -> std::path::PathBuf {
    let s = w.sessions().into_iter().find(|s| s["id"] == id).unwrap();
    w.data
        .join("recordings")
        .join(s["recording"].as_str().unwrap())
}

/// `postern verify --file` by a third party holding the keyring and their own root public key.
fn third_party(w: &World, root: &Path, file: &Path, ring: &Path) -> (bool, String) {
    let o = run(Command::new(postern_bin())
        .args(["verify", "--file"])
        .arg(file)
        .arg("--keyring")
        .arg(ring)
        .arg("--root")
        .arg(root)
        .arg("--data")
        .arg(w.dir.path().join("nowhere")));
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

#[test]
fn the_auditors_root_decides_which_seals_count_through_rotation_and_revocation() {
    let mut w = World::new(9, "5m");
    // The harness made the root key beside the data directory; the auditor keeps a copy of its
    // public key, which is all they need.
    let root_key = w.dir.path().join("root.key");
    let auditor_root = w.dir.path().join("auditor-root.pub");
    std::fs::copy(w.dir.path().join("root.key.pub"), &auditor_root).unwrap();
    let root = RootPublicKey::parse(&std::fs::read_to_string(&auditor_root).unwrap()).unwrap();
    let ring_path = w.data.join("keys/keyring");

    let v = w.vendor("vera", &[]);
    w.grant("vera", "site-a", "maint");
    let o = w.ssh(&v, "vera:site-a/dev", &["echo first"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    w.wait_sealed(1);

    let first = w.sessions()[0]["id"].as_str().unwrap().to_owned();
    let first_rec = recording(&w, &first);
    let first_key = current_key_id(&w.data);

    let export = w.dir.path().join("exported-keyring");
    std::fs::write(&export, w.ok(&["seal-key"])).unwrap();
    let (good, out) = third_party(&w, &auditor_root, &first_rec, &export);
    assert!(good, "{out}");
    assert!(
        out.contains(&format!("by key {first_key}, certified by root")),
        "{out}"
    );

    // An insider certifies a key of their own with another root, pins that root on the host and
    // appends the certificate: the auditor's root rejects the keyring, trusting nothing.
    let pristine = std::fs::read_to_string(&ring_path).unwrap();
    let rogue_root = RootKey::from_seed(&[9; 32]);
    let rogue_seal = recorder::SealKey::from_seed(&[8; 32]).public();
    let now = unix_now() as i64;
    Keyring::append(
        &ring_path,
        &[Entry::Certify(rogue_root.certify(
            &rogue_seal,
            "node",
            now - 3600,
            now + 3600,
            now,
        ))],
    )
    .unwrap();
    std::fs::write(
        w.data.join("keys/root.pub"),
        rogue_root.public().export() + "\n",
    )
    .unwrap();
    let ring = Keyring::load(&ring_path).unwrap();
    assert!(matches!(
        ring.trusted(&root, now),
        Err(KeyringError::NotRootSigned { .. })
    ));
    // Against the rogue root, only the rogue key; never the auditor's concern.
    assert!(ring.trusted(&rogue_root.public(), now).is_err());
    let (good, out) = third_party(&w, &auditor_root, &first_rec, &ring_path);
    assert!(!good, "a keyring with a rogue certificate must fail: {out}");
    assert!(out.contains("not signed by the pinned root key"), "{out}");
    // The whole keyring replaced by the rogue's: the genuine key is not trusted either.
    std::fs::write(
        &ring_path,
        Entry::Certify(rogue_root.certify(&rogue_seal, "node", now - 3600, now + 3600, now)).line()
            + "\n",
    )
    .unwrap();
    assert!(
        Keyring::load(&ring_path)
            .unwrap()
            .trusted(&root, now)
            .is_err()
    );
    std::fs::write(&ring_path, &pristine).unwrap();
    std::fs::copy(&auditor_root, w.data.join("keys/root.pub")).unwrap();
    let trusted = Keyring::load(&ring_path)
        .unwrap()
        .trusted(&root, now)
        .unwrap();
    assert_eq!(
        trusted
            .iter()
            .map(|(_, id)| id.0.clone())
            .collect::<Vec<_>>(),
        vec![first_key.clone()]
    );

    // Rotation: a new key, certified; a transition both keys signed, in the keyring and the
    // audit log; the old key's certificate ends after the overlap.
    let rotated = w.ok(&[
        "keys",
        "rotate",
        "--root",
        root_key.to_str().unwrap(),
        "--overlap",
        "2s",
    ]);
    let second_key = current_key_id(&w.data);
    assert_ne!(second_key, first_key);
    assert!(rotated.contains(&second_key), "{rotated}");
    let ring = Keyring::load(&ring_path).unwrap();
    ring.check(&root).unwrap();
    let transition = ring
        .entries()
        .find_map(|e| match e {
            Entry::Transition(t) => Some(t.clone()),
            _ => None,
        })
        .expect("a transition record");
    assert_eq!(
        (transition.from.0.as_str(), transition.to.0.as_str()),
        (first_key.as_str(), second_key.as_str())
    );
    // Both signatures are checked: a transition with either one swapped does not hold.
    for broken in [
        Entry::Transition(recorder::keyring::Transition {
            signature_from: transition.signature_to.clone(),
            ..transition.clone()
        }),
        Entry::Transition(recorder::keyring::Transition {
            signature_to: transition.signature_from.clone(),
            ..transition.clone()
        }),
    ] {
        let text = std::fs::read_to_string(&ring_path).unwrap() + &broken.line() + "\n";
        assert!(matches!(
            Keyring::parse(&text).unwrap().check(&root),
            Err(KeyringError::BadTransition { .. })
        ));
    }
    let audited = w.wait_audit("keys.rotate", |e| e["event"] == "keys.rotate");
    assert_eq!(audited["from"], first_key.as_str());
    assert_eq!(audited["to"], second_key.as_str());
    assert!(
        audited["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "transition"
                && e["signature_from"].is_string()
                && e["signature_to"].is_string()),
        "{audited}"
    );

    // The broker restarted seals with the new key; both sessions verify through the keyring.
    w.kill_broker();
    w.start_broker();
    let o = w.ssh(&v, "vera:site-a/dev", &["echo second"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    w.wait_sealed(2);
    let second = w
        .sessions()
        .into_iter()
        .map(|s| s["id"].as_str().unwrap().to_owned())
        .find(|id| *id != first)
        .unwrap();
    let second_rec = recording(&w, &second);
    std::fs::write(&export, w.ok(&["seal-key"])).unwrap();
    for (file, key) in [(&first_rec, &first_key), (&second_rec, &second_key)] {
        let (good, out) = third_party(&w, &auditor_root, file, &export);
        assert!(good, "{out}");
        assert!(out.contains(&format!("by key {key}")), "{out}");
    }

    // `seal-key` exports the history: both keys, the hand-over, the current one.
    let listing = w.ok(&["seal-key"]);
    assert!(
        listing
            .lines()
            .any(|l| l.starts_with(&format!("# {first_key} "))
                && l.contains(&format!("replaced by {second_key}"))
                && l.contains("revoked from")),
        "{listing}"
    );
    assert!(
        listing
            .lines()
            .any(|l| l.starts_with(&format!("# {second_key} "))
                && l.contains(&format!("replaced {first_key}"))
                && l.contains("sealing now")),
        "{listing}"
    );
    let json: serde_json::Value = serde_json::from_str(&w.ok(&["seal-key", "--json"])).unwrap();
    assert_eq!(json["keys"].as_array().unwrap().len(), 2, "{json}");

    // The old key is trusted for what it sealed before its end, not after.
    std::thread::sleep(Duration::from_secs(3));
    let ring = Keyring::load(&ring_path).unwrap();
    let ids_at = |t: i64| -> Vec<String> {
        ring.trusted(&root, t)
            .unwrap()
            .into_iter()
            .map(|(_, id)| id.0)
            .collect()
    };
    // (At `now` the new key may also be trusted: it was certified within the same second.)
    assert!(ids_at(now).contains(&first_key));
    assert_eq!(ids_at(unix_now() as i64), vec![second_key.clone()]);

    // Revoking the new key from before its session was sealed: that seal no longer counts, the
    // older one still does, and the broker will not start on the revoked key.
    w.ok(&[
        "keys",
        "revoke",
        &second_key,
        "--root",
        root_key.to_str().unwrap(),
        "--at",
        "-1h",
    ]);
    std::fs::write(&export, w.ok(&["seal-key"])).unwrap();
    let (good, out) = third_party(&w, &auditor_root, &second_rec, &export);
    assert!(!good, "a seal by a revoked key must fail: {out}");
    assert!(
        out.contains(&format!("with key {second_key}, revoked from")),
        "{out}"
    );
    let (good, out) = third_party(&w, &auditor_root, &first_rec, &export);
    assert!(good, "{out}");
    w.kill_broker();
    refused(&w.data, &["was revoked"]);
}
