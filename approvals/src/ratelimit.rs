//! Failed-attempt rate limiting per key (a source address, or a name at a source), in memory on
//! one broker node: used by the SSH front door and the web sign-in for failures *before* the
//! first factor. Failures after it go to the `lockout` module, in the database.
//!
//! State is bounded and expires: each key keeps at most `max_failures` instants within the
//! window, empty keys are removed, and at most `max_keys` keys are kept (a flood of new keys
//! evicts expired ones first, then the stalest). Refused attempts are not counted: a lock ends
//! when the window passes, however often a stranger knocks.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct RateLimiter {
    window: Duration,
    max_failures: usize,
    max_keys: usize,
    failures: Mutex<HashMap<String, VecDeque<Instant>>>,
}

/// Keys longer than this are cut before they are stored (a name is at most 64 characters).
const MAX_KEY: usize = 200;

fn key_of(key: &str) -> &str {
    match key.char_indices().nth(MAX_KEY) {
        Some((i, _)) => &key[..i],
        None => key,
    }
}

impl RateLimiter {
    pub fn new(window: Duration, max_failures: usize, max_keys: usize) -> RateLimiter {
        RateLimiter {
            window,
            max_failures: max_failures.max(1),
            max_keys: max_keys.max(1),
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Whether another attempt is allowed for `key`.
    pub fn allowed(&self, key: &str) -> bool {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        self.allowed_in(&mut map, key)
    }

    /// Whether another attempt is allowed for `key`, and if so counts it as a failure, under one
    /// lock: of parallel attempts, no more than the limit get through (checking with
    /// [`RateLimiter::allowed`] and then counting with [`RateLimiter::failed`] lets two pass at
    /// the last free place). [`RateLimiter::forgive`] takes it back.
    pub fn attempt(&self, key: &str) -> bool {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if !self.allowed_in(&mut map, key) {
            return false;
        }
        self.failed_in(&mut map, key);
        true
    }

    fn allowed_in(&self, map: &mut HashMap<String, VecDeque<Instant>>, key: &str) -> bool {
        let now = Instant::now();
        let k = key_of(key);
        let Some(q) = map.get_mut(k) else { return true };
        while q
            .front()
            .is_some_and(|t| now.duration_since(*t) > self.window)
        {
            q.pop_front();
        }
        let n = q.len();
        if n == 0 {
            map.remove(k);
        }
        n < self.max_failures
    }

    /// Counts one failure for `key`.
    pub fn failed(&self, key: &str) {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        self.failed_in(&mut map, key);
    }

    fn failed_in(&self, map: &mut HashMap<String, VecDeque<Instant>>, key: &str) {
        let now = Instant::now();
        let k = key_of(key);
        if !map.contains_key(k) && map.len() >= self.max_keys {
            let window = self.window;
            map.retain(|_, q| q.back().is_some_and(|t| now.duration_since(*t) <= window));
            if map.len() >= self.max_keys {
                // Still full of live keys: forget the stalest.
                if let Some(stale) = map
                    .iter()
                    .min_by_key(|(_, q)| q.back().copied())
                    .map(|(k, _)| k.clone())
                {
                    map.remove(&stale);
                }
            }
        }
        let q = map.entry(k.to_owned()).or_default();
        q.push_back(now);
        while q.len() > self.max_failures {
            q.pop_front();
        }
    }

    /// Takes back the newest failure counted for `key`: for callers that count an attempt before
    /// it is decided (so that parallel attempts cannot all pass `allowed`) and then see it succeed.
    pub fn forgive(&self, key: &str) {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let k = key_of(key);
        if let Some(q) = map.get_mut(k) {
            q.pop_back();
            if q.is_empty() {
                map.remove(k);
            }
        }
    }

    /// Keys held now (for tests of the memory bound).
    pub fn len(&self) -> usize {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// How many detailed audit events about clients that have not authenticated are written per
/// minute, per source (an address or an IPv6 /64) and in all. Past that, attempts are only
/// counted into the periodic summary ([`crate::audit::Tally`]): the audit log names what
/// happened without letting a flood of strangers fill the disk.
pub struct EventBudget {
    per_source: RateLimiter,
    all: RateLimiter,
}

impl EventBudget {
    pub fn new(per_source_per_minute: usize, all_per_minute: usize) -> EventBudget {
        EventBudget {
            per_source: RateLimiter::new(Duration::from_secs(60), per_source_per_minute, 100_000),
            all: RateLimiter::new(Duration::from_secs(60), all_per_minute, 1),
        }
    }

    /// Whether one more detailed event about `ip` may be written now (and, if so, counts it).
    pub fn allow(&self, ip: std::net::IpAddr) -> bool {
        let key = crate::audit::source_key(ip).to_string();
        // Checked and counted in one step each: parallel callers cannot overshoot the budget.
        let by_source = self.per_source.attempt(&key);
        let allowed = by_source && self.all.attempt("all");
        if by_source && !allowed {
            self.per_source.forgive(&key);
        }
        allowed
    }
}

impl Default for EventBudget {
    /// 10 per source and 300 in all per minute: at most a few hundred kilobytes a minute.
    fn default() -> Self {
        EventBudget::new(10, 300)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parallel_attempts_never_pass_more_than_the_limit() {
        let rl = std::sync::Arc::new(RateLimiter::new(Duration::from_secs(60), 20, 100));
        let passed = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (rl, passed) = (rl.clone(), passed.clone());
                std::thread::spawn(move || {
                    for _ in 0..10 {
                        if rl.attempt("s:1.2.3.4") {
                            passed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(passed.load(std::sync::atomic::Ordering::SeqCst), 20);
    }

    #[test]
    fn limits_per_key() {
        let rl = RateLimiter::new(Duration::from_secs(60), 3, 100);
        for _ in 0..3 {
            assert!(rl.allowed("s:1.1.1.1"));
            rl.failed("s:1.1.1.1");
        }
        assert!(!rl.allowed("s:1.1.1.1"));
        assert!(rl.allowed("s:2.2.2.2"));
        rl.forgive("s:1.1.1.1");
        assert!(rl.allowed("s:1.1.1.1"));
    }

    #[test]
    fn state_is_bounded_and_expires() {
        let rl = RateLimiter::new(Duration::from_millis(50), 3, 100);
        for i in 0..1000 {
            rl.failed(&format!("n:{i}{}", "x".repeat(10_000)));
        }
        assert!(rl.len() <= 100, "{} keys", rl.len());
        for _ in 0..10 {
            rl.failed("s:9.9.9.9");
        }
        std::thread::sleep(Duration::from_millis(80));
        assert!(rl.allowed("s:9.9.9.9"), "the lock ends with the window");
        // Expired keys are dropped when room is needed.
        rl.failed("s:new-1");
        rl.failed("s:new-2");
        assert!(rl.len() <= 2, "{} keys", rl.len());
    }

    #[test]
    fn event_budget_caps_per_source_and_in_all() {
        let b = EventBudget::new(2, 3);
        let x: std::net::IpAddr = "192.0.2.1".parse().unwrap();
        let y: std::net::IpAddr = "2001:db8::1".parse().unwrap();
        let y2: std::net::IpAddr = "2001:db8::2".parse().unwrap();
        assert!(b.allow(x) && b.allow(x));
        assert!(!b.allow(x), "per source");
        assert!(b.allow(y));
        assert!(!b.allow(y2), "in all");
    }
}
