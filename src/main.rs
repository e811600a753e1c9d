//! The `syncline` command: parse arguments, load the configuration, run the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use syncline::config::Config;

// The push path allocates per row and per field; glibc's malloc was a quarter of its CPU.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "syncline",
    version,
    about = "RxDB-style replication over gRPC on PostgreSQL"
)]
struct Cli {
    /// TOML configuration file; every key can also be set as SYNCLINE_<KEY>.
    #[arg(long, global = true, env = "SYNCLINE_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Apply migrations, then serve gRPC until SIGTERM or Ctrl-C.
    Serve,
    /// Apply the database migrations, re-stamp positions restored from another cluster, and
    /// exit.
    Migrate {
        /// Only say whether positions come from another cluster (a logical restore) and would
        /// be re-stamped; apply and write nothing.
        #[arg(long)]
        check: bool,
    },
    /// Load and validate the configuration (schema files included) without connecting.
    CheckConfig,
    /// Purge a collection's tombstones older than its `tombstone_retention` now (the server
    /// does it every `purge_interval_seconds`).
    Purge {
        /// The collection.
        #[arg(long)]
        collection: String,
        /// Only print how many tombstones would go, and when they were written.
        #[arg(long)]
        dry_run: bool,
    },
    /// Print an HS256 token signed with `auth.hs256_secret`, for development and tests.
    Token {
        /// The principal (`sub`): owner of the documents it creates.
        #[arg(long)]
        sub: String,
        /// A scope to grant; repeat for several (e.g. `--scope syncline:service`).
        #[arg(long)]
        scope: Vec<String>,
        /// Lifetime: a number with s, m, h or d.
        #[arg(long, default_value = "1h")]
        ttl: String,
        /// A claim for the collections' access rules, `name=<JSON value>` (a value that is not
        /// JSON is taken as a string); repeat for several (e.g. `--claim team=blue`,
        /// `--claim 'teams=["blue","red"]'`).
        #[arg(long)]
        claim: Vec<String>,
    },
    /// Load JSON lines (one document per line) into a collection, in batches written like pushes.
    Import(syncline::bulk::import::ImportArgs),
    /// Write a collection's documents as JSON lines, from one consistent snapshot.
    Export(syncline::bulk::export::ExportArgs),
}

fn main() -> ExitCode {
    syncline::crypto::install_provider();
    let cli = Cli::parse();
    let config = match Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("syncline: {e}");
            return ExitCode::from(2);
        }
    };
    if let Command::Token {
        sub,
        scope,
        ttl,
        claim,
    } = &cli.command
    {
        let minted = syncline::auth::mint::parse_ttl(ttl)
            .and_then(|ttl| Ok((ttl, syncline::auth::mint::parse_claims(claim)?)))
            .and_then(|(ttl, claims)| match &config.auth {
                Some(auth) => syncline::auth::mint::mint_hs256(auth, sub, scope, &claims, ttl),
                None => Err("no [auth] configuration".into()),
            });
        return match minted {
            Ok(token) => {
                println!("{token}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("syncline: {e}");
                ExitCode::from(2)
            }
        };
    }
    if let Command::CheckConfig = cli.command {
        let checked = syncline::server::check(&config);
        return match checked {
            Ok(_) => {
                println!(
                    "configuration OK: {} collection(s)",
                    config.collections.len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("syncline: {e}");
                ExitCode::from(2)
            }
        };
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("syncline: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Bulk commands keep stdout for data and report on stderr themselves: no log subscriber.
    let bulk = match &cli.command {
        Command::Import(args) => Some(
            runtime
                .block_on(syncline::bulk::import::run(&config, args))
                .map(drop),
        ),
        Command::Export(args) => Some(
            runtime
                .block_on(syncline::bulk::export::run(&config, args))
                .map(drop),
        ),
        _ => None,
    };
    if let Some(result) = bulk {
        return ExitCode::from(syncline::bulk::exit_code(result));
    }
    let result = runtime.block_on(async move {
        let endpoint = syncline::telemetry::otlp_endpoint(config.otlp_endpoint.as_deref());
        let telemetry = syncline::telemetry::init(config.log_format, endpoint)
            .map_err(syncline::server::ServerError::Config)?;
        let result = match cli.command {
            Command::Migrate { check } => {
                match syncline::server::migrate_and_report(&config, check).await {
                    Ok(text) => {
                        println!("{text}");
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            }
            Command::CheckConfig
            | Command::Token { .. }
            | Command::Import(_)
            | Command::Export(_) => Ok(()),
            Command::Purge {
                collection,
                dry_run,
            } => match syncline::purge::command(&config, &collection, dry_run).await {
                Ok(text) => {
                    println!("{text}");
                    Ok(())
                }
                Err(e) => Err(syncline::server::ServerError::Config(e)),
            },
            Command::Serve => {
                let listener = tokio::net::TcpListener::bind(config.listen)
                    .await
                    .map_err(|e| {
                        syncline::server::ServerError::Config(format!(
                            "cannot listen on {}: {e}",
                            config.listen
                        ))
                    })?;
                syncline::server::serve(config, listener, shutdown_signal()).await
            }
        };
        telemetry.shutdown();
        result
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("syncline: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves on SIGTERM (Kubernetes) or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
