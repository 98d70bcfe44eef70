//! The ctrlplane-operator command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use clap::{Parser, Subcommand};
use ctrlplane_operator::api;
use ctrlplane_operator::controller::{self, ControllerConfig, Scope};
use ctrlplane_operator::runtime::{self, Readiness, RunArgs, metrics::Metrics};
use futures::FutureExt;

#[derive(Parser)]
#[command(
    name = "ctrlplane-operator",
    version,
    about = "Kubernetes operator for instances, sandboxes and signed lifecycle webhooks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the operator until SIGINT or SIGTERM.
    Run(Box<RunArgs>),
    /// Print every CustomResourceDefinition as YAML, or write one file per CRD.
    Crds {
        /// Write `<name>.yaml` files into this directory instead of printing.
        #[arg(long)]
        output_dir: Option<PathBuf>,
    },
    /// Print the version.
    Version,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run(*args),
        Command::Crds { output_dir } => print_crds(output_dir),
        Command::Version => {
            println!("ctrlplane-operator {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

fn print_crds(output_dir: Option<PathBuf>) -> Result<(), Box<dyn std::error::Error>> {
    for crd in api::crds() {
        let yaml = api::crd_yaml(&crd)?;
        match &output_dir {
            Some(dir) => std::fs::write(dir.join(api::crd_file_name(&crd)), yaml)?,
            None => print!("---\n{yaml}"),
        }
    }
    Ok(())
}

fn run(args: RunArgs) -> Result<(), Box<dyn std::error::Error>> {
    runtime::init_logging(args.log_format, &args.log_level)?;
    // One TLS crypto provider for every client in the process (ring, as kube uses).
    let _ = rustls::crypto::ring::default_provider().install_default();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run_operator(args))
}

async fn run_operator(args: RunArgs) -> Result<(), Box<dyn std::error::Error>> {
    let metrics = Arc::new(Metrics::default());
    let client = runtime::client(args.kubeconfig.as_ref(), metrics.clone()).await?;
    let readiness = Arc::new(Readiness::default());
    let server = tokio::spawn(runtime::serve(
        args.metrics_address,
        metrics.clone(),
        readiness.clone(),
    ));

    let scopes: Vec<Scope> = if args.namespaces.is_empty() {
        vec![Scope::All]
    } else {
        args.namespaces
            .iter()
            .cloned()
            .map(Scope::Namespace)
            .collect()
    };
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        scopes = ?scopes,
        default_provider = args.default_provider,
        "starting"
    );
    let config = ControllerConfig {
        default_provider: args.default_provider.clone(),
        concurrency: args.concurrency,
        reporter_instance: std::env::var("POD_NAME")
            .or_else(|_| std::env::var("HOSTNAME"))
            .unwrap_or_else(|_| format!("pid-{}", std::process::id())),
        delivery: controller::delivery::DeliveryConfig {
            allow_private_addresses: args.allow_private_webhook_addresses,
            completed_ttl: std::time::Duration::from_secs(args.webhook_delivery_ttl_seconds),
            per_endpoint_concurrency: args.webhook_concurrency_per_endpoint.max(1),
            concurrency: args.concurrency.saturating_mul(4),
        },
    };
    if args.allow_private_webhook_addresses {
        tracing::warn!(
            "webhooks may reach loopback, link-local and private addresses (--allow-private-webhook-addresses)"
        );
    }
    let shutdown = shutdown_signal().shared();
    let unsynced = Arc::new(AtomicUsize::new(scopes.len()));
    let controllers = scopes.into_iter().map(|scope| {
        let unsynced = unsynced.clone();
        let readiness = readiness.clone();
        let ready_gauge = metrics.ready.clone();
        let on_synced = move || {
            if unsynced.fetch_sub(1, Ordering::SeqCst) == 1 {
                readiness.set_ready(true);
                ready_gauge.set(1);
                tracing::info!("caches synced; reconciling");
            }
        };
        controller::run_scope(
            client.clone(),
            scope,
            config.clone(),
            metrics.clone(),
            on_synced,
            shutdown.clone(),
        )
    });
    tokio::select! {
        _ = futures::future::join_all(controllers) => {}
        served = server => {
            served??;
        }
    }
    tracing::info!("stopped");
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("installing a SIGTERM handler");
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
    tracing::info!("shutting down");
}
