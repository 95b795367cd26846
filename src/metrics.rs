//! The service's metrics, in one process-wide registry, exposed in the Prometheus text format
//! (OpenMetrics) on the admin port. `docs/observability.md` says what each one means.
//!
//! A metric measured in seconds or bytes says so (an OpenMetrics `# UNIT` line); its name ends
//! with its unit, as it always did: the registry appends the unit to the name it is given.
//!
//! Request path metrics are recorded where things happen (a counter increment, a histogram
//! observation); what other parts already count — the cache's tiers, the decision log's queue —
//! is read from them at scrape time ([`Scraped`], registered when a server starts), so the
//! request path pays nothing more.

use std::sync::{Arc, LazyLock, Mutex, OnceLock};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::policy::{Decision, Purpose, Reason};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: &'static str,
    pub code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    pub method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    pub purpose: &'static str,
    pub decision: &'static str,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    pub operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabels {
    pub limit: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TierLabels {
    tier: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
    policy_version: &'static str,
}

/// Every metric of the process.
pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub request_duration: Family<MethodLabels, Histogram>,
    pub decisions: Family<DecisionLabels, Counter>,
    pub store_query_duration: Family<OperationLabels, Histogram>,
    pub invalidation_lag: Histogram,
    pub chain_verifications: Family<ResultLabels, Counter>,
    /// 1 while the audit log extends its last signed checkpoint, 0 once it was found not to.
    pub audit_log_consistent: Gauge,
    pub audit_checkpoint_size: Gauge,
    pub audit_checkpoints: Family<ResultLabels, Counter>,
    pub limited: Family<LimitLabels, Counter>,
    pub state_checks: Family<ResultLabels, Counter>,
    pub state_mismatches: Gauge,
    pub state_unverifiable: Gauge,
    sources: Arc<Sources>,
}

/// What the collector reads at scrape time: set when a server starts.
type Sources = Mutex<Vec<Box<dyn Scraped>>>;

/// A part that counts for itself, read at each scrape.
pub trait Scraped: std::fmt::Debug + Send + Sync + 'static {
    fn scrape(&self, scrape: &mut Scrape<'_>) -> std::fmt::Result;
}

/// Latency buckets from 50 µs to 10 s.
fn latency_buckets() -> impl Iterator<Item = f64> {
    [
        0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
        0.5, 1.0, 2.5, 10.0,
    ]
    .into_iter()
}

pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("assent");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "grpc_requests",
            "gRPC calls answered, by method and status code",
            requests.clone(),
        );
        let request_duration = Family::<MethodLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(latency_buckets())
        });
        registry.register_with_unit(
            "grpc_request_duration",
            "Time from a call's arrival to its end (a unary call's answer, a stream's last \
             message or its cancellation), by method",
            Unit::Seconds,
            request_duration.clone(),
        );
        let decisions = Family::<DecisionLabels, Counter>::default();
        registry.register(
            "decisions",
            "Decisions given, by purpose, decision and reason",
            decisions.clone(),
        );
        let store_query_duration =
            Family::<OperationLabels, Histogram>::new_with_constructor(|| {
                Histogram::new(latency_buckets())
            });
        registry.register_with_unit(
            "store_query_duration",
            "Time of store operations, by operation",
            Unit::Seconds,
            store_query_duration.clone(),
        );
        let invalidation_lag = Histogram::new(latency_buckets());
        registry.register_with_unit(
            "invalidation_lag",
            "Time from a change's commit (on any replica) to this replica applying it",
            Unit::Seconds,
            invalidation_lag.clone(),
        );
        let chain_verifications = Family::<ResultLabels, Counter>::default();
        registry.register(
            "audit_chain_verifications",
            "Audit chain verifications, by result (ok, broken)",
            chain_verifications.clone(),
        );
        let audit_log_consistent = Gauge::default();
        audit_log_consistent.set(1);
        registry.register(
            "audit_log_consistent",
            "1 while the audit log extends its last signed checkpoint; 0 once it does not \
             (nothing more is signed)",
            audit_log_consistent.clone(),
        );
        let audit_checkpoint_size = Gauge::default();
        registry.register(
            "audit_checkpoint_size",
            "The tree size of the latest audit checkpoint signed by this replica",
            audit_checkpoint_size.clone(),
        );
        let audit_checkpoints = Family::<ResultLabels, Counter>::default();
        registry.register(
            "audit_checkpoints",
            "Attempts to sign an audit checkpoint, by result (signed, refused, failed)",
            audit_checkpoints.clone(),
        );
        let limited = Family::<LimitLabels, Counter>::default();
        registry.register(
            "limited_requests",
            "Calls refused or streams ended by a limit, by limit (concurrency, deadline, write_rate, streams_per_caller, stream_idle)",
            limited.clone(),
        );
        let state_checks = Family::<ResultLabels, Counter>::default();
        registry.register(
            "state_checks",
            "Comparisons of the state tables with the audit events, by result (ok, mismatch, failed)",
            state_checks.clone(),
        );
        let state_mismatches = Gauge::default();
        registry.register(
            "state_mismatches",
            "Subjects whose stored state differed from their audit events at the last comparison",
            state_mismatches.clone(),
        );
        let state_unverifiable = Gauge::default();
        registry.register(
            "state_unverifiable_subjects",
            "Subjects the last comparison could not rebuild (an event's payload was erased)",
            state_unverifiable.clone(),
        );
        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
                policy_version: crate::policy::POLICY_VERSION,
            })
            .set(1);
        registry.register("build_info", "The running version (always 1)", build);
        let sources = Arc::new(Sources::default());
        registry.register_collector(Box::new(SourcesCollector(sources.clone())));
        Metrics {
            registry,
            requests,
            request_duration,
            decisions,
            store_query_duration,
            invalidation_lag,
            chain_verifications,
            audit_log_consistent,
            audit_checkpoint_size,
            audit_checkpoints,
            limited,
            state_checks,
            state_mismatches,
            state_unverifiable,
            sources,
        }
    }

    /// The parts of the server now running that are read at each scrape, in this order.
    pub fn observe_server(&self, sources: Vec<Box<dyn Scraped>>) {
        *self.sources.lock().unwrap_or_else(|e| e.into_inner()) = sources;
    }

    /// Every metric in the text format.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }
}

/// The decisions counter of each (purpose, decision, reason), looked up in the family once: a
/// BatchCheck counts a thousand decisions, and the family's lookup hashes its labels under a
/// lock.
static DECISION_COUNTERS: LazyLock<Box<[OnceLock<Counter>]>> = LazyLock::new(|| {
    (0..Purpose::ALL.len() * Decision::ALL.len() * Reason::ALL.len())
        .map(|_| OnceLock::new())
        .collect()
});

pub fn record_decision(purpose: Purpose, decision: Decision, reason: Reason) {
    let slot = (purpose as usize * Decision::ALL.len() + decision as usize) * Reason::ALL.len()
        + reason as usize;
    DECISION_COUNTERS[slot]
        .get_or_init(|| {
            METRICS
                .decisions
                .get_or_create(&DecisionLabels {
                    purpose: purpose.as_str(),
                    decision: decision.as_str(),
                    reason: reason.as_str(),
                })
                .clone()
        })
        .inc();
}

pub fn record_request(method: &'static str, code: &'static str, duration: Duration) {
    METRICS
        .requests
        .get_or_create(&RequestLabels { method, code })
        .inc();
    METRICS
        .request_duration
        .get_or_create(&MethodLabels { method })
        .observe(duration.as_secs_f64());
}

pub fn record_limited(limit: &'static str) {
    METRICS.limited.get_or_create(&LimitLabels { limit }).inc();
}

/// A comparison of the state tables with the audit events that finished, with the subjects
/// that differed and those it could not rebuild; `None`: it failed (the gauges keep the last
/// finished comparison's figures).
pub fn record_state_check(found: Option<(u64, u64)>) {
    let result = match found {
        None => "failed",
        Some((0, _)) => "ok",
        Some(_) => "mismatch",
    };
    METRICS
        .state_checks
        .get_or_create(&ResultLabels { result })
        .inc();
    if let Some((mismatched, unverifiable)) = found {
        METRICS
            .state_mismatches
            .set(i64::try_from(mismatched).unwrap_or(i64::MAX));
        METRICS
            .state_unverifiable
            .set(i64::try_from(unverifiable).unwrap_or(i64::MAX));
    }
}

pub fn record_store_query(operation: &'static str, duration: Duration) {
    METRICS
        .store_query_duration
        .get_or_create(&OperationLabels { operation })
        .observe(duration.as_secs_f64());
}

#[derive(Debug)]
struct SourcesCollector(Arc<Sources>);

impl Collector for SourcesCollector {
    fn encode(&self, encoder: DescriptorEncoder) -> std::fmt::Result {
        let mut scrape = Scrape(encoder);
        let sources = self.0.lock().unwrap_or_else(|e| e.into_inner());
        sources
            .iter()
            .try_for_each(|source| source.scrape(&mut scrape))
    }
}

/// Where a [`Scraped`] part writes what it counts. A name ending in `_seconds` or `_bytes` is
/// of a metric in that unit, and says so.
pub struct Scrape<'a>(DescriptorEncoder<'a>);

/// The units a scraped metric's name may end with.
static UNITS: [(&str, Unit); 2] = [("_seconds", Unit::Seconds), ("_bytes", Unit::Bytes)];

/// A metric's name without its unit, and its unit (the encoder appends it to the name again).
fn unit_of(name: &str) -> (&str, Option<&'static Unit>) {
    UNITS
        .iter()
        .find_map(|(suffix, unit)| Some((name.strip_suffix(suffix)?, Some(unit))))
        .unwrap_or((name, None))
}

impl Scrape<'_> {
    pub fn counter(&mut self, name: &str, help: &str, value: u64) -> std::fmt::Result {
        let metric = ConstCounter::new(value);
        let (name, unit) = unit_of(name);
        metric.encode(
            self.0
                .encode_descriptor(name, help, unit, metric.metric_type())?,
        )
    }

    pub fn gauge(&mut self, name: &str, help: &str, value: u64) -> std::fmt::Result {
        let metric = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
        let (name, unit) = unit_of(name);
        metric.encode(
            self.0
                .encode_descriptor(name, help, unit, metric.metric_type())?,
        )
    }

    /// A counter for each cache tier, labelled `tier`.
    pub fn counters_by_tier(
        &mut self,
        name: &str,
        help: &str,
        values: &[(&'static str, u64)],
    ) -> std::fmt::Result {
        let labelled = values
            .iter()
            .map(|&(tier, value)| (TierLabels { tier }, value));
        self.labelled_counters(name, help, labelled)
    }

    /// A counter for each reason, labelled `reason`.
    pub fn counters_by_reason(
        &mut self,
        name: &str,
        help: &str,
        values: &[(&'static str, u64)],
    ) -> std::fmt::Result {
        let labelled = values
            .iter()
            .map(|&(reason, value)| (ReasonLabels { reason }, value));
        self.labelled_counters(name, help, labelled)
    }

    /// One counter family, a counter for each label set (such as `vec![("replica", "0")]`).
    pub fn labelled_counters<Labels: EncodeLabelSet>(
        &mut self,
        name: &str,
        help: &str,
        values: impl Iterator<Item = (Labels, u64)>,
    ) -> std::fmt::Result {
        let metric_type = ConstCounter::new(0_u64).metric_type();
        let (name, unit) = unit_of(name);
        let mut family = self.0.encode_descriptor(name, help, unit, metric_type)?;
        for (labels, value) in values {
            ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }

    /// One gauge family, a gauge for each label set.
    pub fn labelled_gauges<Labels: EncodeLabelSet>(
        &mut self,
        name: &str,
        help: &str,
        values: impl Iterator<Item = (Labels, u64)>,
    ) -> std::fmt::Result {
        let metric_type = ConstGauge::new(0_i64).metric_type();
        let (name, unit) = unit_of(name);
        let mut family = self.0.encode_descriptor(name, help, unit, metric_type)?;
        for (labels, value) in values {
            let value = i64::try_from(value).unwrap_or(i64::MAX);
            ConstGauge::new(value).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a part of the server reports at scrape time, in the forms it uses.
    #[derive(Debug)]
    struct Reported;

    impl Scraped for Reported {
        fn scrape(&self, scrape: &mut Scrape<'_>) -> std::fmt::Result {
            scrape.gauge("decision_log_backlog_bytes", "Bytes not shipped", 7)?;
            scrape.counter("decision_log_unreadable_bytes", "Bytes unreadable", 3)?;
            scrape.counter("decision_log_written", "Decisions written", 2)?;
            scrape.labelled_gauges(
                "replica_lag_revisions",
                "Revisions behind",
                [(vec![("replica", "0")], 1)].into_iter(),
            )
        }
    }

    /// A name and what a descriptor line says of it (its type, or its unit).
    type Described = (String, String);

    /// The `# TYPE` and `# UNIT` lines of an exposition.
    fn descriptors(text: &str) -> (Vec<Described>, Vec<Described>) {
        let pairs = |prefix: &str| -> Vec<Described> {
            text.lines()
                .filter_map(|line| line.strip_prefix(prefix))
                .filter_map(|rest| rest.split_once(' '))
                .map(|(name, value)| (name.to_owned(), value.to_owned()))
                .collect()
        };
        (pairs("# TYPE "), pairs("# UNIT "))
    }

    #[test]
    fn durations_are_in_seconds_under_the_names_they_always_had() {
        // A family is written once it has a member.
        record_request("assent.v1.Decisions/Check", "OK", Duration::from_micros(80));
        record_store_query("write", Duration::from_millis(2));
        let (types, units) = descriptors(&METRICS.encode());
        for name in [
            "assent_grpc_request_duration_seconds",
            "assent_store_query_duration_seconds",
            "assent_invalidation_lag_seconds",
        ] {
            assert!(
                types.contains(&(name.to_owned(), "histogram".to_owned())),
                "{name}"
            );
            assert!(
                units.contains(&(name.to_owned(), "seconds".to_owned())),
                "{name}"
            );
        }
        assert!(types.contains(&("assent_grpc_requests".to_owned(), "counter".to_owned())));
        assert!(!units.iter().any(|(name, _)| name == "assent_grpc_requests"));
    }

    #[test]
    fn scraped_metrics_in_bytes_say_so_under_the_names_they_always_had() {
        let mut registry = Registry::with_prefix("assent");
        let sources = Arc::new(Sources::default());
        *sources.lock().unwrap() = vec![Box::new(Reported) as Box<dyn Scraped>];
        registry.register_collector(Box::new(SourcesCollector(sources)));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        let (types, units) = descriptors(&text);
        let named = |name: &str, kind: &str| (name.to_owned(), kind.to_owned());
        assert_eq!(
            types,
            [
                named("assent_decision_log_backlog_bytes", "gauge"),
                named("assent_decision_log_unreadable_bytes", "counter"),
                named("assent_decision_log_written", "counter"),
                named("assent_replica_lag_revisions", "gauge"),
            ]
        );
        assert_eq!(
            units,
            [
                named("assent_decision_log_backlog_bytes", "bytes"),
                named("assent_decision_log_unreadable_bytes", "bytes"),
            ]
        );
        assert!(
            text.contains("\nassent_decision_log_backlog_bytes 7\n"),
            "{text}"
        );
        assert!(
            text.contains("\nassent_decision_log_unreadable_bytes_total 3\n"),
            "{text}"
        );
    }
}
