//! The vendor login string: `VENDOR:SITE/DEVICE[:FUNCTION]` (the OpenSSH user name), or
//! `VENDOR:requests` to list one's own access requests.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub vendor: String,
    pub site: String,
    pub device: String,
    pub function: Option<String>,
}

impl Target {
    /// `VENDOR:requests`: no device, only the vendor's list of requests.
    pub fn is_requests_listing(&self) -> bool {
        self.site.is_empty()
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_requests_listing() {
            return write!(f, "{}:requests", self.vendor);
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
#[error("login '{}' is not VENDOR:SITE/DEVICE[:FUNCTION]", .0.escape_debug())]
pub struct BadLogin(String);

/// Parses a login string; the error says what the expected shape is.
pub fn parse(user: &str) -> Result<Target, BadLogin> {
    let bad = || BadLogin(user.to_owned());
    let (vendor, rest) = user.split_once(':').ok_or_else(bad)?;
    if rest == "requests" && valid(vendor) {
        return Ok(Target {
            vendor: vendor.into(),
            site: String::new(),
            device: String::new(),
            function: None,
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
            "login 'a:s/\\u{1b}[2J' is not VENDOR:SITE/DEVICE[:FUNCTION]"
        );
    }
}
