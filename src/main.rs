//! The ctrlplane-operator command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use clap::{Parser, Subcommand};
use ctrlplane_operator::api;
use ctrlplane_operator::controller::{self, ControllerConfig, Scope};
use ctrlplane_operator::runtime::{
    self, Readiness, ReadyState, RunArgs, fence::Fence, metrics::Metrics,
};
use ctrlplane_operator::tenancy::TenancySource;
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
    let lease_namespace = args
        .leader_election_namespace
        .clone()
        .or_else(|| std::env::var("POD_NAMESPACE").ok())
        .unwrap_or_else(|| "default".into());
    let lease_duration = args.leader_election_lease_duration.max(2);
    let lease_grace = (lease_duration / 3).max(1);
    // With leader election, writes go only while the lease is surely ours
    // by this process's own clock (see runtime::fence).
    let fence = Arc::new(if args.leader_election {
        Fence::lease(
            &lease_namespace,
            &args.leader_election_lease_name,
            std::time::Duration::from_secs(lease_duration),
            std::time::Duration::from_secs(lease_grace),
        )
    } else {
        Fence::open()
    });
    let client = runtime::client(args.kubeconfig.as_ref(), metrics.clone(), fence.clone()).await?;
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
        extra_instance_providers: Vec::new(),
    };
    if args.allow_private_webhook_addresses {
        tracing::warn!(
            "webhooks may reach loopback, link-local and private addresses (--allow-private-webhook-addresses)"
        );
    }
    // Checked before anything waits for the lease, so a bad flag fails the start.
    let tenancy = match args.tenancy.config()? {
        Some(config) => {
            tracing::info!(
                url = config.url,
                controller = config.controller,
                "tenancy source on"
            );
            Some(TenancySource::new(client.clone(), config)?)
        }
        None => None,
    };
    let shutdown = shutdown_signal().shared();
    let identity = config.reporter_instance.clone();

    // Without leader election this replica reconciles at once; with it, only
    // while it holds the Lease.
    let mut leadership = if args.leader_election {
        let namespace = lease_namespace;
        let manager = kube_lease_manager::LeaseManagerBuilder::new(
            client.clone(),
            &args.leader_election_lease_name,
        )
        .with_namespace(&namespace)
        .with_identity(&identity)
        .with_duration(lease_duration)
        .with_grace(lease_grace)
        .with_field_manager("ctrlplane-operator")
        .build()
        .await
        .map_err(|e| runtime::RuntimeError::LeaderElection(e.to_string()))?;
        let (leader, task) = manager.watch().await;
        tracing::info!(
            lease = args.leader_election_lease_name,
            namespace,
            identity,
            "waiting for the lease"
        );
        readiness.set(ReadyState::Standby);
        Some((leader, task))
    } else {
        None
    };
    if let Some((leader, _)) = leadership.as_mut() {
        let acquired = tokio::select! {
            _ = leader.wait_for(|is_leader| *is_leader) => true,
            _ = shutdown.clone() => false,
        };
        if !acquired {
            release(leadership).await;
            return Ok(());
        }
        tracing::info!(identity, "acquired the lease; reconciling");
    }
    fence.set_leading(true);
    metrics.leader.set(1);

    let unsynced = Arc::new(AtomicUsize::new(scopes.len()));
    let controllers = scopes.into_iter().map(|scope| {
        let unsynced = unsynced.clone();
        let readiness = readiness.clone();
        let ready_gauge = metrics.ready.clone();
        let on_synced = move || {
            if unsynced.fetch_sub(1, Ordering::SeqCst) == 1 {
                readiness.set(ReadyState::Ready);
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
    // Like the controllers, the tenancy source runs only while this replica leads.
    let tenancy = async {
        if let Some(tenancy) = tenancy {
            tenancy.run(shutdown.clone()).await;
        }
    };
    let lost_lease = async {
        match leadership.as_mut() {
            Some((leader, _)) => {
                let _ = leader.wait_for(|is_leader| !*is_leader).await;
            }
            None => futures::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = futures::future::join(futures::future::join_all(controllers), tenancy) => {}
        served = server => {
            served??;
        }
        _ = lost_lease => {
            // Another replica holds the lease now. Every reconcile was just
            // dropped where it stood, so nothing more is written; start over
            // as a follower (Kubernetes restarts the container).
            fence.set_leading(false);
            metrics.leader.set(0);
            tracing::error!(identity, "lost the lease; stopping at once");
            std::process::exit(1);
        }
    }
    metrics.leader.set(0);
    release(leadership).await;
    tracing::info!("stopped");
    Ok(())
}

/// Hands the Lease back on a clean stop, so a follower takes over at once
/// instead of after the lease expires.
async fn release(
    leadership: Option<(
        tokio::sync::watch::Receiver<bool>,
        tokio::task::JoinHandle<kube_lease_manager::Result<kube_lease_manager::LeaseManager>>,
    )>,
) {
    if let Some((leader, task)) = leadership {
        drop(leader);
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), task).await;
    }
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
