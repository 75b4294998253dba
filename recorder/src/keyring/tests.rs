use super::*;

const DAY: i64 = 86_400;

fn root(n: u8) -> RootKey {
    RootKey::from_seed(&[n; 32])
}

fn seal(n: u8) -> (SealKey, [u8; 32]) {
    (SealKey::from_seed(&[n; 32]), [n; 32])
}

#[test]
fn root_keys_round_trip_and_do_not_confuse_public_and_secret() {
    let r = root(1);
    let again = RootKey::parse_secret(&r.export_secret()).unwrap();
    assert_eq!(again.public(), r.public());
    assert_eq!(
        RootPublicKey::parse(&r.public().export()).unwrap(),
        r.public()
    );
    assert!(RootPublicKey::parse(&r.export_secret()).is_err());
    assert!(RootKey::parse_secret(&r.public().export()).is_err());
    assert!(r.public().fingerprint().starts_with("SHA256:"));
    assert_ne!(r.public().fingerprint(), root(2).public().fingerprint());
}

#[test]
fn certified_key_is_trusted_inside_its_window_only() {
    let r = root(1);
    let (s, _) = seal(7);
    let c = r.certify(&s.public(), "node-1", 100, 100 + DAY, 100);
    let ring = Keyring::parse(&Entry::Certify(c).line()).unwrap();
    let id = KeyId::of(&s.public());
    assert_eq!(
        ring.trusted(&r.public(), 100).unwrap(),
        vec![(s.public(), id.clone())]
    );
    assert!(ring.trusted(&r.public(), 99).unwrap().is_empty());
    assert!(ring.trusted(&r.public(), 100 + DAY).unwrap().is_empty());
    assert_eq!(
        ring.status(&r.public(), &s.public(), 50).unwrap(),
        KeyStatus::NotYetValid {
            key_id: id.clone(),
            from: 100
        }
    );
    assert_eq!(
        ring.status(&r.public(), &s.public(), 100 + DAY).unwrap(),
        KeyStatus::Expired {
            key_id: id,
            at: 100 + DAY
        }
    );
    let (other, _) = seal(8);
    assert!(matches!(
        ring.status(&r.public(), &other.public(), 200).unwrap(),
        KeyStatus::NotCertified(_)
    ));
}

#[test]
fn another_roots_certificate_fails_the_whole_keyring() {
    let r = root(1);
    let rogue = root(2);
    let (s, _) = seal(7);
    let (forger, _) = seal(9);
    let text = format!(
        "{}\n{}\n",
        Entry::Certify(r.certify(&s.public(), "n", 0, DAY, 0)).line(),
        Entry::Certify(rogue.certify(&forger.public(), "n", 0, DAY, 0)).line()
    );
    let ring = Keyring::parse(&text).unwrap();
    let err = ring.trusted(&r.public(), 10).unwrap_err();
    assert!(
        matches!(err, KeyringError::NotRootSigned { line: 2, .. }),
        "{err}"
    );
    // Checked against the rogue root instead, it is the first line that fails.
    assert!(matches!(
        ring.check(&rogue.public()),
        Err(KeyringError::NotRootSigned { line: 1, .. })
    ));
}

#[test]
fn any_edit_to_a_signed_entry_breaks_it() {
    let r = root(1);
    let (s, _) = seal(7);
    let (other, _) = seal(8);
    let c = r.certify(&s.public(), "n", 0, DAY, 0);
    let mut widened = c.clone();
    widened.not_after = 100 * DAY;
    let mut renamed = c.clone();
    renamed.node = "elsewhere".into();
    let mut swapped = c.clone();
    swapped.key = other.public().export();
    swapped.key_id = KeyId::of(&other.public());
    for bad in [widened, renamed, swapped] {
        let ring = Keyring::parse(&Entry::Certify(bad).line()).unwrap();
        assert!(ring.check(&r.public()).is_err());
    }
    let rv = r.revoke(&KeyId::of(&s.public()), 10, 10, "lost");
    let mut lifted = rv.clone();
    lifted.not_after = 20 * DAY;
    let text = format!(
        "{}\n{}\n",
        Entry::Certify(c).line(),
        Entry::Revoke(lifted).line()
    );
    assert!(Keyring::parse(&text).unwrap().check(&r.public()).is_err());
}

#[test]
fn revocation_ends_trust_from_its_not_after_and_cannot_be_postponed() {
    let r = root(1);
    let (s, _) = seal(7);
    let id = KeyId::of(&s.public());
    let text = [
        Entry::Certify(r.certify(&s.public(), "n", 0, 10 * DAY, 0)),
        Entry::Revoke(r.revoke(&id, 5 * DAY, 5 * DAY, "compromised")),
        Entry::Revoke(r.revoke(&id, 8 * DAY, 6 * DAY, "later")),
    ]
    .iter()
    .map(|e| e.line() + "\n")
    .collect::<String>();
    let ring = Keyring::parse(&text).unwrap();
    assert_eq!(ring.trusted(&r.public(), 5 * DAY - 1).unwrap().len(), 1);
    assert!(ring.trusted(&r.public(), 5 * DAY).unwrap().is_empty());
    assert!(ring.trusted(&r.public(), 7 * DAY).unwrap().is_empty());
    assert_eq!(
        ring.status(&r.public(), &s.public(), 6 * DAY).unwrap(),
        KeyStatus::Revoked {
            key_id: id,
            at: 5 * DAY
        }
    );
}

#[test]
fn transitions_need_both_signatures_and_certified_keys() {
    let r = root(1);
    let (old, old_seed) = seal(7);
    let (new, new_seed) = seal(8);
    let t = Transition::sign("n", &old_seed, &new_seed, 50);
    let certs = format!(
        "{}\n{}\n",
        Entry::Certify(r.certify(&old.public(), "n", 0, DAY, 0)).line(),
        Entry::Certify(r.certify(&new.public(), "n", 50, DAY, 50)).line()
    );
    let ring = Keyring::parse(&(certs.clone() + &Entry::Transition(t.clone()).line())).unwrap();
    ring.check(&r.public()).unwrap();
    let h = ring.history(&r.public()).unwrap();
    assert_eq!(h.len(), 2);
    assert_eq!(h[0].replaced_by, Some((KeyId::of(&new.public()), 50)));
    assert_eq!(h[1].replaces, Some((KeyId::of(&old.public()), 50)));

    // Signed by a third key in place of the incoming one.
    let (_, stranger_seed) = seal(9);
    let forged = Transition::sign("n", &old_seed, &stranger_seed, 50);
    let mut spliced = t.clone();
    spliced.signature_to = forged.signature_to;
    let ring = Keyring::parse(&(certs.clone() + &Entry::Transition(spliced).line())).unwrap();
    assert!(matches!(
        ring.check(&r.public()),
        Err(KeyringError::BadTransition {
            which: "the incoming key",
            ..
        })
    ));
    // Linking to a key the root never certified.
    let stray = Transition::sign("n", &old_seed, &stranger_seed, 50);
    let ring = Keyring::parse(&(certs + &Entry::Transition(stray).line())).unwrap();
    assert!(matches!(
        ring.check(&r.public()),
        Err(KeyringError::TransitionUncertified { .. })
    ));
}

#[test]
fn keyring_file_round_trips_and_reports_bad_lines() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keyring");
    assert_eq!(Keyring::load(&path).unwrap(), Keyring::default());
    let r = root(1);
    let (s, _) = seal(7);
    let e = Entry::Certify(r.certify(&s.public(), "n", 0, DAY, 0));
    Keyring::append(&path, std::slice::from_ref(&e)).unwrap();
    let ring = Keyring::load(&path).unwrap();
    assert_eq!(ring.entries().collect::<Vec<_>>(), vec![&e]);
    std::fs::write(&path, format!("# comment\n\n{}\nnot json\n", e.line())).unwrap();
    assert!(matches!(
        Keyring::load(&path),
        Err(KeyringError::Malformed { line: 4, .. })
    ));
}
