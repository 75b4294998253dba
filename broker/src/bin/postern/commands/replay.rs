//! `postern replay` and `postern export`: play a recording in the terminal or export it as asciicast.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Result, anyhow, bail};

use super::Env;

async fn recording_path(env: &Env, id: &str) -> Result<PathBuf> {
    let s = env
        .store
        .session(id)
        .await?
        .ok_or_else(|| anyhow!("no session with id {id}"))?;
    // Recorded on another node: read the copy in the shared evidence store.
    env.fetch_recordings(std::slice::from_ref(&s)).await?;
    Ok(env.evidence().recording_file(&s.recording))
}

fn load_events(path: &Path, input: bool) -> Result<recorder::TerminalEvents> {
    let reader = recorder::Reader::open(path).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    Ok(recorder::terminal_events(reader, input))
}

pub async fn export(env: &Env, id: &str, input: bool) -> Result<()> {
    let path = recording_path(env, id).await?;
    let te = load_events(&path, input)?;
    let stdout = std::io::stdout();
    recorder::export_asciicast(&te, stdout.lock())?;
    if let Some(p) = te.problem {
        bail!("recording {id} is damaged; exported up to the damage: {p}");
    }
    Ok(())
}

/// Keyboard control of a replay in a terminal: space pauses and resumes, q quits.
struct Keys {
    paused: std::sync::Arc<std::sync::atomic::AtomicBool>,
    quit: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// The terminal's mode, restored when dropped; `None` when stdin is not a terminal.
    raw: Option<broker::sys::RawInput>,
}

impl Keys {
    /// Takes the keyboard if stdin is a terminal; otherwise replay simply runs.
    fn take() -> Keys {
        use std::sync::atomic::{AtomicBool, Ordering};
        let paused = std::sync::Arc::new(AtomicBool::new(false));
        let quit = std::sync::Arc::new(AtomicBool::new(false));
        let raw = broker::sys::RawInput::take();
        let taken = raw.is_some();
        let keys = Keys {
            paused: paused.clone(),
            quit: quit.clone(),
            raw,
        };
        if !taken {
            return keys;
        }
        std::thread::spawn(move || {
            use std::io::Read;
            let mut b = [0u8; 1];
            while std::io::stdin()
                .read(&mut b)
                .map(|n| n == 1)
                .unwrap_or(false)
            {
                match b[0] {
                    b' ' => {
                        paused.fetch_xor(true, Ordering::SeqCst);
                    }
                    b'q' | 3 => {
                        quit.store(true, Ordering::SeqCst);
                        break;
                    }
                    _ => {}
                }
            }
        });
        keys
    }

    fn paused(&self) -> bool {
        self.paused.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn quit(&self) -> bool {
        self.quit.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// The input view of a replay: the keys of the line being typed, escaped, in reverse video on
/// the bottom row, which is kept out of the scrolling region so output does not carry it away.
struct KeyBar {
    cols: usize,
    rows: usize,
    keys: String,
    /// The last line was ended by Enter: the next key starts a new one.
    entered: bool,
}

impl KeyBar {
    fn new(cols: u32, rows: u32) -> KeyBar {
        KeyBar {
            cols: (cols as usize).max(20),
            rows: (rows as usize).max(3),
            keys: String::new(),
            entered: false,
        }
    }

    /// Reserves the bottom row (also after a resize).
    fn reserve(&self, out: &mut impl Write) -> std::io::Result<()> {
        write!(out, "\x1b7\x1b[1;{}r\x1b8", self.rows - 1)
    }

    fn resize(&mut self, size: &str, out: &mut impl Write) -> std::io::Result<()> {
        if let Some((c, r)) = size.split_once('x')
            && let (Ok(c), Ok(r)) = (c.parse::<usize>(), r.parse::<usize>())
        {
            self.cols = c.max(20);
            self.rows = r.max(3);
            self.reserve(out)?;
            self.draw(out)?;
        }
        Ok(())
    }

    fn keys(&mut self, typed: &str, out: &mut impl Write) -> std::io::Result<()> {
        if self.entered {
            self.keys.clear();
        }
        self.keys.push_str(typed);
        self.entered = typed.ends_with(['\r', '\n']);
        self.draw(out)
    }

    fn draw(&self, out: &mut impl Write) -> std::io::Result<()> {
        let shown = recorder::escape_keys(&self.keys);
        let room = self.cols.saturating_sub(8);
        let n = shown.chars().count();
        let tail: String = shown.chars().skip(n.saturating_sub(room)).collect();
        write!(
            out,
            "\x1b7\x1b[{};1H\x1b[0m\x1b[2K\x1b[7m keys: {tail}\x1b[0m\x1b8",
            self.rows
        )
    }

    fn finish(&self, out: &mut impl Write) -> std::io::Result<()> {
        write!(out, "\x1b[r\x1b[{};1H\r\n", self.rows)
    }
}

pub async fn replay(
    env: &Env,
    id: &str,
    speed: f64,
    idle_limit: f64,
    at: f64,
    input: bool,
) -> Result<()> {
    if !(speed > 0.0 && speed.is_finite()) {
        bail!("--speed must be a positive number");
    }
    if !(at >= 0.0 && at.is_finite()) {
        bail!("--at must be a number of seconds from the start");
    }
    let path = recording_path(env, id).await?;
    let te = load_events(&path, input)?;
    let mut out = std::io::stdout().lock();
    let keys = Keys::take();
    if keys.raw.is_some() {
        eprintln!("postern: replaying {id}; space pauses and resumes, q quits");
    }
    let mut bar = input.then(|| KeyBar::new(te.width, te.height));
    if let Some(b) = &bar {
        b.reserve(&mut out)?;
    }
    let mut prev = at;
    let shown = |e: &&recorder::AsciicastEvent| e.code == "o" || (input && e.code != "m");
    for e in te.events.iter().filter(shown) {
        // Before --at: drawn at once, to rebuild the screen as it was.
        let pause = if e.time <= at {
            0.0
        } else {
            ((e.time - prev).min(idle_limit.max(0.0)) / speed).max(0.0)
        };
        prev = e.time;
        if pause > 0.0 {
            out.flush()?;
            tokio::time::sleep(Duration::from_secs_f64(pause)).await;
        }
        while keys.paused() && !keys.quit() {
            out.flush()?;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if keys.quit() {
            break;
        }
        match (e.code, bar.as_mut()) {
            ("i", Some(b)) => b.keys(&e.data, &mut out)?,
            ("r", Some(b)) => b.resize(&e.data, &mut out)?,
            ("o", _) => out.write_all(e.data.as_bytes())?,
            _ => {}
        }
    }
    if let Some(b) = &bar {
        b.finish(&mut out)?;
    }
    out.flush()?;
    if let Some(p) = te.problem {
        bail!("recording {id} is damaged; replayed up to the damage: {p}");
    }
    Ok(())
}
