//! The Prometheus series `/metrics` serves on the admin face (text format 0.0.4, written by
//! `prometheus-client`).
//!
//! The hot path only adds to atomics: every labelled counter is made at start, for every label
//! value the broker can produce, and its handle kept, so a request never takes a lock (a
//! `Family` lookup would take one). The upstream latency histogram is an atomic one of this
//! module's, encoded by the crate. Gauges about state (live phantoms, credentials' age, health)
//! are computed when scraped.

use crate::audit::{Action, Decision, Event, Record, RefusalKind};
use crate::config::{Capability, Config, NotifyEvent};
use crate::credentials::deadline::{Deadline, RotationState};
use crate::npm::RouteAction;
use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::{Registry, Unit};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

type Labels = Vec<(&'static str, String)>;

/// The `action` label of a request: an npm action, or both candidates before a body decided
/// between them; `none` for a request refused before its route was known.
fn action_label(a: Option<RouteAction>) -> &'static str {
    a.map_or("none", RouteAction::as_str)
}

/// Every `action` label value, in the order of the request counters.
fn actions() -> impl Iterator<Item = Option<RouteAction>> {
    RouteAction::ALL.into_iter().map(Some).chain([None])
}
const DECISIONS: [(Decision, &str); 5] = [
    (Decision::Allow, "allow"),
    (Decision::Anonymous, "anonymous"),
    (Decision::Deny, "deny"),
    (Decision::Error, "error"),
    (Decision::Held, "held"),
];
const RESULTS: [(Decision, &str); 3] =
    [(Decision::Allow, "allow"), (Decision::Deny, "deny"), (Decision::Error, "error")];

pub struct Metrics {
    registry: Registry,
    /// `actions().count() * DECISIONS.len()`, action-major.
    requests: Vec<Counter>,
    /// Per issuer (the configured ones, then `unknown`), `RESULTS.len()` each.
    exchanges: Vec<Counter>,
    issuers: Vec<String>,
    /// One per `RefusalKind`, in its order.
    refusals: Vec<Counter>,
    staged: Counter,
    upstream: HashMap<Arc<str>, Histogram>,
    phantoms_active: Gauge,
    holds: Family<Labels, Gauge>,
    credential_age: Family<Labels, Gauge>,
    credential_expiry: Family<Labels, Gauge>,
    credentials_unscoped: Gauge,
    credentials_direct_publish: Gauge,
    rotation: RotationSeries,
    freezes_active: Gauge,
    burst_freezes: Counter,
    /// Per event of `NotifyEvent::ALL`, one per `notify::RESULTS`; the notifier counts them.
    notifications: Vec<Counter>,
    audit_healthy: Gauge,
    state_healthy: Gauge,
    /// `[result="ok"]`, `[result="failed"]`.
    policy_reloads: [Counter; 2],
}

/// What a scrape reads from the rest of the broker.
pub(crate) struct Snapshot {
    pub now: u64,
    /// `None` when the state store could not count them.
    pub phantoms_active: Option<u64>,
    /// Held writes by state (`None` when the state store could not list them).
    pub holds: Option<Vec<(&'static str, u64)>>,
    /// Each credential's age (since its last rotation) and rotation deadline, by name.
    pub credentials: Vec<CredentialFigures>,
    /// Package patterns frozen now.
    pub freezes: usize,
    pub audit_healthy: bool,
    pub state_healthy: bool,
}

/// What a rotation programme tracks: each credential's deadline and state, the counts due and
/// overdue, the median age.
struct RotationSeries {
    due: Family<Labels, Gauge>,
    state: Family<Labels, Gauge>,
    due_count: Gauge,
    overdue_count: Gauge,
    age_median: Gauge,
}

impl RotationSeries {
    fn register(r: &mut Registry) -> RotationSeries {
        let help = "Time left until a real credential must be rotated (negative once overdue)";
        let due = seconds(r, "credential_rotation_due", help);
        let state = Family::<Labels, Gauge>::default();
        let help = "1 for a real credential's rotation state (ok, due within warn_days, overdue), 0 otherwise";
        r.register("credential_rotation_state", help, state.clone());
        let age_median = Gauge::default();
        let help = "The median age of the real credentials with a date (since their last rotation)";
        r.register_with_unit("credential_age_median", help, Unit::Seconds, age_median.clone());
        RotationSeries {
            due,
            state,
            due_count: gauge(r, "credentials_due", "Real credentials due for rotation within warn_days"),
            overdue_count: gauge(r, "credentials_overdue", "Real credentials past their rotation deadline"),
            age_median,
        }
    }
}

/// A credential as a scrape sees it.
pub(crate) struct CredentialFigures {
    pub name: String,
    pub class: Option<char>,
    /// Unix seconds of its last rotation (its `created`, or a later rotation seen).
    pub since: Option<u64>,
    pub deadline: Option<Deadline>,
}

impl Metrics {
    pub fn new(config: &Config) -> Metrics {
        let mut registry = Registry::with_prefix("phantom");
        let r = &mut registry;
        let request_labels = actions().flat_map(|a| {
            DECISIONS.iter().map(move |(_, d)| vec![("action", action_label(a).into()), ("decision", d.to_string())])
        });
        let requests = counters(r, "requests", "Registry requests, by npm action and decision", request_labels);
        let mut issuers: Vec<String> = config.issuers.iter().map(|i| i.name.clone()).collect();
        issuers.push("unknown".into());
        let exchange_labels = issuers
            .iter()
            .flat_map(|i| RESULTS.iter().map(move |(_, r)| vec![("issuer", i.clone()), ("result", r.to_string())]));
        let exchanges =
            counters(r, "exchanges", "ID tokens exchanged for phantoms, by issuer and result", exchange_labels);
        let reasons = RefusalKind::ALL.iter().map(|k| vec![("reason", k.as_str().to_owned())]);
        let refusals = counters(r, "refusals", "Requests the broker refused, by reason", reasons);
        let staged = Counter::default();
        r.register("staged", "Publishes that went upstream staged", staged.clone());
        let reloads = ["ok", "failed"].map(|x| vec![("result", x.to_owned())]);
        let help = "Policy reloads (file change, SIGHUP, admin API): a failed one keeps the last good policy";
        let [ok, failed]: [Counter; 2] =
            counters(r, "policy_reloads", help, reloads.into_iter()).try_into().expect("two results");
        let notify_labels = NotifyEvent::ALL.into_iter().flat_map(|e| {
            crate::notify::RESULTS
                .iter()
                .map(move |x| vec![("event", e.as_str().to_owned()), ("result", x.to_string())])
        });
        let notifications =
            counters(r, "notifications", "Notifications, by event and how their delivery ended", notify_labels);
        let burst_freezes = Counter::default();
        r.register("burst_freezes", "Packages frozen because writes passed a grant's rate", burst_freezes.clone());
        let metrics = Metrics {
            rotation: RotationSeries::register(r),
            freezes_active: gauge(r, "freezes_active", "Package patterns whose writes are frozen now"),
            burst_freezes,
            notifications,
            upstream: upstream_histograms(r, config),
            phantoms_active: gauge(r, "phantoms_active", "Live phantoms (not expired, not revoked)"),
            holds: {
                let f = Family::<Labels, Gauge>::default();
                r.register(
                    "holds",
                    "Held writes kept, by state (held, forwarding, forwarded, rejected, expired)",
                    f.clone(),
                );
                f
            },
            credential_age: seconds(
                r,
                "credential_age",
                "Time since a real credential was created or last rotated (its `created`, or a later rotation)",
            ),
            credential_expiry: seconds(
                r,
                "credential_expiry",
                "Time left until a real credential expires (its `expires`; negative once expired)",
            ),
            credentials_unscoped: gauge(
                r,
                "credentials_unscoped",
                "Real credentials without a package scope (`packages`)",
            ),
            credentials_direct_publish: gauge(
                r,
                "credentials_direct_publish",
                "Real credentials that can publish directly, not only stage",
            ),
            audit_healthy: gauge(r, "audit_healthy", "1 while the audit log is written, 0 otherwise"),
            state_healthy: gauge(r, "state_healthy", "1 while the state store answers, 0 otherwise"),
            policy_reloads: [ok, failed],
            requests,
            exchanges,
            issuers,
            refusals,
            staged,
            registry,
        };
        metrics.credentials(config);
        metrics
    }

    /// The figures that come from the config alone.
    fn credentials(&self, config: &Config) {
        let unscoped = config.credentials.iter().filter(|c| c.packages.is_empty()).count();
        let direct = config.credentials.iter().filter(|c| c.publish == Capability::Direct).count();
        self.credentials_unscoped.set(unscoped as i64);
        self.credentials_direct_publish.set(direct as i64);
    }

    /// Counts one request's final audit line (not the write-ahead one), and its refusal.
    pub(crate) fn record(&self, rec: &Record, refusal: Option<RefusalKind>) {
        if let Some(kind) = refusal {
            if let Some(c) = RefusalKind::ALL.iter().position(|k| *k == kind).and_then(|i| self.refusals.get(i)) {
                c.inc();
            }
        }
        if rec.staged {
            self.staged.inc();
        }
        match rec.event {
            Event::Request => {
                let action = match rec.action {
                    Some(Action::Npm(a)) => Some(a),
                    _ => None,
                };
                let a = actions().position(|x| x == action).unwrap_or(RouteAction::ALL.len());
                if let Some(d) = DECISIONS.iter().position(|(d, _)| *d == rec.decision) {
                    self.requests[a * DECISIONS.len() + d].inc();
                }
            }
            Event::Exchange => {
                let issuer = rec
                    .identity
                    .as_ref()
                    .and_then(|s| serde_json::from_str::<IssuerOnly>(s.get()).ok())
                    .and_then(|s| self.issuers.iter().position(|i| *i == s.issuer))
                    .unwrap_or(self.issuers.len() - 1);
                if let Some(r) = RESULTS.iter().position(|(d, _)| *d == rec.decision) {
                    self.exchanges[issuer * RESULTS.len() + r].inc();
                }
            }
            Event::Admin | Event::Notify | Event::Hold => {}
        }
    }

    /// The counters the notifier counts deliveries with.
    pub(crate) fn notification_counters(&self) -> Vec<Counter> {
        self.notifications.clone()
    }

    pub(crate) fn burst_froze(&self) {
        self.burst_freezes.inc();
    }

    pub(crate) fn policy_reloaded(&self, ok: bool) {
        self.policy_reloads[usize::from(!ok)].inc();
    }

    /// The latency histogram of the upstream named `name`.
    pub(crate) fn upstream(&self, name: &str) -> Histogram {
        self.upstream.get(name).cloned().unwrap_or_default()
    }

    /// The exposition: the gauges set from `snap` and the config, then every series.
    pub(crate) fn render(&self, config: &Config, snap: &Snapshot) -> String {
        let now = snap.now as i64;
        for c in &config.credentials {
            let labels = vec![("credential", c.name.clone()), ("class", c.class.map(String::from).unwrap_or_default())];
            if let Some(expires) = c.expires {
                self.credential_expiry.get_or_create(&labels).set(expires as i64 - now);
            }
        }
        self.rotations(&snap.credentials, now);
        self.freezes_active.set(snap.freezes as i64);
        // When the store cannot count them, the last count stands (and state_healthy says why).
        if let Some(n) = snap.phantoms_active {
            self.phantoms_active.set(n as i64);
        }
        for (state, n) in snap.holds.iter().flatten() {
            self.holds.get_or_create(&vec![("state", (*state).to_owned())]).set(*n as i64);
        }
        self.audit_healthy.set(i64::from(snap.audit_healthy));
        self.state_healthy.set(i64::from(snap.state_healthy));
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry);
        text
    }
}

impl Metrics {
    /// Ages, deadlines and the counts a rotation programme tracks.
    fn rotations(&self, credentials: &[CredentialFigures], now: i64) {
        let mut ages = Vec::new();
        let (mut due, mut overdue) = (0, 0);
        for c in credentials {
            let labels = vec![("credential", c.name.clone()), ("class", c.class.map(String::from).unwrap_or_default())];
            if let Some(since) = c.since {
                let age = now - since as i64;
                self.credential_age.get_or_create(&labels).set(age);
                ages.push(age);
            }
            let Some(d) = &c.deadline else { continue };
            self.rotation.due.get_or_create(&labels).set(d.due as i64 - now);
            for state in RotationState::ALL {
                let mut l = labels.clone();
                l.push(("state", state.as_str().to_owned()));
                self.rotation.state.get_or_create(&l).set(i64::from(d.state == state));
            }
            due += i64::from(d.state == RotationState::Due);
            overdue += i64::from(d.state == RotationState::Overdue);
        }
        self.rotation.due_count.set(due);
        self.rotation.overdue_count.set(overdue);
        ages.sort_unstable();
        let median = match ages.len() {
            0 => 0,
            n if n % 2 == 1 => ages[n / 2],
            n => (ages[n / 2 - 1] + ages[n / 2]) / 2,
        };
        self.rotation.age_median.set(median);
    }
}

/// A family of counters, one made now for each of `labels` (in their order).
fn counters(r: &mut Registry, name: &str, help: &str, labels: impl Iterator<Item = Labels>) -> Vec<Counter> {
    let family = Family::<Labels, Counter>::default();
    let made = labels.map(|l| family.get_or_create(&l).clone()).collect();
    r.register(name, help, family);
    made
}

fn gauge(r: &mut Registry, name: &str, help: &str) -> Gauge {
    let g = Gauge::default();
    r.register(name, help, g.clone());
    g
}

/// A family of gauges in seconds, their labels set when scraped.
fn seconds(r: &mut Registry, name: &str, help: &str) -> Family<Labels, Gauge> {
    let family = Family::<Labels, Gauge>::default();
    r.register_with_unit(name, help, Unit::Seconds, family.clone());
    family
}

/// The upstream latency histogram of each configured upstream.
fn upstream_histograms(r: &mut Registry, config: &Config) -> HashMap<Arc<str>, Histogram> {
    let family = Family::<Labels, Histogram>::new_with_constructor(Histogram::default);
    let made = config
        .upstreams
        .iter()
        .map(|u| (u.name.as_str().into(), family.get_or_create(&vec![("upstream", u.name.clone())]).clone()))
        .collect();
    let help = "Time from a request's start upstream to its answer's head, by upstream";
    r.register_with_unit("upstream_duration", help, Unit::Seconds, family);
    made
}

pub(crate) const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

#[derive(serde::Deserialize)]
struct IssuerOnly<'a> {
    issuer: &'a str,
}

/// Upper bounds of the latency buckets, in seconds.
const BOUNDS: [f64; 14] = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// A histogram of atomics (the crate's own takes a mutex per observation).
#[derive(Clone, Default, Debug)]
pub(crate) struct Histogram(Arc<Buckets>);

#[derive(Default, Debug)]
struct Buckets {
    /// One per bound, then `+Inf`: not cumulative (the encoder adds them up).
    counts: [AtomicU64; BOUNDS.len() + 1],
    sum_micros: AtomicU64,
}

impl Histogram {
    pub(crate) fn observe(&self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        let i = BOUNDS.iter().position(|b| secs <= *b).unwrap_or(BOUNDS.len());
        self.0.counts[i].fetch_add(1, Ordering::Relaxed);
        self.0.sum_micros.fetch_add(u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }
}

impl TypedMetric for Histogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Histogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let counts: Vec<u64> = self.0.counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        let buckets: Vec<(f64, u64)> =
            BOUNDS.iter().copied().chain([f64::INFINITY]).zip(counts.iter().copied()).collect();
        let sum = self.0.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        encoder.encode_histogram::<NoLabelSet>(sum, counts.iter().sum(), &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_histogram_counts_into_its_buckets() {
        let h = Histogram::default();
        for ms in [0, 3, 3, 40, 2_000, 90_000] {
            h.observe(Duration::from_millis(ms));
        }
        let mut registry = Registry::default();
        registry.register_with_unit("t", "test", Unit::Seconds, h);
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &registry).unwrap();
        for line in [
            "t_seconds_bucket{le=\"0.001\"} 1\n",
            "t_seconds_bucket{le=\"0.005\"} 3\n",
            "t_seconds_bucket{le=\"0.05\"} 4\n",
            "t_seconds_bucket{le=\"2.5\"} 5\n",
            "t_seconds_bucket{le=\"60\"} 5\n",
            "t_seconds_bucket{le=\"+Inf\"} 6\n",
            "t_seconds_sum 92.046\n",
            "t_seconds_count 6\n",
        ] {
            assert!(text.contains(line), "{line} not in:\n{text}");
        }
    }

    #[test]
    fn credentials_are_measured_from_their_dates() {
        let text = r#"
[server]
public_url = "https://npm-broker.example.com/"
tls_cert = "s.pem"
tls_key = "k.pem"
[upstream.public]
url = "https://registry.example.com/"
scopes = ["*"]
[credential.release]
upstream = "public"
source = { env = "T" }
packages = ["@acme/*"]
class = "A"
publish = "stage-only"
created = "2026-11-01"
expires = "2027-01-31"
[credential.legacy]
upstream = "public"
source = { env = "U" }
[audit]
path = "a.jsonl"
"#;
        let config = Config::parse(std::path::Path::new("p.toml"), text).unwrap();
        let m = Metrics::new(&config);
        // 2026-12-02T00:00:00Z: 31 days after it was created, 60 before it expires.
        let now = 1_796_169_600;
        let credentials = config
            .credentials
            .iter()
            .map(|c| CredentialFigures {
                name: c.name.clone(),
                class: c.class,
                since: c.created,
                deadline: crate::credentials::deadline::deadline(c, None, &config.rotation, now),
            })
            .collect();
        let snap = Snapshot {
            now,
            phantoms_active: Some(2),
            holds: Some(vec![("held", 1), ("forwarded", 0)]),
            credentials,
            freezes: 3,
            audit_healthy: true,
            state_healthy: false,
        };
        let out = m.render(&config, &snap);
        for line in [
            "phantom_credential_age_seconds{credential=\"release\",class=\"A\"} 2678400\n",
            "phantom_credential_expiry_seconds{credential=\"release\",class=\"A\"} 5184000\n",
            // Class A rotates every 30 days: a day overdue.
            "phantom_credential_rotation_due_seconds{credential=\"release\",class=\"A\"} -86400\n",
            "phantom_credential_rotation_state{credential=\"release\",class=\"A\",state=\"overdue\"} 1\n",
            "phantom_credential_rotation_state{credential=\"release\",class=\"A\",state=\"ok\"} 0\n",
            "phantom_credentials_overdue 1\n",
            "phantom_credentials_due 0\n",
            "phantom_credential_age_median_seconds 2678400\n",
            "phantom_freezes_active 3\n",
            "phantom_notifications_total{event=\"rotation-overdue\",result=\"delivered\"} 0\n",
            "phantom_credentials_unscoped 1\n",
            "phantom_credentials_direct_publish 1\n",
            "phantom_phantoms_active 2\n",
            "phantom_state_healthy 0\n",
            "phantom_audit_healthy 1\n",
        ] {
            assert!(out.contains(line), "{line} not in:\n{out}");
        }
        // No dates, no age or expiry series for it.
        assert!(!out.contains("credential=\"legacy\""), "{out}");
    }
}
