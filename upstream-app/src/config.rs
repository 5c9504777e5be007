//! Typed configuration for the upstream-app (`config/upstream-app.toml`).
//! Defaults live here, in one place; secrets come from the environment.

use std::net::SocketAddr;
use std::path::Path;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address the HTTP API listens on.
    pub listen: SocketAddr,
    pub database: DatabaseConfig,
    pub stamp: StampConfig,
    pub jobs: JobsConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// Environment variable holding the PostgreSQL URL.
    pub url_env: String,
    pub max_connections: u32,
    pub acquire_timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StampConfig {
    /// Accepted clock skew, seconds.
    pub max_skew_secs: u64,
    /// Keys accepted for verification (any of them).
    pub keys: Vec<stamp::KeyConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JobsConfig {
    /// Run the background job worker inside the server process.
    pub enabled: bool,
    pub poll_interval_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
            database: DatabaseConfig::default(),
            stamp: StampConfig::default(),
            jobs: JobsConfig::default(),
        }
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            url_env: "DATABASE_URL".into(),
            max_connections: 10,
            acquire_timeout_ms: 5000,
        }
    }
}

impl Default for StampConfig {
    fn default() -> Self {
        StampConfig {
            max_skew_secs: stamp::DEFAULT_MAX_SKEW_SECS,
            keys: vec![stamp::KeyConfig {
                id: "k1".into(),
                secret_env: "TG_STAMP_KEY_K1".into(),
            }],
        }
    }
}

impl Default for JobsConfig {
    fn default() -> Self {
        JobsConfig {
            enabled: true,
            poll_interval_ms: 250,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("config file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("config key `{key}`: {reason}")]
    Invalid { key: &'static str, reason: String },
    /// Every invalid key of one file, one per line.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    AllInvalid(Vec<ConfigError>),
}

impl Config {
    /// Load from a TOML file, or the defaults when no file is given.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let cfg: Config = match path {
            None => Config::default(),
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.display().to_string(),
                    source,
                })?;
                // Every wrong-form value and unknown key, named at once.
                toml_keys::parse(&text).map_err(|message| ConfigError::Parse {
                    path: p.display().to_string(),
                    message,
                })?
            }
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Every invalid key at once.
    fn validate(&self) -> Result<(), ConfigError> {
        let checks = [
            (
                self.database.max_connections == 0,
                "database.max_connections",
                "must be at least 1",
            ),
            (self.stamp.keys.is_empty(), "stamp.keys", "at least one key is required"),
            (
                self.jobs.poll_interval_ms == 0,
                "jobs.poll_interval_ms",
                "must be positive",
            ),
        ];
        let mut invalid: Vec<ConfigError> = checks
            .into_iter()
            .filter(|(bad, _, _)| *bad)
            .map(|(_, key, reason)| ConfigError::Invalid {
                key,
                reason: reason.into(),
            })
            .collect();
        match invalid.len() {
            0 => Ok(()),
            1 => Err(invalid.remove(0)),
            _ => Err(ConfigError::AllInvalid(invalid)),
        }
    }

    pub fn database_url(&self) -> Result<String, ConfigError> {
        std::env::var(&self.database.url_env).map_err(|_| ConfigError::Invalid {
            key: "database.url_env",
            reason: format!("environment variable `{}` is not set", self.database.url_env),
        })
    }

    pub fn verifier(&self) -> Result<stamp::Verifier, ConfigError> {
        let keys = self
            .stamp
            .keys
            .iter()
            .map(stamp::Key::from_config)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ConfigError::Invalid {
                key: "stamp.keys",
                reason: e.to_string(),
            })?;
        stamp::Verifier::new(keys, self.stamp.max_skew_secs).map_err(|e| ConfigError::Invalid {
            key: "stamp.keys",
            reason: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_is_named() {
        let err = toml::from_str::<Config>("listen = \"127.0.0.1:1\"\nbogus = 1\n").unwrap_err();
        assert!(err.to_string().contains("bogus"), "{err}");
    }

    #[test]
    fn every_offending_key_is_named_at_once() {
        let text = "listen = 5\nbogus = 1\n[database]\nmax_connections = \"ten\"\n[jobs]\npoll_interval_ms = -1\n";
        let err = toml_keys::parse::<Config>(text).unwrap_err();
        for key in ["listen", "bogus", "database.max_connections", "jobs.poll_interval_ms"] {
            assert!(err.contains(&format!("`{key}`")), "{key}: {err}");
        }
        let cfg: Config = toml::from_str("[database]\nmax_connections = 0\n[stamp]\nkeys = []\n").unwrap();
        let err = cfg.validate().unwrap_err().to_string();
        for key in ["database.max_connections", "stamp.keys"] {
            assert!(err.contains(&format!("`{key}`")), "{key}: {err}");
        }
        assert_eq!(err.lines().count(), 2, "{err}");
    }

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
    }
}
