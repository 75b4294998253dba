//! Recorder figures on this machine: write throughput for bulk output, and bytes on disk per hour
//! for a modelled interactive session and for bulk output (compressed recordings).
//!
//!     cargo run --release -p recorder --example sizes

use std::time::Instant;

use recorder::{Kind, Writer};

/// Deterministic pseudo-random bytes (incompressible).
fn noise(n: usize, seed: &mut u64) -> Vec<u8> {
    (0..n)
        .map(|_| {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            (*seed >> 24) as u8
        })
        .collect()
}

/// `n` bytes repeating `pattern`.
fn cycle(pattern: &[u8], n: usize) -> Vec<u8> {
    pattern.iter().copied().cycle().take(n).collect()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;

    // Bulk: 256 MiB of output in 32 KiB chunks (an SSH packet's worth), text-like and random.
    // The random pool is far larger than zstd's window, so it does not compress.
    for (name, pool) in [
        (
            "text",
            cycle(b"drwxr-xr-x 2 root root 4096 lib\r\n", 32 * 1024),
        ),
        ("random", noise(64 << 20, &mut seed)),
    ] {
        let path = dir.path().join(format!("bulk-{name}.rec"));
        let mut w = Writer::create_compressed(&path, "bulk")?;
        let total: usize = 256 << 20;
        let start = Instant::now();
        for (i, _) in (0..total / (32 * 1024)).enumerate() {
            let at = (i * 32 * 1024) % pool.len();
            w.append(Kind::Output, 0, &pool[at..at + 32 * 1024])?;
        }
        w.finish()?;
        let secs = start.elapsed().as_secs_f64();
        let size = std::fs::metadata(&path)?.len();
        println!(
            "bulk {name:<6}: {:.0} MiB/s through the recorder; {:.1} MiB on disk per GiB of output",
            (total >> 20) as f64 / secs,
            size as f64 / (1 << 20) as f64 * 4.0
        );
    }

    // Interactive hour (model): a keystroke every 0.3 s while typing (half the hour), each echoed,
    // plus a 2 KiB burst of command output every 20 s and a prompt after it.
    let path = dir.path().join("interactive.rec");
    let mut w = Writer::create_compressed(&path, "interactive")?;
    let mut t: i64 = 0;
    let words = b"ls -la /var/log systemctl status camera-agent journalctl -u camera-agent -n 50 ";
    let mut k = 0usize;
    while t < 3_600_000_000 {
        if (t / 1_000_000) % 20 == 0 {
            let out = cycle(b"Nov 25 07:12:01 cam-01 agent[812]: frame ok\r\n", 2048);
            w.append_at(t, Kind::Output, 0, &out)?;
            w.append_at(t + 1000, Kind::Output, 0, b"root@cam-01:~# ")?;
        }
        if (t / 60_000_000) % 2 == 0 {
            let key = [words[k % words.len()]];
            k += 1;
            w.append_at(t, Kind::Input, 0, &key)?;
            w.append_at(t + 2000, Kind::Output, 0, &key)?;
        }
        t += 300_000;
    }
    w.finish()?;
    let size = std::fs::metadata(&path)?.len();
    println!(
        "interactive hour (model): {:.2} MiB on disk ({} keystrokes, 180 output bursts)",
        size as f64 / (1 << 20) as f64,
        k
    );
    Ok(())
}
