//! Admission control for connections that have not authenticated yet: what keeps an
//! unauthenticated client from stopping, flooding or starving the broker.
//!
//! Modelled on OpenSSH's `MaxStartups`, `PerSourceMaxStartups` and `PerSourcePenalties`:
//! - at most `start:rate:full` unauthenticated connections in all: from `start` on, new ones are
//!   refused with a probability rising from `rate`% to 100% at `full`;
//! - at most `per_source` unauthenticated connections from one source (an IPv4 address, an IPv6
//!   /64);
//! - a source whose connections misbehave (closed without trying, failed before the first factor,
//!   idle past the login grace time) collects penalty time; once that reaches
//!   [`PENALTY_MIN`], its new connections are refused until the penalty runs out.
//!
//! A connection holds a [`Ticket`] while it is unauthenticated; dropping the ticket frees its
//! place and settles its penalty. The tables are bounded: a flood of sources cannot grow memory.
//! Refusals are counted and written to the audit log as one summary per interval
//! ([`Tally`]), never one event per connection.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use approvals::audit::{Tally, source_key};
use serde::Serialize;

/// Penalty time for a connection closed without any authentication attempt (a scanner).
pub const PENALTY_NOAUTH: Duration = Duration::from_secs(1);
/// Penalty time for a connection that failed before its first factor (no or a foreign certificate).
pub const PENALTY_AUTHFAIL: Duration = Duration::from_secs(5);
/// Penalty time for a connection still unauthenticated at the end of the login grace time.
pub const PENALTY_GRACE: Duration = Duration::from_secs(20);
/// A source is refused once its penalty reaches this much...
pub const PENALTY_MIN: Duration = Duration::from_secs(15);
/// ...and never for longer than this.
pub const PENALTY_MAX: Duration = Duration::from_secs(600);
/// Sources tracked at once; beyond this, the oldest penalties are forgotten first.
const MAX_SOURCES: usize = 65_536;

/// `MaxStartups`-style limits, as configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub start: usize,
    /// Percent refused at `start`.
    pub rate: u32,
    pub full: usize,
    pub per_source: usize,
    /// Whether misbehaving sources are penalised.
    pub penalties: bool,
}

impl Limits {
    /// Parses `start:rate:full` (or a single number, which is `full`).
    pub fn parse_startups(s: &str) -> Result<(usize, u32, usize), StartupsError> {
        let bad = || StartupsError::Syntax(s.to_owned());
        let parts: Vec<&str> = s.trim().split(':').collect();
        let (start, rate, full) = match parts.as_slice() {
            [full] => {
                let f: usize = full.parse().map_err(|_| bad())?;
                (f, 100, f)
            }
            [start, rate, full] => (
                start.parse().map_err(|_| bad())?,
                rate.parse().map_err(|_| bad())?,
                full.parse().map_err(|_| bad())?,
            ),
            _ => return Err(bad()),
        };
        if start == 0 || full < start || rate > 100 {
            return Err(StartupsError::OutOfRange(s.to_owned()));
        }
        Ok((start, rate, full))
    }
}

/// Why a `max_startups` setting is not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartupsError {
    #[error("'{0}' is not START:RATE:FULL (e.g. 100:30:1000) or a number")]
    Syntax(String),
    #[error("'{0}': need 0 < START <= FULL and RATE between 0 and 100")]
    OutOfRange(String),
}

/// Why a new connection was refused at the door.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Refusal {
    /// Too many unauthenticated connections in all.
    MaxStartups,
    /// Too many unauthenticated connections from this source.
    PerSource,
    /// The source is serving a penalty.
    Penalty,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Refusal::MaxStartups => "connection limit reached",
            Refusal::PerSource => "per-source connection limit reached",
            Refusal::Penalty => "source penalised for earlier failed connections",
        })
    }
}

/// How an unauthenticated connection ended, for its source's penalty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Authenticated: no penalty.
    Authenticated,
    /// Closed without any attempt.
    NoAuth,
    /// Failed before the first factor.
    AuthFail,
    /// Still unauthenticated when the login grace time ran out.
    GraceExceeded,
    /// Failed after its certificate passed (a wrong TOTP code): the vendor's own backoff in the
    /// database handles that, the source is not penalised.
    SecondFactorFail,
}

#[derive(Default)]
struct State {
    unauthenticated: usize,
    per_source: HashMap<IpAddr, usize>,
    /// When each penalised source's penalty ends, and whether it has reached the minimum.
    penalties: HashMap<IpAddr, Penalty>,
}

#[derive(Clone, Copy)]
struct Penalty {
    until: Instant,
    /// Penalty time added since the entry last ran out.
    accrued: Duration,
    active: bool,
}

/// The admission controller of one listener.
pub struct Admission {
    limits: Limits,
    exempt: Vec<ipnet::IpNet>,
    state: Mutex<State>,
    pub tally: Tally,
}

impl Admission {
    pub fn new(limits: Limits, exempt: Vec<ipnet::IpNet>) -> Arc<Admission> {
        Arc::new(Admission {
            limits,
            exempt,
            state: Mutex::new(State::default()),
            tally: Tally::default(),
        })
    }

    /// Whether `ip` is in `penalty_exempt` (trusted: no per-source caps, penalties or audit budget).
    pub fn exempt(&self, ip: IpAddr) -> bool {
        self.exempt.iter().any(|n| n.contains(&ip))
    }

    /// Admits a new connection from `ip`, or says why not (and counts the refusal).
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Ticket, Refusal> {
        let verdict = self.try_admit(ip);
        if let Err(r) = verdict {
            self.tally.count(&r.to_string(), ip);
        }
        verdict
    }

    fn try_admit(self: &Arc<Self>, ip: IpAddr) -> Result<Ticket, Refusal> {
        let key = source_key(ip);
        let exempt = self.exempt(ip);
        let now = Instant::now();
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if !exempt && let Some(p) = st.penalties.get(&key).copied() {
            if now >= p.until {
                st.penalties.remove(&key);
            } else if p.active {
                return Err(Refusal::Penalty);
            }
        }
        let l = self.limits;
        if st.unauthenticated >= l.full {
            return Err(Refusal::MaxStartups);
        }
        if st.unauthenticated >= l.start {
            // Linear from `rate`% at start to 100% at full, as OpenSSH does.
            let span = (l.full - l.start).max(1) as f64;
            let over = (st.unauthenticated - l.start) as f64;
            let p = f64::from(l.rate) + (100.0 - f64::from(l.rate)) * over / span;
            if rand::random::<f64>() * 100.0 < p {
                return Err(Refusal::MaxStartups);
            }
        }
        let here = st.per_source.get(&key).copied().unwrap_or(0);
        if !exempt && here >= l.per_source {
            return Err(Refusal::PerSource);
        }
        st.unauthenticated += 1;
        *st.per_source.entry(key).or_insert(0) += 1;
        Ok(Ticket {
            admission: self.clone(),
            key,
            exempt,
            outcome: Outcome::NoAuth,
            released: false,
        })
    }

    fn release(&self, key: IpAddr) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.unauthenticated = st.unauthenticated.saturating_sub(1);
        if let Some(n) = st.per_source.get_mut(&key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                st.per_source.remove(&key);
            }
        }
    }

    fn penalise(&self, key: IpAddr, outcome: Outcome) {
        let add = match outcome {
            Outcome::NoAuth => PENALTY_NOAUTH,
            Outcome::AuthFail => PENALTY_AUTHFAIL,
            Outcome::GraceExceeded => PENALTY_GRACE,
            Outcome::Authenticated | Outcome::SecondFactorFail => return,
        };
        if !self.limits.penalties {
            return;
        }
        let now = Instant::now();
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.penalties.len() >= MAX_SOURCES && !st.penalties.contains_key(&key) {
            st.penalties.retain(|_, p| p.until > now);
            if st.penalties.len() >= MAX_SOURCES {
                // Still full of live penalties: forget the one that ends soonest.
                if let Some(k) = st
                    .penalties
                    .iter()
                    .min_by_key(|(_, p)| p.until)
                    .map(|(k, _)| *k)
                {
                    st.penalties.remove(&k);
                }
            }
        }
        let p = st.penalties.entry(key).or_insert(Penalty {
            until: now,
            accrued: Duration::ZERO,
            active: false,
        });
        if p.until <= now {
            *p = Penalty {
                until: now,
                accrued: Duration::ZERO,
                active: false,
            };
        }
        p.until = (p.until + add).min(now + PENALTY_MAX);
        p.accrued += add;
        if p.accrued >= PENALTY_MIN {
            p.active = true;
        }
    }

    /// Unauthenticated connections now (all sources).
    #[cfg(test)]
    pub fn unauthenticated(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .unauthenticated
    }
}

/// A connection's place among the unauthenticated ones. Dropping it frees the place and settles
/// the source's penalty according to the recorded outcome.
pub struct Ticket {
    admission: Arc<Admission>,
    key: IpAddr,
    exempt: bool,
    outcome: Outcome,
    released: bool,
}

impl Ticket {
    /// Records how the connection is going; the last word counts, except that authentication
    /// is final.
    pub fn set_outcome(&mut self, outcome: Outcome) {
        if self.outcome != Outcome::Authenticated {
            self.outcome = outcome;
        }
    }

    /// Both factors passed: the connection no longer counts as unauthenticated.
    pub fn authenticated(&mut self) {
        self.outcome = Outcome::Authenticated;
        if !self.released {
            self.released = true;
            self.admission.release(self.key);
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.released {
            self.admission.release(self.key);
        }
        if !self.exempt {
            self.admission.penalise(self.key, self.outcome);
        }
    }
}

/// How long to wait after `accept` failed before trying again: descriptors may come back as
/// sessions end. Never gives up: a listener that stops would close the door for everyone.
pub fn accept_backoff(consecutive_failures: u32) -> Duration {
    Duration::from_millis((10u64 << consecutive_failures.min(7)).min(1000))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            start: 4,
            rate: 100,
            full: 4,
            per_source: 2,
            penalties: true,
        }
    }

    #[test]
    fn caps_per_source_and_in_all() {
        let a = Admission::new(limits(), vec![]);
        let x: IpAddr = "192.0.2.1".parse().unwrap();
        let y: IpAddr = "192.0.2.2".parse().unwrap();
        let z: IpAddr = "192.0.2.3".parse().unwrap();
        let t1 = a.admit(x).unwrap();
        let mut t2 = a.admit(x).unwrap();
        assert_eq!(a.admit(x).err(), Some(Refusal::PerSource));
        let _t3 = a.admit(y).unwrap();
        let _t4 = a.admit(y).unwrap();
        assert_eq!(a.admit(z).err(), Some(Refusal::MaxStartups));
        // An authenticated connection frees its place at once.
        t2.authenticated();
        assert_eq!(a.unauthenticated(), 3);
        let _t5 = a.admit(z).unwrap();
        drop(t1);
        drop(t2);
        assert_eq!(a.unauthenticated(), 3);
        let s = a.tally.take().unwrap();
        assert_eq!(s["count"], 2);
        assert!(a.tally.take().is_none());
    }

    #[test]
    fn penalties_build_up_and_spare_exempt_sources() {
        let a = Admission::new(limits(), vec!["127.0.0.1/32".parse().unwrap()]);
        let x: IpAddr = "198.51.100.7".parse().unwrap();
        // Two authentication failures (10 s) stay under the minimum; the third (15 s) does not.
        for _ in 0..2 {
            let mut t = a.admit(x).unwrap();
            t.set_outcome(Outcome::AuthFail);
        }
        let mut t = a.admit(x).unwrap();
        t.set_outcome(Outcome::AuthFail);
        drop(t);
        assert_eq!(a.admit(x).err(), Some(Refusal::Penalty));
        // A wrong TOTP after a valid certificate is the vendor's backoff, not the source's.
        let y: IpAddr = "198.51.100.8".parse().unwrap();
        for _ in 0..5 {
            let mut t = a.admit(y).unwrap();
            t.set_outcome(Outcome::SecondFactorFail);
        }
        assert!(a.admit(y).is_ok());
        let me: IpAddr = "127.0.0.1".parse().unwrap();
        for _ in 0..5 {
            let mut t = a.admit(me).unwrap();
            t.set_outcome(Outcome::GraceExceeded);
        }
        assert!(a.admit(me).is_ok());
    }

    #[test]
    fn ipv6_sources_are_grouped_by_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        assert_eq!(source_key(a), source_key(b));
        let m: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(source_key(m), "192.0.2.1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn parses_startups() {
        assert_eq!(Limits::parse_startups("10:30:100"), Ok((10, 30, 100)));
        assert_eq!(Limits::parse_startups("50"), Ok((50, 100, 50)));
        assert!(Limits::parse_startups("0:30:10").is_err());
        assert!(Limits::parse_startups("10:130:100").is_err());
        assert!(Limits::parse_startups("100:30:10").is_err());
        assert!(Limits::parse_startups("a:b").is_err());
    }
}
