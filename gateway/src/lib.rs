//! Tenant Gateway: a multi-tenant edge proxy on Pingora. The library holds
//! every part; `src/main.rs` is the thin binary that runs [`cli::main`].
//!
//! Where things are (docs/architecture.md draws the request path):
//! - the request path: `conn` (accept, caps, deadlines), `tls` (handshake,
//!   certificates, ACME), `proxy` (the one module that speaks Pingora's
//!   `ProxyHttp`), `decide`, `route` and `headers` (the routing decision,
//!   path policy and header policy, pure), `tenant` (Host → tenant: cache,
//!   lookup, invalidation), `limits`, `body` (which request bodies are read
//!   whole first), `upstream` (pools), `pages`;
//! - around it: `config`, `reload`, `admin` and `admin_client` (the
//!   operator API), `metrics`, `logging` (the log, written off the request
//!   path), `hostnames` (custom-hostname claims),
//!   `schema` (the gateway's own tables), `triggers` (django-tenants), `sys`
//!   (the only FFI);
//! - `cli`: the command line and the server's assembly.

pub mod admin;
pub mod admin_client;
pub mod body;
pub mod cli;
pub mod clock;
pub mod config;
pub mod conn;
pub mod decide;
pub mod headers;
pub mod hostnames;
pub mod inflight;
pub mod limits;
pub mod logging;
pub mod metrics;
pub mod pages;
pub mod proxy;
pub mod reload;
pub mod response_body;
pub mod route;
pub mod schema;
pub mod sys;
pub mod tenant;
pub mod tls;
pub mod triggers;
pub mod upstream;

/// The layering rule as a test: Pingora is imported only at the edges
/// (these files); every other module — the routing decision, header and
/// path policy, tenant cache and lookup, limits, ACME and hostname policy,
/// config — is plain Rust over `http` types, testable without a server.
#[cfg(test)]
mod layering {
    const PINGORA_EDGES: &[&str] = &[
        "proxy.rs",         // the request path: Pingora's ProxyHttp
        "cli.rs",           // the server's assembly
        "admin.rs",         // the admin listener: Pingora's ServeHttp
        "conn/listener.rs", // accept loop: Pingora's ServerApp and Service
        "conn/stream.rs",   // the stream type Pingora's HTTP layer reads
        "tls/accept.rs",    // the TLS stream handed to Pingora
        "upstream/pool.rs", // pingora-load-balancing pools and health checks
    ];

    fn sources(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("src dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                sources(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    /// Whether a line of code names a Pingora crate's path (`pingora_x::`).
    fn names_pingora(code: &str) -> bool {
        code.match_indices("pingora_").any(|(i, m)| {
            let rest = &code[i + m.len()..];
            let ident = rest
                .bytes()
                .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_')
                .count();
            ident > 0 && rest[ident..].starts_with("::")
        })
    }

    #[test]
    fn only_the_edges_import_pingora() {
        assert!(names_pingora(concat!("use pingora", "_http::RequestHeader;")));
        assert!(!names_pingora("fn only_pingora_is_named() {}"));
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        sources(&root, &mut files);
        let mut offenders = Vec::new();
        for path in files {
            let rel = path
                .strip_prefix(&root)
                .expect("under src")
                .to_string_lossy()
                .replace('\\', "/");
            if PINGORA_EDGES.contains(&rel.as_str()) {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("readable");
            for (i, line) in text.lines().enumerate() {
                let code = line.split("//").next().unwrap_or_default();
                if names_pingora(code) {
                    offenders.push(format!("{rel}:{}: {}", i + 1, line.trim()));
                }
            }
        }
        assert!(
            offenders.is_empty(),
            "Pingora outside the edges:\n{}",
            offenders.join("\n")
        );
        assert!(root.join("decide.rs").exists() && root.join("headers.rs").exists());
    }
}
