//! The evidence schema: one type for every JSON payload the broker writes into a recording.
//!
//! The broker writes with [`encode`] (or `serde_json::to_value`), the readers here read with
//! [`Record::payload`]. The names are the ones on disk since the first recordings, so a value
//! written through these types is byte for byte what the broker's `json!` wrote before them.
//!
//! Old recordings still read: fields added later default when missing, and records of a shape
//! this version does not know (an `event` or channel `type` from elsewhere) parse as `Other`
//! rather than failing. Raw byte records (output, input, stderr, transfer in/out) carry no JSON;
//! the seal is [`crate::Seal`] and audit entries belong to the audit log's owner.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::format::{Kind, Record};

/// A JSON record payload and the record kind it is written as.
pub trait Payload: Serialize + DeserializeOwned {
    const KIND: Kind;
}

/// Why a record's payload could not be read as the asked type.
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    #[error("record {seq} is {found:?}, not {expected:?}")]
    WrongKind {
        seq: u64,
        expected: Kind,
        found: Kind,
    },
    #[error("record {seq}: not a {expected:?} payload: {source}")]
    Malformed {
        seq: u64,
        expected: Kind,
        source: serde_json::Error,
    },
}

impl Record {
    /// This record's payload as `T`, if the record is of `T`'s kind and its payload parses.
    pub fn payload<T: Payload>(&self) -> Result<T, PayloadError> {
        parse(self)
    }
}

/// Reads a record's payload as `T` (see [`Record::payload`]).
pub fn parse<T: Payload>(r: &Record) -> Result<T, PayloadError> {
    if r.kind != T::KIND {
        return Err(PayloadError::WrongKind {
            seq: r.seq,
            expected: T::KIND,
            found: r.kind,
        });
    }
    serde_json::from_slice(&r.payload).map_err(|source| PayloadError::Malformed {
        seq: r.seq,
        expected: T::KIND,
        source,
    })
}

/// The payload bytes for `value`, exactly as the broker's `json!(..).to_string()` wrote them:
/// going through `serde_json::Value` sorts the keys, whatever the field order of the type.
pub fn encode<T: Payload>(value: &T) -> Result<String, serde_json::Error> {
    serde_json::to_value(value).map(|v| v.to_string())
}

/// First record of a recording: who, where, under which grant. Also the `session.start` audit
/// entry's fields. Every field reads as empty when missing, as `verify` has always read them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SessionStart {
    pub session: String,
    pub vendor: String,
    pub site: String,
    pub device: String,
    pub function: String,
    pub grant: String,
    /// `fmt_time` of the access window's end.
    pub window_end: String,
    /// The account used on the device.
    pub device_login: String,
    /// The vendor's address.
    pub source: String,
    pub node: String,
}

impl Payload for SessionStart {
    const KIND: Kind = Kind::SessionStart;
}

/// A channel opened by the vendor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum ChannelOpen {
    #[serde(rename = "session")]
    Session,
    /// `ssh -L` to a port on the device.
    #[serde(rename = "direct-tcpip")]
    DirectTcpip { port: u32 },
    /// A channel type this version does not know.
    #[serde(other, skip_serializing)]
    Other,
}

impl Payload for ChannelOpen {
    const KIND: Kind = Kind::ChannelOpen;
}

/// A pty request (with `term`) or a window change (without): the terminal's size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resize {
    pub cols: u32,
    pub rows: u32,
    /// The terminal type, only on a pty request: it makes the channel a terminal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub term: Option<String>,
}

impl Payload for Resize {
    const KIND: Kind = Kind::Resize;
}

/// An exec request, the command line exactly as requested.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exec {
    pub command: String,
    /// The line is an scp server invocation: its stdin is file data. Absent in the earliest
    /// recordings, where it reads as `false`.
    #[serde(default)]
    pub transfer: bool,
}

impl Payload for Exec {
    const KIND: Kind = Kind::Exec;
}

/// Which way a file went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Vendor to device.
    Upload,
    /// Device to vendor.
    Download,
}

/// One completed file transfer (sftp or scp).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transfer {
    pub direction: Direction,
    pub path: String,
    pub size: u64,
    /// Hex SHA-256 of the content, when it passed in order (`null` otherwise).
    #[serde(default)]
    pub sha256: Option<String>,
}

/// Everything else worth keeping, tagged by `"event"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event")]
pub enum Event {
    /// A shell was started on the channel.
    #[serde(rename = "shell")]
    Shell,
    #[serde(rename = "subsystem")]
    Subsystem { name: String },
    /// A signal the vendor sent; the name as russh's `Sig` debug-prints it.
    #[serde(rename = "signal")]
    Signal { signal: String },
    /// The device said no to a forwarded request (`pty-req`, `shell`, `exec`, `subsystem`).
    #[serde(rename = "device_refused")]
    DeviceRefused { request: String },
    #[serde(rename = "transfer")]
    Transfer(Transfer),
    /// A line shown to the vendor on stderr.
    #[serde(rename = "notice")]
    Notice { text: String },
    /// The broker stopped the channels to end the session.
    #[serde(rename = "channels_stopped")]
    ChannelsStopped { reason: String },
    /// A channel request let through; `reason` is always written, as `null`.
    #[serde(rename = "channel.allow")]
    ChannelAllow {
        channel: String,
        reason: Option<String>,
    },
    #[serde(rename = "channel.deny")]
    ChannelDeny {
        channel: String,
        reason: Option<String>,
    },
    #[serde(rename = "device.hostkey_mismatch")]
    DeviceHostKeyMismatch { error: String },
    #[serde(rename = "device.connect_failed")]
    DeviceConnectFailed { error: String },
    /// The earliest recordings' refusal, before `channel.deny`; read only.
    #[serde(rename = "denied")]
    Denied {
        channel: String,
        #[serde(default)]
        reason: Option<String>,
    },
    /// One request of a device web UI session, and the device's answer (or why there was
    /// none: `status` 0 and `error`).
    #[serde(rename = "web.request")]
    WebRequest {
        method: String,
        path: String,
        #[serde(default)]
        query: Option<String>,
        status: u16,
        request_bytes: u64,
        /// As the device announced it (`Content-Length`); `None` when streamed without one.
        #[serde(default)]
        response_bytes: Option<u64>,
        millis: u64,
        #[serde(default)]
        error: Option<String>,
    },
    /// A device web UI request, written before it is sent to the device (its `web.request`,
    /// with the answer, follows): a request the device acted on is in the recording even when
    /// the session ends before the answer comes.
    #[serde(rename = "web.sent")]
    WebSent {
        method: String,
        path: String,
        #[serde(default)]
        query: Option<String>,
        request_bytes: u64,
    },
    /// The first bytes of a request's or an answer's body (`data`, base64), kept only when the
    /// operator asked for bodies; `bytes` is the body's whole size when known.
    #[serde(rename = "web.body")]
    WebBody {
        from_device: bool,
        bytes: u64,
        truncated: bool,
        data: String,
    },
    /// A device web UI's websocket opened (its handshake is the `web.request` before it, status
    /// 101); its messages and close are written on the same channel number, one per socket.
    #[serde(rename = "web.socket")]
    WebSocket {
        path: String,
        #[serde(default)]
        protocol: Option<String>,
    },
    /// One websocket message: its direction and size (its content is not kept).
    #[serde(rename = "web.message")]
    WebMessage {
        from_device: bool,
        bytes: u64,
        binary: bool,
    },
    /// A websocket closed: by whom, and the close code given, if any.
    #[serde(rename = "web.socket_close")]
    WebSocketClose {
        by: SocketEnd,
        #[serde(default)]
        code: Option<u16>,
    },
    /// An event this version does not know: read and ignored, never written.
    #[serde(other, skip_serializing)]
    Other,
}

/// Who closed a device web UI's websocket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SocketEnd {
    /// The vendor's browser.
    Vendor,
    /// The device.
    Device,
    /// Postern, because the session ended (revoked, killed, idle, shutting down).
    Postern,
}

impl Event {
    /// The line a replay shows for a device web UI event; `None` for other events.
    pub fn web_line(&self) -> Option<String> {
        Some(match self {
            Event::WebRequest {
                method,
                path,
                query,
                status,
                response_bytes,
                millis,
                error,
                ..
            } => {
                let q = query
                    .as_deref()
                    .map(|q| format!("?{q}"))
                    .unwrap_or_default();
                let size = response_bytes
                    .map(|b| format!(", {b} B"))
                    .unwrap_or_default();
                let why = error
                    .as_deref()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default();
                format!("{method} {path}{q} -> {status}{size}, {millis} ms{why}")
            }
            Event::WebSent {
                method,
                path,
                query,
                request_bytes,
            } => {
                let q = query
                    .as_deref()
                    .map(|q| format!("?{q}"))
                    .unwrap_or_default();
                format!("{method} {path}{q} sent ({request_bytes} B)")
            }
            Event::WebBody {
                from_device,
                bytes,
                truncated,
                ..
            } => {
                let whose = if *from_device { "answer" } else { "request" };
                let part = if *truncated { "its start" } else { "whole" };
                format!("{whose} body, {bytes} B ({part} kept)")
            }
            Event::WebSocket { path, .. } => format!("websocket {path} open"),
            Event::WebMessage {
                from_device,
                bytes,
                binary,
            } => {
                let dir = if *from_device { "<-" } else { "->" };
                let kind = if *binary { "binary" } else { "text" };
                format!("websocket {dir} {kind} message, {bytes} B")
            }
            Event::WebSocketClose { by, code } => {
                let code = code.map(|c| format!(" ({c})")).unwrap_or_default();
                format!("websocket closed by {by:?}{code}").to_lowercase()
            }
            _ => return None,
        })
    }
}

impl Payload for Event {
    const KIND: Kind = Kind::Event;
}

/// How a channel's command ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Exit {
    Status {
        status: u32,
    },
    /// The name as russh's `Sig` debug-prints it.
    Signal {
        signal: String,
        core_dumped: bool,
    },
}

impl Payload for Exit {
    const KIND: Kind = Kind::Exit;
}

/// A closed channel: a session channel's byte counts, or a port forward's summary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ChannelClose {
    Forward(ForwardSummary),
    Channel(ChannelBytes),
}

impl Payload for ChannelClose {
    const KIND: Kind = Kind::ChannelClose;
}

/// Bytes the vendor sent (`bytes_in`) and the device sent (`bytes_out`) on a session channel.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ChannelBytes {
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// A direct-tcpip channel at its close: where to, bytes each way, when (`fmt_time`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "direct-tcpip", try_from = "TypedForward")]
pub struct ForwardSummary {
    pub port: u32,
    pub bytes_to_device: u64,
    pub bytes_to_vendor: u64,
    pub opened: String,
    pub closed: String,
}

/// [`ForwardSummary`] as read: serde writes a struct's tag but does not check it when reading.
#[derive(Deserialize)]
struct TypedForward {
    #[serde(rename = "type")]
    kind: String,
    port: u32,
    bytes_to_device: u64,
    bytes_to_vendor: u64,
    opened: String,
    closed: String,
}

#[derive(Debug, thiserror::Error)]
#[error("channel type {0}, not direct-tcpip")]
struct NotDirectTcpip(String);

impl TryFrom<TypedForward> for ForwardSummary {
    type Error = NotDirectTcpip;

    fn try_from(f: TypedForward) -> Result<ForwardSummary, NotDirectTcpip> {
        if f.kind != "direct-tcpip" {
            return Err(NotDirectTcpip(f.kind));
        }
        Ok(ForwardSummary {
            port: f.port,
            bytes_to_device: f.bytes_to_device,
            bytes_to_vendor: f.bytes_to_vendor,
            opened: f.opened,
            closed: f.closed,
        })
    }
}

/// Why and when the session ended (`fmt_time`). Last record before the seal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionEnd {
    pub reason: String,
    pub ended: String,
}

impl Payload for SessionEnd {
    const KIND: Kind = Kind::SessionEnd;
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn record<T: Payload>(payload: &str) -> Record {
        Record {
            seq: 7,
            time_us: 0,
            kind: T::KIND,
            channel: 0,
            payload: payload.as_bytes().to_vec(),
            hash: [0; crate::HASH_LEN],
        }
    }

    /// `value` encodes to exactly the bytes of the broker's `json!` (`written`), and reads back.
    fn same<T: Payload + std::fmt::Debug + PartialEq>(value: T, written: serde_json::Value) {
        let bytes = written.to_string();
        assert_eq!(encode(&value).unwrap(), bytes);
        assert_eq!(serde_json::to_value(&value).unwrap(), written);
        assert_eq!(record::<T>(&bytes).payload::<T>().unwrap(), value);
    }

    #[test]
    fn session_start_and_end_as_written() {
        let (id, function, grant, login, source, node) =
            ("s-1", "fw", "g-1", "admin", "10.0.0.9:5", "n1");
        let (vendor, site, device, window_end) = ("acme", "plant", "plc1", "2026-11-25 10:00:00Z");
        same(
            SessionStart {
                session: id.into(),
                vendor: vendor.into(),
                site: site.into(),
                device: device.into(),
                function: function.into(),
                grant: grant.into(),
                window_end: window_end.into(),
                device_login: login.into(),
                source: source.into(),
                node: node.into(),
            },
            json!({
                "session": id, "vendor": vendor, "site": site, "device": device,
                "function": function, "grant": grant, "window_end": window_end,
                "device_login": login, "source": source, "node": node,
            }),
        );
        let (reason, ended) = ("the vendor disconnected", "2026-11-25 10:00:00Z");
        same(
            SessionEnd {
                reason: reason.into(),
                ended: ended.into(),
            },
            json!({"reason": reason, "ended": ended}),
        );
    }

    #[test]
    fn channel_records_as_written() {
        let port = 8080u32;
        same(ChannelOpen::Session, json!({"type": "session"}));
        same(
            ChannelOpen::DirectTcpip { port },
            json!({"type": "direct-tcpip", "port": port}),
        );
        let (col_width, row_height, term) = (132u32, 43u32, "xterm-256color".to_owned());
        same(
            Resize {
                cols: col_width,
                rows: row_height,
                term: Some(term.clone()),
            },
            json!({"cols": col_width, "rows": row_height, "term": term}),
        );
        same(
            Resize {
                cols: col_width,
                rows: row_height,
                term: None,
            },
            json!({"cols": col_width, "rows": row_height}),
        );
        let line = "scp -t /tmp/x";
        same(
            Exec {
                command: line.into(),
                transfer: true,
            },
            json!({"command": line, "transfer": true}),
        );
        let exit_status = 3u32;
        same(
            Exit::Status {
                status: exit_status,
            },
            json!({"status": exit_status}),
        );
        same(
            Exit::Signal {
                signal: "KILL".into(),
                core_dumped: true,
            },
            json!({"signal": "KILL", "core_dumped": true}),
        );
        let (bytes_in, bytes_out) = (10u64, 2000u64);
        same(
            ChannelClose::Channel(ChannelBytes {
                bytes_in,
                bytes_out,
            }),
            json!({"bytes_in": bytes_in, "bytes_out": bytes_out}),
        );
        let (to_device, to_vendor, opened, closed) = (5u64, 6u64, "t0", "t1");
        same(
            ChannelClose::Forward(ForwardSummary {
                port,
                bytes_to_device: to_device,
                bytes_to_vendor: to_vendor,
                opened: opened.into(),
                closed: closed.into(),
            }),
            json!({"type": "direct-tcpip", "port": port, "bytes_to_device": to_device, "bytes_to_vendor": to_vendor,
                   "opened": opened, "closed": closed}),
        );
    }

    #[test]
    fn events_as_written() {
        same(Event::Shell, json!({"event": "shell"}));
        same(
            Event::WebRequest {
                method: "GET".into(),
                path: "/cgi/status".into(),
                query: Some("a=1".into()),
                status: 200,
                request_bytes: 0,
                response_bytes: Some(512),
                millis: 3,
                error: None,
            },
            json!({"event": "web.request", "method": "GET", "path": "/cgi/status", "query": "a=1",
                   "status": 200, "request_bytes": 0, "response_bytes": 512, "millis": 3,
                   "error": null}),
        );
        same(
            Event::WebMessage {
                from_device: true,
                bytes: 12,
                binary: false,
            },
            json!({"event": "web.message", "from_device": true, "bytes": 12, "binary": false}),
        );
        same(
            Event::WebSocketClose {
                by: SocketEnd::Postern,
                code: Some(1008),
            },
            json!({"event": "web.socket_close", "by": "postern", "code": 1008}),
        );
        let name = "sftp";
        same(
            Event::Subsystem { name: name.into() },
            json!({"event": "subsystem", "name": name}),
        );
        same(
            Event::Signal {
                signal: "INT".into(),
            },
            json!({"event": "signal", "signal": "INT"}),
        );
        let what = "pty-req";
        same(
            Event::DeviceRefused {
                request: what.into(),
            },
            json!({"event": "device_refused", "request": what}),
        );
        let text = "this session closes at 10:00 (in 5 minutes)";
        same(
            Event::Notice { text: text.into() },
            json!({"event": "notice", "text": text}),
        );
        let reason = "killed by an operator";
        same(
            Event::ChannelsStopped {
                reason: reason.into(),
            },
            json!({"event": "channels_stopped", "reason": reason}),
        );
        let (channel, refusal) = ("exec", None::<String>);
        same(
            Event::ChannelAllow {
                channel: channel.into(),
                reason: refusal.clone(),
            },
            json!({"event": "channel.allow", "channel": channel, "reason": refusal}),
        );
        let refusal = Some("exec is not allowed".to_owned());
        same(
            Event::ChannelDeny {
                channel: channel.into(),
                reason: refusal.clone(),
            },
            json!({"event": "channel.deny", "channel": channel, "reason": refusal}),
        );
        let error = "connection refused";
        same(
            Event::DeviceHostKeyMismatch {
                error: error.into(),
            },
            json!({"event": "device.hostkey_mismatch", "error": error}),
        );
        same(
            Event::DeviceConnectFailed {
                error: error.into(),
            },
            json!({"event": "device.connect_failed", "error": error}),
        );
    }

    #[test]
    fn transfer_event_as_written() {
        // The broker serializes its own `Transfer` and sets `"event": "transfer"` in it.
        let v = json!({"direction": "upload", "path": "/tmp/x", "size": 3, "sha256": null,
                       "event": "transfer"});
        same(
            Event::Transfer(Transfer {
                direction: Direction::Upload,
                path: "/tmp/x".into(),
                size: 3,
                sha256: None,
            }),
            v,
        );
        let v = json!({"direction": "download", "path": "a", "size": 0, "sha256": "e3b0",
                       "event": "transfer"});
        let t = Transfer {
            direction: Direction::Download,
            path: "a".into(),
            size: 0,
            sha256: Some("e3b0".into()),
        };
        same(Event::Transfer(t), v);
    }

    #[test]
    fn old_and_unknown_payloads_still_read() {
        let read = |s: &str| record::<Event>(s).payload::<Event>().unwrap();
        assert_eq!(read(r#"{"event":"from.the.future","x":1}"#), Event::Other);
        assert_eq!(
            read(r#"{"event":"denied","channel":"forward:22","reason":"no"}"#),
            Event::Denied {
                channel: "forward:22".into(),
                reason: Some("no".into())
            }
        );
        let exec = record::<Exec>(r#"{"command":"ls"}"#)
            .payload::<Exec>()
            .unwrap();
        assert!(!exec.transfer);
        let open = record::<ChannelOpen>(r#"{"type":"x11"}"#)
            .payload::<ChannelOpen>()
            .unwrap();
        assert_eq!(open, ChannelOpen::Other);
        let start = record::<SessionStart>(r#"{"session":"s-1"}"#)
            .payload::<SessionStart>()
            .unwrap();
        assert_eq!((start.session.as_str(), start.node.as_str()), ("s-1", ""));
    }

    #[test]
    fn a_session_close_is_not_a_forward_summary() {
        let close = record::<ChannelClose>(r#"{"bytes_in":1,"bytes_out":2}"#);
        assert_eq!(
            close.payload::<ChannelClose>().unwrap(),
            ChannelClose::Channel(ChannelBytes {
                bytes_in: 1,
                bytes_out: 2
            })
        );
        let other = r#"{"type":"other","port":1,"bytes_to_device":1,"bytes_to_vendor":2,
                        "opened":"a","closed":"b"}"#;
        assert!(!matches!(
            record::<ChannelClose>(other).payload::<ChannelClose>(),
            Ok(ChannelClose::Forward(_))
        ));
    }

    #[test]
    fn wrong_kind_and_malformed_are_errors() {
        let r = record::<Resize>(r#"{"cols":80,"rows":24}"#);
        assert!(matches!(
            r.payload::<Exec>(),
            Err(PayloadError::WrongKind { seq: 7, .. })
        ));
        let r = record::<Resize>("not json");
        assert!(matches!(
            r.payload::<Resize>(),
            Err(PayloadError::Malformed { .. })
        ));
    }
}
