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

use crate::store::StoreLocation;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:50051";
pub const DEFAULT_DATA_DIR: &str = "data";
const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
const DATABASE_FILE: &str = "assent.db";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// The gRPC listen address.
    pub listen: SocketAddr,
    /// Where the embedded store keeps its file.
    pub data_dir: PathBuf,
    /// How long in-flight calls may take to finish after SIGTERM/SIGINT.
    pub shutdown_grace: Duration,
    pub log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Readable lines for a terminal.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Settings as given by one source: every field optional.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Overrides {
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub shutdown_grace_seconds: Option<u64>,
    pub log_format: Option<String>,
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

impl Overrides {
    /// The `ASSENT_*` variables of `env`.
    pub fn from_env(env: &HashMap<String, String>) -> Result<Overrides, ConfigError> {
        let get = |name: &str| env.get(name).filter(|value| !value.is_empty()).cloned();
        let shutdown_grace_seconds = get("ASSENT_SHUTDOWN_GRACE_SECONDS")
            .map(|text| {
                text.parse().map_err(|_| ConfigError::Invalid {
                    setting: "ASSENT_SHUTDOWN_GRACE_SECONDS",
                    message: format!("expected a whole number of seconds, got {text:?}"),
                })
            })
            .transpose()?;
        Ok(Overrides {
            listen: get("ASSENT_LISTEN"),
            data_dir: get("ASSENT_DATA_DIR").map(PathBuf::from),
            shutdown_grace_seconds,
            log_format: get("ASSENT_LOG_FORMAT"),
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
            shutdown_grace_seconds: later.shutdown_grace_seconds.or(self.shutdown_grace_seconds),
            log_format: later.log_format.or(self.log_format),
        }
    }
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
        Ok(Settings {
            listen,
            data_dir: overrides
                .data_dir
                .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
            shutdown_grace: overrides
                .shutdown_grace_seconds
                .map_or(DEFAULT_SHUTDOWN_GRACE, Duration::from_secs),
            log_format,
        })
    }

    /// The store these settings select.
    pub fn store_location(&self) -> StoreLocation {
        StoreLocation::SqliteFile(self.data_dir.join(DATABASE_FILE))
    }
}

#[cfg(test)]
mod tests {
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
