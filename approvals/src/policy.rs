//! The policy decision: one pure function from facts and a request to allow or deny.

use serde::Serialize;

pub use crate::model::Facts;
use crate::model::{Channel, Device, Grant};
use crate::store::{Store, StoreError, deadline};
use crate::time::{fmt_time, now};

/// Who asks for what. `function` is `None` when the login string omitted it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AccessRequest {
    pub vendor: String,
    pub site: String,
    pub device: String,
    pub function: Option<String>,
    /// `None` at session start (before any channel), then each channel as it is opened.
    pub channel: Option<Channel>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum Decision {
    Allow {
        grant: String,
        function: String,
        window_end: i64,
        /// The device account the broker logs in with.
        login: String,
    },
    Deny {
        reason: Deny,
    },
}

/// Why access is refused. `Display` is the one plain line the vendor sees.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "why", rename_all = "snake_case")]
pub enum Deny {
    UnknownVendor,
    VendorDisabled,
    ContractEnded {
        at: i64,
    },
    UnknownSite {
        site: String,
    },
    UnknownDevice {
        site: String,
        device: String,
    },
    UnknownFunction {
        function: String,
    },
    NoGrant {
        site: String,
        function: Option<String>,
    },
    NotYetOpen {
        function: String,
        from: i64,
    },
    WindowEnded {
        function: String,
        at: i64,
    },
    Revoked {
        grant: String,
        at: i64,
    },
    AmbiguousFunction {
        functions: Vec<String>,
    },
    ChannelNotAllowed {
        channel: String,
        function: String,
    },
    /// The vendor holds a grant at the site, but for other devices than the one asked for.
    DeviceNotCovered {
        grant: String,
        site: String,
        device: String,
        /// The devices the grant does cover.
        covers: Vec<String>,
    },
    /// At an edge: its policy is past the offline grace (it has not heard from the central).
    PolicyStale {
        since: i64,
    },
    /// At an edge: the evidence waiting to be shipped is over `edge_buffer_max`.
    EvidenceBufferFull,
}

impl Deny {
    /// The reason's name, as serialised (`why`): a label with a fixed set of values, for metrics.
    pub fn code(&self) -> &'static str {
        match self {
            Deny::UnknownVendor => "unknown_vendor",
            Deny::VendorDisabled => "vendor_disabled",
            Deny::ContractEnded { .. } => "contract_ended",
            Deny::UnknownSite { .. } => "unknown_site",
            Deny::UnknownDevice { .. } => "unknown_device",
            Deny::UnknownFunction { .. } => "unknown_function",
            Deny::NoGrant { .. } => "no_grant",
            Deny::NotYetOpen { .. } => "not_yet_open",
            Deny::WindowEnded { .. } => "window_ended",
            Deny::Revoked { .. } => "revoked",
            Deny::AmbiguousFunction { .. } => "ambiguous_function",
            Deny::ChannelNotAllowed { .. } => "channel_not_allowed",
            Deny::DeviceNotCovered { .. } => "device_not_covered",
            Deny::PolicyStale { .. } => "policy_stale",
            Deny::EvidenceBufferFull => "evidence_buffer_full",
        }
    }
}

impl std::fmt::Display for Deny {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Deny::UnknownVendor => f.write_str("access denied: unknown vendor"),
            Deny::VendorDisabled => f.write_str("access denied: this vendor account is disabled"),
            Deny::ContractEnded { at } => {
                write!(f, "access denied: contract ended at {}", fmt_time(*at))
            }
            Deny::UnknownSite { site } => write!(f, "access denied: no site named {site}"),
            Deny::UnknownDevice { site, device } => {
                write!(f, "access denied: no device {device} at {site}")
            }
            Deny::UnknownFunction { function } => {
                write!(f, "access denied: no function named {function}")
            }
            Deny::NoGrant {
                site,
                function: Some(func),
            } => {
                write!(f, "access denied: no grant for {site} and function {func}")
            }
            Deny::NoGrant {
                site,
                function: None,
            } => write!(f, "access denied: no grant for {site}"),
            Deny::NotYetOpen { function, from } => {
                write!(
                    f,
                    "access denied: the {function} window does not open until {}",
                    fmt_time(*from)
                )
            }
            Deny::WindowEnded { function, at } => {
                write!(
                    f,
                    "access denied: the {function} window ended at {}",
                    fmt_time(*at)
                )
            }
            Deny::Revoked { grant, at } => write!(
                f,
                "access denied: grant {grant} was revoked at {}",
                fmt_time(*at)
            ),
            Deny::AmbiguousFunction { functions } => write!(
                f,
                "access denied: several functions are granted ({}): add :FUNCTION to the login",
                functions.join(", ")
            ),
            Deny::ChannelNotAllowed { channel, function } => {
                write!(
                    f,
                    "access denied: {channel} is not allowed by function {function}"
                )
            }
            Deny::DeviceNotCovered {
                grant,
                site,
                device,
                covers,
            } => {
                let covered: Vec<String> = covers.iter().map(|d| format!("{site}/{d}")).collect();
                write!(
                    f,
                    "access denied: grant {grant} covers {} only, not {site}/{device}",
                    covered.join(", ")
                )
            }
            Deny::EvidenceBufferFull => f.write_str(
                "access denied: this site's evidence buffer is full (its recordings cannot reach the central yet); no new sessions until it drains",
            ),
            Deny::PolicyStale { since } => write!(
                f,
                "access denied: this site's policy is past its offline grace since {} (the site has not heard from the central); only break-glass of an offline-ok function opens now",
                fmt_time(*since)
            ),
        }
    }
}

impl Decision {
    fn deny(reason: Deny) -> Decision {
        Decision::Deny { reason }
    }
}

/// Decides whether `req` may proceed at `now`. Deny unless every check passes.
pub fn decide(req: &AccessRequest, facts: &Facts, now: i64) -> Decision {
    match allow(req, facts, now) {
        Ok(allowed) => allowed,
        Err(reason) => Decision::deny(reason),
    }
}

/// [`decide`], with the first failed check as the error.
fn allow(req: &AccessRequest, facts: &Facts, now: i64) -> Result<Decision, Deny> {
    let device = target(req, facts, now)?;
    // Fail-secure: a session whose evidence could not be kept does not start.
    if facts.evidence_buffer_full {
        return Err(Deny::EvidenceBufferFull);
    }
    let grant = grant(req, facts, now)?;
    let Some(function) = facts.functions.get(&grant.function) else {
        return Err(Deny::UnknownFunction {
            function: grant.function.clone(),
        });
    };
    // Offline past the grace: only what was pre-approved for that opens, as break-glass.
    if let Some(until) = facts.policy_fresh_until
        && now > until
        && !(grant.granted_by == "break-glass" && function.offline_ok)
    {
        return Err(Deny::PolicyStale { since: until });
    }
    if let Some(channel) = req.channel
        && !function.channels().allows(channel)
    {
        return Err(Deny::ChannelNotAllowed {
            channel: channel.to_string(),
            function: function.name.clone(),
        });
    }
    Ok(Decision::Allow {
        grant: grant.id.clone(),
        function: function.name.clone(),
        window_end: grant.valid_until,
        login: function
            .login
            .clone()
            .unwrap_or_else(|| device.login.clone()),
    })
}

/// The vendor may still come in, and the site, device and function asked for exist.
fn target<'f>(req: &AccessRequest, facts: &'f Facts, now: i64) -> Result<&'f Device, Deny> {
    let Some(vendor) = facts.vendor.as_ref().filter(|v| v.name == req.vendor) else {
        return Err(Deny::UnknownVendor);
    };
    if vendor.is_disabled() {
        return Err(Deny::VendorDisabled);
    }
    if let Some(end) = vendor.contract_end.filter(|end| now >= *end) {
        return Err(Deny::ContractEnded { at: end });
    }
    if !facts.site_exists {
        return Err(Deny::UnknownSite {
            site: req.site.clone(),
        });
    }
    let Some(device) = facts
        .device
        .as_ref()
        .filter(|d| d.site == req.site && d.name == req.device)
    else {
        return Err(Deny::UnknownDevice {
            site: req.site.clone(),
            device: req.device.clone(),
        });
    };
    if let Some(func) = &req.function
        && !facts.functions.contains_key(func)
    {
        return Err(Deny::UnknownFunction {
            function: func.clone(),
        });
    }
    Ok(device)
}

/// The one active grant that opens the device for the vendor: of several for one function, the
/// one that lasts longest; grants for several functions at once are ambiguous.
fn grant<'f>(req: &AccessRequest, facts: &'f Facts, now: i64) -> Result<&'f Grant, Deny> {
    let relevant: Vec<&Grant> = facts
        .grants
        .iter()
        .filter(|g| g.vendor == req.vendor && g.site == req.site)
        .filter(|g| req.function.as_ref().is_none_or(|f| &g.function == f))
        .collect();
    // Only grants that name the device (or the whole site) open it.
    let covering: Vec<&Grant> = relevant
        .iter()
        .copied()
        .filter(|g| g.covers(&req.device))
        .collect();
    let active: Vec<&Grant> = covering
        .iter()
        .copied()
        .filter(|g| g.is_active(now))
        .collect();

    let mut functions: Vec<String> = active.iter().map(|g| g.function.clone()).collect();
    functions.sort();
    functions.dedup();
    if functions.len() > 1 {
        return Err(Deny::AmbiguousFunction { functions });
    }
    if let Some(grant) = active.iter().max_by_key(|g| g.valid_until) {
        return Ok(grant);
    }
    if let Some(other) = not_covering(&relevant, &covering, now) {
        return Err(Deny::DeviceNotCovered {
            grant: other.id.clone(),
            site: req.site.clone(),
            device: req.device.clone(),
            covers: other.device_list(),
        });
    }
    Err(explain_no_active(req, &covering, now))
}

/// What the policy allowed: the grant and function a session runs under, the end of its window,
/// and the device account the broker logs in with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowed {
    pub grant: String,
    pub function: String,
    pub window_end: i64,
    pub login: String,
    /// The vendor's contract end, if any: a live session ends at it too.
    pub contract_end: Option<i64>,
}

/// Why the gate let nothing through: the policy said no, or no decision could be made.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// The policy's answer; `Display` is the vendor's line.
    #[error("{0}")]
    Deny(Deny),
    /// The facts could not be loaded within [`crate::store::DEADLINE`]: an outage, not a denial,
    /// so callers must not treat it as one (no request dialogue, no `session.denied`).
    #[error("control plane unavailable: {0}")]
    Unavailable(#[source] StoreError),
}

/// The one place the broker asks the policy (session start, the request dialogue, every channel,
/// the periodic re-check): loads the facts within the database deadline, then [`decide`]s.
#[derive(Debug, Clone, Copy)]
pub struct PolicyGate<'a> {
    store: &'a Store,
}

impl<'a> PolicyGate<'a> {
    pub fn new(store: &'a Store) -> PolicyGate<'a> {
        PolicyGate { store }
    }

    /// Decides `req` now (the clock is read after the facts arrive, so a slow database cannot
    /// stretch a window that ended meanwhile).
    pub async fn check(&self, req: &AccessRequest) -> Result<Allowed, Refusal> {
        let facts = self.facts(req).await?;
        verdict(decide(req, &facts, now()), &facts)
    }

    /// Decides `req` as of `at`.
    pub async fn check_at(&self, req: &AccessRequest, at: i64) -> Result<Allowed, Refusal> {
        let facts = self.facts(req).await?;
        verdict(decide(req, &facts, at), &facts)
    }

    async fn facts(&self, req: &AccessRequest) -> Result<Facts, Refusal> {
        deadline(
            self.store
                .facts(&req.vendor, &req.site, &req.device, req.function.as_deref()),
        )
        .await
        .map_err(Refusal::Unavailable)
    }
}

fn verdict(decision: Decision, facts: &Facts) -> Result<Allowed, Refusal> {
    match decision {
        Decision::Allow {
            grant,
            function,
            window_end,
            login,
        } => Ok(Allowed {
            grant,
            function,
            window_end,
            login,
            contract_end: facts.vendor.as_ref().and_then(|v| v.contract_end),
        }),
        Decision::Deny { reason } => Err(Refusal::Deny(reason)),
    }
}

/// When no grant covering the device is active: a grant for other devices of the site to name
/// instead, if that says more. An active one comes first (the vendor has access, only not to this
/// device); failing that, when no grant covers the device at all, the latest made.
fn not_covering<'g>(relevant: &[&'g Grant], covering: &[&Grant], now: i64) -> Option<&'g Grant> {
    let others = relevant.iter().copied().filter(|g| !g.whole_site());
    if let Some(g) = others
        .clone()
        .filter(|g| g.is_active(now))
        .max_by_key(|g| g.valid_until)
    {
        return Some(g);
    }
    if covering.is_empty() {
        return others.max_by_key(|g| (g.created, g.valid_until));
    }
    None
}

/// The most useful explanation when no grant is active: the next window to open, else the most
/// recent one to have ended or been revoked.
fn explain_no_active(req: &AccessRequest, relevant: &[&Grant], now: i64) -> Deny {
    let live = relevant.iter().filter(|g| g.revoked_at.is_none());
    if let Some(next) = live
        .clone()
        .filter(|g| g.valid_from > now)
        .min_by_key(|g| g.valid_from)
    {
        return Deny::NotYetOpen {
            function: next.function.clone(),
            from: next.valid_from,
        };
    }
    let ended = live
        .filter(|g| g.valid_until <= now)
        .max_by_key(|g| g.valid_until);
    let revoked = relevant
        .iter()
        .filter_map(|g| g.revoked_at.map(|at| (g, at)))
        .max_by_key(|(_, at)| *at);
    match (ended, revoked) {
        (Some(e), Some((r, at))) if at > e.valid_until => Deny::Revoked {
            grant: r.id.clone(),
            at,
        },
        (Some(e), _) => Deny::WindowEnded {
            function: e.function.clone(),
            at: e.valid_until,
        },
        (None, Some((r, at))) => Deny::Revoked {
            grant: r.id.clone(),
            at,
        },
        (None, None) => Deny::NoGrant {
            site: req.site.clone(),
            function: req.function.clone(),
        },
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn denial_codes_are_the_serialised_reasons() {
        for d in [
            Deny::UnknownVendor,
            Deny::ContractEnded { at: 0 },
            Deny::NoGrant {
                site: "s".into(),
                function: None,
            },
            Deny::WindowEnded {
                function: "f".into(),
                at: 0,
            },
            Deny::DeviceNotCovered {
                grant: "g".into(),
                site: "s".into(),
                device: "d".into(),
                covers: vec![],
            },
            Deny::EvidenceBufferFull,
        ] {
            assert_eq!(serde_json::to_value(&d).unwrap()["why"], d.code());
        }
    }
    use crate::model::CredentialKind;
    use crate::model::{Function, Vendor};

    const NOW: i64 = 1_000_000;

    fn facts() -> Facts {
        let vendor = Vendor {
            name: "alice".into(),
            org: "acme".into(),
            contract_end: None,
            disabled: false,
            totp_secret: String::new(),
            totp_last_step: -1,
            created: 0,
        };
        let device = Device {
            site: "s1".into(),
            name: "cam".into(),
            addr: "127.0.0.1:22".into(),
            login: "root".into(),
            credential_kind: CredentialKind::Password,
            credential: "x".into(),
            host_key: String::new(),
            created: 0,
        };
        let func = |name: &str, allow: &str, login: Option<&str>| Function {
            name: name.into(),
            allow: allow.into(),
            login: login.map(Into::into),
            max_window: 3600,
            emergency: false,
            created: 0,
            emergency_orgs: String::new(),
            offline_ok: false,
        };
        let mut functions = HashMap::new();
        functions.insert("maint".into(), func("maint", "shell,exec", Some("maint")));
        functions.insert("fw".into(), func("fw", "sftp,forward:8080", None));
        Facts {
            vendor: Some(vendor),
            site_exists: true,
            device: Some(device),
            grants: vec![],
            functions,
            policy_fresh_until: None,
            evidence_buffer_full: false,
        }
    }

    fn grant(id: &str, function: &str, from: i64, until: i64) -> Grant {
        Grant {
            id: id.into(),
            vendor: "alice".into(),
            site: "s1".into(),
            function: function.into(),
            valid_from: from,
            valid_until: until,
            granted_by: "op".into(),
            reason: String::new(),
            created: 0,
            revoked_at: None,
            revoked_by: None,
            devices: String::new(),
        }
    }

    fn grant_for(id: &str, devices: &str, from: i64, until: i64) -> Grant {
        Grant {
            devices: devices.into(),
            ..grant(id, "maint", from, until)
        }
    }

    fn req(function: Option<&str>, channel: Option<Channel>) -> AccessRequest {
        AccessRequest {
            vendor: "alice".into(),
            site: "s1".into(),
            device: "cam".into(),
            function: function.map(Into::into),
            channel,
        }
    }

    fn reason(d: Decision) -> Deny {
        match d {
            Decision::Deny { reason } => reason,
            other => panic!("expected deny, got {other:?}"),
        }
    }

    #[test]
    fn allows_inside_the_window_with_the_function_login() {
        let mut f = facts();
        f.grants.push(grant("g1", "maint", NOW - 10, NOW + 10));
        let d = decide(&req(None, Some(Channel::Shell)), &f, NOW);
        assert_eq!(
            d,
            Decision::Allow {
                grant: "g1".into(),
                function: "maint".into(),
                window_end: NOW + 10,
                login: "maint".into()
            }
        );
        // The device's own login when the function names none.
        f.grants = vec![grant("g2", "fw", NOW - 10, NOW + 10)];
        let d = decide(&req(Some("fw"), Some(Channel::Forward(8080))), &f, NOW);
        assert!(matches!(d, Decision::Allow { ref login, .. } if login == "root"));
    }

    #[test]
    fn window_edges() {
        let mut f = facts();
        f.grants.push(grant("g1", "maint", NOW, NOW + 10));
        assert!(matches!(
            decide(&req(None, None), &f, NOW),
            Decision::Allow { .. }
        ));
        assert_eq!(
            reason(decide(&req(None, None), &f, NOW - 1)),
            Deny::NotYetOpen {
                function: "maint".into(),
                from: NOW
            }
        );
        assert_eq!(
            reason(decide(&req(None, None), &f, NOW + 10)),
            Deny::WindowEnded {
                function: "maint".into(),
                at: NOW + 10
            }
        );
    }

    #[test]
    fn denials_say_what_is_missing() {
        let mut f = facts();
        assert_eq!(
            reason(decide(&req(None, None), &f, NOW)),
            Deny::NoGrant {
                site: "s1".into(),
                function: None
            }
        );
        assert_eq!(
            reason(decide(&req(Some("nope"), None), &f, NOW)),
            Deny::UnknownFunction {
                function: "nope".into()
            }
        );
        f.grants.push(grant("g1", "maint", NOW - 10, NOW + 10));
        assert_eq!(
            reason(decide(&req(Some("fw"), None), &f, NOW)),
            Deny::NoGrant {
                site: "s1".into(),
                function: Some("fw".into())
            }
        );
        assert_eq!(
            reason(decide(&req(None, Some(Channel::Sftp)), &f, NOW)),
            Deny::ChannelNotAllowed {
                channel: "sftp".into(),
                function: "maint".into()
            }
        );
        f.grants.push(grant("g2", "fw", NOW - 10, NOW + 10));
        assert_eq!(
            reason(decide(&req(None, None), &f, NOW)),
            Deny::AmbiguousFunction {
                functions: vec!["fw".into(), "maint".into()]
            }
        );
        assert!(matches!(
            decide(&req(Some("fw"), Some(Channel::Sftp)), &f, NOW),
            Decision::Allow { .. }
        ));
        assert_eq!(
            reason(decide(
                &req(Some("fw"), Some(Channel::Forward(22))),
                &f,
                NOW
            )),
            Deny::ChannelNotAllowed {
                channel: "forward:22".into(),
                function: "fw".into()
            }
        );
    }

    #[test]
    fn vendor_state_comes_first() {
        let mut f = facts();
        f.grants.push(grant("g1", "maint", NOW - 10, NOW + 10));
        f.vendor.as_mut().unwrap().contract_end = Some(NOW);
        assert_eq!(
            reason(decide(&req(None, None), &f, NOW)),
            Deny::ContractEnded { at: NOW }
        );
        f.vendor.as_mut().unwrap().disabled = true;
        assert_eq!(
            reason(decide(&req(None, None), &f, NOW)),
            Deny::VendorDisabled
        );
        f.vendor = None;
        assert_eq!(
            reason(decide(&req(None, None), &f, NOW)),
            Deny::UnknownVendor
        );
    }

    #[test]
    fn other_site_and_device_are_refused() {
        let mut f = facts();
        f.grants.push(grant("g1", "maint", NOW - 10, NOW + 10));
        let mut r = req(None, None);
        r.site = "s2".into();
        f.site_exists = true;
        // The grant is for s1: the facts of s2 carry no grant of it.
        assert_eq!(
            reason(decide(&r, &f, NOW)),
            Deny::UnknownDevice {
                site: "s2".into(),
                device: "cam".into()
            }
        );
        f.site_exists = false;
        assert_eq!(
            reason(decide(&r, &f, NOW)),
            Deny::UnknownSite { site: "s2".into() }
        );
    }

    #[test]
    fn revoked_grant_is_named() {
        let mut f = facts();
        let mut g = grant("g1", "maint", NOW - 10, NOW + 10);
        g.revoked_at = Some(NOW - 5);
        f.grants.push(g);
        assert_eq!(
            reason(decide(&req(None, None), &f, NOW)),
            Deny::Revoked {
                grant: "g1".into(),
                at: NOW - 5
            }
        );
    }

    #[test]
    fn a_grant_for_one_device_refuses_its_siblings() {
        let mut f = facts();
        f.grants.push(grant_for("g1", "other", NOW - 10, NOW + 10));
        // The request is for s1/cam; the grant names s1/other only.
        assert_eq!(
            reason(decide(&req(None, None), &f, NOW)),
            Deny::DeviceNotCovered {
                grant: "g1".into(),
                site: "s1".into(),
                device: "cam".into(),
                covers: vec!["other".into()]
            }
        );
        assert_eq!(
            reason(decide(&req(None, None), &f, NOW)).to_string(),
            "access denied: grant g1 covers s1/other only, not s1/cam"
        );
        // Naming the device (among others) opens it; so does a whole-site grant.
        f.grants = vec![grant_for("g2", "other,cam", NOW - 10, NOW + 10)];
        assert!(matches!(
            decide(&req(None, Some(Channel::Shell)), &f, NOW),
            Decision::Allow { ref grant, .. } if grant == "g2"
        ));
        f.grants = vec![grant_for("g3", "", NOW - 10, NOW + 10)];
        assert!(matches!(
            decide(&req(None, None), &f, NOW),
            Decision::Allow { ref grant, .. } if grant == "g3"
        ));
    }

    #[test]
    fn device_scope_explanations() {
        let mut f = facts();
        // An ended grant for this device and an active one for another: the active one is named,
        // the vendor has access, only not here.
        f.grants.push(grant_for("old", "cam", NOW - 20, NOW - 10));
        f.grants.push(grant_for("now", "other", NOW - 10, NOW + 10));
        assert!(matches!(
            reason(decide(&req(None, None), &f, NOW)),
            Deny::DeviceNotCovered { ref grant, .. } if grant == "now"
        ));
        // Only the ended grant for this device and a future one elsewhere: the window ended.
        f.grants[1] = grant_for("later", "other", NOW + 10, NOW + 20);
        assert_eq!(
            reason(decide(&req(None, None), &f, NOW)),
            Deny::WindowEnded {
                function: "maint".into(),
                at: NOW - 10
            }
        );
        // Nothing ever covered this device: the grant for the other one is named.
        f.grants.remove(0);
        assert!(matches!(
            reason(decide(&req(None, None), &f, NOW)),
            Deny::DeviceNotCovered { ref grant, .. } if grant == "later"
        ));
        // Grants of other devices do not make the function ambiguous for this one.
        f.grants = vec![
            grant_for("m", "cam", NOW - 10, NOW + 10),
            Grant {
                devices: "other".into(),
                ..grant("x", "fw", NOW - 10, NOW + 10)
            },
        ];
        assert!(matches!(
            decide(&req(None, None), &f, NOW),
            Decision::Allow { ref grant, .. } if grant == "m"
        ));
    }
    #[test]
    fn past_the_offline_grace_only_break_glass_of_an_offline_ok_function_opens() {
        let mut f = facts();
        f.grants = vec![grant("g1", "maint", 0, 1000)];
        f.policy_fresh_until = Some(100);
        let req = AccessRequest {
            vendor: "alice".into(),
            site: "s1".into(),
            device: "cam".into(),
            function: None,
            channel: None,
        };
        assert!(matches!(decide(&req, &f, 50), Decision::Allow { .. }));
        assert!(matches!(
            decide(&req, &f, 150),
            Decision::Deny {
                reason: Deny::PolicyStale { since: 100 }
            }
        ));
        f.grants[0].granted_by = "break-glass".into();
        assert!(matches!(decide(&req, &f, 150), Decision::Deny { .. }));
        f.functions.get_mut("maint").unwrap().offline_ok = true;
        assert!(matches!(decide(&req, &f, 150), Decision::Allow { .. }));
    }
}

#[cfg(test)]
mod gate_tests {
    use super::*;
    use crate::model::ChannelSet;
    use crate::model::CredentialKind;
    use crate::store::{NewDevice, NewGrant};

    const AT: i64 = 1_800_000_000;

    async fn store(dir: &tempfile::TempDir) -> Store {
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("g.db").display());
        let s = Store::open(&url)
            .await
            .unwrap()
            .unlock(&crate::secrets::MasterKey::generate())
            .await
            .unwrap();
        s.add_vendor("alice", "acme", None, "JBSWY3DPEHPK3PXP", AT)
            .await
            .unwrap();
        s.add_site("s1", None, AT).await.unwrap();
        s.add_device(
            &NewDevice {
                site: "s1".into(),
                name: "cam".into(),
                addr: "127.0.0.1:22".into(),
                login: "root".into(),
                credential_kind: CredentialKind::Password,
                credential: "x".into(),
                host_key: "ssh-ed25519 AAAA".into(),
            },
            AT,
        )
        .await
        .unwrap();
        let allow = ChannelSet::parse("shell,exec").unwrap();
        s.add_function("maint", &allow, Some("maint"), 8 * 3600, None, AT)
            .await
            .unwrap();
        s.add_grant(
            &NewGrant {
                vendor: "alice".into(),
                site: "s1".into(),
                function: "maint".into(),
                valid_from: AT - 60,
                valid_until: AT + 3600,
                granted_by: "operator".into(),
                reason: "ticket 1".into(),
                devices: vec![],
            },
            AT,
        )
        .await
        .unwrap();
        s
    }

    fn req(device: &str, channel: Option<Channel>) -> AccessRequest {
        AccessRequest {
            vendor: "alice".into(),
            site: "s1".into(),
            device: device.into(),
            function: None,
            channel,
        }
    }

    #[tokio::test]
    async fn allows_denies_and_tells_an_outage_apart() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(&dir).await;
        let gate = PolicyGate::new(&s);

        let ok = gate
            .check_at(&req("cam", Some(Channel::Shell)), AT)
            .await
            .unwrap();
        assert_eq!(ok.function, "maint");
        assert_eq!(ok.window_end, AT + 3600);
        assert_eq!(ok.login, "maint");

        // The gate's answer is the pure decision's, word for word.
        match gate.check_at(&req("cam", Some(Channel::Sftp)), AT).await {
            Err(Refusal::Deny(d)) => {
                assert_eq!(
                    d.to_string(),
                    "access denied: sftp is not allowed by function maint"
                )
            }
            other => panic!("expected a denial, got {other:?}"),
        }
        assert!(matches!(
            gate.check_at(&req("nope", None), AT).await,
            Err(Refusal::Deny(Deny::UnknownDevice { .. }))
        ));
        assert!(matches!(
            gate.check_at(&req("cam", None), AT + 3600).await,
            Err(Refusal::Deny(Deny::WindowEnded { .. }))
        ));

        // A database that cannot answer is an outage, never a denial.
        s.close().await;
        match gate.check(&req("cam", None)).await {
            Err(e @ Refusal::Unavailable(_)) => {
                assert!(e.to_string().starts_with("control plane unavailable: "))
            }
            other => panic!("expected an outage, got {other:?}"),
        }
    }
}
