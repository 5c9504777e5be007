//! The `gateway` command (the binary's edge: `anyhow` errors, exit codes):
//! `gateway --config FILE` runs the proxy; the subcommands validate the
//! config, manage certificates, claims and triggers, and call the operator
//! API.
//!
//! Start-up wires the request path: config → tenant cache (lookup + LISTEN
//! invalidation) → backend pools (health checks) → the Pingora proxy service
//! on the public listener, and the admin service on its own listener.
//!
//! Size: besides the commands, `run` assembles the server (config, cache,
//! pools, TLS, ACME, claims, limits, listeners, admin, side tasks) in one
//! function that reads top to bottom in start-up order.

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

use crate::config::Config;
use crate::tenant::cache::TenantCache;
use crate::upstream::pool::Pools;
use crate::{
    admin, admin_client, config, conn, hostnames, limits, metrics, pages, proxy, reload, schema, tenant, tls, triggers,
};

#[derive(Parser)]
#[command(name = "gateway", version, about = "Tenant Gateway: a multi-tenant edge proxy")]
struct Cli {
    #[arg(long, global = true, env = "GATEWAY_CONFIG", default_value = "config/gateway.toml")]
    config: PathBuf,
    /// Take the listening sockets over from the running gateway (zero-downtime
    /// upgrade: start this, then send SIGQUIT to the old process).
    #[arg(long, global = true)]
    upgrade: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (the default).
    Run,
    /// Validate the config (and its environment) and print the effective config without secrets.
    CheckConfig,
    /// Development certificates (a local CA and certificates it signs).
    #[command(subcommand)]
    Certs(CertsCmd),
    /// ACME certificates of custom domains (needs the config's database).
    #[command(subcommand)]
    Acme(AcmeCmd),
    /// Operator API: what the gateway does with HOST and why (JSON).
    Explain { host: String },
    /// Operator API: forget HOST's cached answer (or every one with --all).
    Purge {
        host: Option<String>,
        #[arg(long, conflicts_with = "host")]
        all: bool,
    },
    /// Operator API: reload the config's pools, pages and limits, and the certificate files (as SIGHUP).
    Reload,
    /// NOTIFY triggers for a django-tenants database (tenant.preset = "django-tenants").
    #[command(subcommand)]
    Triggers(TriggersCmd),
    /// Custom hostnames: claims, ownership verification, removal (needs the config's database).
    #[command(subcommand)]
    Hostnames(HostnamesCmd),
}

#[derive(Subcommand)]
enum HostnamesCmd {
    /// Claim NAME for a tenant and print what its owner must publish.
    Add {
        name: String,
        /// The tenant's schema name.
        #[arg(long)]
        tenant: String,
        /// txt, http or cname (default: the first of custom_domains.methods).
        #[arg(long)]
        method: Option<String>,
        /// The operator vouches for the name: no check (logged).
        #[arg(long)]
        preverified: bool,
    },
    /// A claim's status, instructions, certificate and history.
    Status { name: String },
    /// Claims by name, optionally of one status, a page at a time (`next`:
    /// pass it as --after for the following page).
    List {
        /// pending, verified, active, failed, expired, removed or moved.
        #[arg(long)]
        status: Option<String>,
        /// Claims on this page (1 to 1,000).
        #[arg(long, default_value_t = admin::LIST_DEFAULT, value_parser = clap::value_parser!(i64).range(1..=admin::LIST_MAX))]
        limit: i64,
        /// Start after this name (the previous page's `next`).
        #[arg(long)]
        after: Option<String>,
        /// Only claims whose names point elsewhere by the last rechecks
        /// (active ones about to move, and moved ones).
        #[arg(long)]
        failing: bool,
    },
    /// Check again now (a failed, expired or moved claim gets a new window).
    Retry { name: String },
    /// Remove a claim: unrouted and its certificate retired at once on every gateway.
    Remove { name: String },
}

#[derive(Subcommand)]
enum TriggersCmd {
    /// Print the SQL that installs them (for the configured tables and channel).
    Print,
    /// Install them (idempotent) in the config's database.
    Install,
    /// Remove them.
    Remove,
}

#[derive(Subcommand)]
enum AcmeCmd {
    /// Every custom domain with its certificate status.
    Status,
    /// Force a renewal now (one gateway of the fleet orders it).
    Renew { name: String },
    /// Re-seal every stored private key and account credential with
    /// `acme.key_env`'s key (after a key rotation, docs/operations.md).
    /// Exits non-zero while a secret opens with no configured key or the
    /// pass is not known complete.
    Rekey {
        /// Only count what would be re-sealed.
        #[arg(long)]
        dry_run: bool,
        /// Re-seal even though not every gateway seen lately seals with
        /// acme.key_env's key (or none does).
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
enum CertsCmd {
    /// Create the dev CA (once) and a wildcard certificate for a base domain.
    Dev {
        #[arg(long, default_value = "certs/dev")]
        dir: PathBuf,
        #[arg(long, default_value = "myapp.localhost")]
        domain: String,
    },
    /// Issue a certificate for some names, signed by the dev CA.
    Issue {
        #[arg(long, default_value = "certs/dev")]
        dir: PathBuf,
        #[arg(long = "name", required = true)]
        names: Vec<String>,
        /// Output path without extension (writes .pem and .key).
        #[arg(long)]
        out: PathBuf,
    },
}

/// The `gateway` command: parse the command line, run the command.
pub fn main() -> ExitCode {
    // Held to the end: dropping it writes the lines still waiting.
    let _log = match crate::logging::init() {
        Ok(log) => log,
        Err(refused) => {
            for e in refused {
                eprintln!("error: {e}");
            }
            return ExitCode::FAILURE;
        }
    };
    let cli = Cli::parse();
    let result = match cli.command.unwrap_or(Command::Run) {
        Command::CheckConfig => check_config(&cli.config),
        Command::Run => run(&cli.config, cli.upgrade),
        Command::Certs(cmd) => certs(cmd),
        Command::Acme(cmd) => acme_cmd(&cli.config, cmd),
        Command::Hostnames(cmd) => hostnames_cmd(&cli.config, cmd),
        Command::Triggers(cmd) => triggers_cmd(&cli.config, cmd),
        Command::Explain { host } => api_cmd(&cli.config, "GET", "/api/v1/explain", &[("host", &host)]),
        Command::Purge { host: Some(h), .. } => api_cmd(&cli.config, "POST", "/api/v1/purge", &[("host", &h)]),
        Command::Purge { host: None, all: true } => api_cmd(&cli.config, "POST", "/api/v1/purge", &[("all", "1")]),
        Command::Purge { host: None, all: false } => Err(anyhow::anyhow!("give a HOST or --all")),
        Command::Reload => api_cmd(&cli.config, "POST", "/api/v1/reload", &[]),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn certs(cmd: CertsCmd) -> anyhow::Result<()> {
    match cmd {
        CertsCmd::Dev { dir, domain } => {
            let domain = tenancy::normalize_domain(&domain).map_err(|e| anyhow::anyhow!("--domain {domain}: {e}"))?;
            let (ca, _) = tls::devcerts::ensure_ca(&dir)?;
            let names = vec![format!("*.{domain}"), domain];
            let (cert, key) = tls::devcerts::issue(&dir, &names, &dir.join("wildcard"))?;
            println!(
                "CA:       {}\ncert:     {}\nkey:      {}",
                ca.display(),
                cert.display(),
                key.display()
            );
        }
        CertsCmd::Issue { dir, names, out } => {
            let (cert, key) = tls::devcerts::issue(&dir, &names, &out)?;
            println!("cert:     {}\nkey:      {}", cert.display(), key.display());
        }
    }
    Ok(())
}

fn acme_cmd(path: &std::path::Path, cmd: AcmeCmd) -> anyhow::Result<()> {
    let cfg = Config::load(path)?;
    let secrets = cfg.secrets()?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let db = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(cfg.database.connect_timeout.max(Duration::from_secs(2)))
            .connect(&secrets.database_url)
            .await
            .context("cannot connect to PostgreSQL")?;
        match cmd {
            AcmeCmd::Status => {
                for line in tls::acme::status_report(&db, &cfg.acme_effective(), &cfg.tenant.base_domains).await? {
                    println!("{line}");
                }
            }
            AcmeCmd::Renew { name } => {
                let name = tenancy::normalize_domain(&name).map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
                tls::acme::force_renewal(&db, &name).await?;
                println!("renewal of {name} requested");
            }
            AcmeCmd::Rekey { dry_run, force } => {
                let seal = tls::acme::Seal::from_keys(&cfg.acme_keys()?);
                let report = tls::acme::rekey(&db, &seal, dry_run, force).await?;
                for line in report.lines(dry_run) {
                    println!("{line}");
                }
                if !report.complete(dry_run) {
                    anyhow::bail!(match report.unreadable.is_empty() {
                        true => "not complete: run `gateway acme rekey` again",
                        false => "secrets above open with no configured key (acme.key_env, acme.decrypt_key_envs)",
                    });
                }
                println!("complete: every stored secret opens with acme.key_env's key");
            }
        }
        Ok(())
    })
}

fn hostnames_cmd(path: &std::path::Path, cmd: HostnamesCmd) -> anyhow::Result<()> {
    let cfg = Config::load(path)?;
    let secrets = cfg.secrets()?;
    if !cfg.custom_domains.required() {
        eprintln!(
            "note: custom_domains.verification = \"none\": claims are recorded but routing does not consult them"
        );
    }
    let actor = format!("cli:{}", std::env::var("USER").unwrap_or_else(|_| "unknown".into()));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let v = rt.block_on(async {
        let db = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(cfg.database.connect_timeout.max(Duration::from_secs(2)))
            .connect(&secrets.database_url)
            .await
            .context("cannot connect to PostgreSQL")?;
        schema::migrate(&db)
            .await
            .context("preparing the tenant_gateway schema")?;
        let store = hostnames::store::Store::new(db, &cfg.tenant.notify_channel, cfg.lookup_query());
        let ops = hostnames::ops::Ops {
            store: &store,
            cfg: &cfg.custom_domains,
            base_domains: &cfg.tenant.base_domains,
            strip_www: cfg.strip_www(),
        };
        let v = match cmd {
            HostnamesCmd::Add {
                name,
                tenant,
                method,
                preverified,
            } => {
                let method = method
                    .map(|m| {
                        hostnames::policy::Method::parse(&m)
                            .filter(|m| *m != hostnames::policy::Method::Operator)
                            .ok_or_else(|| anyhow::anyhow!("--method: one of txt, http, cname"))
                    })
                    .transpose()?;
                ops.add(&name, &tenant, method, preverified, &actor).await?
            }
            HostnamesCmd::Status { name } => ops.status(&name).await?,
            HostnamesCmd::List {
                status,
                limit,
                after,
                failing,
            } => ops.list(status.as_deref(), after.as_deref(), limit, failing).await?,
            HostnamesCmd::Retry { name } => ops.retry(&name, &actor).await?,
            HostnamesCmd::Remove { name } => ops.remove(&name, &actor).await?,
        };
        anyhow::Ok(v)
    })?;
    if let Some(summary) = v["instructions"]["summary"].as_str() {
        eprintln!("{summary}");
    }
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(())
}

fn api_cmd(path: &std::path::Path, method: &str, api: &str, params: &[(&str, &str)]) -> anyhow::Result<()> {
    let cfg = Config::load(path)?;
    let body = admin_client::call(&cfg, method, api, params)?;
    match serde_json::from_str::<serde_json::Value>(&body) {
        Ok(v) => println!("{}", serde_json::to_string_pretty(&v).unwrap_or(body)),
        Err(_) => println!("{body}"),
    }
    Ok(())
}

fn triggers_cmd(path: &std::path::Path, cmd: TriggersCmd) -> anyhow::Result<()> {
    let cfg = Config::load(path)?;
    if cfg.tenant.preset != config::QueryPreset::DjangoTenants {
        anyhow::bail!(
            "config key `tenant.preset`: triggers are for the django-tenants preset (the default schema has its own, \
             in upstream-app's migrations)"
        );
    }
    let (django, channel) = (&cfg.tenant.django, &cfg.tenant.notify_channel);
    let sql = match cmd {
        TriggersCmd::Print => {
            print!("{}", triggers::install_sql(django, channel)?);
            return Ok(());
        }
        TriggersCmd::Install => triggers::install_sql(django, channel)?,
        TriggersCmd::Remove => triggers::remove_sql(django)?,
    };
    let secrets = cfg.secrets()?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&secrets.database_url)
            .await
            .context("cannot connect to PostgreSQL")?;
        sqlx::raw_sql(&sql)
            .execute(&mut conn)
            .await
            .context("running the trigger SQL")?;
        anyhow::Ok(())
    })?;
    println!(
        "triggers {}",
        if sql.starts_with("DROP") {
            "removed"
        } else {
            "installed"
        }
    );
    Ok(())
}

fn check_config(path: &std::path::Path) -> anyhow::Result<()> {
    let cfg = Config::load(path)?;
    cfg.environment()?;
    pages::Pages::load(&cfg.pages)?;
    Pools::from_config(&cfg)?;
    if cfg.tls.listen.is_some() {
        tls::files::load_certs(&cfg.tls)?;
    }
    println!(
        "# {}: OK\n# lookup query: {}\n# ACME domains query: {}\n# strip www.: {}; public schema: {}\n",
        path.display(),
        cfg.lookup_query(),
        cfg.acme_domains_query(),
        cfg.strip_www(),
        cfg.public_schema().unwrap_or("none")
    );
    print!("{}", cfg.to_toml());
    Ok(())
}

/// Side tasks that live as long as the server: LISTEN invalidation, backend
/// health checks, and a start-up check of the lookup query.
struct SideTasks {
    cache: Arc<TenantCache>,
    limits: Arc<limits::Limits>,
    lookup: Arc<tenant::lookup::Lookup>,
    reloader: Arc<reload::Reloader>,
    database_url: String,
    channel: String,
    listen_timing: tenant::invalidate::ListenTiming,
    acme: Option<Arc<tls::acme::Acme>>,
    /// The custom-hostname checkers and their database (verification on).
    hostnames: Option<(Arc<hostnames::worker::Worker>, sqlx::PgPool)>,
    /// `listen.shutdown_grace_secs`: what ACME's stop may take.
    shutdown_grace: Duration,
}

#[async_trait]
impl BackgroundService for SideTasks {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tasks = tokio::task::JoinSet::new();
        // The log says when it had to drop lines.
        tasks.spawn(crate::logging::report_dropped());
        let (limits, acme) = (self.limits.clone(), self.acme.clone());
        tasks.spawn(async move {
            // Limiters of tenants no longer cached, idle per-client state.
            let mut every = tokio::time::interval(Duration::from_secs(60));
            loop {
                every.tick().await;
                limits.sweep();
                if let Some(acme) = &acme {
                    acme.sweep();
                }
            }
        });
        // After a NOTIFY: the certificate side (retire, order) and the claims
        // (a verified claim whose domain row just appeared activates now).
        // After LISTEN (re)connects: the certificates in memory are checked
        // for what a gap may have hidden, and every verified claim is looked
        // at (its domain row may have appeared unheard).
        let acme = self.acme.clone();
        let claims = self.hostnames.as_ref().map(|(worker, _)| worker.clone());
        let on_change = (acme.is_some() || claims.is_some()).then(|| {
            Arc::new(move |change: tenant::invalidate::Change| match change {
                tenant::invalidate::Change::Names(names) => {
                    if let Some(claims) = &claims {
                        claims.names_changed(names.clone());
                    }
                    if let Some(acme) = &acme {
                        acme.names_changed(names);
                    }
                }
                tenant::invalidate::Change::Resumed { fresh } => {
                    // Claims are checked on the primary; the certificate
                    // side retires what lookups say is unserved, so not on
                    // a replica's answers that may predate the gap.
                    if let Some(claims) = &claims {
                        claims.resumed();
                    }
                    if let Some(acme) = acme.as_ref().filter(|_| fresh) {
                        acme.recheck_served();
                    }
                }
            }) as tenant::invalidate::OnChange
        });
        tasks.spawn(tenant::invalidate::run(
            self.database_url.clone(),
            self.channel.clone(),
            self.cache.clone(),
            self.listen_timing,
            on_change,
        ));
        self.reloader.start_health_checks();
        if let Some(acme) = &self.acme {
            tasks.spawn(acme.clone().run());
        }
        if let Some((worker, db)) = &self.hostnames {
            let (worker, db) = (worker.clone(), db.clone());
            tasks.spawn(async move {
                schema::migrate_until_done(&db, Duration::from_secs(10)).await;
                worker.run().await;
            });
        }
        let lookup = self.lookup.clone();
        tasks.spawn(async move {
            match lookup.check_query().await {
                Ok(()) => tracing::info!("tenant lookup query checked against the database"),
                Err(e) => tracing::error!(error = %e, "config key `tenant.query`: the lookup query does not work against this database"),
            }
        });
        // SIGHUP: the config (pools, pages, limits) and the certificate files.
        let reloader = self.reloader.clone();
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(mut hup) => {
                tasks.spawn(async move {
                    while hup.recv().await.is_some() {
                        match reloader.reload() {
                            Ok(changed) => tracing::info!(?changed, "SIGHUP: config reloaded"),
                            Err(e) => tracing::error!(error = %e, "SIGHUP: config reload refused; the running config stays"),
                        }
                        match reloader.reload_certificates() {
                            Ok(Some(n)) => tracing::info!(certificates = n, "SIGHUP: certificates reloaded"),
                            Ok(None) => {}
                            Err(e) => tracing::error!(error = %format!("{e:#}"), "SIGHUP: reload failed; keeping the loaded certificates"),
                        }
                    }
                });
            }
            Err(e) => tracing::error!(error = %e, "cannot install the SIGHUP handler"),
        }
        let _ = shutdown.changed().await;
        tasks.abort_all();
        // Stop the ACME attempts and free their order leases for the fleet.
        if let Some(acme) = &self.acme {
            match acme.stop(self.shutdown_grace).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(leases = n, "ACME: shutting down; order leases freed for the fleet"),
                Err(e) => {
                    tracing::warn!(error = %e, "ACME: shutting down; cannot free the order leases (they expire on their own)")
                }
            }
        }
    }
}

/// Raise the soft file-descriptor limit to the hard limit (connection caps
/// are derived from it); returns the limit in effect.
fn raise_file_limit() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => n,
        Err(e) => {
            let (soft, _) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap_or((1024, 1024));
            tracing::warn!(error = %e, soft, "cannot raise the file descriptor limit");
            soft
        }
    }
}

fn run(path: &std::path::Path, upgrade: bool) -> anyhow::Result<()> {
    crate::sys::ignore_hangup_until_handled();
    let cfg = Config::load(path)?;
    let (secrets, admin_token, acme_keys) = cfg.environment()?;
    let live = Arc::new(arc_swap::ArcSwap::from_pointee(reload::Live::from_config(&cfg)?));
    let metrics = Arc::new(metrics::Metrics::new(cfg.metrics.max_tenant_labels));
    let nofile = raise_file_limit();
    let limits = Arc::new(limits::Limits::new(cfg.limits_settings()));
    tenant::lookup::start_threads(cfg.database.lookup_nice)?;
    let lookup = tenant::lookup::Lookup::new(
        secrets.lookup_url.as_deref().unwrap_or(&secrets.database_url),
        cfg.database.max_connections,
        cfg.database.connect_timeout,
        cfg.database.query_timeout,
        cfg.database.lookup_nice,
    )
    .context("config key `database.url_env`")?
    .with_query(&cfg.lookup_query())
    .with_public_schema(cfg.public_schema())
    .with_limits(limits.clone())
    .with_prepared_statements(cfg.database.lookup_prepared_statements)
    .with_metrics(metrics.clone());
    let lookup = match &secrets.lookup_url {
        Some(_) => lookup
            .with_replica(
                &secrets.database_url,
                cfg.database.connect_timeout,
                metrics.lookup_primary_fallbacks.clone(),
            )
            .context("config key `database.url_env`")?,
        None => lookup,
    };
    let lookup = match cfg.custom_domains.required() {
        true => lookup.with_claims(&cfg.tenant.base_domains),
        false => lookup,
    };
    let lookup = Arc::new(lookup);
    let cache = Arc::new(TenantCache::new(
        lookup.clone(),
        &cfg.tenant.cache,
        cfg.database.lookup_deadline,
        metrics.clone(),
    ));
    let conf = ServerConf {
        threads: cfg.listen.threads,
        grace_period_seconds: Some(cfg.listen.shutdown_grace.as_secs()),
        graceful_shutdown_timeout_seconds: Some(1),
        work_stealing: cfg.listen.work_stealing,
        upgrade_sock: cfg.listen.upgrade_sock.display().to_string(),
        fast_timeout_to_tokio_threshold_seconds: crate::upstream::TOKIO_TIMERS_FROM_SECS,
        ..ServerConf::default()
    };
    let opt = pingora_core::server::configuration::Opt {
        upgrade,
        ..Default::default()
    };
    // Everything that can refuse the start, before the sockets are taken:
    // with --upgrade, a process that took them and then failed would leave
    // nothing listening (the old one stops accepting).
    // TLS: certificates, redirects, the server config.
    let cert_store = Arc::new(tls::store::CertStore::with_issued_capacity(
        cfg.acme.certificate_cache_size,
        Some(metrics.cert_expiry.clone()),
    ));
    let (tls_routing, tls_config) = match cfg.tls.listen {
        None => (None, None),
        Some(addr) => {
            let (certs, default) = tls::files::load_certs(&cfg.tls)?;
            cert_store.replace_files(certs, default);
            tls::files::publish_cert_metrics(&cert_store, &metrics);
            let redirect = cfg.tls.redirect_http.then(|| proxy::Redirect {
                port: cfg.tls.redirect_port.unwrap_or(addr.port()),
                exempt: cfg.tls.redirect_exempt.clone(),
            });
            let config = tls::accept::server_config(cert_store.clone(), cfg.tls.session_resumption)
                .context("building the TLS server config")?;
            (Some(Arc::new(proxy::TlsRouting { redirect })), Some(config))
        }
    };
    let checker = match cfg.custom_domains.required() {
        true => Some(
            hostnames::check::Checker::new(&cfg.custom_domains, cfg.strip_www())
                .context("config key `custom_domains.resolver`")?,
        ),
        false => None,
    };
    let mut server = Server::new_with_opt_and_conf(Some(opt), conf);
    // With --upgrade: waits for the running gateway's sockets (sent on SIGQUIT).
    server.bootstrap();

    // Public listeners: bound now (a port in use is a start-up error), with
    // connection caps derived from the file limit unless configured.
    let (max_total, max_per_ip) = config::connection_caps(&cfg.limits, nofile);
    tracing::info!(
        nofile,
        max_connections = max_total,
        max_connections_per_ip = max_per_ip,
        admin_max_connections = cfg.admin.max_connections,
        admin_max_connections_per_ip = cfg.admin.max_connections_per_ip(),
        "connection caps"
    );
    let per_ip = conn::limits::PerIp::new(max_per_ip as u64);
    let drain = Arc::new(conn::drain::Drain::default());
    let timeouts = conn::deadline::Timeouts {
        head: cfg.limits.request_head_timeout,
        idle: cfg.limits.idle_timeout,
        send: cfg.limits.send_timeout,
        min_body_rate: cfg.limits.min_body_rate,
        body_grace: cfg.limits.body_rate_grace,
        linger: cfg.limits.lingering_close,
    };
    // Upgrading: the sockets come from the previous process instead.
    let http_socket = match upgrade {
        false => Some(conn::listener::bind(cfg.listen.http).context("config key `listen.http`: cannot bind")?),
        true => None,
    };
    let tls_socket = match (cfg.tls.listen, upgrade) {
        (Some(addr), false) => Some(conn::listener::bind(addr).context("config key `tls.listen`: cannot bind")?),
        _ => None,
    };
    let admin_socket = match upgrade {
        false => Some(conn::listener::bind(cfg.listen.admin).context("config key `listen.admin`: cannot bind")?),
        true => None,
    };

    let acme = if let Some(keys) = acme_keys {
        let opts: sqlx::postgres::PgConnectOptions =
            secrets.database_url.parse().context("config key `database.url_env`")?;
        let db = tenant::lookup::lazy_pool(
            opts.application_name("tenant-gateway-acme"),
            tls::acme::CONNECTIONS,
            cfg.database.connect_timeout,
        );
        Some(Arc::new(
            tls::acme::Acme::new(
                cfg.acme_effective(),
                db,
                &keys,
                cert_store.clone(),
                cache.clone(),
                cfg.strip_www(),
                cfg.tenant.base_domains.clone(),
                metrics.clone(),
            )
            .with_claims_required(cfg.custom_domains.required())
            .with_www_check_if(
                cfg.strip_www()
                    .then(|| hostnames::check::Checker::new(&cfg.custom_domains, true))
                    .transpose()
                    .context("config key `custom_domains.resolver`")?,
            ),
        ))
    } else {
        None
    };

    let hostnames = if let Some(checker) = checker {
        let opts: sqlx::postgres::PgConnectOptions =
            secrets.database_url.parse().context("config key `database.url_env`")?;
        let connect = cfg.database.connect_timeout;
        let db = tenant::lookup::lazy_pool(opts.clone().application_name("tenant-gateway-hostnames"), 4, connect);
        let listen_db = tenant::lookup::lazy_pool(opts.application_name("tenant-gateway-hostnames-listen"), 1, connect);
        let store = hostnames::store::Store::new(db.clone(), &cfg.tenant.notify_channel, cfg.lookup_query());
        let worker = Arc::new(hostnames::worker::Worker::new(
            store.clone(),
            listen_db,
            checker,
            cfg.custom_domains.clone(),
            metrics.clone(),
        ));
        Some((worker, db, store))
    } else {
        None
    };

    let reloader = Arc::new(reload::Reloader::new(
        path.to_path_buf(),
        cfg.clone(),
        live.clone(),
        limits.clone(),
        cache.clone(),
        cfg.tls.listen.map(|_| (cert_store.clone(), metrics.clone())),
    ));
    let gateway = proxy::Gateway {
        cache: cache.clone(),
        live: live.clone(),
        signer: secrets.signer,
        strip_www: cfg.strip_www(),
        base_domains: cfg.tenant.base_domains.clone(),
        trusted_proxies: cfg.headers.trusted_proxies.clone(),
        forward: crate::headers::Forward::from_config(&cfg.headers.forward),
        metrics: metrics.clone(),
        tls: tls_routing,
        acme: acme.clone(),
        limits: limits.clone(),
        send_timeout: cfg.limits.send_timeout,
        bodies: crate::body::Buffering {
            max_bytes: cfg.limits.request_body_buffer_bytes,
            min_rate: cfg.limits.min_body_rate,
            grace: cfg.limits.body_rate_grace,
            idle: cfg.limits.idle_timeout,
            max_body: cfg.limits.max_request_body_bytes,
        },
        body_budget: crate::body::RequestBudget::new(
            cfg.limits.request_body_buffer_total_mib << 20,
            cfg.limits.request_body_buffer_bytes,
        ),
        response_bodies: crate::response_body::Buffering {
            max_bytes: cfg.limits.response_body_buffer_bytes,
        },
        response_budget: crate::body::Budget::new(cfg.limits.response_body_buffer_total_mib << 20)
            .per_client(cfg.limits.response_body_buffer_bytes),
    };
    let body_budgets = [
        ("request", gateway.body_budget.all().clone()),
        ("response", gateway.response_budget.clone()),
    ];
    // HTTP/2 connections carry no HTTP/1 head deadlines; their idle bound is h2's own.
    let server_conf = server.configuration.clone();
    let proxy_app = |gateway: proxy::Gateway| {
        let mut app = pingora_proxy::http_proxy(&server_conf, gateway);
        let mut options = pingora_core::apps::HttpServerOptions::default();
        options.h2_idle_timeout = Some(timeouts.idle);
        app.server_options = Some(options);
        Arc::new(app)
    };
    if let (Some(addr), Some(config)) = (cfg.tls.listen, tls_config) {
        let app = proxy_app(gateway.clone());
        server.add_service(conn::listener::Listener {
            name: "https",
            addr,
            socket: tls_socket,
            app,
            handshake: Arc::new(tls::accept::TlsHandshake {
                config,
                store: cert_store.clone(),
                acme: acme.clone(),
                timeout: cfg.tls.handshake_timeout,
                metrics: metrics.clone(),
            }),
            limits: conn::limits::ConnLimits::new(max_total, per_ip.clone()),
            timeouts,
            metrics: metrics.clone(),
            drain: drain.clone(),
        });
    }
    server.add_service(conn::listener::Listener {
        name: "http",
        addr: cfg.listen.http,
        socket: http_socket,
        app: proxy_app(gateway),
        handshake: Arc::new(conn::listener::Plain),
        limits: conn::limits::ConnLimits::new(max_total, per_ip),
        timeouts,
        metrics: metrics.clone(),
        drain: drain.clone(),
    });

    // The admin listener goes through the same accept path as the public
    // ones (its own connection cap, the same head and idle deadlines): it
    // is private, but a stuck scraper or a script leaking connections must
    // not hold it, or its file descriptors, without bound.
    let admin = admin::Admin {
        metrics: metrics.clone(),
        live,
        reloader: reloader.clone(),
        cache: cache.clone(),
        token: admin_token,
        metrics_token: cfg.admin.metrics_token,
        strip_www: cfg.strip_www(),
        base_domains: cfg.tenant.base_domains.clone(),
        landing: cfg.tenant.landing_pool.clone(),
        certs: cert_store.clone(),
        acme: acme.clone(),
        hostnames: hostnames.as_ref().map(|(_, _, store)| admin::HostnamesApi {
            store: store.clone(),
            cfg: cfg.custom_domains.clone(),
            schema: tokio::sync::OnceCell::new(),
        }),
        body_budgets,
    };
    let admin_cap = cfg.admin.max_connections;
    server.add_service(conn::listener::Listener {
        name: "admin",
        addr: cfg.listen.admin,
        socket: admin_socket,
        app: Arc::new(admin),
        handshake: Arc::new(conn::listener::Plain),
        limits: conn::limits::ConnLimits::new(
            admin_cap,
            conn::limits::PerIp::new(cfg.admin.max_connections_per_ip() as u64),
        ),
        timeouts,
        metrics: metrics.clone(),
        drain,
    });

    server.add_service(background_service(
        "side-tasks",
        SideTasks {
            cache,
            limits,
            lookup,
            reloader,
            database_url: secrets.database_url,
            channel: cfg.tenant.notify_channel.clone(),
            listen_timing: tenant::invalidate::ListenTiming {
                connect_timeout: cfg.database.connect_timeout,
                health_interval: cfg.database.health_check_interval,
                health_timeout: cfg.database.health_check_timeout,
                track_lsn: secrets.lookup_url.is_some(),
            },
            acme,
            hostnames: hostnames.map(|(worker, db, _)| (worker, db)),
            shutdown_grace: cfg.listen.shutdown_grace,
        },
    ));
    tracing::info!(http = %cfg.listen.http, admin = %cfg.listen.admin, "gateway starting");
    // Returns once the server has stopped (`run_forever` would end the
    // process there, before the log's last lines are written).
    server.run(pingora_core::server::RunArgs::default());
    Ok(())
}
