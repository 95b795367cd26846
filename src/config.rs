//! The server's settings in one typed struct.
//!
//! Sources, later ones winning: built-in defaults, a TOML file (`--config` or `ASSENT_CONFIG`),
//! `ASSENT_*` environment variables, command-line flags. [`Settings::resolve`] takes the
//! environment as an argument so that it is tested without touching the process environment.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::api::ext_authz::ExtAuthzSettings;
use crate::auth::{Scopes, TokenSettings, parse_client_scopes};
use crate::cache::shared::{SentinelUrl, seed_urls};
use crate::cache::{CacheSettings, RedisEntryKey, SharedSettings};
use crate::checkpoints::CheckpointSettings;
use crate::console::ConsoleSettings;
use crate::decision_log::LogMode;
use crate::limits::LimitSettings;
use crate::store::{DatabaseUrl, Schema, StoreLocation, StoreTimeouts};
use crate::telemetry::layer::{Sampler, SamplerError};
use crate::telemetry::{LogFormat, OtlpProtocol, SubjectHashKey, TraceSettings};

const DATABASE_FILE: &str = "assent.db";

#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// The gRPC listen address.
    pub listen: SocketAddr,
    /// Where the embedded store keeps its file (when no database URL is set).
    pub data_dir: PathBuf,
    /// `postgres://…` selects PostgreSQL; `sqlite://PATH` a SQLite file elsewhere than
    /// `data_dir`; unset, the embedded store in `data_dir`.
    pub database_url: Option<DatabaseUrl>,
    /// The PostgreSQL connection pool's size.
    pub database_max_connections: u32,
    /// PostgreSQL read replicas (streaming standbys of `database_url`) that a Check's cache
    /// misses and `at_least_as_fresh` reads may go to (`store::ReadReplicas`).
    pub database_replica_urls: Vec<DatabaseUrl>,
    /// Whether opening the store applies the migrations it lacks (`Migrate`), or only checks
    /// that it has exactly those this binary knows (`Check`: a role that owns no table).
    pub schema: Schema,
    /// The deadlines of the store's reads on a Check's path and of its writes.
    pub store_timeouts: StoreTimeouts,
    /// Which decisions the decision log records.
    pub decision_log: LogMode,
    /// How many decisions may wait in memory to be written before new ones are dropped (and
    /// counted); as many `require_audit` records may wait for the store.
    pub decision_log_queue: usize,
    /// Where decisions wait, in segment files, to be shipped to the store.
    pub decision_log_dir: PathBuf,
    /// How many bytes of segment files may wait to be shipped before new decisions are dropped
    /// (and counted).
    pub decision_log_backlog_bytes: u64,
    /// How many days of decisions `assent audit prune` keeps.
    pub decision_log_retention_days: u32,
    /// A PostgreSQL database of the decision log's own: every decision-log write, read, prune
    /// and partition goes there, nothing of it to `database_url`'s. `None`: the main store.
    pub decision_log_database_url: Option<DatabaseUrl>,
    /// The in-process cache of subject state.
    pub cache: CacheSettings,
    /// How often choices whose expiry has passed are recorded as expired (a `consent_expired`
    /// event each); `None`: never (decisions ignore expired choices either way).
    pub consent_expiry_sweep: Option<Duration>,
    /// Signed checkpoints of the audit log, when a signing key is configured.
    pub checkpoints: Option<CheckpointSettings>,
    /// How often the state tables are compared with the audit events (`Store::verify_state`);
    /// `None`: never (`Audit.VerifyState` still compares on demand).
    pub state_check_interval: Option<Duration>,
    /// How long in-flight calls may take to finish after SIGTERM/SIGINT.
    pub shutdown_grace: Duration,
    pub log_format: LogFormat,
    /// The admin HTTP address (`/metrics`, `/healthz`, `/readyz`); `None`: not served.
    pub admin_listen: Option<SocketAddr>,
    /// The staff console; `None`: not served.
    pub console: Option<ConsoleSettings>,
    /// Trace export, when an OTLP endpoint is configured.
    pub traces: Option<TraceSettings>,
    /// The key of the subject hash in telemetry; `None`: a random key per process.
    pub subject_hash_key: Option<SubjectHashKey>,
    /// TLS on the gRPC port (and client certificates, with a client CA).
    pub tls: Option<TlsSettings>,
    /// Bearer token verification; `None`: tokens are not accepted.
    pub tokens: Option<TokenSettings>,
    /// The scopes of callers identified by a client certificate.
    pub client_scopes: HashMap<String, Scopes>,
    /// How Envoy's ext_authz requests name their subject.
    pub ext_authz: ExtAuthzSettings,
    pub limits: LimitSettings,
}

/// The server's certificate and key, and the CA of client certificates (mutual TLS).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsSettings {
    /// PEM: the server's certificate chain.
    pub cert: PathBuf,
    /// PEM: the server's private key.
    pub key: PathBuf,
    /// PEM: the CA that signs client certificates; set, every client must present one.
    pub client_ca: Option<PathBuf>,
}

impl Settings {
    /// Whether callers must prove who they are (a token verifier or client certificates).
    pub fn authenticates(&self) -> bool {
        self.tokens.is_some() || self.tls.as_ref().is_some_and(|tls| tls.client_ca.is_some())
    }
}

/// Declares every setting once: its key in the file (a field of [`Overrides`]) and type, the
/// environment variables it is read from (the first one set wins), and its default as those
/// variables would give it (`None`: unset unless given). A macro because each line makes a field
/// of two structs, an entry of [`SETTINGS`] and of [`ENVIRONMENT`], and a step of each layer.
macro_rules! settings {
    (@text None) => { None };
    (@text $default:literal) => { Some($default) };
    (@type $type:ty, None) => { Option<$type> };
    (@type $type:ty, $default:literal) => { $type };
    (@value $given:expr, None) => { $given };
    (@value $given:expr, $default:literal) => {
        $given.unwrap_or_else(|| $default.parse().expect("every default parses"))
    };
    ($($key:ident: $type:ty = [$($variable:literal),+], $default:tt;)+) => {
        /// Settings as given by one source: every field optional.
        #[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct Overrides {
            $(pub $key: Option<$type>,)+
        }

        /// Every setting, as docs/configuration.md's table shows it.
        pub const SETTINGS: &[Setting] = &[$(Setting {
            key: stringify!($key),
            environment: &[$($variable),+],
            default: settings!(@text $default),
        },)+];

        /// Every environment variable the server's settings are read from (besides
        /// `ASSENT_CONFIG`, the file of settings, and the client commands' own, which
        /// `assent --help` lists). Deployments are checked against it (tests/chart.rs).
        pub const ENVIRONMENT: &[&str] = &[$($($variable,)+)+];

        /// Every setting after all the layers, its default where it has one.
        struct Values {
            $($key: settings!(@type $type, $default),)+
        }

        impl Overrides {
            /// The settings `lookup` gives for the names of [`ENVIRONMENT`].
            fn from_lookup(
                lookup: &dyn Fn(&'static str) -> Option<String>,
            ) -> Result<Overrides, ConfigError> {
                Ok(Overrides {
                    $($key: parse_variable(lookup, &[$($variable),+])?,)+
                })
            }

            /// These settings, where `later` does not give them.
            fn then(self, later: Overrides) -> Overrides {
                Overrides {
                    $($key: later.$key.or(self.$key),)+
                }
            }

            fn with_defaults(self) -> Values {
                Values {
                    $($key: settings!(@value self.$key, $default),)+
                }
            }
        }
    };
}

settings! {
    listen: String = ["ASSENT_LISTEN"], "127.0.0.1:50051";
    data_dir: PathBuf = ["ASSENT_DATA_DIR"], "data";
    database_url: String = ["ASSENT_DATABASE_URL"], None;
    database_max_connections: u32 = ["ASSENT_DATABASE_MAX_CONNECTIONS"], "16";
    database_replica_urls: String = ["ASSENT_DATABASE_REPLICA_URLS"], None;
    run_migrations: bool = ["ASSENT_RUN_MIGRATIONS"], "true";
    store_read_timeout_ms: u64 = ["ASSENT_STORE_READ_TIMEOUT_MS"], "50";
    store_write_timeout_ms: u64 = ["ASSENT_STORE_WRITE_TIMEOUT_MS"], "800";
    decision_log: String = ["ASSENT_DECISION_LOG"], "all";
    decision_log_queue: usize = ["ASSENT_DECISION_LOG_QUEUE"], "65536";
    decision_log_dir: PathBuf = ["ASSENT_DECISION_LOG_DIR"], None;
    decision_log_backlog_mb: u64 = ["ASSENT_DECISION_LOG_BACKLOG_MB"], "1024";
    decision_log_retention_days: u32 = ["ASSENT_DECISION_LOG_RETENTION_DAYS"], "400";
    decision_log_database_url: String = ["ASSENT_DECISION_LOG_DATABASE_URL"], None;
    cache_max_subjects: u64 = ["ASSENT_CACHE_MAX_SUBJECTS"], "1000000";
    cache_ttl_seconds: u64 = ["ASSENT_CACHE_TTL_SECONDS"], "600";
    cache_max_conversations: usize = ["ASSENT_CACHE_MAX_CONVERSATIONS"], "64";
    change_poll_interval_ms: u64 = ["ASSENT_CHANGE_POLL_INTERVAL_MS"], "100";
    consent_expiry_sweep_ms: u64 = ["ASSENT_CONSENT_EXPIRY_SWEEP_MS"], "1000";
    state_check_interval_ms: u64 = ["ASSENT_STATE_CHECK_INTERVAL_MS"], "3600000";
    redis_url: String = ["ASSENT_REDIS_URL"], None;
    redis_cluster: bool = ["ASSENT_REDIS_CLUSTER"], "false";
    redis_prefix: String = ["ASSENT_REDIS_PREFIX"], "assent";
    redis_ttl_seconds: u64 = ["ASSENT_REDIS_TTL_SECONDS"], "600";
    redis_timeout_ms: u64 = ["ASSENT_REDIS_TIMEOUT_MS"], "50";
    redis_allow_plaintext: bool = ["ASSENT_REDIS_ALLOW_PLAINTEXT"], "false";
    redis_entry_key: String = ["ASSENT_REDIS_ENTRY_KEY"], None;
    audit_signing_key_file: PathBuf = ["ASSENT_AUDIT_SIGNING_KEY_FILE"], None;
    audit_checkpoint_dir: PathBuf = ["ASSENT_AUDIT_CHECKPOINT_DIR"], None;
    audit_checkpoint_interval_ms: u64 = ["ASSENT_AUDIT_CHECKPOINT_INTERVAL_MS"], "60000";
    shutdown_grace_seconds: u64 = ["ASSENT_SHUTDOWN_GRACE_SECONDS"], "30";
    log_format: String = ["ASSENT_LOG_FORMAT"], "text";
    admin_listen: String = ["ASSENT_ADMIN_LISTEN"], "127.0.0.1:9090";
    console_listen: String = ["ASSENT_CONSOLE_LISTEN"], "off";
    console_token_header: String = ["ASSENT_CONSOLE_TOKEN_HEADER"], "authorization";
    // The OpenTelemetry SDK's standard variables.
    otlp_traces_endpoint: String = ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"], None;
    otlp_endpoint: String = ["OTEL_EXPORTER_OTLP_ENDPOINT"], None;
    otlp_protocol: String =
        ["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"], "grpc";
    service_name: String = ["OTEL_SERVICE_NAME"], None;
    resource_attributes: String = ["OTEL_RESOURCE_ATTRIBUTES"], None;
    trace_sampler: String = ["OTEL_TRACES_SAMPLER"], "parentbased_traceidratio";
    trace_sample_ratio: String = ["OTEL_TRACES_SAMPLER_ARG"], "1";
    subject_hash_key: String = ["ASSENT_SUBJECT_HASH_KEY"], None;
    tls_cert: PathBuf = ["ASSENT_TLS_CERT"], None;
    tls_key: PathBuf = ["ASSENT_TLS_KEY"], None;
    tls_client_ca: PathBuf = ["ASSENT_TLS_CLIENT_CA"], None;
    jwt_jwks_file: PathBuf = ["ASSENT_JWT_JWKS_FILE"], None;
    jwt_hs256_secret: String = ["ASSENT_JWT_HS256_SECRET"], None;
    jwt_issuer: String = ["ASSENT_JWT_ISSUER"], None;
    jwt_audience: String = ["ASSENT_JWT_AUDIENCE"], None;
    jwt_leeway_seconds: u64 = ["ASSENT_JWT_LEEWAY_SECONDS"], "30";
    client_scopes: String = ["ASSENT_CLIENT_SCOPES"], None;
    ext_authz_subject_header: String = ["ASSENT_EXT_AUTHZ_SUBJECT_HEADER"], "x-user-id";
    ext_authz_subject_claim: String = ["ASSENT_EXT_AUTHZ_SUBJECT_CLAIM"], None;
    max_concurrent_requests: usize = ["ASSENT_MAX_CONCURRENT_REQUESTS"], "4096";
    request_timeout_ms: u64 = ["ASSENT_REQUEST_TIMEOUT_MS"], "10000";
    writes_per_second_per_caller: u32 = ["ASSENT_WRITES_PER_SECOND_PER_CALLER"], "1000";
    max_message_bytes: usize = ["ASSENT_MAX_MESSAGE_BYTES"], "4194304";
    max_streams_per_caller: usize = ["ASSENT_MAX_STREAMS_PER_CALLER"], "64";
    stream_idle_timeout_ms: u64 = ["ASSENT_STREAM_IDLE_TIMEOUT_MS"], "60000";
    watch_max_replay: u64 = ["ASSENT_WATCH_MAX_REPLAY"], "1000000";
    http2_max_concurrent_streams: u32 = ["ASSENT_HTTP2_MAX_CONCURRENT_STREAMS"], "1024";
    http2_keepalive_interval_ms: u64 = ["ASSENT_HTTP2_KEEPALIVE_INTERVAL_MS"], "30000";
    http2_keepalive_timeout_ms: u64 = ["ASSENT_HTTP2_KEEPALIVE_TIMEOUT_MS"], "10000";
}

/// One declared setting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Setting {
    /// The key in the file, and the name errors give it.
    pub key: &'static str,
    /// The environment variables it is read from; the first one set wins.
    pub environment: &'static [&'static str],
    /// The default, as the environment would give it; `None`: unset.
    pub default: Option<&'static str>,
}

impl Setting {
    /// The declared setting of file key `key`.
    pub fn named(key: &str) -> Option<&'static Setting> {
        SETTINGS.iter().find(|setting| setting.key == key)
    }
}

/// The most clock skew a token may be forgiven when serving beyond loopback.
const MAX_JWT_LEEWAY_SECONDS: u64 = 300;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the configuration file {path}")]
    ReadFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid configuration file {path}: {message}")]
    ParseFile { path: PathBuf, message: String },
    #[error("{setting}: {message}")]
    Invalid {
        setting: &'static str,
        message: String,
    },
}

impl Overrides {
    /// The `ASSENT_*` (and `OTEL_*`) variables of `env`; an empty value is unset.
    pub fn from_env(env: &HashMap<String, String>) -> Result<Overrides, ConfigError> {
        Overrides::from_lookup(&|name| env.get(name).filter(|value| !value.is_empty()).cloned())
    }

    /// Reads a TOML file with the same keys as this struct.
    pub fn from_file(path: &Path) -> Result<Overrides, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|error| ConfigError::ParseFile {
            path: path.to_owned(),
            message: error.message().to_owned(),
        })
    }
}

/// The first of `variables` that `lookup` gives, parsed (only numbers can fail); an error names
/// the variable.
fn parse_variable<T: std::str::FromStr>(
    lookup: &dyn Fn(&'static str) -> Option<String>,
    variables: &[&'static str],
) -> Result<Option<T>, ConfigError> {
    let Some((variable, text)) = variables
        .iter()
        .find_map(|variable| Some((*variable, lookup(variable)?)))
    else {
        return Ok(None);
    };
    text.parse()
        .map(Some)
        .map_err(|_| invalid(variable, format!("expected a whole number, got {text:?}")))
}

fn invalid(setting: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        setting,
        message: message.into(),
    }
}

/// The host of a `scheme://[user[:password]@]host[:port][/…]` URL when it is another machine:
/// `None` for loopback, `localhost` or no host (a Unix socket).
fn network_host(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let address = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    let host = match address.strip_prefix('[') {
        Some(bracketed) => bracketed.split(']').next().unwrap_or_default(),
        None => address.split(':').next().unwrap_or_default(),
    };
    let local = host.is_empty()
        || host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    (!local).then_some(host)
}

/// The schemes of a PostgreSQL URL.
const POSTGRES_SCHEMES: &[&str] = &["postgres://", "postgresql://"];

/// Refuses a PostgreSQL URL to another machine without TLS (`sslmode=require`, `verify-ca` or
/// `verify-full`), naming `setting`.
fn require_tls(setting: &'static str, url: &DatabaseUrl) -> Result<(), ConfigError> {
    if let Some(host) = network_host(url.expose())
        && !matches!(
            query_parameter(url.expose(), "sslmode"),
            Some("require" | "verify-ca" | "verify-full")
        )
    {
        let message = format!(
            "refusing to reach PostgreSQL at {host} without TLS: add sslmode=require (or \
             verify-full) to the URL"
        );
        return Err(invalid(setting, message));
    }
    Ok(())
}

/// The read replicas' URLs: comma-separated `postgres://` URLs, each held to the primary's TLS
/// rule; refused unless the store is PostgreSQL.
fn replica_urls(
    given: Option<&str>,
    database_url: Option<&DatabaseUrl>,
) -> Result<Vec<DatabaseUrl>, ConfigError> {
    const SETTING: &str = "database_replica_urls";
    let urls: Vec<DatabaseUrl> = given
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .map(DatabaseUrl::new)
        .collect();
    if urls.is_empty() {
        return Ok(urls);
    }
    if !database_url.is_some_and(|url| has_scheme(url.expose(), POSTGRES_SCHEMES)) {
        return Err(invalid(
            SETTING,
            "read replicas need a PostgreSQL store: set database_url to the primary's \
             postgres:// URL (the embedded SQLite store has no replicas)",
        ));
    }
    for url in &urls {
        if !has_scheme(url.expose(), POSTGRES_SCHEMES) {
            return Err(invalid(
                SETTING,
                format!("expected comma-separated postgres:// URLs, got {url}"),
            ));
        }
        require_tls(SETTING, url)?;
    }
    Ok(urls)
}

/// The value of parameter `name` in `url`'s query string.
fn query_parameter<'a>(url: &'a str, name: &str) -> Option<&'a str> {
    let query = url.split_once('?')?.1;
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
}

/// Trace export as the OpenTelemetry variables configure it; `None` without an endpoint.
fn trace_settings(
    traces_endpoint: Option<String>,
    endpoint: Option<String>,
    protocol: &str,
    service_name: Option<String>,
    resource_attributes: Option<&str>,
    sampler: &str,
    sample_ratio: &str,
) -> Result<Option<TraceSettings>, ConfigError> {
    for (setting, url) in [
        ("otlp_traces_endpoint", &traces_endpoint),
        ("otlp_endpoint", &endpoint),
    ] {
        if let Some(url) = url
            && !has_scheme(url, &["http://", "https://"])
        {
            let message = format!("expected an http:// or https:// URL, got {url:?}");
            return Err(invalid(setting, message));
        }
    }
    let protocol =
        OtlpProtocol::parse(protocol).map_err(|message| invalid("otlp_protocol", message))?;
    let sampler = Sampler::parse(sampler, sample_ratio).map_err(|error| match error {
        SamplerError::Name(_) => invalid("trace_sampler", error.to_string()),
        SamplerError::Ratio(_) => invalid("trace_sample_ratio", error.to_string()),
    })?;
    let mut resource_attributes = match resource_attributes {
        Some(text) => crate::telemetry::parse_resource_attributes(text)
            .map_err(|message| invalid("resource_attributes", message))?,
        None => Vec::new(),
    };
    // OTEL_SERVICE_NAME wins over a service.name among the resource attributes.
    let named = resource_attributes
        .iter()
        .position(|(key, _)| key == "service.name")
        .map(|index| resource_attributes.remove(index).1);
    let service_name = service_name
        .or(named)
        .unwrap_or_else(|| "assent".to_owned());
    let endpoint = crate::telemetry::traces_endpoint(
        protocol,
        traces_endpoint.as_deref(),
        endpoint.as_deref(),
    );
    Ok(endpoint.map(|endpoint| TraceSettings {
        endpoint,
        protocol,
        service_name,
        resource_attributes,
        sampler,
    }))
}

/// Whether `url` starts with one of `schemes`.
fn has_scheme(url: &str, schemes: &[&str]) -> bool {
    schemes.iter().any(|scheme| url.starts_with(scheme))
}

/// The key of the values in Redis: the one configured, which a Redis on another machine needs
/// (at least [`RedisEntryKey::MIN_LENGTH`] characters, and not the subject hash key), or, for a
/// Redis on loopback without one, [`RedisEntryKey::loopback`], which protects nothing.
fn redis_entry_key(
    redis_url: Option<&str>,
    key: Option<String>,
    subject_hash_key: Option<&str>,
) -> Result<RedisEntryKey, ConfigError> {
    let host = redis_url.and_then(|url| redis_hosts(url).into_iter().find_map(|(host, _)| host));
    match key {
        None => match host {
            None => Ok(RedisEntryKey::loopback()),
            Some(host) => Err(invalid(
                "redis_entry_key",
                format!(
                    "required to use Redis at {host}: a random key of at least {} characters, \
                     the same on every replica (see docs/operations.md), so that a value \
                     written there by anyone else is not used",
                    RedisEntryKey::MIN_LENGTH
                ),
            )),
        },
        Some(key) if key.chars().count() < RedisEntryKey::MIN_LENGTH => Err(invalid(
            "redis_entry_key",
            format!(
                "must have at least {} characters",
                RedisEntryKey::MIN_LENGTH
            ),
        )),
        Some(key) if Some(key.as_str()) == subject_hash_key => Err(invalid(
            "redis_entry_key",
            "must not be the subject_hash_key: a key for Redis and a key for traces are two \
             secrets",
        )),
        Some(key) => Ok(RedisEntryKey::new(key)),
    }
}

/// Each machine a `redis_url` names (the one node, a cluster's seeds, the sentinels), as
/// `(host beyond loopback, TLS)`: `None` for loopback.
fn redis_hosts(url: &str) -> Vec<(Option<String>, bool)> {
    if let Some(Ok(sentinel)) = SentinelUrl::parse(url) {
        return sentinel
            .sentinels
            .iter()
            .map(|host| {
                let host = network_host(&format!("redis://{host}")).map(str::to_owned);
                (host, sentinel.tls)
            })
            .collect();
    }
    seed_urls(url)
        .map(|seed| {
            (
                network_host(seed).map(str::to_owned),
                has_scheme(seed, &["rediss://"]),
            )
        })
        .collect()
}

/// A `redis://` or `rediss://` URL; for a cluster a comma-separated list of them (one
/// scheme for all: the cluster client speaks TLS to every node or to none); or a
/// `redis+sentinel://` URL naming the sentinels. None of them plaintext to another machine
/// unless `redis_allow_plaintext`.
fn check_redis_url(shared: &SharedSettings, allow_plaintext: bool) -> Result<(), ConfigError> {
    let url = shared.url.expose();
    match SentinelUrl::parse(url) {
        Some(Err(message)) => return Err(invalid("redis_url", message)),
        Some(Ok(_)) if shared.cluster => {
            let message = "a sentinel URL names the primary of one node and its replicas, not a \
                           Redis Cluster: unset redis_cluster";
            return Err(invalid("redis_url", message));
        }
        Some(Ok(_)) => {
            for (host, tls) in redis_hosts(url) {
                if let Some(host) = host
                    && !tls
                    && !allow_plaintext
                {
                    let message = format!(
                        "refusing to reach Redis at {host} in clear: use rediss+sentinel:// \
                         (TLS), or set redis_allow_plaintext on a network you trust"
                    );
                    return Err(invalid("redis_url", message));
                }
            }
            return Ok(());
        }
        None => {}
    }
    let seeds: Vec<&str> = seed_urls(url).collect();
    if !shared.cluster && url.contains(',') {
        return Err(invalid(
            "redis_url",
            "several URLs are the seed nodes of a Redis Cluster: set redis_cluster = true",
        ));
    }
    if seeds.is_empty() {
        return Err(invalid("redis_url", "expected a redis:// URL"));
    }
    for seed in &seeds {
        if !has_scheme(seed, &["redis://", "rediss://"]) {
            let message = if shared.cluster {
                "expected redis:// URLs separated by commas"
            } else {
                "expected a redis:// URL"
            };
            return Err(invalid("redis_url", message));
        }
        if has_scheme(seed, &["redis://"])
            && let Some(host) = network_host(seed)
            && !allow_plaintext
        {
            let message = format!(
                "refusing to reach Redis at {host} in clear: use rediss:// (TLS), or set \
                 redis_allow_plaintext on a network you trust"
            );
            return Err(invalid("redis_url", message));
        }
    }
    if seeds
        .iter()
        .any(|seed| has_scheme(seed, &["rediss://"]) != has_scheme(seeds[0], &["rediss://"]))
    {
        return Err(invalid(
            "redis_url",
            "the seed nodes must all be rediss:// (TLS) or all redis://",
        ));
    }
    Ok(())
}

impl Settings {
    /// Resolves the settings from a configuration file (`config_file`, else `ASSENT_CONFIG`),
    /// the environment `env`, and the command-line `flags`.
    pub fn resolve(
        config_file: Option<&Path>,
        env: &HashMap<String, String>,
        flags: Overrides,
    ) -> Result<Settings, ConfigError> {
        let env_config = env.get("ASSENT_CONFIG").filter(|path| !path.is_empty());
        let file = match config_file.or(env_config.map(Path::new)) {
            Some(path) => Overrides::from_file(path)?,
            None => Overrides::default(),
        };
        let given = file.then(Overrides::from_env(env)?).then(flags);
        Settings::from_values(given.with_defaults())
    }

    /// Checks every setting and turns it into its type; an error names the setting.
    fn from_values(given: Values) -> Result<Settings, ConfigError> {
        let listen: SocketAddr = given.listen.parse().map_err(|_| {
            let text = &given.listen;
            invalid(
                "listen",
                format!("expected an address such as 127.0.0.1:50051, got {text:?}"),
            )
        })?;
        let log_format = match given.log_format.as_str() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                return Err(invalid(
                    "log_format",
                    format!("expected text or json, got {other:?}"),
                ));
            }
        };
        let database_url = given.database_url.map(DatabaseUrl::new);
        if let Some(url) = &database_url
            && !has_scheme(
                url.expose(),
                &["postgres://", "postgresql://", "sqlite://", "sqlite:"],
            )
        {
            let message = format!("expected a postgres:// or sqlite:// URL, got {url}");
            return Err(invalid("database_url", message));
        }
        if let Some(url) = &database_url
            && has_scheme(url.expose(), POSTGRES_SCHEMES)
        {
            require_tls("database_url", url)?;
        }
        let decision_log_database_url = given.decision_log_database_url.map(DatabaseUrl::new);
        if let Some(url) = &decision_log_database_url {
            if !has_scheme(url.expose(), POSTGRES_SCHEMES) {
                let message = format!("expected a postgres:// URL, got {url}");
                return Err(invalid("decision_log_database_url", message));
            }
            require_tls("decision_log_database_url", url)?;
            if !database_url
                .as_ref()
                .is_some_and(|main| has_scheme(main.expose(), POSTGRES_SCHEMES))
            {
                return Err(invalid(
                    "decision_log_database_url",
                    "a database of the decision log's own needs the store on PostgreSQL too \
                     (database_url = postgres://…): the embedded SQLite store keeps its decision \
                     log in its own file",
                ));
            }
        }
        let database_replica_urls = replica_urls(
            given.database_replica_urls.as_deref(),
            database_url.as_ref(),
        )?;
        if given.database_max_connections == 0 {
            return Err(invalid("database_max_connections", "must be at least 1"));
        }
        if given.store_read_timeout_ms == 0 {
            return Err(invalid("store_read_timeout_ms", "must be at least 1"));
        }
        if given.store_write_timeout_ms == 0 {
            return Err(invalid("store_write_timeout_ms", "must be at least 1"));
        }
        let store_timeouts = StoreTimeouts {
            read: Duration::from_millis(given.store_read_timeout_ms),
            write: Duration::from_millis(given.store_write_timeout_ms),
        };
        let decision_log = LogMode::parse(&given.decision_log)
            .map_err(|message| invalid("decision_log", message))?;
        if given.decision_log_queue == 0 {
            return Err(invalid("decision_log_queue", "must be at least 1"));
        }
        let redis_entry_key = redis_entry_key(
            given.redis_url.as_deref(),
            given.redis_entry_key,
            given.subject_hash_key.as_deref(),
        )?;
        let cache = CacheSettings {
            max_subjects: given.cache_max_subjects,
            time_to_live: Duration::from_secs(given.cache_ttl_seconds),
            max_conversations: given.cache_max_conversations,
            poll_interval: Duration::from_millis(given.change_poll_interval_ms),
            freshness_wait: CacheSettings::default().freshness_wait,
            shared: given.redis_url.map(|url| SharedSettings {
                url: DatabaseUrl::new(url),
                prefix: given.redis_prefix,
                time_to_live: Duration::from_secs(given.redis_ttl_seconds),
                timeout: Duration::from_millis(given.redis_timeout_ms),
                entry_key: redis_entry_key,
                cluster: given.redis_cluster,
            }),
        };
        if let Some(shared) = &cache.shared {
            check_redis_url(shared, given.redis_allow_plaintext)?;
        }
        if cache.poll_interval.is_zero() {
            return Err(invalid("change_poll_interval_ms", "must be at least 1"));
        }
        let admin_listen = match given.admin_listen.as_str() {
            "off" => None,
            text => Some(text.parse().map_err(|_| {
                let message =
                    format!("expected an address such as 127.0.0.1:9090, or off; got {text:?}");
                invalid("admin_listen", message)
            })?),
        };
        let console = match given.console_listen.as_str() {
            "off" => None,
            text => {
                let listen = text.parse().map_err(|_| {
                    let message =
                        format!("expected an address such as 127.0.0.1:9091, or off; got {text:?}");
                    invalid("console_listen", message)
                })?;
                let token_header = given
                    .console_token_header
                    .trim()
                    .to_ascii_lowercase()
                    .parse()
                    .map_err(|_| {
                        let message = format!(
                            "expected an HTTP header name, got {:?}",
                            given.console_token_header
                        );
                        invalid("console_token_header", message)
                    })?;
                Some(ConsoleSettings {
                    listen,
                    token_header,
                })
            }
        };
        let traces = trace_settings(
            given.otlp_traces_endpoint,
            given.otlp_endpoint,
            &given.otlp_protocol,
            given.service_name,
            given.resource_attributes.as_deref(),
            &given.trace_sampler,
            &given.trace_sample_ratio,
        )?;
        let tls = match (given.tls_cert, given.tls_key) {
            (Some(cert), Some(key)) => Some(TlsSettings {
                cert,
                key,
                client_ca: given.tls_client_ca,
            }),
            (None, None) if given.tls_client_ca.is_some() => {
                let message = "client certificates need TLS: set tls_cert and tls_key too";
                return Err(invalid("tls_client_ca", message));
            }
            (None, None) => None,
            (Some(_), None) | (None, Some(_)) => {
                return Err(invalid("tls_cert", "tls_cert and tls_key go together"));
            }
        };
        let tokens = if given.jwt_jwks_file.is_some() || given.jwt_hs256_secret.is_some() {
            let required = |value: Option<String>, setting| {
                value.ok_or_else(|| invalid(setting, "required to accept bearer tokens"))
            };
            Some(TokenSettings {
                jwks_file: given.jwt_jwks_file,
                hs256_secret: given.jwt_hs256_secret,
                issuer: required(given.jwt_issuer, "jwt_issuer")?,
                audience: required(given.jwt_audience, "jwt_audience")?,
                leeway_seconds: given.jwt_leeway_seconds,
            })
        } else {
            None
        };
        let client_scopes = given
            .client_scopes
            .as_deref()
            .map(parse_client_scopes)
            .transpose()
            .map_err(|message| invalid("client_scopes", message))?
            .unwrap_or_default();
        let ext_authz = ExtAuthzSettings::new(
            &given.ext_authz_subject_header,
            given.ext_authz_subject_claim.as_deref(),
        )
        .map_err(|(setting, message)| invalid(setting, message))?;
        if given.max_message_bytes < 1024 {
            return Err(invalid("max_message_bytes", "must be at least 1024"));
        }
        if given.http2_max_concurrent_streams == 0 {
            return Err(invalid(
                "http2_max_concurrent_streams",
                "must be at least 1",
            ));
        }
        if given.http2_keepalive_timeout_ms == 0 {
            return Err(invalid("http2_keepalive_timeout_ms", "must be at least 1"));
        }
        let milliseconds = |millis| (millis > 0).then(|| Duration::from_millis(millis));
        let checkpoints = given
            .audit_signing_key_file
            .map(|key_file| CheckpointSettings {
                key_file,
                directory: given
                    .audit_checkpoint_dir
                    .unwrap_or_else(|| given.data_dir.join("checkpoints")),
                interval: milliseconds(given.audit_checkpoint_interval_ms),
            });
        let decision_log_dir = given
            .decision_log_dir
            .unwrap_or_else(|| given.data_dir.join("decision-log"));
        let settings = Settings {
            listen,
            data_dir: given.data_dir,
            database_url,
            database_max_connections: given.database_max_connections,
            database_replica_urls,
            schema: if given.run_migrations {
                Schema::Migrate
            } else {
                Schema::Check
            },
            store_timeouts,
            decision_log,
            decision_log_queue: given.decision_log_queue,
            decision_log_dir,
            decision_log_backlog_bytes: given.decision_log_backlog_mb.saturating_mul(1 << 20),
            decision_log_retention_days: given.decision_log_retention_days,
            decision_log_database_url,
            cache,
            consent_expiry_sweep: milliseconds(given.consent_expiry_sweep_ms),
            checkpoints,
            state_check_interval: milliseconds(given.state_check_interval_ms),
            shutdown_grace: Duration::from_secs(given.shutdown_grace_seconds),
            log_format,
            admin_listen,
            console,
            traces,
            subject_hash_key: given.subject_hash_key.map(SubjectHashKey::new),
            tls,
            tokens,
            client_scopes,
            ext_authz,
            limits: LimitSettings {
                max_concurrent: given.max_concurrent_requests,
                deadline: milliseconds(given.request_timeout_ms),
                writes_per_second: given.writes_per_second_per_caller,
                max_message_bytes: given.max_message_bytes,
                max_streams_per_caller: given.max_streams_per_caller,
                stream_idle: milliseconds(given.stream_idle_timeout_ms),
                watch_max_replay: given.watch_max_replay,
                http2_max_concurrent_streams: given.http2_max_concurrent_streams,
                http2_keepalive_interval: milliseconds(given.http2_keepalive_interval_ms),
                http2_keepalive_timeout: Duration::from_millis(given.http2_keepalive_timeout_ms),
            },
        };
        // The console authenticates its viewers with the bearer tokens of the gRPC port: beyond
        // loopback, or wherever the gRPC port asks for authentication, it needs them.
        if let Some(console) = &settings.console
            && settings.tokens.is_none()
            && (!console.listen.ip().is_loopback() || settings.authenticates())
        {
            return Err(invalid(
                "console_listen",
                format!(
                    "refusing to serve the console on {} without bearer tokens: set jwt_* (the \
                     token of the authenticating proxy in front of it), or serve it on \
                     127.0.0.1 with no authentication configured",
                    console.listen
                ),
            ));
        }
        if !listen.ip().is_loopback() && (settings.tls.is_none() || !settings.authenticates()) {
            return Err(invalid(
                "listen",
                format!(
                    "refusing to serve {listen} without TLS and authentication: set tls_cert and \
                     tls_key, and jwt_* or tls_client_ca (see docs/security.md), or listen on \
                     127.0.0.1"
                ),
            ));
        }
        if !listen.ip().is_loopback()
            && let Some(tokens) = &settings.tokens
        {
            if tokens.jwks_file.is_some() && tokens.hs256_secret.is_some() {
                let message = format!(
                    "refusing to serve {listen} with a shared secret next to jwt_jwks_file: \
                     whoever holds the secret could sign any caller's token; keep HS256 for \
                     development on 127.0.0.1"
                );
                return Err(invalid("jwt_hs256_secret", message));
            }
            if tokens.leeway_seconds > MAX_JWT_LEEWAY_SECONDS {
                let message = format!(
                    "refusing to serve {listen} with more than {MAX_JWT_LEEWAY_SECONDS} s (5 \
                     minutes) of leeway: an expired token would be accepted that much longer"
                );
                return Err(invalid("jwt_leeway_seconds", message));
            }
        }
        Ok(settings)
    }

    /// The database of the decision log, when it has one of its own
    /// (`decision_log_database_url`); `None`: the store's.
    pub fn decision_log_location(&self) -> Option<StoreLocation> {
        self.decision_log_database_url
            .as_ref()
            .map(|url| StoreLocation::Postgres {
                url: url.clone(),
                max_connections: self.database_max_connections,
            })
    }

    /// The store these settings select.
    pub fn store_location(&self) -> StoreLocation {
        let Some(url) = &self.database_url else {
            return StoreLocation::SqliteFile(self.data_dir.join(DATABASE_FILE));
        };
        let text = url.expose();
        match text
            .strip_prefix("sqlite://")
            .or_else(|| text.strip_prefix("sqlite:"))
        {
            Some(path) => StoreLocation::SqliteFile(PathBuf::from(path)),
            None => StoreLocation::Postgres {
                url: url.clone(),
                max_connections: self.database_max_connections,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_environment_list_is_what_the_settings_read() {
        let read = std::cell::RefCell::new(Vec::new());
        super::Overrides::from_lookup(&|name| {
            read.borrow_mut().push(name);
            None
        })
        .unwrap();
        assert_eq!(read.into_inner(), super::ENVIRONMENT);
    }

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect()
    }

    #[test]
    fn defaults_listen_on_loopback_with_data_in_data() {
        let settings = Settings::resolve(None, &env(&[]), Overrides::default()).unwrap();
        assert_eq!(settings.listen, "127.0.0.1:50051".parse().unwrap());
        assert_eq!(
            settings.store_location(),
            StoreLocation::SqliteFile(PathBuf::from("data/assent.db"))
        );
        assert_eq!(settings.log_format, LogFormat::Text);
        assert_eq!(
            settings.admin_listen,
            Some("127.0.0.1:9090".parse().unwrap())
        );
        assert_eq!(settings.traces, None);
    }

    #[test]
    fn traces_follow_the_opentelemetry_variables() {
        let environment = env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.01"),
            ("ASSENT_ADMIN_LISTEN", "off"),
            ("ASSENT_SUBJECT_HASH_KEY", "secret"),
        ]);
        let settings = Settings::resolve(None, &environment, Overrides::default()).unwrap();
        let traces = settings.traces.unwrap();
        assert_eq!(traces.endpoint, "http://collector:4317");
        assert_eq!(traces.protocol, OtlpProtocol::Grpc);
        assert_eq!(traces.service_name, "assent");
        assert_eq!(traces.resource_attributes, []);
        assert_eq!(
            traces.sampler,
            Sampler {
                follows_parent: true,
                ratio: 0.01
            }
        );
        assert_eq!(settings.admin_listen, None);
        assert!(!format!("{:?}", settings.subject_hash_key).contains("secret"));
        for (name, value, setting) in [
            ("OTEL_TRACES_SAMPLER_ARG", "2", "trace_sample_ratio"),
            ("OTEL_TRACES_SAMPLER", "sometimes", "trace_sampler"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http", "otlp_protocol"),
            ("OTEL_RESOURCE_ATTRIBUTES", "team", "resource_attributes"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "collector:4317",
                "otlp_traces_endpoint",
            ),
            ("ASSENT_ADMIN_LISTEN", "9090", "admin_listen"),
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                "collector:4317",
                "otlp_endpoint",
            ),
        ] {
            let mut environment = environment.clone();
            environment.insert(name.to_owned(), value.to_owned());
            let error = Settings::resolve(None, &environment, Overrides::default()).unwrap_err();
            assert!(error.to_string().starts_with(setting), "{error}");
        }
    }

    #[test]
    fn trace_export_follows_the_otlp_exporter_specification() {
        let traces = |pairs: &[(&str, &str)]| {
            Settings::resolve(None, &env(pairs), Overrides::default())
                .unwrap()
                .traces
                .unwrap()
        };
        // OTLP/HTTP: the traces path is appended to the endpoint of every signal, never to the
        // traces endpoint; the traces protocol wins over every signal's.
        let http = traces(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ]);
        assert_eq!(http.endpoint, "http://collector:4318/v1/traces");
        assert_eq!(http.protocol, OtlpProtocol::HttpProtobuf);
        let own_path = traces(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "https://traces:443/ingest",
            ),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/json"),
        ]);
        assert_eq!(own_path.endpoint, "https://traces:443/ingest");
        assert_eq!(own_path.protocol, OtlpProtocol::HttpJson);
        // OTLP/gRPC: the endpoint as it is.
        let grpc = traces(&[(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "http://collector:4317",
        )]);
        assert_eq!(grpc.endpoint, "http://collector:4317");
        assert_eq!(grpc.protocol, OtlpProtocol::Grpc);
        // The sampler, by name.
        let off = traces(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
            ("OTEL_TRACES_SAMPLER", "always_off"),
        ]);
        assert!(off.sampler.never());
        // The resource: its attributes decoded; OTEL_SERVICE_NAME wins over their service.name.
        let attributes = (
            "OTEL_RESOURCE_ATTRIBUTES",
            "service.name=billing-consent, deployment.environment.name=prod%2Ceu,team=privacy",
        );
        let named = traces(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
            attributes,
        ]);
        assert_eq!(named.service_name, "billing-consent");
        assert_eq!(
            named.resource_attributes,
            [
                (
                    "deployment.environment.name".to_owned(),
                    "prod,eu".to_owned()
                ),
                ("team".to_owned(), "privacy".to_owned())
            ]
        );
        let renamed = traces(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
            ("OTEL_SERVICE_NAME", "assent-eu"),
            attributes,
        ]);
        assert_eq!(renamed.service_name, "assent-eu");
        assert_eq!(renamed.resource_attributes.len(), 2);
    }

    #[test]
    fn the_console_is_off_unless_configured_and_needs_tokens_beyond_loopback() {
        let defaults = Settings::resolve(None, &env(&[]), Overrides::default()).unwrap();
        assert_eq!(defaults.console, None);
        let open = env(&[("ASSENT_CONSOLE_LISTEN", "127.0.0.1:9091")]);
        let console = Settings::resolve(None, &open, Overrides::default())
            .unwrap()
            .console
            .unwrap();
        assert_eq!(console.listen, "127.0.0.1:9091".parse().unwrap());
        assert_eq!(console.token_header, http::header::AUTHORIZATION);
        let proxied = env(&[
            ("ASSENT_CONSOLE_LISTEN", "10.0.0.5:9091"),
            ("ASSENT_CONSOLE_TOKEN_HEADER", "X-Forwarded-Access-Token"),
            (
                "ASSENT_JWT_HS256_SECRET",
                "a-development-secret-of-at-least-32-bytes",
            ),
            ("ASSENT_JWT_ISSUER", "https://auth.test"),
            ("ASSENT_JWT_AUDIENCE", "assent"),
        ]);
        let console = Settings::resolve(None, &proxied, Overrides::default())
            .unwrap()
            .console
            .unwrap();
        assert_eq!(console.token_header.as_str(), "x-forwarded-access-token");
        for (pairs, setting) in [
            (
                vec![("ASSENT_CONSOLE_LISTEN", "0.0.0.0:9091")],
                "console_listen",
            ),
            (vec![("ASSENT_CONSOLE_LISTEN", "9091")], "console_listen"),
            (
                vec![
                    ("ASSENT_CONSOLE_LISTEN", "127.0.0.1:9091"),
                    ("ASSENT_CONSOLE_TOKEN_HEADER", "not a header"),
                ],
                "console_token_header",
            ),
        ] {
            let error = Settings::resolve(None, &env(&pairs), Overrides::default()).unwrap_err();
            assert!(error.to_string().starts_with(setting), "{error}");
        }
    }

    #[test]
    fn the_defaults_are_those_of_the_cache_and_the_limits() {
        let settings = Settings::resolve(None, &env(&[]), Overrides::default()).unwrap();
        assert_eq!(settings.cache, CacheSettings::default());
        assert_eq!(settings.limits, LimitSettings::default());
        assert_eq!(settings.store_timeouts, StoreTimeouts::default());
    }

    #[test]
    fn the_state_check_runs_every_hour_unless_set() {
        let default = Settings::resolve(None, &env(&[]), Overrides::default()).unwrap();
        assert_eq!(
            default.state_check_interval,
            Some(Duration::from_secs(3600))
        );
        for (value, expected) in [("60000", Some(Duration::from_secs(60))), ("0", None)] {
            let environment = env(&[("ASSENT_STATE_CHECK_INTERVAL_MS", value)]);
            let settings = Settings::resolve(None, &environment, Overrides::default()).unwrap();
            assert_eq!(settings.state_check_interval, expected, "{value}");
        }
    }

    #[test]
    fn the_consent_expiry_sweep_runs_every_second_unless_set() {
        let default = Settings::resolve(None, &env(&[]), Overrides::default()).unwrap();
        assert_eq!(default.consent_expiry_sweep, Some(Duration::from_secs(1)));
        for (value, expected) in [("250", Some(Duration::from_millis(250))), ("0", None)] {
            let environment = env(&[("ASSENT_CONSENT_EXPIRY_SWEEP_MS", value)]);
            let settings = Settings::resolve(None, &environment, Overrides::default()).unwrap();
            assert_eq!(settings.consent_expiry_sweep, expected, "{value}");
        }
        let error = Settings::resolve(
            None,
            &env(&[("ASSENT_CONSENT_EXPIRY_SWEEP_MS", "1s")]),
            Overrides::default(),
        )
        .unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("ASSENT_CONSENT_EXPIRY_SWEEP_MS: "),
            "{error}"
        );
    }

    #[test]
    fn flags_beat_environment_beats_file() {
        let directory = tempfile::tempdir().unwrap();
        let file = directory.path().join("assent.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:1\"\ndata_dir = \"/from/file\"\nshutdown_grace_seconds = 5\n",
        )
        .unwrap();
        let environment = env(&[
            ("ASSENT_LISTEN", "127.0.0.1:2"),
            ("ASSENT_DATA_DIR", "/from/env"),
        ]);
        let flags = Overrides {
            listen: Some("127.0.0.1:3".into()),
            ..Default::default()
        };
        let settings = Settings::resolve(Some(&file), &environment, flags).unwrap();
        assert_eq!(settings.listen.port(), 3);
        assert_eq!(settings.data_dir, PathBuf::from("/from/env"));
        assert_eq!(settings.shutdown_grace, Duration::from_secs(5));
    }

    #[test]
    fn a_database_url_selects_the_store() {
        let postgres = env(&[(
            "ASSENT_DATABASE_URL",
            "postgres://assent:pw@db:5432/assent?sslmode=require",
        )]);
        let settings = Settings::resolve(None, &postgres, Overrides::default()).unwrap();
        let StoreLocation::Postgres {
            url,
            max_connections,
        } = settings.store_location()
        else {
            panic!("not postgres");
        };
        assert_eq!(
            url.expose(),
            "postgres://assent:pw@db:5432/assent?sslmode=require"
        );
        assert_eq!(
            format!("{url:?}"),
            "\"postgres://assent:***@db:5432/assent?sslmode=require\""
        );
        assert_eq!(max_connections, 16);
        let sqlite = env(&[("ASSENT_DATABASE_URL", "sqlite:///var/lib/assent/a.db")]);
        let settings = Settings::resolve(None, &sqlite, Overrides::default()).unwrap();
        assert_eq!(
            settings.store_location(),
            StoreLocation::SqliteFile(PathBuf::from("/var/lib/assent/a.db"))
        );
    }

    #[test]
    fn bad_values_name_the_setting() {
        let error = Settings::resolve(
            None,
            &env(&[("ASSENT_LISTEN", "localhost")]),
            Overrides::default(),
        )
        .unwrap_err();
        assert!(error.to_string().starts_with("listen: "), "{error}");
        let error = Settings::resolve(
            None,
            &env(&[("ASSENT_SHUTDOWN_GRACE_SECONDS", "soon")]),
            Overrides::default(),
        )
        .unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("ASSENT_SHUTDOWN_GRACE_SECONDS: ")
        );
        let directory = tempfile::tempdir().unwrap();
        let file = directory.path().join("assent.toml");
        std::fs::write(&file, "listen_address = \"x\"\n").unwrap();
        let error = Settings::resolve(Some(&file), &env(&[]), Overrides::default()).unwrap_err();
        assert!(error.to_string().contains("listen_address"), "{error}");
    }

    #[test]
    fn beyond_loopback_tokens_are_refused_with_a_secret_beside_keys_or_a_long_leeway() {
        let serving = |extra: &[(&str, &str)]| {
            let mut pairs = vec![
                ("ASSENT_LISTEN", "0.0.0.0:50051"),
                ("ASSENT_TLS_CERT", "server.pem"),
                ("ASSENT_TLS_KEY", "server.key"),
                ("ASSENT_JWT_JWKS_FILE", "jwks.json"),
                ("ASSENT_JWT_ISSUER", "https://issuer.example"),
                ("ASSENT_JWT_AUDIENCE", "assent"),
            ];
            pairs.extend_from_slice(extra);
            Settings::resolve(None, &env(&pairs), Overrides::default())
        };
        assert!(serving(&[]).is_ok());
        assert!(serving(&[("ASSENT_JWT_LEEWAY_SECONDS", "300")]).is_ok());
        for (extra, setting) in [
            (
                ("ASSENT_JWT_HS256_SECRET", "s3cret"),
                "jwt_hs256_secret: refusing",
            ),
            (
                ("ASSENT_JWT_LEEWAY_SECONDS", "301"),
                "jwt_leeway_seconds: refusing",
            ),
        ] {
            let error = serving(&[extra]).unwrap_err().to_string();
            assert!(error.starts_with(setting), "{error}");
        }
        // On loopback, for development, both are allowed.
        let local = [
            ("ASSENT_JWT_JWKS_FILE", "jwks.json"),
            ("ASSENT_JWT_HS256_SECRET", "s3cret"),
            ("ASSENT_JWT_LEEWAY_SECONDS", "3600"),
            ("ASSENT_JWT_ISSUER", "https://issuer.example"),
            ("ASSENT_JWT_AUDIENCE", "assent"),
        ];
        assert!(Settings::resolve(None, &env(&local), Overrides::default()).is_ok());
    }

    /// A decision log database of its own is a PostgreSQL database beside a PostgreSQL store;
    /// unset, the log is the store's.
    #[test]
    fn the_decision_log_database_is_postgres_beside_postgres() {
        let resolve =
            |pairs: &[(&str, &str)]| Settings::resolve(None, &env(pairs), Overrides::default());
        let log = "ASSENT_DECISION_LOG_DATABASE_URL";
        let main = (
            "ASSENT_DATABASE_URL",
            "postgres://assent:s3cret@127.0.0.1/assent",
        );
        let settings = resolve(&[main]).unwrap();
        assert_eq!(settings.decision_log_location(), None);
        let settings = resolve(&[
            main,
            (log, "postgres://log:s3cret@127.0.0.1:5433/decisions"),
        ])
        .unwrap();
        assert_eq!(
            settings.decision_log_location(),
            Some(StoreLocation::Postgres {
                url: DatabaseUrl::new("postgres://log:s3cret@127.0.0.1:5433/decisions"),
                max_connections: 16,
            })
        );
        assert!(!format!("{settings:?}").contains("s3cret"));
        for (pairs, prefix) in [
            (
                &[(log, "postgres://log:s3cret@127.0.0.1/decisions")][..],
                "decision_log_database_url: a database of the decision log's own needs the \
                 store on PostgreSQL",
            ),
            (
                &[
                    ("ASSENT_DATABASE_URL", "sqlite://assent.db"),
                    (log, "postgres://log:s3cret@127.0.0.1/decisions"),
                ][..],
                "decision_log_database_url: a database of the decision log's own",
            ),
            (
                &[main, (log, "sqlite://decisions.db")][..],
                "decision_log_database_url: expected a postgres:// URL",
            ),
        ] {
            let error = resolve(pairs).unwrap_err().to_string();
            assert!(error.starts_with(prefix), "{error}");
            assert!(!error.contains("s3cret"), "{error}");
        }
    }

    #[test]
    fn stores_on_other_machines_are_reached_over_tls_only() {
        let resolve = |pairs: &[(&str, &str)]| {
            Settings::resolve(None, &env(pairs), Overrides::default()).map(|_| ())
        };
        let refused = |pairs: &[(&str, &str)], prefix: &str| {
            let error = resolve(pairs).unwrap_err().to_string();
            assert!(error.starts_with(prefix), "{error}");
            assert!(!error.contains("s3cret"), "{error}");
        };
        let database = "ASSENT_DATABASE_URL";
        refused(
            &[(database, "postgres://assent:s3cret@db.internal:5432/assent")],
            "database_url: refusing to reach PostgreSQL at db.internal",
        );
        refused(
            &[(
                database,
                "postgres://assent:s3cret@10.0.0.5/assent?sslmode=prefer",
            )],
            "database_url: refusing",
        );
        for url in [
            "postgres://assent:s3cret@db.internal/assent?sslmode=require",
            "postgres://assent:s3cret@db.internal/assent?application_name=a&sslmode=verify-full",
            "postgres://assent:s3cret@127.0.0.1:5432/assent",
            "postgres://assent:s3cret@localhost/assent",
            "postgres://assent:s3cret@[::1]:5432/assent",
            "postgres:///assent?host=/var/run/postgresql",
        ] {
            resolve(&[(database, url)]).unwrap_or_else(|error| panic!("{url}: {error}"));
        }
        let main = (
            database,
            "postgres://assent:s3cret@db.internal/assent?sslmode=require",
        );
        let log = "ASSENT_DECISION_LOG_DATABASE_URL";
        refused(
            &[
                main,
                (log, "postgres://assent:s3cret@log.internal:5432/decisions"),
            ],
            "decision_log_database_url: refusing to reach PostgreSQL at log.internal",
        );
        resolve(&[
            main,
            (
                log,
                "postgres://assent:s3cret@log.internal/decisions?sslmode=verify-full",
            ),
        ])
        .unwrap();
        let redis = "ASSENT_REDIS_URL";
        let entry_key = ("ASSENT_REDIS_ENTRY_KEY", "0123456789abcdef0123456789abcdef");
        refused(
            &[(redis, "redis://:s3cret@cache.internal:6379"), entry_key],
            "redis_url: refusing to reach Redis at cache.internal in clear",
        );
        for pairs in [
            &[(redis, "rediss://:s3cret@cache.internal:6379"), entry_key][..],
            &[(redis, "redis://127.0.0.1:6379")][..],
            &[
                (redis, "redis://cache.internal:6379"),
                ("ASSENT_REDIS_ALLOW_PLAINTEXT", "true"),
                entry_key,
            ][..],
        ] {
            resolve(pairs).unwrap_or_else(|error| panic!("{pairs:?}: {error}"));
        }
    }

    #[test]
    fn read_replicas_need_postgres_and_tls_beyond_loopback() {
        let resolve =
            |pairs: &[(&str, &str)]| Settings::resolve(None, &env(pairs), Overrides::default());
        let primary = (
            "ASSENT_DATABASE_URL",
            "postgres://assent:pw@127.0.0.1:5433/assent",
        );
        let replicas = "ASSENT_DATABASE_REPLICA_URLS";
        let settings = resolve(&[
            primary,
            (
                replicas,
                " postgres://assent:s3cret@127.0.0.1:5434/assent, \
                 postgres://assent:s3cret@db-2.internal/assent?sslmode=verify-full,",
            ),
        ])
        .unwrap();
        assert_eq!(settings.database_replica_urls.len(), 2);
        assert_eq!(
            settings.database_replica_urls[0].expose(),
            "postgres://assent:s3cret@127.0.0.1:5434/assent"
        );
        assert!(!format!("{settings:?}").contains("s3cret"));
        assert!(
            resolve(&[primary])
                .unwrap()
                .database_replica_urls
                .is_empty()
        );
        for (pairs, prefix) in [
            (
                &[(replicas, "postgres://assent:s3cret@127.0.0.1:5434/assent")][..],
                "database_replica_urls: read replicas need a PostgreSQL store",
            ),
            (
                &[
                    ("ASSENT_DATABASE_URL", "sqlite:///var/lib/assent/a.db"),
                    (replicas, "postgres://assent:s3cret@127.0.0.1:5434/assent"),
                ][..],
                "database_replica_urls: read replicas need a PostgreSQL store",
            ),
            (
                &[
                    primary,
                    (replicas, "postgres://assent:s3cret@db-2.internal/assent"),
                ][..],
                "database_replica_urls: refusing to reach PostgreSQL at db-2.internal",
            ),
            (
                &[
                    primary,
                    (replicas, "mysql://assent:s3cret@127.0.0.1/assent"),
                ][..],
                "database_replica_urls: expected comma-separated postgres:// URLs",
            ),
        ] {
            let error = resolve(pairs).unwrap_err().to_string();
            assert!(error.starts_with(prefix), "{error}");
            assert!(!error.contains("s3cret"), "{error}");
        }
    }

    #[test]
    fn redis_beyond_loopback_needs_its_own_entry_key() {
        let resolve =
            |pairs: &[(&str, &str)]| Settings::resolve(None, &env(pairs), Overrides::default());
        let remote = ("ASSENT_REDIS_URL", "rediss://:s3cret@cache.internal:6379");
        let key = "0123456789abcdef0123456789abcdef";
        let error = resolve(&[remote]).unwrap_err().to_string();
        assert!(
            error.starts_with("redis_entry_key: required to use Redis at cache.internal"),
            "{error}"
        );
        assert!(!error.contains("s3cret"), "{error}");
        let error = resolve(&[remote, ("ASSENT_REDIS_ENTRY_KEY", "short")])
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("redis_entry_key: must have at least 32"),
            "{error}"
        );
        let error = resolve(&[
            remote,
            ("ASSENT_REDIS_ENTRY_KEY", key),
            ("ASSENT_SUBJECT_HASH_KEY", key),
        ])
        .unwrap_err()
        .to_string();
        assert!(
            error.starts_with("redis_entry_key: must not be the subject_hash_key"),
            "{error}"
        );
        assert!(!error.contains(key), "{error}");
        let settings = resolve(&[remote, ("ASSENT_REDIS_ENTRY_KEY", key)]).unwrap();
        let shared = settings.cache.shared.unwrap();
        assert_eq!(shared.entry_key, RedisEntryKey::new(key));
        assert!(!format!("{shared:?}").contains(key));
        // On loopback, for development, a key derived for loopback only.
        let local = resolve(&[("ASSENT_REDIS_URL", "redis://127.0.0.1:6379")]).unwrap();
        assert_eq!(
            local.cache.shared.unwrap().entry_key,
            RedisEntryKey::loopback()
        );
    }

    #[test]
    fn a_redis_cluster_takes_seed_urls_each_checked() {
        let resolve =
            |pairs: &[(&str, &str)]| Settings::resolve(None, &env(pairs), Overrides::default());
        let refused = |pairs: &[(&str, &str)], prefix: &str| {
            let error = resolve(pairs).unwrap_err().to_string();
            assert!(error.starts_with(prefix), "{error}");
            assert!(!error.contains("s3cret"), "{error}");
        };
        let (redis, cluster) = ("ASSENT_REDIS_URL", ("ASSENT_REDIS_CLUSTER", "true"));
        let key = ("ASSENT_REDIS_ENTRY_KEY", "0123456789abcdef0123456789abcdef");
        let seeds = "redis://127.0.0.1:7000, redis://127.0.0.1:7001,redis://127.0.0.1:7002";
        let settings = resolve(&[(redis, seeds), cluster]).unwrap();
        let shared = settings.cache.shared.unwrap();
        assert!(shared.cluster);
        assert_eq!(shared.entry_key, RedisEntryKey::loopback());
        let single = resolve(&[(redis, "redis://127.0.0.1:6379")]).unwrap();
        assert!(!single.cache.shared.unwrap().cluster);
        refused(
            &[(redis, seeds)],
            "redis_url: several URLs are the seed nodes of a Redis Cluster: set redis_cluster",
        );
        refused(
            &[
                (redis, "redis://127.0.0.1:7000,http://127.0.0.1:7001"),
                cluster,
            ],
            "redis_url: expected redis:// URLs separated by commas",
        );
        refused(
            &[(redis, " , "), cluster],
            "redis_url: expected a redis:// URL",
        );
        // Every seed is checked: one in clear to another machine, one of two schemes.
        refused(
            &[
                (
                    redis,
                    "rediss://:s3cret@a.internal:6379,redis://:s3cret@b.internal:6379",
                ),
                cluster,
                key,
            ],
            "redis_url: refusing to reach Redis at b.internal in clear",
        );
        refused(
            &[
                (
                    redis,
                    "rediss://:s3cret@a.internal:6379,redis://:s3cret@b.internal:6379",
                ),
                cluster,
                key,
                ("ASSENT_REDIS_ALLOW_PLAINTEXT", "true"),
            ],
            "redis_url: the seed nodes must all be rediss:// (TLS) or all redis://",
        );
        // A seed on another machine needs the entry key, wherever it is in the list.
        refused(
            &[
                (
                    redis,
                    "rediss://localhost:7000,rediss://:s3cret@b.internal:6379",
                ),
                cluster,
            ],
            "redis_entry_key: required to use Redis at b.internal",
        );
        let remote = "rediss://:s3cret@a.internal:6379,rediss://:s3cret@b.internal:6379";
        resolve(&[(redis, remote), cluster, key]).unwrap();
    }

    #[test]
    fn sentinels_are_named_by_a_sentinel_url() {
        let resolve =
            |pairs: &[(&str, &str)]| Settings::resolve(None, &env(pairs), Overrides::default());
        let refused = |pairs: &[(&str, &str)], prefix: &str| {
            let error = resolve(pairs).unwrap_err().to_string();
            assert!(error.starts_with(prefix), "{error}");
            assert!(!error.contains("s3cret"), "{error}");
        };
        let redis = "ASSENT_REDIS_URL";
        let key = ("ASSENT_REDIS_ENTRY_KEY", "0123456789abcdef0123456789abcdef");
        let local = "redis+sentinel://:s3cret@127.0.0.1:26379,127.0.0.1:26380/mymaster";
        let shared = resolve(&[(redis, local)]).unwrap().cache.shared.unwrap();
        assert!(!shared.cluster);
        assert_eq!(shared.entry_key, RedisEntryKey::loopback());
        assert!(!format!("{shared:?}").contains("s3cret"));
        let remote = "rediss+sentinel://:s3cret@127.0.0.1:26379,s.internal:26379/mymaster/2";
        resolve(&[(redis, remote), key]).unwrap();
        refused(
            &[(redis, remote)],
            "redis_entry_key: required to use Redis at s.internal",
        );
        refused(
            &[(redis, &remote.replace("rediss+", "redis+")), key],
            "redis_url: refusing to reach Redis at s.internal in clear",
        );
        refused(
            &[(redis, local), ("ASSENT_REDIS_CLUSTER", "true")],
            "redis_url: a sentinel URL names the primary",
        );
        for malformed in [
            "redis+sentinel://:s3cret@127.0.0.1:26379",
            "redis+sentinel://:s3cret@127.0.0.1:26379/",
            "redis+sentinel://:s3cret@127.0.0.1:26379,/mymaster",
            "redis+sentinel://:s3cret@127.0.0.1:26379/my master",
            "redis+sentinel://:s3cret@127.0.0.1:26379/mymaster/x",
        ] {
            refused(
                &[(redis, malformed)],
                "redis_url: expected redis+sentinel://",
            );
        }
    }
}
