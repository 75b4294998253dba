//! The monitoring files in `deploy/monitoring/`, checked by the real `promtool` (from Debian's
//! prometheus package, which `.ci/run` unpacks): the Prometheus configuration, the alerting rules
//! and their unit tests, and the Grafana dashboard, whose queries must be valid PromQL. The rules,
//! their tests and the dashboard may name only metrics Postern publishes, and the dashboard shows
//! every one of them.
//!
//! `check_metrics_text` runs `promtool check metrics` on an exposition as a node serves it.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

use crate::harness::{on_path, run};

/// The metrics Postern publishes, as the names of their samples (a counter's with `_total`); a
/// histogram's family name stands for its `_bucket`, `_count` and `_sum` samples.
pub const PUBLISHED: &[&str] = &[
    "postern_sessions_live",
    "postern_sessions_started_total",
    "postern_sessions_ended_total",
    "postern_session_setup_seconds",
    "postern_denials_total",
    "postern_auth_failures_total",
    "postern_request_decision_seconds",
    "postern_requests_pending",
    "postern_request_oldest_pending_seconds",
    "postern_approval_slo_breaches_total",
    "postern_approval_slo_seconds",
    "postern_exceptions_open",
    "postern_exception_oldest_seconds",
    "postern_exception_age_median_seconds",
    "postern_unbrokered_access_paths",
    "postern_certificate_issuance_seconds",
    "postern_policy_propagation_seconds",
    "postern_edges",
    "postern_edge_buffered_evidence_bytes",
    "postern_evidence_upload_lag_seconds",
    "postern_recording_bytes_total",
    "postern_audit_append_failures_total",
    "postern_notification_failures_total",
    "postern_metrics_refresh_seconds",
    "postern_metrics_refresh_failures_total",
];

/// The histograms among [`PUBLISHED`].
const HISTOGRAMS: &[&str] = &[
    "postern_session_setup_seconds",
    "postern_request_decision_seconds",
    "postern_certificate_issuance_seconds",
    "postern_policy_propagation_seconds",
];

/// Runs `promtool check metrics` on `text`, an exposition as a node serves it, and panics with
/// promtool's words unless it passes (parses, and lints clean).
///
/// Nodes serve OpenMetrics, where a counter's family is named without `_total`
/// (`# TYPE postern_x counter`, sample `postern_x_total`); promtool 2.42 reads the Prometheus
/// text format, where they are one name, and would otherwise say `postern_x_total no help text`.
/// So a counter's `# HELP`, `# TYPE` and `# UNIT` lines are renamed to its sample name first.
/// `# EOF` reads as a comment. Anything else OpenMetrics has and Prometheus text has not
/// (exemplars, `_created` samples, the `info` and `stateset` types) fails.
pub fn check_metrics_text(text: &str) {
    let prometheus_text = as_prometheus_text(text);
    let mut child = Command::new(on_path("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("running promtool check metrics: {e}"));
    let mut stdin = child.stdin.take().expect("promtool's stdin");
    let input = prometheus_text.clone();
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("running promtool check metrics: {e}"));
    writer
        .join()
        .expect("writing to promtool")
        .unwrap_or_else(|e| panic!("writing to promtool check metrics: {e}"));
    assert!(
        out.status.success(),
        "promtool check metrics refused the exposition ({}):\n{}\n--- as given to promtool:\n{prometheus_text}",
        out.status,
        said(&out),
    );
}

/// OpenMetrics text as Prometheus text (see [`check_metrics_text`]).
fn as_prometheus_text(text: &str) -> String {
    let counters: BTreeSet<&str> = (text.lines())
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .filter(|name| !name.ends_with("_total"))
        .collect();
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let renamed = ["# HELP ", "# TYPE ", "# UNIT "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}").trim_end().to_owned())
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

fn said(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A file of `deploy/monitoring/` (the broker package's manifest is in `broker/`).
fn monitoring(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/monitoring")
        .join(file)
}

fn read(file: &str) -> String {
    let path = monitoring(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Runs promtool with `args` and panics with what it said unless it succeeds.
fn promtool(args: &[&str], file: PathBuf) {
    let out = run(Command::new(on_path("promtool")).args(args).arg(&file));
    assert!(
        out.status.success(),
        "promtool {} {} failed ({}):\n{}",
        args.join(" "),
        file.display(),
        out.status,
        said(&out),
    );
}

/// The `postern_*` names in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let name = regex::Regex::new(r"\bpostern_[a-z0-9_]+").expect("regex");
    name.find_iter(text)
        .map(|m| m.as_str().to_owned())
        .collect()
}

/// The published metric a sample name belongs to, if any.
fn published(sample: &str) -> Option<&'static str> {
    PUBLISHED.iter().copied().find(|&m| {
        m == sample
            || (HISTOGRAMS.contains(&m)
                && ["_bucket", "_count", "_sum"]
                    .iter()
                    .any(|suffix| sample.strip_suffix(suffix) == Some(m)))
    })
}

/// Panics, listing them, if `texts` name a metric Postern does not publish.
fn assert_only_published(what: &str, texts: &[String]) {
    let unknown: Vec<(String, &String)> = (texts.iter())
        .flat_map(|t| metric_names(t).into_iter().map(move |n| (n, t)))
        .filter(|(n, _)| published(n).is_none())
        .collect();
    assert!(
        unknown.is_empty(),
        "{what} name metrics Postern does not publish:\n{}",
        (unknown.iter())
            .map(|(n, t)| format!("  {n} in: {t}"))
            .collect::<Vec<_>>()
            .join("\n"),
    );
}

/// The `expr` of every rule in a rules file: on its line, or the `|`/`>` block under it.
fn rule_exprs(yaml: &str) -> Vec<String> {
    let lines: Vec<&str> = yaml.lines().collect();
    let indent = |l: &str| l.len() - l.trim_start().len();
    let mut exprs = vec![];
    for (i, line) in lines.iter().enumerate() {
        let Some(rest) = line.trim_start().strip_prefix("expr:") else {
            continue;
        };
        let rest = rest.trim();
        if !rest.starts_with(['|', '>']) {
            exprs.push(rest.to_owned());
            continue;
        }
        let block: Vec<&str> = lines[i + 1..]
            .iter()
            .take_while(|l| l.trim().is_empty() || indent(l) > indent(line))
            .map(|l| l.trim())
            .collect();
        exprs.push(block.join("\n").trim().to_owned());
    }
    exprs
}

/// Every `expr` in the dashboard (panels in rows included).
fn dashboard_exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr", Value::String(e)) => out.push(e.clone()),
                    _ => dashboard_exprs(v, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| dashboard_exprs(v, out)),
        _ => {}
    }
}

fn dashboard() -> Value {
    serde_json::from_str(&read("grafana-dashboard.json"))
        .unwrap_or_else(|e| panic!("grafana-dashboard.json is not valid JSON: {e}"))
}

#[test]
fn the_prometheus_configuration_and_its_rule_file_pass_promtool_check_config() {
    promtool(&["check", "config"], monitoring("prometheus.yml"));
}

#[test]
fn the_alerting_rules_pass_promtool_check_rules_with_every_lint_fatal() {
    promtool(
        &["check", "rules", "--lint=all", "--lint-fatal"],
        monitoring("rules.yml"),
    );
}

#[test]
fn the_alerting_rules_pass_their_unit_tests() {
    promtool(&["test", "rules"], monitoring("rules_test.yml"));
}

#[test]
fn the_alerting_rules_and_their_tests_name_only_published_metrics() {
    let rules = read("rules.yml");
    let exprs = rule_exprs(&rules);
    let rule_count = (rules.lines())
        .filter(|l| {
            let l = l.trim_start();
            l.starts_with("- alert:") || l.starts_with("- record:")
        })
        .count();
    assert_eq!(exprs.len(), rule_count, "one expr per rule: {exprs:#?}");
    assert!(
        exprs
            .iter()
            .all(|e| !metric_names(e).is_empty() || e.contains("up{")),
        "every rule reads a Postern metric (or up): {exprs:#?}"
    );
    assert_only_published("rules.yml's expressions", &exprs);
    // The series the unit tests feed the rules are what a node serves, or the tests test nothing.
    assert_only_published("rules_test.yml", &[read("rules_test.yml")]);
}

#[test]
fn the_dashboard_is_valid_json_on_a_chosen_prometheus_data_source() {
    let d = dashboard();
    assert!(
        d["schemaVersion"].as_u64().unwrap_or(0) >= 39,
        "schemaVersion"
    );
    let vars = d["templating"]["list"].as_array().expect("templating.list");
    assert!(
        vars.iter().any(|v| v["name"] == "DS_PROMETHEUS"
            && v["type"] == "datasource"
            && v["query"] == "prometheus"),
        "a data source variable DS_PROMETHEUS: {vars:#?}"
    );
    let panels = d["panels"].as_array().expect("panels");
    let queried: Vec<&Value> = panels.iter().filter(|p| p["type"] != "row").collect();
    assert!(queried.len() >= 16, "{} panels", queried.len());
    for p in queried {
        let title = p["title"].as_str().expect("every panel has a title");
        assert_eq!(p["datasource"]["uid"], "${DS_PROMETHEUS}", "{title}");
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title} has no query");
        for t in targets {
            assert_eq!(t["datasource"]["uid"], "${DS_PROMETHEUS}", "{title}");
            assert!(t["expr"].as_str().is_some_and(|e| !e.is_empty()), "{title}");
        }
    }
}

#[test]
fn the_dashboard_queries_are_valid_promql_naming_only_published_metrics() {
    let mut exprs = vec![];
    dashboard_exprs(&dashboard(), &mut exprs);
    assert_only_published("the dashboard's queries", &exprs);
    // promtool checks PromQL as recording rules; Grafana's range variables become a duration.
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, e) in exprs.iter().enumerate() {
        let e = ["$__rate_interval", "$__interval", "$__range"]
            .iter()
            .fold(e.clone(), |e, var| e.replace(var, "5m"));
        rules.push_str(&format!(
            "      - record: dashboard:query_{i}\n        expr: {}\n",
            serde_json::to_string(&e).expect("a string")
        ));
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("dashboard_queries.yml");
    std::fs::write(&file, rules).expect("writing the queries");
    promtool(&["check", "rules"], file);
}

#[test]
fn the_dashboard_shows_every_published_metric() {
    let mut exprs = vec![];
    dashboard_exprs(&dashboard(), &mut exprs);
    let shown: BTreeSet<&str> = (exprs.iter())
        .flat_map(|e| metric_names(e))
        .filter_map(|n| published(&n))
        .collect();
    let missing: Vec<&&str> = PUBLISHED.iter().filter(|m| !shown.contains(*m)).collect();
    assert!(missing.is_empty(), "not on the dashboard: {missing:?}");
}

#[test]
fn openmetrics_as_prometheus_client_writes_it_passes_promtool_check_metrics() {
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::family::Family;
    use prometheus_client::metrics::gauge::Gauge;
    use prometheus_client::metrics::histogram::Histogram;
    use prometheus_client::registry::Registry;
    type Labels = Vec<(String, String)>;
    let label = |k: &str, v: &str| vec![(k.to_owned(), v.to_owned())];

    let mut registry = Registry::with_prefix("postern");
    let started = Counter::<u64>::default();
    registry.register("sessions_started", "Sessions started", started.clone());
    let ended = Family::<Labels, Counter>::default();
    registry.register(
        "sessions_ended",
        "Sessions ended, by outcome",
        ended.clone(),
    );
    let live = Family::<Labels, Gauge>::default();
    registry.register("sessions_live", "Live sessions, by region", live.clone());
    let median = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
    registry.register(
        "exception_age_median_seconds",
        "Median age of the open exceptions",
        median.clone(),
    );
    let decision = Histogram::new([30.0, 60.0, 900.0]);
    registry.register(
        "request_decision_seconds",
        "Time from an access request to its decision",
        decision.clone(),
    );
    started.inc_by(3);
    ended.get_or_create(&label("outcome", "closed")).inc();
    ended.get_or_create(&label("outcome", "window_ended")).inc();
    live.get_or_create(&label("region", "")).set(1);
    live.get_or_create(&label("region", "north")).set(2);
    median.set(86400.5);
    decision.observe(45.0);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("encoding");

    assert!(text.ends_with("# EOF\n"), "OpenMetrics: {text}");
    assert!(
        text.contains("# TYPE postern_sessions_started counter\n")
            && text.contains("\npostern_sessions_started_total 3\n"),
        "an OpenMetrics counter is named without _total: {text}"
    );
    check_metrics_text(&text);
    // The samples, that is; an OpenMetrics counter's family name has no `_total`.
    let samples: Vec<String> = (text.lines())
        .filter(|l| !l.starts_with('#'))
        .map(str::to_owned)
        .collect();
    assert_only_published("prometheus-client's samples", &samples);
}

#[test]
#[should_panic(expected = "postern_sessions_live no help text")]
fn check_metrics_text_fails_with_what_promtool_said() {
    check_metrics_text("# TYPE postern_sessions_live gauge\npostern_sessions_live 1\n# EOF\n");
}
