//! Configuration text (`Config::parse`, then `Config::problems`): any text
//! is refused or accepted without a panic, and every problem found in a
//! file that parses names the key it is about. The stored inputs start
//! from the shipped files (`config/*.toml`), so the fuzzer mutates real
//! configurations rather than looking for TOML syntax.

use gateway::config::{Config, ConfigError};

pub fn run(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        check(text);
    }
}

pub fn check(text: &str) {
    let cfg = match Config::parse(text) {
        Ok(cfg) => cfg,
        Err(message) => {
            assert!(!message.trim().is_empty(), "a refusal without a message");
            return;
        }
    };
    for problem in cfg.problems() {
        match &problem {
            ConfigError::Invalid { key, reason } => {
                assert!(!key.is_empty(), "a problem without its key: {reason}");
                assert!(!reason.is_empty(), "key {key} refused without a reason");
            }
            other => panic!("a problem that names no key: {other}"),
        }
    }
    // What start-up derives from an accepted file.
    if cfg.validate().is_ok() {
        let _ = cfg.lookup_query();
        let _ = cfg.acme_domains_query();
        let _ = cfg.limits_settings();
    }
}
