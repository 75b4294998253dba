//! The chain detects every kind of damage at the exact record, and never panics on garbage.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use recorder::{
    Kind, ReadError, Reader, Tail, Writer, append_locked, export_asciicast, last_record,
    terminal_events, verify_file,
};

fn sample(dir: &Path) -> PathBuf {
    let path = dir.join("s.rec");
    let mut w = Writer::create(&path, "session-1").unwrap();
    w.append_at(1_000_000, Kind::SessionStart, 0, br#"{"vendor":"alice"}"#)
        .unwrap();
    w.append_at(1_000_010, Kind::Resize, 0, br#"{"cols":100,"rows":30}"#)
        .unwrap();
    for i in 0..10u8 {
        w.append_at(
            1_100_000 + i as i64 * 100_000,
            Kind::Output,
            0,
            format!("line {i}\r\n").as_bytes(),
        )
        .unwrap();
    }
    w.append_at(3_000_000, Kind::SessionEnd, 0, br#"{"reason":"closed"}"#)
        .unwrap();
    let (n, _) = w.finish().unwrap();
    assert_eq!(n, 13);
    path
}

/// Byte offset of record `seq` in a file written by `sample` (walks the framing).
fn offset_of(path: &Path, seq: u64) -> usize {
    let bytes = fs::read(path).unwrap();
    let mut off = bytes.iter().position(|b| *b == b'\n').unwrap() + 1;
    for _ in 0..seq {
        let len = u32::from_be_bytes(bytes[off..off + 4].try_into().unwrap()) as usize;
        off += 4 + len + 32 + 4;
    }
    off
}

/// `rounds` damaged copies of `good`: flipped bytes, truncations and insertions, deterministic.
fn corruptions(good: &[u8], seed: u64, rounds: usize) -> impl Iterator<Item = Vec<u8>> + '_ {
    let mut x = seed;
    (0..rounds).map(move |round| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let mut bytes = good.to_vec();
        let at = (x as usize) % bytes.len();
        match round % 3 {
            0 => bytes[at] = (x >> 32) as u8,
            1 => bytes.truncate(at),
            _ => bytes
                .splice(at..at, (0..(x % 64) as u8).map(|i| i.wrapping_mul(37)))
                .for_each(drop),
        }
        bytes
    })
}

#[test]
fn untouched_recording_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let path = sample(dir.path());
    let r = verify_file(&path).unwrap();
    assert_eq!(r.records, 13);
    assert!(r.ended);
    assert_eq!(r.tail, Tail::Clean);
    assert_eq!(r.problem, None);
    assert_eq!(r.stream_id, "session-1");
    assert_eq!(
        last_record(&path).unwrap().unwrap().hash,
        r.last_hash.unwrap()
    );
}

#[test]
fn flipped_payload_byte_is_found_at_its_record() {
    let dir = tempfile::tempdir().unwrap();
    let path = sample(dir.path());
    let mut bytes = fs::read(&path).unwrap();
    let off = offset_of(&path, 5) + 4 + 21; // first payload byte of record 5
    bytes[off] ^= 0x01;
    fs::write(&path, bytes).unwrap();
    let r = verify_file(&path).unwrap();
    assert_eq!(r.problem, Some(ReadError::HashMismatch { seq: 5 }));
    assert_eq!(r.records, 5);
}

#[test]
fn dropped_record_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let path = sample(dir.path());
    let bytes = fs::read(&path).unwrap();
    let (a, b) = (offset_of(&path, 7), offset_of(&path, 8));
    let mut cut = bytes[..a].to_vec();
    cut.extend_from_slice(&bytes[b..]);
    fs::write(&path, cut).unwrap();
    let r = verify_file(&path).unwrap();
    assert_eq!(r.problem, Some(ReadError::SeqGap { seq: 7, found: 8 }));
}

#[test]
fn swapped_records_are_found() {
    let dir = tempfile::tempdir().unwrap();
    let path = sample(dir.path());
    let bytes = fs::read(&path).unwrap();
    let (a, b, c) = (
        offset_of(&path, 3),
        offset_of(&path, 4),
        offset_of(&path, 5),
    );
    let mut out = bytes[..a].to_vec();
    out.extend_from_slice(&bytes[b..c]);
    out.extend_from_slice(&bytes[a..b]);
    out.extend_from_slice(&bytes[c..]);
    fs::write(&path, out).unwrap();
    assert_eq!(
        verify_file(&path).unwrap().problem,
        Some(ReadError::SeqGap { seq: 3, found: 4 })
    );
}

#[test]
fn truncation_inside_a_record_is_a_torn_tail_and_at_a_boundary_shortens_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let path = sample(dir.path());
    let bytes = fs::read(&path).unwrap();
    let off = offset_of(&path, 9);
    fs::write(&path, &bytes[..off + 10]).unwrap();
    let r = verify_file(&path).unwrap();
    assert_eq!(r.records, 9);
    assert_eq!(
        r.tail,
        Tail::Torn {
            offset: off as u64,
            bytes: 10
        }
    );
    assert!(!r.ended);
    // At a record boundary the chain is intact but shorter, with no end record: the caller
    // compares against the seal (record count and final hash).
    fs::write(&path, &bytes[..off]).unwrap();
    let r = verify_file(&path).unwrap();
    assert_eq!((r.records, r.tail, r.ended), (9, Tail::Clean, false));
}

#[test]
fn changed_header_breaks_the_first_record() {
    let dir = tempfile::tempdir().unwrap();
    let path = sample(dir.path());
    let bytes = fs::read(&path).unwrap();
    let nl = bytes.iter().position(|b| *b == b'\n').unwrap();
    let s = String::from_utf8_lossy(&bytes[..nl]).replace("session-1", "session-2");
    let mut out = s.into_bytes();
    out.extend_from_slice(&bytes[nl..]);
    fs::write(&path, out).unwrap();
    assert_eq!(
        verify_file(&path).unwrap().problem,
        Some(ReadError::HashMismatch { seq: 0 })
    );
}

#[test]
fn garbage_never_panics() {
    let dir = tempfile::tempdir().unwrap();
    let path = sample(dir.path());
    let good = fs::read(&path).unwrap();
    // Deterministic pseudo-random corruption of every kind: flips, cuts, insertions.
    for bytes in corruptions(&good, 0x9e37_79b9_7f4a_7c15, 2000) {
        if let Ok(reader) = Reader::new(&bytes[..]) {
            let _ = terminal_events(reader, true);
        }
        let _ = recorder::verify(&bytes[..]);
    }
    assert!(Reader::new(&b"\xff\xfe garbage"[..]).is_err());
}

#[test]
fn locked_appends_chain_across_writers_and_repair_only_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    for i in 0..5 {
        let appended = append_locked(
            &path,
            "audit",
            Kind::Audit,
            format!("{{\"n\":{i}}}").as_bytes(),
        )
        .unwrap();
        assert_eq!((appended.seq, appended.repaired), (i, None));
    }
    // Several threads at once, as the CLI and the server would.
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..25 {
                    append_locked(&path, "audit", Kind::Audit, b"{}").unwrap();
                }
            });
        }
    });
    let r = verify_file(&path).unwrap();
    assert_eq!((r.records, r.problem.clone()), (105, None));
    // A crash mid-append leaves a torn tail: the next append cuts it, chains on, and says what
    // it cut.
    let mut bytes = fs::read(&path).unwrap();
    let clean = bytes.len() as u64;
    bytes.extend_from_slice(&[0, 0, 0, 40, 1, 2, 3]);
    fs::write(&path, &bytes).unwrap();
    let appended = append_locked(&path, "audit", Kind::Audit, b"{}").unwrap();
    assert_eq!((appended.seq, appended.repaired), (105, Some((clean, 7))));
    assert_eq!(verify_file(&path).unwrap().problem, None);
    // Real damage is never chained onto.
    let mut bytes = fs::read(&path).unwrap();
    let off = offset_of(&path, 50) + 4 + 22;
    bytes[off] ^= 0x40;
    bytes.extend_from_slice(&[9, 9, 9]);
    fs::write(&path, &bytes).unwrap();
    assert!(append_locked(&path, "audit", Kind::Audit, b"{}").is_err());
}

#[test]
fn asciicast_export_has_header_timing_and_resizes() {
    let dir = tempfile::tempdir().unwrap();
    let path = sample(dir.path());
    let te = terminal_events(Reader::open(&path).unwrap(), false);
    assert_eq!((te.width, te.height, te.events.len()), (100, 30, 10));
    let mut out = Vec::new();
    export_asciicast(&te, &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    let mut lines = text.lines();
    let header: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert_eq!(header["version"], 2);
    assert_eq!(header["width"], 100);
    let first: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert_eq!(first[1], "o");
    assert_eq!(first[2], "line 0\r\n");
    assert!((first[0].as_f64().unwrap() - 0.1).abs() < 1e-9);
}

#[test]
fn sealed_recording_checks_with_only_the_public_key() {
    use recorder::{SealError, SealKey, SealPublicKey};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sealed.rec");
    let key = SealKey::from_seed(&[7u8; 32]);
    let mut w = Writer::create(&path, "s-1").unwrap();
    for i in 0..5u8 {
        w.append(Kind::Output, 0, &[b'a' + i]).unwrap();
    }
    w.append(Kind::SessionEnd, 0, b"{}").unwrap();
    let seal = w.seal(&key).unwrap();
    // Nothing follows the seal: a late record (a websocket's close, say) is refused, not
    // chained after it where it would make the recording fail verification.
    assert!(matches!(
        w.append(Kind::Output, 0, b"late"),
        Err(recorder::WriteError::Sealed)
    ));
    w.finish().unwrap();
    assert_eq!(seal.records, 6);

    // A third party holds only the exported key line.
    let public = SealPublicKey::parse(&key.public().export()).unwrap();
    let report = verify_file(&path).unwrap();
    assert!(report.ended);
    assert_eq!(report.seal(&[public]).unwrap().records, 6);

    // Another key is not trusted.
    let other = SealKey::from_seed(&[9u8; 32]).public();
    assert!(matches!(
        report.seal(&[other]),
        Err(SealError::UnknownKey { seq: 6, .. })
    ));

    // An altered copy re-chained by a forger (same stream id, same seal record copied) fails.
    let forged = dir.path().join("forged.rec");
    let mut f = Writer::create(&forged, "s-1").unwrap();
    for r in recorder::Reader::open(&path).unwrap().map(Result::unwrap) {
        let payload = if r.kind == Kind::Output && r.payload == b"c" {
            b"X".to_vec()
        } else {
            r.payload
        };
        f.append_at(r.time_us, r.kind, r.channel, &payload).unwrap();
    }
    f.finish().unwrap();
    let report = verify_file(&forged).unwrap();
    assert_eq!(
        report.problem, None,
        "the forger's chain is internally consistent"
    );
    assert!(matches!(
        report.seal(&[public]),
        Err(SealError::WrongHash { seq: 6, prev: 5 })
    ));

    // A truncated copy has no seal.
    let bytes = std::fs::read(&path).unwrap();
    let cut = dir.path().join("cut.rec");
    std::fs::write(&cut, &bytes[..offset_of(&path, 6)]).unwrap();
    assert_eq!(
        verify_file(&cut).unwrap().seal(&[public]),
        Err(SealError::Missing)
    );
}

/// A compressed recording of terminal-like output: many small chunks, as a shell produces.
fn sample_compressed(dir: &Path, n: usize) -> PathBuf {
    let path = dir.join("z.rec");
    let mut w = Writer::create_compressed(&path, "session-z").unwrap();
    w.append_at(1_000_000, Kind::SessionStart, 0, br#"{"vendor":"alice"}"#)
        .unwrap();
    for i in 0..n {
        let line = format!(
            "drwxr-xr-x  2 root root 4096 Nov 25 07:{:02} lib{i}\r\n",
            i % 60
        );
        w.append_at(
            1_100_000 + i as i64 * 1000,
            Kind::Output,
            0,
            line.as_bytes(),
        )
        .unwrap();
    }
    w.append_at(9_000_000, Kind::SessionEnd, 0, b"{}").unwrap();
    w.finish().unwrap();
    path
}

#[test]
fn compressed_recordings_keep_the_per_record_chain() {
    let dir = tempfile::tempdir().unwrap();
    let path = sample_compressed(dir.path(), 2000);
    let r = verify_file(&path).unwrap();
    assert_eq!(
        (r.records, r.problem.clone(), r.tail, r.ended),
        (2002, None, Tail::Clean, true)
    );
    let te = terminal_events(Reader::open(&path).unwrap(), false);
    assert!(te.events[1999].data.contains("lib1999"));

    // Smaller than the same records uncompressed.
    let plain = dir.path().join("plain.rec");
    let mut w = Writer::create(&plain, "session-z").unwrap();
    for rec in Reader::open(&path).unwrap().map(Result::unwrap) {
        w.append_at(rec.time_us, rec.kind, rec.channel, &rec.payload)
            .unwrap();
    }
    w.finish().unwrap();
    let (z, p) = (
        fs::metadata(&path).unwrap().len(),
        fs::metadata(&plain).unwrap().len(),
    );
    eprintln!(
        "2,002 records: {p} bytes plain, {z} bytes compressed ({:.1}x)",
        p as f64 / z as f64
    );
    // Each record keeps 40 bytes of framing and hash that do not compress; the payloads do.
    assert!(
        z * 10 < p * 7,
        "compression should save at least 30% on terminal output ({z} vs {p})"
    );

    // Damage is found at its record; a torn tail is a torn tail.
    let bytes = fs::read(&path).unwrap();
    let off = offset_of(&path, 700);
    let mut flipped = bytes.clone();
    flipped[off + 4] ^= 0x55;
    fs::write(&path, &flipped).unwrap();
    let r = verify_file(&path).unwrap();
    assert_eq!(
        r.problem.as_ref().and_then(|p| p.seq()),
        Some(700),
        "{:?}",
        r.problem
    );
    fs::write(&path, &bytes[..off + 3]).unwrap();
    let r = verify_file(&path).unwrap();
    assert_eq!((r.records, r.problem), (700, None));
    assert!(matches!(r.tail, Tail::Torn { .. }));
}

#[test]
fn compressed_garbage_never_panics() {
    let dir = tempfile::tempdir().unwrap();
    let good = fs::read(sample_compressed(dir.path(), 50)).unwrap();
    for bytes in corruptions(&good, 0x2545_f491_4f6c_dd1d, 3000) {
        let _ = recorder::verify(&bytes[..]);
        if let Ok(reader) = Reader::new(&bytes[..]) {
            let _ = recorder::extract_commands(reader);
        }
    }
}

#[test]
fn a_resting_compressed_recording_frees_its_context_and_reads_back_whole() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rest.rec");
    let mut w = Writer::create_compressed(&path, "s-rest").unwrap();
    let mut written = Vec::new();
    for round in 0..3 {
        for i in 0..20 {
            let line = format!("round {round} line {i}: drwxr-xr-x 2 root root 4096 lib\r\n");
            w.append(Kind::Output, 1, line.as_bytes()).unwrap();
            written.push(line);
        }
        w.flush().unwrap();
        assert!(!w.rest_if_idle(2).unwrap(), "not idle yet");
        w.flush().unwrap();
        w.flush().unwrap();
        assert!(w.rest_if_idle(2).unwrap(), "two quiet flushes: rests");
        assert!(!w.rest_if_idle(2).unwrap(), "already resting");
    }
    w.finish().unwrap();
    let report = verify_file(&path).unwrap();
    assert!(report.problem.is_none(), "{:?}", report.problem);
    assert_eq!(report.records, 63);
    let outputs: Vec<String> = Reader::open(&path)
        .unwrap()
        .map(|r| r.unwrap())
        .filter(|r| r.kind == Kind::Output)
        .map(|r| String::from_utf8(r.payload).unwrap())
        .collect();
    assert_eq!(outputs, written);
    let idle = Reader::open(&path)
        .unwrap()
        .map(|r| r.unwrap())
        .filter(|r| r.kind == Kind::Event)
        .count();
    assert_eq!(idle, 3);
}

/// Descriptors of this process open on `path` (Linux: `/proc/self/fd`).
#[cfg(target_os = "linux")]
fn open_on(path: &Path) -> usize {
    let target = fs::canonicalize(path).unwrap();
    fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| fs::read_link(e.ok()?.path()).ok())
        .filter(|l| *l == target)
        .count()
}

#[cfg(target_os = "linux")]
#[test]
fn a_resting_recording_holds_no_descriptor_and_reopens_only_its_own_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rest.rec");
    let mut w = Writer::create_compressed(&path, "s-fd").unwrap();
    w.append(Kind::Output, 1, b"before the rest\r\n").unwrap();
    w.flush().unwrap();
    assert_eq!(open_on(&path), 1);
    w.flush().unwrap();
    assert!(w.rest_if_idle(1).unwrap());
    assert_eq!(open_on(&path), 0, "a resting recording keeps its file open");
    w.append(Kind::Output, 1, b"after the rest\r\n").unwrap();
    w.flush().unwrap();
    assert_eq!(open_on(&path), 1);
    w.flush().unwrap();
    assert!(w.rest_if_idle(1).unwrap());
    w.finish().unwrap();
    let report = verify_file(&path).unwrap();
    assert!(report.problem.is_none(), "{:?}", report.problem);
    assert_eq!(report.records, 4);

    // A file put in the resting recording's place is not written to: the append fails, and
    // nothing more is written to this recording.
    let path = dir.path().join("swapped.rec");
    let mut w = Writer::create_compressed(&path, "s-swap").unwrap();
    w.append(Kind::Output, 1, b"x").unwrap();
    w.flush().unwrap();
    assert!(w.rest_if_idle(0).unwrap());
    fs::rename(&path, dir.path().join("moved.rec")).unwrap();
    fs::write(&path, b"someone else's file").unwrap();
    let err = w.append(Kind::Output, 1, b"y").unwrap_err();
    assert!(err.to_string().contains("no longer the file"), "{err}");
    assert_eq!(fs::read(&path).unwrap(), b"someone else's file");
    assert!(w.append(Kind::Output, 1, b"z").is_err());

    // The same file, but with bytes added while it rested: refused too.
    let path = dir.path().join("grown.rec");
    let mut w = Writer::create_compressed(&path, "s-grown").unwrap();
    w.append(Kind::Output, 1, b"x").unwrap();
    w.flush().unwrap();
    assert!(w.rest_if_idle(0).unwrap());
    let before = fs::read(&path).unwrap();
    fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap()
        .write_all(b"appended by someone else")
        .unwrap();
    let err = w.append(Kind::Output, 1, b"y").unwrap_err();
    assert!(err.to_string().contains("no longer the file"), "{err}");
    assert_eq!(fs::read(&path).unwrap().len(), before.len() + 24);

    // A recording that cannot be reopened (here: a symbolic link in its place) fails that
    // record only; once its file is back, it goes on and seals.
    let path = dir.path().join("away.rec");
    let mut w = Writer::create_compressed(&path, "s-away").unwrap();
    w.append(Kind::Output, 1, b"x").unwrap();
    w.flush().unwrap();
    assert!(w.rest_if_idle(0).unwrap());
    let aside = dir.path().join("aside.rec");
    fs::rename(&path, &aside).unwrap();
    std::os::unix::fs::symlink(&aside, &path).unwrap();
    assert!(w.append(Kind::Output, 1, b"lost").is_err());
    fs::remove_file(&path).unwrap();
    fs::rename(&aside, &path).unwrap();
    w.append(Kind::Output, 1, b"after").unwrap();
    w.finish().unwrap();
    let report = verify_file(&path).unwrap();
    assert!(report.problem.is_none(), "{:?}", report.problem);
    assert_eq!(report.records, 3, "x, the idle event, after");
}
