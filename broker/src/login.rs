//! The vendor login string (the OpenSSH user name): `VENDOR:SITE/DEVICE[:FUNCTION]`, or the same
//! as `VENDOR+SITE+DEVICE[+FUNCTION]`, which `scp`, `sftp` and `rsync` pass through unchanged (they
//! split `user@host:path` at the first colon). `VENDOR:requests` lists one's own access requests,
//! `VENDOR:renew` renews one's certificate, `VENDOR:config` prints an `~/.ssh/config` block, and
//! `enroll:CODE` enrols a key with a one-time code.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub vendor: String,
    pub site: String,
    pub device: String,
    pub function: Option<String>,
    /// A login for the vendor's own service rather than a device (site and device empty).
    pub service: Option<Service>,
}

/// What a `VENDOR:WORD` login asks for instead of a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// `VENDOR:requests`: the vendor's own access requests.
    Requests,
    /// `VENDOR:renew`: a fresh certificate for the key that logged in.
    Renew,
    /// `VENDOR:config`: an `~/.ssh/config` block for the vendor's current grants.
    Config,
    /// `VENDOR:web`: a one-time sign-in link to the device web UIs the vendor's grants reach.
    Web,
}

impl Service {
    fn word(self) -> &'static str {
        match self {
            Service::Requests => "requests",
            Service::Renew => "renew",
            Service::Config => "config",
            Service::Web => "web",
        }
    }

    fn of(word: &str) -> Option<Service> {
        [
            Service::Requests,
            Service::Renew,
            Service::Config,
            Service::Web,
        ]
        .into_iter()
        .find(|s| s.word() == word)
    }
}

impl Target {
    /// `VENDOR:requests`: no device, only the vendor's list of requests.
    pub fn is_requests_listing(&self) -> bool {
        self.service == Some(Service::Requests)
    }

    /// The `+` spelling of a device login (`VENDOR+SITE+DEVICE[+FUNCTION]`).
    pub fn plus_spelling(&self) -> String {
        let mut s = format!("{}+{}+{}", self.vendor, self.site, self.device);
        if let Some(f) = &self.function {
            s.push('+');
            s.push_str(f);
        }
        s
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(service) = self.service {
            return write!(f, "{}:{}", self.vendor, service.word());
        }
        write!(f, "{}:{}/{}", self.vendor, self.site, self.device)?;
        if let Some(func) = &self.function {
            write!(f, ":{func}")?;
        }
        Ok(())
    }
}

fn valid(part: &str) -> bool {
    !part.is_empty()
        && part.len() <= 64
        && part
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// A login string that is not of the expected shape; `Display` shows it (escaped, so control
/// characters typed as a user name cannot reach a terminal or a log line raw).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("login '{}' is not VENDOR:SITE/DEVICE[:FUNCTION] or VENDOR+SITE+DEVICE[+FUNCTION]", .0.escape_debug())]
pub struct BadLogin(String);

/// The prefix of an enrolment login, `enroll:CODE`.
pub const ENROL_PREFIX: &str = "enroll:";

/// The code of an `enroll:CODE` login, if the user name is one (the code is checked later).
pub fn enrolment_code(user: &str) -> Option<&str> {
    user.strip_prefix(ENROL_PREFIX)
}

/// Parses a login string; the error says what the expected shape is.
pub fn parse(user: &str) -> Result<Target, BadLogin> {
    let bad = || BadLogin(user.to_owned());
    if !user.contains(':') && user.contains('+') {
        return parse_plus(user).ok_or_else(bad);
    }
    let (vendor, rest) = user.split_once(':').ok_or_else(bad)?;
    if let Some(service) = Service::of(rest).filter(|_| valid(vendor)) {
        return Ok(Target {
            vendor: vendor.into(),
            site: String::new(),
            device: String::new(),
            function: None,
            service: Some(service),
        });
    }
    let (site, rest) = rest.split_once('/').ok_or_else(bad)?;
    let (device, function) = match rest.split_once(':') {
        Some((d, f)) => (d, Some(f)),
        None => (rest, None),
    };
    if ![vendor, site, device].iter().all(|p| valid(p)) || function.is_some_and(|f| !valid(f)) {
        return Err(bad());
    }
    Ok(Target {
        vendor: vendor.into(),
        site: site.into(),
        device: device.into(),
        function: function.map(Into::into),
        service: None,
    })
}

/// `VENDOR+SITE+DEVICE[+FUNCTION]`.
fn parse_plus(user: &str) -> Option<Target> {
    let parts: Vec<&str> = user.split('+').collect();
    if !(3..=4).contains(&parts.len()) || !parts.iter().all(|p| valid(p)) {
        return None;
    }
    Some(Target {
        vendor: parts[0].into(),
        site: parts[1].into(),
        device: parts[2].into(),
        function: parts.get(3).map(|f| (*f).into()),
        service: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_login_strings() {
        let t = parse("alice:store-0421/cam-01").unwrap();
        assert_eq!(
            (
                t.vendor.as_str(),
                t.site.as_str(),
                t.device.as_str(),
                t.function
            ),
            ("alice", "store-0421", "cam-01", None)
        );
        let t = parse("alice:s/d:hvac-maint").unwrap();
        assert_eq!(t.function.as_deref(), Some("hvac-maint"));
        assert_eq!(t.to_string(), "alice:s/d:hvac-maint");
        let r = parse("alice:requests").unwrap();
        assert!(r.is_requests_listing());
        assert_eq!(r.to_string(), "alice:requests");
        assert!(!parse("alice:s/d").unwrap().is_requests_listing());
        for bad in [
            "alice",
            "alice:site",
            "alice:/d",
            ":s/d",
            "a:s/d:",
            "a:s/d:f:g",
            "a b:s/d",
            "a:s/d/e",
            "a:s/\u{1b}[2J",
        ] {
            assert!(parse(bad).is_err(), "{bad} should be refused");
        }
        assert_eq!(
            parse("a:s/\u{1b}[2J").unwrap_err().to_string(),
            "login 'a:s/\\u{1b}[2J' is not VENDOR:SITE/DEVICE[:FUNCTION] or VENDOR+SITE+DEVICE[+FUNCTION]"
        );
    }

    #[test]
    fn parses_the_plus_spelling_and_services() {
        let t = parse("alice+store-0421+cam-01").unwrap();
        assert_eq!(t, parse("alice:store-0421/cam-01").unwrap());
        let t = parse("alice+s+d+hvac-maint").unwrap();
        assert_eq!(t.function.as_deref(), Some("hvac-maint"));
        assert_eq!(t.plus_spelling(), "alice+s+d+hvac-maint");
        assert_eq!(t.to_string(), "alice:s/d:hvac-maint");
        for bad in ["alice+s", "a+s+d+f+g", "a++d", "a+s+d+", "a+s/d+x"] {
            assert!(parse(bad).is_err(), "{bad} should be refused");
        }
        assert_eq!(parse("alice:renew").unwrap().service, Some(Service::Renew));
        assert_eq!(parse("alice:config").unwrap().to_string(), "alice:config");
        assert_eq!(parse("alice:web").unwrap().service, Some(Service::Web));
        assert!(parse(":renew").is_err());
        assert_eq!(enrolment_code("enroll:ab-cd"), Some("ab-cd"));
        assert_eq!(enrolment_code("alice:renew"), None);
    }
}
