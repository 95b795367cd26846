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

use crate::audit::decision_log::LogMode;
use crate::auth::{Scopes, TokenSettings, parse_client_scopes};
use crate::cache::{CacheSettings, SharedSettings};
use crate::limits::LimitSettings;
use crate::store::{DatabaseUrl, StoreLocation};
use crate::telemetry::{LogFormat, SubjectHashKey, TraceSettings};

pub const DEFAULT_LISTEN: &str = "127.0.0.1:50051";
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9090";
const DEFAULT_SERVICE_NAME: &str = "assent";
pub const DEFAULT_DATA_DIR: &str = "data";
const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
const DATABASE_FILE: &str = "assent.db";
const DEFAULT_DATABASE_MAX_CONNECTIONS: u32 = 16;
const DEFAULT_DECISION_LOG_QUEUE: usize = 65_536;
const DEFAULT_DECISION_LOG_RETENTION_DAYS: u32 = 400;
const DEFAULT_CONSENT_EXPIRY_SWEEP: Duration = Duration::from_secs(1);

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
    /// Which decisions the decision log records.
    pub decision_log: LogMode,
    /// How many decisions may wait to be written before new ones are dropped (and counted).
    pub decision_log_queue: usize,
    /// How many days of decisions `assent audit prune` keeps.
    pub decision_log_retention_days: u32,
    /// The in-process cache of subject state.
    pub cache: CacheSettings,
    /// How often choices whose expiry has passed are recorded as expired (a `consent_expired`
    /// event each); `None`: never (decisions ignore expired choices either way).
    pub consent_expiry_sweep: Option<Duration>,
    /// How long in-flight calls may take to finish after SIGTERM/SIGINT.
    pub shutdown_grace: Duration,
    pub log_format: LogFormat,
    /// The admin HTTP address (`/metrics`, `/healthz`, `/readyz`); `None`: not served.
    pub admin_listen: Option<SocketAddr>,
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

/// Settings as given by one source: every field optional.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Overrides {
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub database_url: Option<String>,
    pub database_max_connections: Option<u32>,
    pub decision_log: Option<String>,
    pub decision_log_queue: Option<usize>,
    pub decision_log_retention_days: Option<u32>,
    pub cache_max_subjects: Option<u64>,
    pub cache_ttl_seconds: Option<u64>,
    pub cache_max_conversations: Option<usize>,
    pub change_poll_interval_ms: Option<u64>,
    pub consent_expiry_sweep_ms: Option<u64>,
    pub redis_url: Option<String>,
    pub redis_prefix: Option<String>,
    pub redis_ttl_seconds: Option<u64>,
    pub redis_timeout_ms: Option<u64>,
    pub shutdown_grace_seconds: Option<u64>,
    pub log_format: Option<String>,
    pub admin_listen: Option<String>,
    pub otlp_endpoint: Option<String>,
    pub service_name: Option<String>,
    pub trace_sample_ratio: Option<String>,
    pub subject_hash_key: Option<String>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub tls_client_ca: Option<PathBuf>,
    pub jwt_jwks_file: Option<PathBuf>,
    pub jwt_hs256_secret: Option<String>,
    pub jwt_issuer: Option<String>,
    pub jwt_audience: Option<String>,
    pub jwt_leeway_seconds: Option<u64>,
    pub client_scopes: Option<String>,
    pub max_concurrent_requests: Option<usize>,
    pub request_timeout_ms: Option<u64>,
    pub writes_per_second_per_caller: Option<u32>,
    pub max_message_bytes: Option<usize>,
}

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

/// Every environment variable the server's settings are read from (besides `ASSENT_CONFIG`, the
/// file of settings, and the client commands' own, which `assent --help` lists). Deployments
/// are checked against it (tests/chart.rs).
pub const ENVIRONMENT: &[&str] = &[
    "ASSENT_LISTEN",
    "ASSENT_DATA_DIR",
    "ASSENT_DATABASE_URL",
    "ASSENT_DATABASE_MAX_CONNECTIONS",
    "ASSENT_DECISION_LOG",
    "ASSENT_DECISION_LOG_QUEUE",
    "ASSENT_DECISION_LOG_RETENTION_DAYS",
    "ASSENT_CACHE_MAX_SUBJECTS",
    "ASSENT_CACHE_TTL_SECONDS",
    "ASSENT_CACHE_MAX_CONVERSATIONS",
    "ASSENT_CHANGE_POLL_INTERVAL_MS",
    "ASSENT_CONSENT_EXPIRY_SWEEP_MS",
    "ASSENT_REDIS_URL",
    "ASSENT_REDIS_PREFIX",
    "ASSENT_REDIS_TTL_SECONDS",
    "ASSENT_REDIS_TIMEOUT_MS",
    "ASSENT_SHUTDOWN_GRACE_SECONDS",
    "ASSENT_LOG_FORMAT",
    "ASSENT_ADMIN_LISTEN",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_SERVICE_NAME",
    "OTEL_TRACES_SAMPLER_ARG",
    "ASSENT_SUBJECT_HASH_KEY",
    "ASSENT_TLS_CERT",
    "ASSENT_TLS_KEY",
    "ASSENT_TLS_CLIENT_CA",
    "ASSENT_JWT_JWKS_FILE",
    "ASSENT_JWT_HS256_SECRET",
    "ASSENT_JWT_ISSUER",
    "ASSENT_JWT_AUDIENCE",
    "ASSENT_JWT_LEEWAY_SECONDS",
    "ASSENT_CLIENT_SCOPES",
    "ASSENT_MAX_CONCURRENT_REQUESTS",
    "ASSENT_REQUEST_TIMEOUT_MS",
    "ASSENT_WRITES_PER_SECOND_PER_CALLER",
    "ASSENT_MAX_MESSAGE_BYTES",
];

impl Overrides {
    /// The `ASSENT_*` variables of `env`.
    pub fn from_env(env: &HashMap<String, String>) -> Result<Overrides, ConfigError> {
        Overrides::from_lookup(&|name| env.get(name).filter(|value| !value.is_empty()).cloned())
    }

    /// The settings `lookup` gives for the names of [`ENVIRONMENT`] (an empty value is unset).
    fn from_lookup(
        lookup: &dyn Fn(&'static str) -> Option<String>,
    ) -> Result<Overrides, ConfigError> {
        let get = |name: &'static str| lookup(name);
        Ok(Overrides {
            listen: get("ASSENT_LISTEN"),
            data_dir: get("ASSENT_DATA_DIR").map(PathBuf::from),
            database_url: get("ASSENT_DATABASE_URL"),
            database_max_connections: parse_number(
                get("ASSENT_DATABASE_MAX_CONNECTIONS"),
                "ASSENT_DATABASE_MAX_CONNECTIONS",
            )?,
            decision_log: get("ASSENT_DECISION_LOG"),
            decision_log_queue: parse_number(
                get("ASSENT_DECISION_LOG_QUEUE"),
                "ASSENT_DECISION_LOG_QUEUE",
            )?,
            decision_log_retention_days: parse_number(
                get("ASSENT_DECISION_LOG_RETENTION_DAYS"),
                "ASSENT_DECISION_LOG_RETENTION_DAYS",
            )?,
            cache_max_subjects: parse_number(
                get("ASSENT_CACHE_MAX_SUBJECTS"),
                "ASSENT_CACHE_MAX_SUBJECTS",
            )?,
            cache_ttl_seconds: parse_number(
                get("ASSENT_CACHE_TTL_SECONDS"),
                "ASSENT_CACHE_TTL_SECONDS",
            )?,
            cache_max_conversations: parse_number(
                get("ASSENT_CACHE_MAX_CONVERSATIONS"),
                "ASSENT_CACHE_MAX_CONVERSATIONS",
            )?,
            change_poll_interval_ms: parse_number(
                get("ASSENT_CHANGE_POLL_INTERVAL_MS"),
                "ASSENT_CHANGE_POLL_INTERVAL_MS",
            )?,
            consent_expiry_sweep_ms: parse_number(
                get("ASSENT_CONSENT_EXPIRY_SWEEP_MS"),
                "ASSENT_CONSENT_EXPIRY_SWEEP_MS",
            )?,
            redis_url: get("ASSENT_REDIS_URL"),
            redis_prefix: get("ASSENT_REDIS_PREFIX"),
            redis_ttl_seconds: parse_number(
                get("ASSENT_REDIS_TTL_SECONDS"),
                "ASSENT_REDIS_TTL_SECONDS",
            )?,
            redis_timeout_ms: parse_number(
                get("ASSENT_REDIS_TIMEOUT_MS"),
                "ASSENT_REDIS_TIMEOUT_MS",
            )?,
            shutdown_grace_seconds: parse_number(
                get("ASSENT_SHUTDOWN_GRACE_SECONDS"),
                "ASSENT_SHUTDOWN_GRACE_SECONDS",
            )?,
            log_format: get("ASSENT_LOG_FORMAT"),
            admin_listen: get("ASSENT_ADMIN_LISTEN"),
            // The OpenTelemetry SDK's standard variables.
            otlp_endpoint: get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
                .or_else(|| get("OTEL_EXPORTER_OTLP_ENDPOINT")),
            service_name: get("OTEL_SERVICE_NAME"),
            trace_sample_ratio: get("OTEL_TRACES_SAMPLER_ARG"),
            subject_hash_key: get("ASSENT_SUBJECT_HASH_KEY"),
            tls_cert: get("ASSENT_TLS_CERT").map(PathBuf::from),
            tls_key: get("ASSENT_TLS_KEY").map(PathBuf::from),
            tls_client_ca: get("ASSENT_TLS_CLIENT_CA").map(PathBuf::from),
            jwt_jwks_file: get("ASSENT_JWT_JWKS_FILE").map(PathBuf::from),
            jwt_hs256_secret: get("ASSENT_JWT_HS256_SECRET"),
            jwt_issuer: get("ASSENT_JWT_ISSUER"),
            jwt_audience: get("ASSENT_JWT_AUDIENCE"),
            jwt_leeway_seconds: parse_number(
                get("ASSENT_JWT_LEEWAY_SECONDS"),
                "ASSENT_JWT_LEEWAY_SECONDS",
            )?,
            client_scopes: get("ASSENT_CLIENT_SCOPES"),
            max_concurrent_requests: parse_number(
                get("ASSENT_MAX_CONCURRENT_REQUESTS"),
                "ASSENT_MAX_CONCURRENT_REQUESTS",
            )?,
            request_timeout_ms: parse_number(
                get("ASSENT_REQUEST_TIMEOUT_MS"),
                "ASSENT_REQUEST_TIMEOUT_MS",
            )?,
            writes_per_second_per_caller: parse_number(
                get("ASSENT_WRITES_PER_SECOND_PER_CALLER"),
                "ASSENT_WRITES_PER_SECOND_PER_CALLER",
            )?,
            max_message_bytes: parse_number(
                get("ASSENT_MAX_MESSAGE_BYTES"),
                "ASSENT_MAX_MESSAGE_BYTES",
            )?,
        })
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

    fn then(self, later: Overrides) -> Overrides {
        Overrides {
            listen: later.listen.or(self.listen),
            data_dir: later.data_dir.or(self.data_dir),
            database_url: later.database_url.or(self.database_url),
            database_max_connections: later
                .database_max_connections
                .or(self.database_max_connections),
            decision_log: later.decision_log.or(self.decision_log),
            decision_log_queue: later.decision_log_queue.or(self.decision_log_queue),
            decision_log_retention_days: later
                .decision_log_retention_days
                .or(self.decision_log_retention_days),
            cache_max_subjects: later.cache_max_subjects.or(self.cache_max_subjects),
            cache_ttl_seconds: later.cache_ttl_seconds.or(self.cache_ttl_seconds),
            cache_max_conversations: later
                .cache_max_conversations
                .or(self.cache_max_conversations),
            change_poll_interval_ms: later
                .change_poll_interval_ms
                .or(self.change_poll_interval_ms),
            consent_expiry_sweep_ms: later
                .consent_expiry_sweep_ms
                .or(self.consent_expiry_sweep_ms),
            redis_url: later.redis_url.or(self.redis_url),
            redis_prefix: later.redis_prefix.or(self.redis_prefix),
            redis_ttl_seconds: later.redis_ttl_seconds.or(self.redis_ttl_seconds),
            redis_timeout_ms: later.redis_timeout_ms.or(self.redis_timeout_ms),
            shutdown_grace_seconds: later.shutdown_grace_seconds.or(self.shutdown_grace_seconds),
            log_format: later.log_format.or(self.log_format),
            admin_listen: later.admin_listen.or(self.admin_listen),
            otlp_endpoint: later.otlp_endpoint.or(self.otlp_endpoint),
            service_name: later.service_name.or(self.service_name),
            trace_sample_ratio: later.trace_sample_ratio.or(self.trace_sample_ratio),
            subject_hash_key: later.subject_hash_key.or(self.subject_hash_key),
            tls_cert: later.tls_cert.or(self.tls_cert),
            tls_key: later.tls_key.or(self.tls_key),
            tls_client_ca: later.tls_client_ca.or(self.tls_client_ca),
            jwt_jwks_file: later.jwt_jwks_file.or(self.jwt_jwks_file),
            jwt_hs256_secret: later.jwt_hs256_secret.or(self.jwt_hs256_secret),
            jwt_issuer: later.jwt_issuer.or(self.jwt_issuer),
            jwt_audience: later.jwt_audience.or(self.jwt_audience),
            jwt_leeway_seconds: later.jwt_leeway_seconds.or(self.jwt_leeway_seconds),
            client_scopes: later.client_scopes.or(self.client_scopes),
            max_concurrent_requests: later
                .max_concurrent_requests
                .or(self.max_concurrent_requests),
            request_timeout_ms: later.request_timeout_ms.or(self.request_timeout_ms),
            writes_per_second_per_caller: later
                .writes_per_second_per_caller
                .or(self.writes_per_second_per_caller),
            max_message_bytes: later.max_message_bytes.or(self.max_message_bytes),
        }
    }
}

fn parse_number<T: std::str::FromStr>(
    text: Option<String>,
    name: &'static str,
) -> Result<Option<T>, ConfigError> {
    let Some(text) = text else {
        return Ok(None);
    };
    text.parse().map(Some).map_err(|_| ConfigError::Invalid {
        setting: name,
        message: format!("expected a whole number, got {text:?}"),
    })
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
        let merged = file.then(Overrides::from_env(env)?).then(flags);
        Settings::from_overrides(merged)
    }

    fn from_overrides(overrides: Overrides) -> Result<Settings, ConfigError> {
        let listen_text = overrides.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
        let listen = listen_text.parse().map_err(|_| ConfigError::Invalid {
            setting: "listen",
            message: format!("expected an address such as {DEFAULT_LISTEN}, got {listen_text:?}"),
        })?;
        let log_format = match overrides.log_format.as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                return Err(ConfigError::Invalid {
                    setting: "log_format",
                    message: format!("expected text or json, got {other:?}"),
                });
            }
        };
        let database_url = overrides.database_url.map(DatabaseUrl::new);
        if let Some(url) = &database_url {
            let known = ["postgres://", "postgresql://", "sqlite://", "sqlite:"];
            if !known.iter().any(|scheme| url.expose().starts_with(scheme)) {
                return Err(ConfigError::Invalid {
                    setting: "database_url",
                    message: format!("expected a postgres:// or sqlite:// URL, got {url}"),
                });
            }
        }
        let database_max_connections = overrides
            .database_max_connections
            .unwrap_or(DEFAULT_DATABASE_MAX_CONNECTIONS);
        if database_max_connections == 0 {
            return Err(ConfigError::Invalid {
                setting: "database_max_connections",
                message: "must be at least 1".into(),
            });
        }
        let decision_log = match overrides.decision_log.as_deref() {
            Some(text) => LogMode::parse(text).map_err(|message| ConfigError::Invalid {
                setting: "decision_log",
                message,
            })?,
            None => LogMode::All,
        };
        let decision_log_queue = overrides
            .decision_log_queue
            .unwrap_or(DEFAULT_DECISION_LOG_QUEUE);
        if decision_log_queue == 0 {
            return Err(ConfigError::Invalid {
                setting: "decision_log_queue",
                message: "must be at least 1".into(),
            });
        }
        let defaults = CacheSettings::default();
        let cache = CacheSettings {
            max_subjects: overrides
                .cache_max_subjects
                .unwrap_or(defaults.max_subjects),
            time_to_live: overrides
                .cache_ttl_seconds
                .map_or(defaults.time_to_live, Duration::from_secs),
            max_conversations: overrides
                .cache_max_conversations
                .unwrap_or(defaults.max_conversations),
            poll_interval: overrides
                .change_poll_interval_ms
                .map_or(defaults.poll_interval, Duration::from_millis),
            freshness_wait: defaults.freshness_wait,
            shared: overrides.redis_url.map(|url| SharedSettings {
                url: DatabaseUrl::new(url),
                prefix: overrides
                    .redis_prefix
                    .unwrap_or_else(|| "assent".to_owned()),
                time_to_live: Duration::from_secs(overrides.redis_ttl_seconds.unwrap_or(600)),
                timeout: Duration::from_millis(overrides.redis_timeout_ms.unwrap_or(50)),
            }),
        };
        if let Some(shared) = &cache.shared
            && !["redis://", "rediss://"]
                .iter()
                .any(|scheme| shared.url.expose().starts_with(scheme))
        {
            return Err(ConfigError::Invalid {
                setting: "redis_url",
                message: "expected a redis:// URL".into(),
            });
        }
        if cache.poll_interval.is_zero() {
            return Err(ConfigError::Invalid {
                setting: "change_poll_interval_ms",
                message: "must be at least 1".into(),
            });
        }
        let admin_listen = match overrides.admin_listen.as_deref() {
            Some("off") => None,
            text => {
                let text = text.unwrap_or(DEFAULT_ADMIN_LISTEN);
                Some(text.parse().map_err(|_| ConfigError::Invalid {
                    setting: "admin_listen",
                    message: format!(
                        "expected an address such as {DEFAULT_ADMIN_LISTEN}, or off; got {text:?}"
                    ),
                })?)
            }
        };
        let sample_ratio = match overrides.trace_sample_ratio.as_deref() {
            None => 1.0,
            Some(text) => text
                .parse::<f64>()
                .ok()
                .filter(|ratio| (0.0..=1.0).contains(ratio))
                .ok_or_else(|| ConfigError::Invalid {
                    setting: "trace_sample_ratio",
                    message: format!("expected a number from 0 to 1, got {text:?}"),
                })?,
        };
        let traces = overrides.otlp_endpoint.map(|otlp_endpoint| TraceSettings {
            otlp_endpoint,
            service_name: overrides
                .service_name
                .unwrap_or_else(|| DEFAULT_SERVICE_NAME.to_owned()),
            sample_ratio,
        });
        if let Some(traces) = &traces
            && !["http://", "https://"]
                .iter()
                .any(|scheme| traces.otlp_endpoint.starts_with(scheme))
        {
            return Err(ConfigError::Invalid {
                setting: "otlp_endpoint",
                message: format!(
                    "expected an http:// or https:// URL, got {:?}",
                    traces.otlp_endpoint
                ),
            });
        }
        let subject_hash_key = overrides.subject_hash_key.map(SubjectHashKey::new);
        let tls = match (overrides.tls_cert, overrides.tls_key) {
            (Some(cert), Some(key)) => Some(TlsSettings {
                cert,
                key,
                client_ca: overrides.tls_client_ca,
            }),
            (None, None) if overrides.tls_client_ca.is_some() => {
                return Err(ConfigError::Invalid {
                    setting: "tls_client_ca",
                    message: "client certificates need TLS: set tls_cert and tls_key too".into(),
                });
            }
            (None, None) => None,
            (Some(_), None) | (None, Some(_)) => {
                return Err(ConfigError::Invalid {
                    setting: "tls_cert",
                    message: "tls_cert and tls_key go together".into(),
                });
            }
        };
        let tokens = if overrides.jwt_jwks_file.is_some() || overrides.jwt_hs256_secret.is_some() {
            let required = |value: Option<String>, setting: &'static str| {
                value.ok_or_else(|| ConfigError::Invalid {
                    setting,
                    message: "required to accept bearer tokens".into(),
                })
            };
            Some(TokenSettings {
                jwks_file: overrides.jwt_jwks_file,
                hs256_secret: overrides.jwt_hs256_secret,
                issuer: required(overrides.jwt_issuer, "jwt_issuer")?,
                audience: required(overrides.jwt_audience, "jwt_audience")?,
                leeway_seconds: overrides.jwt_leeway_seconds.unwrap_or(30),
            })
        } else {
            None
        };
        let client_scopes = match overrides.client_scopes.as_deref() {
            Some(text) => parse_client_scopes(text).map_err(|message| ConfigError::Invalid {
                setting: "client_scopes",
                message,
            })?,
            None => HashMap::new(),
        };
        let default_limits = LimitSettings::default();
        let limits = LimitSettings {
            max_concurrent: overrides
                .max_concurrent_requests
                .unwrap_or(default_limits.max_concurrent),
            deadline: match overrides.request_timeout_ms {
                Some(0) => None,
                Some(millis) => Some(Duration::from_millis(millis)),
                None => default_limits.deadline,
            },
            writes_per_second: overrides
                .writes_per_second_per_caller
                .unwrap_or(default_limits.writes_per_second),
            max_message_bytes: overrides
                .max_message_bytes
                .unwrap_or(default_limits.max_message_bytes),
        };
        if limits.max_message_bytes < 1024 {
            return Err(ConfigError::Invalid {
                setting: "max_message_bytes",
                message: "must be at least 1024".into(),
            });
        }
        let authenticates =
            tokens.is_some() || tls.as_ref().is_some_and(|tls| tls.client_ca.is_some());
        let listen: SocketAddr = listen;
        if !listen.ip().is_loopback() && (tls.is_none() || !authenticates) {
            return Err(ConfigError::Invalid {
                setting: "listen",
                message: format!(
                    "refusing to serve {listen} without TLS and authentication: set tls_cert and \
                     tls_key, and jwt_* or tls_client_ca (see docs/security.md), or listen on \
                     127.0.0.1"
                ),
            });
        }
        let consent_expiry_sweep = match overrides.consent_expiry_sweep_ms {
            Some(0) => None,
            Some(millis) => Some(Duration::from_millis(millis)),
            None => Some(DEFAULT_CONSENT_EXPIRY_SWEEP),
        };
        Ok(Settings {
            consent_expiry_sweep,
            tls,
            tokens,
            client_scopes,
            limits,
            listen,
            admin_listen,
            traces,
            subject_hash_key,
            cache,
            decision_log,
            decision_log_queue,
            decision_log_retention_days: overrides
                .decision_log_retention_days
                .unwrap_or(DEFAULT_DECISION_LOG_RETENTION_DAYS),
            data_dir: overrides
                .data_dir
                .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
            database_url,
            database_max_connections,
            shutdown_grace: overrides
                .shutdown_grace_seconds
                .map_or(DEFAULT_SHUTDOWN_GRACE, Duration::from_secs),
            log_format,
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
        assert_eq!(traces.otlp_endpoint, "http://collector:4317");
        assert_eq!(traces.service_name, "assent");
        assert_eq!(traces.sample_ratio, 0.01);
        assert_eq!(settings.admin_listen, None);
        assert!(!format!("{:?}", settings.subject_hash_key).contains("secret"));
        for (name, value, setting) in [
            ("OTEL_TRACES_SAMPLER_ARG", "2", "trace_sample_ratio"),
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
        let postgres = env(&[("ASSENT_DATABASE_URL", "postgres://assent:pw@db:5432/assent")]);
        let settings = Settings::resolve(None, &postgres, Overrides::default()).unwrap();
        let StoreLocation::Postgres {
            url,
            max_connections,
        } = settings.store_location()
        else {
            panic!("not postgres");
        };
        assert_eq!(url.expose(), "postgres://assent:pw@db:5432/assent");
        assert_eq!(
            format!("{url:?}"),
            "\"postgres://assent:***@db:5432/assent\""
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
}
