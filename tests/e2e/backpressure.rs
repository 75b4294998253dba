//! A vendor who stops reading does not make the broker buffer: the device is paused through SSH
//! flow control instead, and everything arrives once the vendor reads again.

use std::io::Read;
use std::process::Stdio;
use std::time::Duration;

use crate::harness::World;

const TOTAL: u64 = 128 << 20;

#[test]
fn a_stalled_vendor_pauses_the_device_not_the_brokers_memory() {
    let w = World::new(9, "5m");
    let v = w.vendor("sam", &[]);
    w.grant("sam", "site-a", "maint");
    let code = v.next_code();
    let mut cmd = w.client("ssh", &v, &code);
    cmd.arg("sam:site-a/dev@127.0.0.1")
        .arg(format!("head -c {TOTAL} /dev/zero"))
        .stdout(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut out = child.stdout.take().unwrap();

    // Data flows...
    let mut first = vec![0u8; 1 << 20];
    out.read_exact(&mut first).unwrap();
    let before = w.broker_rss();
    // ...then the vendor stops reading for a while.
    std::thread::sleep(Duration::from_secs(3));
    let stalled = w.broker_rss();
    let grown = stalled.saturating_sub(before);
    eprintln!(
        "broker RSS {} MiB before the stall, {} MiB after 3 s of stall",
        before >> 20,
        stalled >> 20
    );
    assert!(
        grown < 32 << 20,
        "the broker grew by {} MiB while the vendor was not reading",
        grown >> 20
    );

    // Reading again gets every byte.
    let rest = std::io::copy(&mut out, &mut std::io::sink()).unwrap();
    assert_eq!(rest + first.len() as u64, TOTAL);
    assert!(child.wait().unwrap().success());
}
