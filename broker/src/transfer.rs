//! File transfers seen in the byte streams of sftp and legacy scp channels: direction, path, size
//! and SHA-256 of each file, for the evidence. The proxy feeds both directions; parsing is bounded
//! (a packet claiming more than 1 MiB stops tracking rather than buffering).

use std::collections::HashMap;

use sha2::{Digest, Sha256};

const MAX_PACKET: usize = 1 << 20;

/// A transfer as the recording keeps it (the evidence schema owns the type).
pub use recorder::events::{Direction, Transfer};

/// One file being transferred.
struct FileState {
    path: String,
    written: u64,
    read: u64,
    next: u64,
    hash: Option<Sha256>,
}

impl FileState {
    fn new(path: String) -> FileState {
        FileState {
            path,
            written: 0,
            read: 0,
            next: 0,
            hash: Some(Sha256::new()),
        }
    }

    fn add(&mut self, offset: u64, data: &[u8]) {
        if offset == self.next {
            if let Some(h) = self.hash.as_mut() {
                h.update(data);
            }
            self.next += data.len() as u64;
        } else {
            self.hash = None;
        }
    }

    fn finish(self) -> Option<Transfer> {
        let (direction, size) = match (self.written, self.read) {
            (0, 0) => return None,
            (w, _) if w > 0 => (Direction::Upload, w),
            (_, r) => (Direction::Download, r),
        };
        Some(Transfer {
            direction,
            path: self.path,
            size,
            sha256: self.hash.map(|h| hex::encode(h.finalize())),
        })
    }
}

/// Reassembles length-prefixed SFTP packets from one direction.
#[derive(Default)]
struct Packets {
    buf: Vec<u8>,
    broken: bool,
}

impl Packets {
    fn push(&mut self, data: &[u8], mut each: impl FnMut(&[u8])) {
        if self.broken {
            return;
        }
        self.buf.extend_from_slice(data);
        let mut start = 0;
        while self.buf.len() - start >= 4 {
            let len = u32::from_be_bytes([
                self.buf[start],
                self.buf[start + 1],
                self.buf[start + 2],
                self.buf[start + 3],
            ]) as usize;
            if len > MAX_PACKET {
                self.broken = true;
                self.buf.clear();
                return;
            }
            if self.buf.len() - start - 4 < len {
                break;
            }
            each(&self.buf[start + 4..start + 4 + len]);
            start += 4 + len;
        }
        self.buf.drain(..start);
    }
}

/// A cursor over SFTP packet fields.
struct Fields<'a>(&'a [u8]);

impl<'a> Fields<'a> {
    fn u8(&mut self) -> Option<u8> {
        let (b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(*b)
    }
    fn u32(&mut self) -> Option<u32> {
        let b = self.0.get(..4)?;
        self.0 = &self.0[4..];
        Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Option<u64> {
        let hi = self.u32()? as u64;
        let lo = self.u32()? as u64;
        Some(hi << 32 | lo)
    }
    fn string(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        let s = self.0.get(..n)?;
        self.0 = &self.0[n..];
        Some(s)
    }
}

const FXP_OPEN: u8 = 3;
const FXP_CLOSE: u8 = 4;
const FXP_READ: u8 = 5;
const FXP_WRITE: u8 = 6;
const FXP_HANDLE: u8 = 102;
const FXP_DATA: u8 = 103;

/// Follows one sftp channel.
#[derive(Default)]
pub struct SftpTracker {
    from_vendor: Packets,
    from_device: Packets,
    opening: HashMap<u32, String>,
    reading: HashMap<u32, (Vec<u8>, u64)>,
    files: HashMap<Vec<u8>, FileState>,
    done: Vec<Transfer>,
}

impl SftpTracker {
    pub fn vendor_sent(&mut self, data: &[u8]) -> Vec<Transfer> {
        let mut packets = std::mem::take(&mut self.from_vendor);
        packets.push(data, |p| self.vendor_packet(p));
        self.from_vendor = packets;
        std::mem::take(&mut self.done)
    }

    pub fn device_sent(&mut self, data: &[u8]) -> Vec<Transfer> {
        let mut packets = std::mem::take(&mut self.from_device);
        packets.push(data, |p| self.device_packet(p));
        self.from_device = packets;
        std::mem::take(&mut self.done)
    }

    fn vendor_packet(&mut self, p: &[u8]) {
        let mut f = Fields(p);
        let (Some(kind), Some(id)) = (f.u8(), f.u32()) else {
            return;
        };
        match kind {
            FXP_OPEN => {
                if let Some(path) = f.string() {
                    self.opening
                        .insert(id, String::from_utf8_lossy(path).into_owned());
                }
            }
            FXP_WRITE => {
                if let (Some(h), Some(off), Some(data)) = (f.string(), f.u64(), f.string())
                    && let Some(file) = self.files.get_mut(h)
                {
                    file.written += data.len() as u64;
                    file.add(off, data);
                }
            }
            FXP_READ => {
                if let (Some(h), Some(off)) = (f.string(), f.u64()) {
                    self.reading.insert(id, (h.to_vec(), off));
                }
            }
            FXP_CLOSE => {
                if let Some(t) = f
                    .string()
                    .and_then(|h| self.files.remove(h))
                    .and_then(FileState::finish)
                {
                    self.done.push(t);
                }
            }
            _ => {}
        }
    }

    fn device_packet(&mut self, p: &[u8]) {
        let mut f = Fields(p);
        let (Some(kind), Some(id)) = (f.u8(), f.u32()) else {
            return;
        };
        match kind {
            FXP_HANDLE => {
                if let (Some(path), Some(h)) = (self.opening.remove(&id), f.string()) {
                    self.files.insert(h.to_vec(), FileState::new(path));
                }
            }
            FXP_DATA => {
                if let (Some((h, off)), Some(data)) = (self.reading.remove(&id), f.string())
                    && let Some(file) = self.files.get_mut(&h)
                {
                    file.read += data.len() as u64;
                    file.add(off, data);
                }
            }
            _ => {
                self.opening.remove(&id);
                self.reading.remove(&id);
            }
        }
    }

    /// Files still open when the channel closed.
    pub fn close(&mut self) -> Vec<Transfer> {
        self.files.drain().filter_map(|(_, f)| f.finish()).collect()
    }
}

/// A legacy scp server invocation exactly as OpenSSH's `scp -O` sends it:
/// `scp [-v] [-r] [-p] [-d] -t|-f [--] PATH`, where PATH is plain (letters, digits and
/// `/._-~+,@%=:` plus the glob characters `*?[]`) or single-quoted. Anything else on the line
/// (a `;`, a `$(...)`, a redirection, a second command) makes it an ordinary exec: a command is
/// never classified as a file transfer by what it starts with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScpInvocation {
    /// `-t`: the device receives (an upload); `-f`: the device sends (a download).
    pub upload: bool,
    pub path: String,
}

impl ScpInvocation {
    pub fn parse(line: &str) -> Option<ScpInvocation> {
        let mut rest = line.strip_prefix("scp ")?;
        let upload = loop {
            let (word, after) = rest.split_once(' ')?;
            rest = after;
            match word {
                "-v" | "-r" | "-p" | "-d" => continue,
                "-t" => break true,
                "-f" => break false,
                _ => return None,
            }
        };
        let (path, dashes) = match rest.strip_prefix("-- ") {
            Some(p) => (p, true),
            None => (rest, false),
        };
        let plain = |c: char| {
            c.is_ascii_alphanumeric()
                || matches!(
                    c,
                    '/' | '.'
                        | '_'
                        | '-'
                        | '~'
                        | '+'
                        | ','
                        | '@'
                        | '%'
                        | '='
                        | ':'
                        | '*'
                        | '?'
                        | '['
                        | ']'
                )
        };
        let ok = if let Some(inner) = path.strip_prefix('\'').and_then(|p| p.strip_suffix('\'')) {
            // Single quotes make everything inside literal to the device's shell.
            !inner.is_empty() && !inner.contains('\'') && !inner.chars().any(char::is_control)
        } else {
            !path.is_empty() && path.chars().all(plain) && (dashes || !path.starts_with('-'))
        };
        ok.then(|| ScpInvocation {
            upload,
            path: path.to_owned(),
        })
    }

    /// Whether `first`, the first byte the device sent, is what an scp server in this mode sends
    /// first: a sink (`-t`) says ready (`\0`) or an error (`\1`, `\2`); a source (`-f`) starts
    /// a file (`C`), a directory (`D`), times (`T`) or an error.
    pub fn answers_like_scp(&self, first: u8) -> bool {
        if self.upload {
            matches!(first, 0..=2)
        } else {
            matches!(first, b'C' | b'D' | b'T' | 1 | 2)
        }
    }
}

/// Follows the legacy scp protocol in the direction that carries files (`C<mode> <size> <name>`
/// then `size` bytes then a zero byte).
pub struct ScpTracker {
    direction: Direction,
    base: String,
    line: Vec<u8>,
    current: Option<(String, u64, u64, Sha256)>,
    broken: bool,
}

impl ScpTracker {
    /// `command` is the exec line (`scp -t PATH` receives an upload, `scp -f PATH` sends a download).
    #[cfg(test)]
    pub fn for_command(command: &str) -> Option<ScpTracker> {
        ScpInvocation::parse(command).map(|i| ScpTracker::new(&i))
    }

    pub fn new(inv: &ScpInvocation) -> ScpTracker {
        let direction = if inv.upload {
            Direction::Upload
        } else {
            Direction::Download
        };
        let base = inv.path.trim_matches('\'').to_owned();
        ScpTracker {
            direction,
            base,
            line: Vec::new(),
            current: None,
            broken: false,
        }
    }

    pub fn is_upload(&self) -> bool {
        self.direction == Direction::Upload
    }

    /// Feeds bytes of the file-carrying direction.
    pub fn push(&mut self, mut data: &[u8]) -> Vec<Transfer> {
        let mut done = Vec::new();
        while !data.is_empty() && !self.broken {
            if let Some((_, size, got, hash)) = self.current.as_mut() {
                let take = ((*size - *got) as usize).min(data.len());
                hash.update(&data[..take]);
                *got += take as u64;
                data = &data[take..];
                let complete = *got == *size;
                // The zero byte that ends the file follows as protocol chatter.
                if complete && let Some((name, size, _, hash)) = self.current.take() {
                    let path = if self.is_upload() {
                        format!("{}/{}", self.base.trim_end_matches('/'), name)
                    } else {
                        self.base.clone()
                    };
                    done.push(Transfer {
                        direction: self.direction,
                        path,
                        size,
                        sha256: Some(hex::encode(hash.finalize())),
                    });
                }
                continue;
            }
            let Some(nl) = data.iter().position(|b| *b == b'\n') else {
                self.line.extend_from_slice(data);
                if self.line.len() > 4096 {
                    self.broken = true;
                }
                break;
            };
            self.line.extend_from_slice(&data[..nl]);
            data = &data[nl + 1..];
            let line = std::mem::take(&mut self.line);
            // Strip the zero bytes that acknowledge or end files before a header.
            let line: Vec<u8> = line.into_iter().skip_while(|b| *b == 0).collect();
            if let Some(rest) = line.strip_prefix(b"C") {
                let text = String::from_utf8_lossy(rest).into_owned();
                let mut parts = text.splitn(3, ' ');
                let (_mode, size, name) = (
                    parts.next(),
                    parts.next().and_then(|s| s.parse::<u64>().ok()),
                    parts.next(),
                );
                match (size, name) {
                    (Some(size), Some(name)) => {
                        self.current = Some((name.to_owned(), size, 0, Sha256::new()));
                        if size == 0 {
                            self.current = None;
                            done.push(Transfer {
                                direction: self.direction,
                                path: name.to_owned(),
                                size: 0,
                                sha256: Some(hex::encode(Sha256::digest(b""))),
                            });
                        }
                    }
                    _ => self.broken = true,
                }
            }
        }
        done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(kind: u8, id: u32, fields: &[&[u8]]) -> Vec<u8> {
        let mut body = vec![kind];
        body.extend_from_slice(&id.to_be_bytes());
        for f in fields {
            body.extend_from_slice(f);
        }
        let mut p = (body.len() as u32).to_be_bytes().to_vec();
        p.extend(body);
        p
    }

    fn s(b: &[u8]) -> Vec<u8> {
        let mut v = (b.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(b);
        v
    }

    #[test]
    fn sftp_upload_split_across_chunks() {
        let mut t = SftpTracker::default();
        let open = packet(
            FXP_OPEN,
            1,
            &[
                &s(b"/tmp/fw.bin"),
                &0x1au32.to_be_bytes(),
                &0u32.to_be_bytes(),
            ],
        );
        assert!(t.vendor_sent(&open).is_empty());
        t.device_sent(&packet(FXP_HANDLE, 1, &[&s(b"H1")]));
        let mut stream = packet(
            FXP_WRITE,
            2,
            &[&s(b"H1"), &0u64.to_be_bytes(), &s(b"hello ")],
        );
        stream.extend(packet(
            FXP_WRITE,
            3,
            &[&s(b"H1"), &6u64.to_be_bytes(), &s(b"world")],
        ));
        stream.extend(packet(FXP_CLOSE, 4, &[&s(b"H1")]));
        let mut out = Vec::new();
        for chunk in stream.chunks(5) {
            out.extend(t.vendor_sent(chunk));
        }
        assert_eq!(out.len(), 1);
        assert_eq!(
            (out[0].direction, out[0].path.as_str(), out[0].size),
            (Direction::Upload, "/tmp/fw.bin", 11)
        );
        assert_eq!(
            out[0].sha256.as_deref(),
            Some(hex::encode(Sha256::digest(b"hello world")).as_str())
        );
    }

    #[test]
    fn oversized_packet_stops_tracking_without_buffering() {
        let mut t = SftpTracker::default();
        t.vendor_sent(&(u32::MAX).to_be_bytes());
        assert!(t.vendor_sent(&[0u8; 100]).is_empty());
        assert!(t.from_vendor.buf.is_empty());
    }

    #[test]
    fn scp_upload_and_download() {
        let mut up = ScpTracker::for_command("scp -t /tmp/").unwrap();
        assert!(ScpTracker::for_command("scp -t /tmp/; id").is_none());
        let mut out = up.push(b"C0644 5 a.txt\nhel");
        out.extend(up.push(b"lo\0"));
        assert_eq!(
            (out[0].direction, out[0].path.as_str(), out[0].size),
            (Direction::Upload, "/tmp/a.txt", 5)
        );
        assert_eq!(
            out[0].sha256.as_deref(),
            Some(hex::encode(Sha256::digest(b"hello")).as_str())
        );
        let mut down = ScpTracker::for_command("scp -f /etc/hostname").unwrap();
        let out = down.push(b"C0644 3 hostname\nvm\n\0");
        assert_eq!(
            (out[0].direction, out[0].path.as_str(), out[0].size),
            (Direction::Download, "/etc/hostname", 3)
        );
        assert!(ScpTracker::for_command("ls -la").is_none());
    }

    #[test]
    fn scp_is_recognised_only_exactly() {
        for (line, upload, path) in [
            ("scp -t /tmp/", true, "/tmp/"),
            ("scp -v -r -p -d -t -- -odd", true, "-odd"),
            ("scp -f /etc/hostname", false, "/etc/hostname"),
            ("scp -p -f /var/log/*.log", false, "/var/log/*.log"),
            ("scp -t 'with space/x'", true, "'with space/x'"),
        ] {
            let i = ScpInvocation::parse(line).unwrap_or_else(|| panic!("{line}"));
            assert_eq!((i.upload, i.path.as_str()), (upload, path), "{line}");
        }
        for evil in [
            "scp 2>/dev/null; exec bash -i",
            "scp -t /tmp; bash -i",
            "scp -t /tmp && id",
            "scp -t $(id)",
            "scp -t `id`",
            "scp -t /tmp|sh",
            "scp -t /tmp >x",
            "scp -t 'a'b'",
            "scp -t 'a\nb'",
            "scp -t\t/tmp",
            "scp -x -t /tmp",
            "scp -t -f",
            "scp -t",
            "scp -t ",
            "scp  -t /tmp",
            "scp -t /tmp\nid",
            "scp -r /tmp",
            " scp -t /tmp",
            "scp -t /a /b",
        ] {
            assert!(
                ScpInvocation::parse(evil).is_none(),
                "{evil:?} must not count as scp"
            );
        }
        let up = ScpInvocation::parse("scp -t /tmp").unwrap();
        assert!(up.answers_like_scp(0) && !up.answers_like_scp(b'$'));
        let down = ScpInvocation::parse("scp -f /x").unwrap();
        assert!(
            down.answers_like_scp(b'C')
                && !down.answers_like_scp(0)
                && !down.answers_like_scp(b'b')
        );
    }
}
