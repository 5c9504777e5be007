//! Tenant Gateway: `gateway --config FILE` runs the proxy; `gateway
//! check-config --config FILE` validates and prints the effective config.
//!
//! Start-up wires the request path: config → tenant cache (lookup + LISTEN
//! invalidation) → backend pools (health checks) → the Pingora proxy service
//! on the public listener, and the admin service on its own listener.

mod admin;
mod config;
mod metrics;
mod pages;
mod proxy;
mod tenant;
mod upstream;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use clap::{Parser, Subcommand};
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::{Server, ShutdownWatch};
use pingora_core::services::background::{background_service, BackgroundService};
use pingora_core::services::listening::Service;

use crate::config::Config;
use crate::tenant::cache::TenantCache;
use crate::upstream::pool::Pools;

#[derive(Parser)]
#[command(name = "gateway", version, about = "Tenant Gateway: a multi-tenant edge proxy")]
struct Cli {
    #[arg(long, global = true, env = "GATEWAY_CONFIG", default_value = "config/gateway.toml")]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (the default).
    Run,
    /// Validate the config (and its environment) and print the effective config without secrets.
    CheckConfig,
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if std::env::var("LOG_FORMAT").is_ok_and(|v| v == "json") {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() -> ExitCode {
    init_logging();
    let cli = Cli::parse();
    let result = match cli.command.unwrap_or(Command::Run) {
        Command::CheckConfig => check_config(&cli.config),
        Command::Run => run(&cli.config),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn check_config(path: &std::path::Path) -> anyhow::Result<()> {
    let cfg = Config::load(path)?;
    cfg.secrets()?;
    pages::Pages::load(&cfg.pages)?;
    Pools::from_config(&cfg)?;
    println!("# {}: OK\n# lookup query: {}\n", path.display(), cfg.lookup_query());
    print!("{}", cfg.to_toml());
    Ok(())
}

/// Side tasks that live as long as the server: LISTEN invalidation, backend
/// health checks, and a start-up check of the lookup query.
struct SideTasks {
    cache: Arc<TenantCache>,
    pools: Arc<Pools>,
    database_url: String,
    channel: String,
    connect_timeout: Duration,
}

#[async_trait]
impl BackgroundService for SideTasks {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(tenant::invalidate::run(
            self.database_url.clone(),
            self.channel.clone(),
            self.cache.clone(),
            self.connect_timeout,
        ));
        for pool in self.pools.all() {
            tasks.spawn(pool.clone().run_health_checks());
        }
        let cache = self.cache.clone();
        tasks.spawn(async move {
            match cache.lookup().check_query().await {
                Ok(()) => tracing::info!("tenant lookup query checked against the database"),
                Err(e) => tracing::error!(error = %e, "config key `tenant.query`: the lookup query does not work against this database"),
            }
        });
        let _ = shutdown.changed().await;
        tasks.abort_all();
    }
}

fn run(path: &std::path::Path) -> anyhow::Result<()> {
    let cfg = Config::load(path)?;
    let secrets = cfg.secrets()?;
    let pages = pages::Pages::load(&cfg.pages)?;
    let pools = Arc::new(Pools::from_config(&cfg)?);
    let metrics = Arc::new(metrics::Metrics::new());
    let lookup = tenant::lookup::Lookup::new(
        &secrets.database_url,
        cfg.database.max_connections,
        Duration::from_millis(cfg.database.connect_timeout_ms),
        Duration::from_millis(cfg.database.query_timeout_ms),
    )
    .context("config key `database.url_env`")?
    .with_query(cfg.lookup_query());
    let cache = Arc::new(TenantCache::new(lookup, &cfg.tenant.cache, metrics.clone()));
    let trusted_proxies = cfg
        .headers
        .trusted_proxies
        .iter()
        .map(|s| {
            s.parse::<ipnet::IpNet>()
                .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        })
        .collect::<Result<Vec<_>, _>>()
        .context("config key `headers.trusted_proxies`")?;

    let conf = ServerConf {
        threads: cfg.listen.threads,
        grace_period_seconds: Some(cfg.listen.shutdown_grace_secs),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    let gateway = proxy::Gateway {
        cache: cache.clone(),
        pools: pools.clone(),
        signer: secrets.signer,
        pages,
        strip_www: cfg.tenant.strip_www,
        base_domains: cfg.tenant.base_domains.clone(),
        landing: cfg.tenant.landing_pool.as_deref().and_then(|p| pools.get(p).cloned()),
        trusted_proxies,
        metrics: metrics.clone(),
    };
    let mut proxy = pingora_proxy::http_proxy_service_with_name(&server.configuration, gateway, "tenant-gateway");
    proxy.add_tcp(&cfg.listen.http.to_string());
    server.add_service(proxy);

    let mut admin = Service::new(
        "admin".to_string(),
        admin::Admin {
            metrics,
            pools: pools.clone(),
            cache: cache.clone(),
        },
    );
    admin.add_tcp(&cfg.listen.admin.to_string());
    server.add_service(admin);

    server.add_service(background_service(
        "side-tasks",
        SideTasks {
            cache,
            pools,
            database_url: secrets.database_url,
            channel: cfg.tenant.notify_channel.clone(),
            connect_timeout: Duration::from_millis(cfg.database.connect_timeout_ms),
        },
    ));
    tracing::info!(http = %cfg.listen.http, admin = %cfg.listen.admin, "gateway starting");
    server.run_forever()
}
