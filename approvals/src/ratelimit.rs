//! Failed-authentication rate limiting per user (vendor or approver) and per source address (per
//! broker node): used by the SSH front door and the web sign-in.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct RateLimiter {
    window: Duration,
    per_vendor: usize,
    per_source: usize,
    failures: Mutex<HashMap<String, VecDeque<Instant>>>,
}

impl RateLimiter {
    pub fn new(window: Duration, per_vendor: usize, per_source: usize) -> RateLimiter {
        RateLimiter {
            window,
            per_vendor,
            per_source,
            failures: Mutex::new(HashMap::new()),
        }
    }

    fn count(&self, key: &str, now: Instant) -> usize {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let Some(q) = map.get_mut(key) else { return 0 };
        while q
            .front()
            .is_some_and(|t| now.duration_since(*t) > self.window)
        {
            q.pop_front();
        }
        let n = q.len();
        if n == 0 {
            map.remove(key);
        }
        n
    }

    /// Whether another attempt is allowed for this vendor from this source.
    pub fn allowed(&self, vendor: &str, source: &str) -> bool {
        let now = Instant::now();
        self.count(&format!("v:{vendor}"), now) < self.per_vendor
            && self.count(&format!("s:{source}"), now) < self.per_source
    }

    pub fn failed(&self, vendor: &str, source: &str) {
        let now = Instant::now();
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        for key in [format!("v:{vendor}"), format!("s:{source}")] {
            map.entry(key).or_default().push_back(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_per_vendor_and_per_source() {
        let rl = RateLimiter::new(Duration::from_secs(60), 3, 5);
        for _ in 0..3 {
            assert!(rl.allowed("alice", "1.1.1.1"));
            rl.failed("alice", "1.1.1.1");
        }
        assert!(
            !rl.allowed("alice", "2.2.2.2"),
            "vendor limit holds across sources"
        );
        assert!(rl.allowed("bob", "2.2.2.2"));
        rl.failed("bob", "1.1.1.1");
        rl.failed("carol", "1.1.1.1");
        assert!(
            !rl.allowed("dave", "1.1.1.1"),
            "source limit holds across vendors"
        );
    }
}
