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
                toml::from_str(&text).map_err(|e| ConfigError::Parse {
                    path: p.display().to_string(),
                    message: e.to_string(),
                })?
            }
        };
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.database.max_connections == 0 {
            return Err(ConfigError::Invalid {
                key: "database.max_connections",
                reason: "must be at least 1".into(),
            });
        }
        if self.stamp.keys.is_empty() {
            return Err(ConfigError::Invalid {
                key: "stamp.keys",
                reason: "at least one key is required".into(),
            });
        }
        if self.jobs.poll_interval_ms == 0 {
            return Err(ConfigError::Invalid {
                key: "jobs.poll_interval_ms",
                reason: "must be positive".into(),
            });
        }
        Ok(())
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
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
    }
}
