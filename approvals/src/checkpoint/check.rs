//! Checking a node's audit log against the checkpoints shipped off the host.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use super::{Checkpoint, CheckpointError, installation_of_log, leaf_of_event, merkle_root};
use crate::verify::Finding;

/// Reads checkpoints from JSON lines: bare checkpoints (`checkpoints export`, the file sink) or
/// webhook bodies carrying one (`"checkpoint": {...}`); other webhook events are skipped. A line
/// that is neither is an error naming it.
pub fn parse_lines(text: &str) -> Result<Vec<Checkpoint>, CheckpointError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let bad = |source| CheckpointError::NotACheckpoint {
            line: i + 1,
            source,
        };
        let v: serde_json::Value = serde_json::from_str(line).map_err(bad)?;
        // `event` here is a webhook event (not an audit one): only `checkpoint` bodies count.
        let cp = match v.get("checkpoint") {
            Some(inner) => inner.clone(),
            None if v.get("event").is_some() => continue,
            None => v,
        };
        out.push(serde_json::from_value(cp).map_err(bad)?);
    }
    Ok(out)
}

/// "3 minutes ago".
pub fn age(secs: i64) -> String {
    let s = secs.max(0);
    let (n, unit) = match s {
        0..=119 => (s, "second"),
        120..=7199 => (s / 60, "minute"),
        7200..=172_799 => (s / 3600, "hour"),
        _ => (s / 86_400, "day"),
    };
    format!("{n} {unit}{} ago", if n == 1 { "" } else { "s" })
}

/// Checks this node's audit log at `path` against shipped checkpoints (`source` says where they
/// came from, for the findings): each checkpoint's signature, the chain of checkpoints, and that
/// the log still has each shipped head (the record at that sequence, with that hash) and the
/// session seals each checkpoint's Merkle root covers. With `required` (a source the auditor
/// chose), checkpoints of other nodes are reported as theirs to check, and having none of this
/// node's is a failure (the auditor gave a source that should have them). Changes nothing.
pub fn verify_log(
    path: &Path,
    node: &str,
    checkpoints: &[Checkpoint],
    source: &str,
    required: bool,
    now: i64,
) -> Vec<Finding> {
    let item = format!("checkpoints ({source})");
    let mut findings = Vec::new();
    let installation = match installation_of_log(path) {
        Ok(i) => i,
        Err(e) => return vec![Finding::bad(&item, 0, e.to_string())],
    };
    let (mut mine, others) = sort_out(checkpoints, &installation, node);
    // Named only for a source the auditor chose; the database holds every node's as a matter of
    // course.
    for (other, n) in others.iter().filter(|_| required) {
        findings.push(Finding {
            item: format!("checkpoints of node {other}"),
            ok: true,
            records: 0,
            detail: format!("{n} checkpoint(s) of another node's audit log; verify them there"),
            elsewhere: Some(other.clone()),
        });
    }
    if mine.is_empty() {
        if required {
            findings.push(Finding::bad(
                &item,
                0,
                format!("no checkpoint of node {node} of installation {installation}"),
            ));
        }
        return findings;
    }
    mine.sort_by_key(|c| c.seq);
    mine.dedup_by(|a, b| a == b);
    let mut problems = chain_problems(&mine);
    let scan = LogScan::read(path, &mine);
    problems.extend(scan.heads_problem(&mine));
    let newest = mine[mine.len() - 1];
    let last_line = format!(
        "last shipped checkpoint: seq {}, {}",
        newest.seq,
        age(now - newest.time)
    );
    let records = scan.records;
    findings.push(if problems.is_empty() {
        let uncovered = records.saturating_sub(newest.seq + 1);
        Finding::ok(
            &item,
            records,
            format!(
                "{last_line}; {} checkpoint(s) signed and chained, every shipped head is in the audit log; {uncovered} record(s) after it not yet covered",
                mine.len()
            ),
        )
    } else {
        Finding::bad(
            &item,
            records,
            format!("{}; {last_line}", problems.join("; ")),
        )
    });
    findings
}

/// This node's checkpoints, and how many each other node (or installation) has: theirs to check.
fn sort_out<'a>(
    checkpoints: &'a [Checkpoint],
    installation: &str,
    node: &str,
) -> (Vec<&'a Checkpoint>, BTreeMap<String, usize>) {
    let mut others: BTreeMap<String, usize> = BTreeMap::new();
    let mut mine: Vec<&Checkpoint> = Vec::new();
    for cp in checkpoints {
        if cp.installation == installation && cp.node == node {
            mine.push(cp);
        } else if cp.installation == installation {
            *others.entry(cp.node.clone()).or_default() += 1;
        } else {
            *others
                .entry(format!("{} of installation {}", cp.node, cp.installation))
                .or_default() += 1;
        }
    }
    (mine, others)
}

/// The checkpoints' own faults, in sequence order: bad signatures, forks, gaps in the chain.
fn chain_problems(mine: &[&Checkpoint]) -> Vec<String> {
    let mut problems: Vec<String> = Vec::new();
    for cp in mine {
        if let Err(e) = cp.check_signature() {
            problems.push(e.to_string());
        }
    }
    for pair in mine.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        if a.seq == b.seq {
            problems.push(format!(
                "two different checkpoints of record {} (the log was forked)",
                a.seq
            ));
        } else if b.prev.as_deref() != Some(a.hash().as_str()) {
            problems.push(format!(
                "checkpoint of record {} does not follow the one of record {} (a checkpoint is missing or forged)",
                b.seq, a.seq
            ));
        }
    }
    problems
}

/// What the audit log holds at the shipped heads, read once.
struct LogScan {
    /// The hash of each record that is a shipped head.
    found: HashMap<u64, [u8; 32]>,
    /// Per checkpoint, the leaves (session seals) between its predecessor's head and its own.
    leaves: Vec<Vec<[u8; 32]>>,
    /// Records read.
    records: u64,
    /// Why reading stopped before the end, if it did.
    stopped: Option<String>,
}

impl LogScan {
    /// `mine` sorted by sequence.
    fn read(path: &Path, mine: &[&Checkpoint]) -> LogScan {
        let heads: HashSet<u64> = mine.iter().map(|c| c.seq).collect();
        let mut scan = LogScan {
            found: HashMap::new(),
            leaves: vec![Vec::new(); mine.len()],
            records: 0,
            stopped: None,
        };
        let reader = match recorder::Reader::open(path) {
            Ok(reader) => reader,
            Err(e) => {
                scan.stopped = Some(e.to_string());
                return scan;
            }
        };
        let mut bucket = 0usize;
        for rec in reader {
            let r = match rec {
                Ok(r) => r,
                Err(e) => {
                    scan.stopped = Some(e.to_string());
                    break;
                }
            };
            scan.records = r.seq + 1;
            while bucket < mine.len() && mine[bucket].seq < r.seq {
                bucket += 1;
            }
            if bucket < mine.len()
                && let Some(leaf) = r.json().as_ref().and_then(leaf_of_event)
            {
                scan.leaves[bucket].push(leaf);
            }
            if heads.contains(&r.seq) {
                scan.found.insert(r.seq, r.hash);
            }
        }
        scan
    }

    /// What is wrong with the `i`th checkpoint's head (and the seals before it) in the log.
    fn head_problem(&self, i: usize, cp: &Checkpoint) -> Option<String> {
        let shipped = format!(
            "record {}, the head shipped in the checkpoint of {}",
            cp.seq,
            crate::time::fmt_time(cp.time)
        );
        match self.found.get(&cp.seq) {
            None => Some(match &self.stopped {
                Some(why) => format!("{shipped}, is not readable: the log stops at {why}"),
                None => format!(
                    "{shipped}, is missing: the audit log ends at record {} (its tail was cut)",
                    self.records as i64 - 1
                ),
            }),
            Some(h) if hex::encode(h) != cp.head => Some(format!(
                "{shipped}, has another hash now: the log was rewritten at or before record {}",
                cp.seq
            )),
            Some(_) => {
                // The first checkpoint's seals start where its predecessor's did, which only
                // the predecessor knows.
                let known_start = i > 0 || cp.prev.is_none();
                (known_start && hex::encode(merkle_root(&self.leaves[i])) != cp.seals_root).then(
                    || {
                        format!(
                            "the session seals before record {} are not those checkpointed ({} now, {} shipped)",
                            cp.seq,
                            self.leaves[i].len(),
                            cp.seals
                        )
                    },
                )
            }
        }
    }

    /// The first shipped head the log does not hold, how many do not, and up to where it holds.
    fn heads_problem(&self, mine: &[&Checkpoint]) -> Option<String> {
        let mut failed_heads = 0usize;
        let mut first_bad: Option<String> = None;
        let mut last_good: Option<&Checkpoint> = None;
        for (i, cp) in mine.iter().enumerate() {
            match self.head_problem(i, cp) {
                Some(p) => {
                    failed_heads += 1;
                    first_bad.get_or_insert(p);
                }
                None if failed_heads == 0 => last_good = Some(cp),
                None => {}
            }
        }
        let p = first_bad?;
        Some(format!(
            "{p}; {failed_heads} of {} shipped heads do not hold{}",
            mine.len(),
            match last_good {
                Some(g) => format!(
                    "; the log holds up to the checkpoint of record {} ({})",
                    g.seq,
                    crate::time::fmt_time(g.time)
                ),
                None => String::new(),
            }
        ))
    }
}
