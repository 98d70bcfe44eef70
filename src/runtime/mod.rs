//! What the operator needs around its controllers: configuration, logging,
//! the Kubernetes client, metrics, and the health and metrics endpoints.

pub mod fence;
pub mod kubeapi;
pub mod metrics;

pub use kubeapi::describe_kube_error;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

use metrics::{CountRequestsLayer, Metrics};

/// A value as a 64-bit number, for maps that hold an entry per object and
/// would otherwise hold its strings (a UID, a name, a message). Only ever
/// compared within one process: the standard hasher, whose numbers may
/// change between Rust releases, does.
pub fn digest<T: std::hash::Hash + ?Sized>(value: &T) -> u64 {
    use std::hash::Hasher;
    let mut hasher = std::hash::DefaultHasher::new();
    value.hash(&mut hasher);
    hasher.finish()
}

/// How logs are written.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line, for log pipelines.
    Json,
    /// Human-readable lines.
    Text,
}

/// Settings of `ctrlplane-operator run`. Every flag has an environment
/// variable, so the Helm chart and plain manifests can set them either way.
#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// Kubeconfig to use. Without it: $KUBECONFIG, ~/.kube/config, then the
    /// in-cluster service account.
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,

    /// Namespaces to watch, repeated or comma-separated. Empty: all namespaces.
    #[arg(
        long = "namespace",
        env = "CTRLPLANE_NAMESPACES",
        value_delimiter = ','
    )]
    pub namespaces: Vec<String>,

    /// The provider for Instances that do not name one.
    #[arg(long, env = "CTRLPLANE_DEFAULT_PROVIDER", default_value = "kubernetes")]
    pub default_provider: String,

    /// Log format.
    #[arg(long, env = "CTRLPLANE_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// Log level or filter, e.g. `info` or `info,ctrlplane_operator=debug`.
    #[arg(long, env = "CTRLPLANE_LOG_LEVEL", default_value = "info")]
    pub log_level: String,

    /// Address of the /metrics, /healthz and /readyz endpoints.
    #[arg(
        long,
        env = "CTRLPLANE_METRICS_ADDRESS",
        default_value = "127.0.0.1:8080"
    )]
    pub metrics_address: SocketAddr,

    /// Objects of one kind reconciled at the same time.
    #[arg(long, env = "CTRLPLANE_CONCURRENCY", default_value_t = 16)]
    pub concurrency: u16,

    /// Let webhook URLs reach loopback, link-local and private addresses.
    /// Off by default: a Webhook must not become a way into the cluster's
    /// own network. Tests turn it on for their loopback receiver.
    #[arg(long, env = "CTRLPLANE_ALLOW_PRIVATE_WEBHOOK_ADDRESSES")]
    pub allow_private_webhook_addresses: bool,

    /// Seconds a completed WebhookDelivery is kept before it is deleted.
    #[arg(
        long,
        env = "CTRLPLANE_WEBHOOK_DELIVERY_TTL_SECONDS",
        default_value_t = 86400
    )]
    pub webhook_delivery_ttl_seconds: u64,

    /// Delivery attempts in flight at once per Webhook, so one slow
    /// receiver cannot hold up the others.
    #[arg(
        long,
        env = "CTRLPLANE_WEBHOOK_CONCURRENCY_PER_ENDPOINT",
        default_value_t = 8
    )]
    pub webhook_concurrency_per_endpoint: usize,

    /// Run only while holding a Lease, so several replicas can run and one
    /// reconciles at a time.
    #[arg(long, env = "CTRLPLANE_LEADER_ELECTION")]
    pub leader_election: bool,

    /// Namespace of the Lease. Default: $POD_NAMESPACE, else `default`.
    #[arg(long, env = "CTRLPLANE_LEADER_ELECTION_NAMESPACE")]
    pub leader_election_namespace: Option<String>,

    /// Name of the Lease.
    #[arg(
        long,
        env = "CTRLPLANE_LEADER_ELECTION_LEASE_NAME",
        default_value = "ctrlplane-operator"
    )]
    pub leader_election_lease_name: String,

    /// Seconds a leader holds the Lease without renewing it; a follower
    /// takes over within about this long after the leader dies.
    #[arg(
        long,
        env = "CTRLPLANE_LEADER_ELECTION_LEASE_DURATION",
        default_value_t = 15
    )]
    pub leader_election_lease_duration: u64,

    /// The tenancy source (`--tenant-*`), off unless a Tenant Manager URL is set.
    #[command(flatten)]
    pub tenancy: crate::tenancy::TenancyArgs,
}

/// Errors while starting up.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("reading kubeconfig {path}: {source}")]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("finding cluster configuration: {0}")]
    InferConfig(#[from] kube::config::InferConfigError),
    #[error("building the Kubernetes client: {0}")]
    Client(#[from] kube::Error),
    #[error("serving {address}: {source}")]
    Serve {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid log level {level:?}: {message}")]
    LogLevel { level: String, message: String },
    #[error("leader election: {0}")]
    LeaderElection(String),
}

/// Sets up logging to stderr in the chosen format.
pub fn init_logging(format: LogFormat, level: &str) -> Result<(), RuntimeError> {
    let filter =
        tracing_subscriber::EnvFilter::try_new(level).map_err(|e| RuntimeError::LogLevel {
            level: level.to_string(),
            message: e.to_string(),
        })?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second initialisation (in tests) keeps the first.
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
    Ok(())
}

/// The User-Agent of the operator's requests.
pub const OPERATOR_USER_AGENT: &str = concat!("ctrlplane-operator/", env!("CARGO_PKG_VERSION"));

/// `config` with every request sent as `user_agent`.
///
/// Why: kube's client sends no User-Agent, and the API server names the
/// manager of a write with no field manager after it. Without one, the status
/// fields the operator writes show as managed by "unknown", and audit logs
/// cannot tell its requests from anyone else's. The part before the `/`
/// becomes the manager's name.
pub fn identified_as(mut config: Config, user_agent: &'static str) -> Config {
    config.headers.push((
        http::header::USER_AGENT,
        http::HeaderValue::from_static(user_agent),
    ));
    config
}

/// A Kubernetes client whose every request is counted in the metrics, and
/// whose writes go only while `fence` lets them (see [`fence`]).
pub async fn client(
    kubeconfig: Option<&PathBuf>,
    metrics: Arc<Metrics>,
    fence: Arc<fence::Fence>,
) -> Result<Client, RuntimeError> {
    let config = match kubeconfig {
        Some(path) => {
            let file = Kubeconfig::read_from(path).map_err(|source| RuntimeError::Kubeconfig {
                path: path.clone(),
                source,
            })?;
            Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                .await
                .map_err(|source| RuntimeError::Kubeconfig {
                    path: path.clone(),
                    source,
                })?
        }
        None => Config::infer().await?,
    };
    let config = identified_as(config, OPERATOR_USER_AGENT);
    let builder = kube::client::ClientBuilder::try_from(config)?;
    // The fence outside the count: a write it refuses never reaches the API.
    Ok(builder
        .with_layer(&CountRequestsLayer { metrics })
        .with_layer(&fence::FenceLayer { fence })
        .build())
}

/// What /readyz reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ReadyState {
    /// Caches not synced yet: not ready.
    Starting = 0,
    /// A follower waiting for the lease: ready to take over, doing nothing.
    Standby = 1,
    /// Caches synced, controllers running.
    Ready = 2,
}

/// Readiness, as /readyz reports it.
pub struct Readiness {
    state: std::sync::atomic::AtomicU8,
}

impl Default for Readiness {
    fn default() -> Self {
        Self {
            state: std::sync::atomic::AtomicU8::new(ReadyState::Starting as u8),
        }
    }
}

impl Readiness {
    pub fn set(&self, state: ReadyState) {
        self.state.store(state as u8, Ordering::SeqCst);
    }

    pub fn get(&self) -> ReadyState {
        match self.state.load(Ordering::SeqCst) {
            1 => ReadyState::Standby,
            2 => ReadyState::Ready,
            _ => ReadyState::Starting,
        }
    }
}

/// Serves /metrics, /healthz (the process answers) and /readyz (caches
/// synced, controllers running) until the process ends.
pub async fn serve(
    address: SocketAddr,
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
) -> Result<(), RuntimeError> {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|source| RuntimeError::Serve { address, source })?;
    tracing::info!(%address, "serving /metrics, /healthz and /readyz");
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move { metrics.encode() }
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let readiness = readiness.clone();
                async move {
                    match readiness.get() {
                        ReadyState::Ready => (StatusCode::OK, "ok"),
                        ReadyState::Standby => {
                            (StatusCode::OK, "standby: another replica holds the lease")
                        }
                        ReadyState::Starting => {
                            (StatusCode::SERVICE_UNAVAILABLE, "caches are not synced yet")
                        }
                    }
                }
            }),
        );
    axum::serve(listener, app)
        .await
        .map_err(|source| RuntimeError::Serve { address, source })
}
