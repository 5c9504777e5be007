//! upstream-app: the reference tenant backend behind Tenant Gateway.
//! `serve` runs the HTTP API and job worker; the other subcommands are the
//! operator CLI (migrate, tenant, domain).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use sqlx::postgres::PgPoolOptions;

use crate::config::Config;
use crate::{admin, http, jobs, migrate};

#[derive(Parser)]
#[command(
    name = "upstream-app",
    version,
    about = "Reference tenant backend for Tenant Gateway"
)]
struct Cli {
    /// TOML config file (defaults apply when absent).
    #[arg(long, global = true, env = "UPSTREAM_APP_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP API (and the job worker unless disabled).
    Serve,
    /// Apply shared migrations, then tenant migrations to every tenant schema.
    Migrate {
        /// Use the .sql files of this directory instead of the built-in shared set.
        #[arg(long)]
        shared_migrations: Option<PathBuf>,
        /// Use the .sql files of this directory instead of the built-in tenant set.
        #[arg(long)]
        tenant_migrations: Option<PathBuf>,
    },
    /// Manage tenants.
    #[command(subcommand)]
    Tenant(TenantCmd),
    /// Manage domains.
    #[command(subcommand)]
    Domain(DomainCmd),
}

#[derive(Subcommand)]
enum TenantCmd {
    /// Create a tenant: row, schema, tenant migrations and domains, atomically.
    Create {
        schema: String,
        #[arg(long)]
        name: String,
        /// Domain to map to the tenant (repeatable; the first is primary).
        #[arg(long = "domain")]
        domains: Vec<String>,
        #[arg(long)]
        tenant_migrations: Option<PathBuf>,
    },
    Suspend {
        schema: String,
    },
    Resume {
        schema: String,
    },
    /// Tombstone a tenant (its schema stays until `purge`).
    Delete {
        schema: String,
    },
    /// Drop the schemas of tenants tombstoned longer ago than --older-than.
    Purge {
        #[arg(long, value_parser = admin::parse_age)]
        older_than: Duration,
    },
    /// Send a tenant only to a dedicated backend pool of the gateway.
    Pin {
        schema: String,
        #[arg(long)]
        pool: String,
    },
    /// Send a tenant back to the default pool.
    Unpin {
        schema: String,
    },
    /// Per-tenant limits the gateway enforces (overriding its [limits.tenant]
    /// defaults; 0 = unlimited); `--clear` returns to the defaults.
    Limits {
        schema: String,
        /// Requests per second.
        #[arg(long)]
        rps: Option<u32>,
        /// Requests allowed at once above the rate (bucket size).
        #[arg(long)]
        burst: Option<u32>,
        /// Requests in flight to the backends at once.
        #[arg(long)]
        max_concurrent: Option<u32>,
        #[arg(long, conflicts_with_all = ["rps", "burst", "max_concurrent"])]
        clear: bool,
    },
    List,
}

#[derive(Subcommand)]
enum DomainCmd {
    Add {
        domain: String,
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        primary: bool,
    },
    Remove {
        domain: String,
    },
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

/// The `upstream-app` command: parse the command line, run the command.
pub fn main() -> ExitCode {
    init_logging();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(run_cli())
}

async fn run_cli() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn connect(cfg: &Config) -> anyhow::Result<sqlx::PgPool> {
    let url = cfg.database_url()?;
    PgPoolOptions::new()
        .max_connections(cfg.database.max_connections)
        .acquire_timeout(Duration::from_millis(cfg.database.acquire_timeout_ms))
        .connect(&url)
        .await
        .context("cannot connect to PostgreSQL")
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let cfg = Config::load(cli.config.as_deref())?;
    match cli.command {
        Command::Serve => serve(cfg).await.map(|_| ExitCode::SUCCESS),
        Command::Migrate {
            shared_migrations,
            tenant_migrations,
        } => {
            let migrations =
                migrate::Migrations::with_overrides(shared_migrations.as_deref(), tenant_migrations.as_deref())?;
            let pool = connect(&cfg).await?;
            let reports = admin::migrate_all(&pool, &migrations).await?;
            let mut failed = Vec::new();
            for r in &reports {
                match &r.result {
                    Ok(applied) if applied.is_empty() => println!("{}: up to date", r.schema),
                    Ok(applied) => println!("{}: applied {}", r.schema, applied.join(", ")),
                    Err(e) => {
                        println!("{}: FAILED: {e}", r.schema);
                        failed.push(r.schema.clone());
                    }
                }
            }
            if failed.is_empty() {
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!("error: migration failed for schema(s): {}", failed.join(", "));
                Ok(ExitCode::FAILURE)
            }
        }
        Command::Tenant(cmd) => {
            let pool = connect(&cfg).await?;
            match cmd {
                TenantCmd::Create {
                    schema,
                    name,
                    domains,
                    tenant_migrations,
                } => {
                    let migrations = migrate::Migrations::with_overrides(None, tenant_migrations.as_deref())?;
                    admin::create_tenant(&pool, &migrations, &schema, &name, &domains).await?;
                    println!("created tenant {schema}");
                }
                TenantCmd::Suspend { schema } => {
                    admin::change_status(&pool, &schema, admin::StatusChange::Suspend).await?;
                    println!("suspended tenant {schema}");
                }
                TenantCmd::Resume { schema } => {
                    admin::change_status(&pool, &schema, admin::StatusChange::Resume).await?;
                    println!("resumed tenant {schema}");
                }
                TenantCmd::Delete { schema } => {
                    admin::change_status(&pool, &schema, admin::StatusChange::Delete).await?;
                    println!("deleted tenant {schema} (tombstoned; purge drops its schema)");
                }
                TenantCmd::Purge { older_than } => {
                    for schema in admin::purge(&pool, older_than).await? {
                        println!("purged {schema}");
                    }
                }
                TenantCmd::Pin { schema, pool: name } => {
                    admin::set_backend_pool(&pool, &schema, Some(&name)).await?;
                    println!("pinned tenant {schema} to pool {name}");
                }
                TenantCmd::Unpin { schema } => {
                    admin::set_backend_pool(&pool, &schema, None).await?;
                    println!("unpinned tenant {schema}");
                }
                TenantCmd::Limits {
                    schema,
                    rps,
                    burst,
                    max_concurrent,
                    clear,
                } => {
                    let limits = admin::TenantLimits {
                        rps,
                        burst,
                        max_concurrent,
                    };
                    admin::set_limits(&pool, &schema, (!clear).then_some(limits)).await?;
                    println!("limits of tenant {schema} set");
                }
                TenantCmd::List => {
                    for line in admin::list_tenants(&pool).await? {
                        println!("{line}");
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Domain(cmd) => {
            let pool = connect(&cfg).await?;
            match cmd {
                DomainCmd::Add {
                    domain,
                    tenant,
                    primary,
                } => {
                    let d = admin::add_domain(&pool, &domain, &tenant, primary).await?;
                    println!("added domain {d} -> {tenant}");
                }
                DomainCmd::Remove { domain } => {
                    admin::remove_domain(&pool, &domain).await?;
                    println!("removed domain {domain}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn serve(cfg: Config) -> anyhow::Result<()> {
    let verifier = Arc::new(cfg.verifier()?);
    let pool = connect(&cfg).await?;
    if cfg.jobs.enabled {
        tokio::spawn(jobs::worker(
            pool.clone(),
            Duration::from_millis(cfg.jobs.poll_interval_ms),
        ));
    }
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("config key `listen`: cannot bind {}", cfg.listen))?;
    tracing::info!(addr = %cfg.listen, "upstream-app listening");
    axum::serve(listener, http::router(http::AppState { pool, verifier }))
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    tracing::info!("upstream-app stopped");
    Ok(())
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term => {},
    }
}
