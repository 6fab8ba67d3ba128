//! Tandem's coordinator: the client API and the worker routes over a Raft voter.
//!
//! - [`config`]: flags and their defaults.
//! - [`api`] and [`api_error`]: the client API's HTTP edge (the only place that names status
//!   codes for clients).
//! - [`worker_routes`]: the MessagePack routes workers long-poll and report to.
//! - [`enqueue_batcher`]: many concurrent enqueues become one Raft entry.
//! - [`leader_duties`]: lease expiry and registry upkeep, on the leader only.
//! - [`scaler`]: the autoscaler: the policy on every coordinator, its actions on the leader.
//!
//! [`run`] binds nothing itself: it serves on a listener it is given, so tests start the real
//! server on port 0.

pub mod admin;
pub mod api;
pub mod api_error;
pub mod config;
pub mod enqueue_batcher;
pub mod leader_duties;
pub mod metrics;
pub mod openapi;
pub mod scaler;
pub mod voter_probes;
pub mod witness_care;
pub mod worker_routes;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::error_handling::HandleErrorLayer;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::middleware;
use axum::routing::{get, post, put};
use raft_store::job_table::Limits;
use raft_store::network::NetworkFaults;
use raft_store::network::body_limit;
use raft_store::server::{ServeBounds, serve_bounded};
use raft_store::{Node, NodeConfig, Role, Timing};
use tokio_util::sync::CancellationToken;
use tower::ServiceBuilder;
use tower_http::timeout::TimeoutLayer;

use crate::config::Config;
use crate::enqueue_batcher::EnqueueBatcher;

/// How long requests in progress may finish once the coordinator stops (a worker's long-poll
/// is cut short: it asks the other coordinator).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// The longest an admin request may take: a voter replacement waits for the new voter to
/// catch up.
const ADMIN_REQUEST_TIMEOUT: Duration = Duration::from_secs(180);

/// Room for a multipart form's part headers and boundaries around an enqueue's body.
const MULTIPART_OVERHEAD: usize = 16 << 10;

/// What every handler shares: one pointer, since axum clones the state for every request and
/// every layer that extracts it (cloning the parts one by one, a channel sender among them, was
/// about 1 % of a coordinator's CPU under `bench ingest`).
#[derive(Clone)]
pub struct App(Arc<AppParts>);

impl std::ops::Deref for App {
    type Target = AppParts;

    fn deref(&self) -> &AppParts {
        &self.0
    }
}

/// The parts of [`App`].
pub struct AppParts {
    /// The Raft voter.
    pub node: Node,
    /// The configuration.
    pub config: Arc<Config>,
    /// The enqueue batcher.
    pub enqueue: EnqueueBatcher,
    /// Waiting jobs claimed by lease proposals in flight on this node.
    pub lease_claims: Arc<std::sync::atomic::AtomicU64>,
    /// The Prometheus recorder's handle, for `/metrics`.
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
    /// The other voters' statuses for `/cluster`, probed at most every 100 ms.
    pub voter_probes: Arc<voter_probes::VoterProbes>,
    /// The autoscaler's last plan on this node.
    pub scaler: scaler::SharedStatus,
    /// The worker binary served at `GET /worker/binary` (`--worker-binary-file`).
    pub worker_binary: Option<Arc<worker_routes::ServedBinary>>,
}

/// The coordinator's routes: client API, worker routes and Raft routes on one port.
///
/// Every credential is checked in a layer before the request's body is read: the client token
/// (when set) on the client API, the admin token on `/admin/`, the cluster secret on `/worker/`
/// and `/raft/`. The status page, `/cluster`, `/metrics` and the health checks carry no job data
/// and stay open to operators, probes and Prometheus.
pub fn router(app: App) -> Router {
    // A multipart form carries the body with a few hundred bytes of headers and boundaries.
    let enqueue_limit = app.config.max_body_bytes.saturating_add(MULTIPART_OVERHEAD);
    let raft = app.node.router();
    let timeout = |limit: Duration| TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, limit);
    let client_timeout = Duration::from_millis(app.config.client_request_timeout_ms);
    // At most --max-concurrent-enqueues in flight; one more is shed at once, before its body is
    // read (the limit is shared by every clone of the route: one per coordinator).
    let enqueue_admission = ServiceBuilder::new()
        .layer(HandleErrorLayer::new(api::enqueue_shed))
        .load_shed()
        .concurrency_limit(app.config.max_concurrent_enqueues);
    let enqueue = put(api::enqueue)
        .layer::<_, Infallible>(DefaultBodyLimit::max(enqueue_limit))
        .layer::<_, Infallible>(enqueue_admission);
    let client = Router::new()
        .route("/enqueue", enqueue)
        .route("/pullCompleted", post(api::pull_completed))
        .route("/jobs/{id}", get(api::job))
        .route_layer(middleware::from_fn_with_state(app.clone(), api::require_client_token))
        .layer(timeout(client_timeout))
        .layer(middleware::map_response(api::json_error_body));
    let admin = Router::new()
        .route("/admin/failover", post(admin::failover))
        .route("/admin/members/replace", post(admin::replace_member))
        .route("/admin/workers/{id}/drain", post(admin::drain_worker))
        .route("/admin/workers/{id}/resume", post(admin::resume_worker))
        .layer(body_limit(admin::BODY_LIMIT))
        .route_layer(middleware::from_fn_with_state(app.clone(), admin::require_token))
        .layer(timeout(ADMIN_REQUEST_TIMEOUT))
        .layer(middleware::map_response(api::json_error_body));
    let long_poll = Duration::from_millis(app.config.long_poll_max_ms);
    let workers = worker_routes::router(app.clone()).layer(timeout(client_timeout + long_poll));
    Router::new()
        .route("/", get(api::status_page))
        .route("/cluster", get(api::cluster))
        .route("/healthz", get(api::healthz))
        .route("/readyz", get(api::readyz))
        .route("/metrics", get(api::metrics))
        .route("/openapi.json", get(openapi::document))
        .merge(client)
        .merge(admin)
        .merge(workers)
        .fallback(api::not_found)
        .method_not_allowed_fallback(api::method_not_allowed)
        .with_state(app)
        .merge(raft)
}

/// A started coordinator: its voter, its background tasks, and the state its routes share.
pub struct Coordinator {
    /// What every handler shares; [`router`] of it is what [`Coordinator::serve`] serves.
    pub app: App,
    tasks: tokio_util::task::TaskTracker,
    shutdown: CancellationToken,
}

impl Coordinator {
    /// Open the voter's data directory, start Raft (forming the cluster with `--initialize`),
    /// and start the leader's duties, the metrics sampler and the enqueue batcher. They run
    /// until `shutdown` is cancelled.
    pub async fn start(config: Config, shutdown: CancellationToken) -> anyhow::Result<Coordinator> {
        config.validate().map_err(anyhow::Error::msg)?;
        if config.cluster_secret.is_none() {
            tracing::warn!(
                listen = %config.listen,
                "running without a cluster secret (--insecure-no-cluster-secret): anyone who reaches this \
                 port can record results for leased jobs and disrupt Raft; for tests on a private machine only"
            );
        }
        let mut node_config = NodeConfig::new(config.id, Role::Coordinator, config.data_dir());
        node_config.secret = config.cluster_secret.clone();
        node_config.fault_injection = config.fault_injection;
        node_config.timing = Timing {
            heartbeat_ms: config.heartbeat_ms,
            election_min_ms: config.election_min_ms,
            election_max_ms: config.election_max_ms,
        };
        node_config.request_timeout = config.request_timeout();
        node_config.append_pipeline = config.append_pipeline as usize;
        let node = Node::start(node_config, Arc::new(NetworkFaults::default()))
            .await
            .with_context(|| format!("starting voter {} in {}", config.id, config.data_dir().display()))?;
        if config.initialize && node.initialize(config.membership()).await.context("initializing the cluster")? {
            tracing::info!(members = config.members.len(), "initialized a new cluster");
        }
        let limits = Limits {
            completed_retention: config.completed_retention,
            max_queued: config.max_queued,
            ..Limits::default()
        };
        let duties = leader_duties::DutyConfig {
            lease_ms: config.lease_ms,
            worker_timeout_ms: config.worker_timeout_ms,
            limits,
        };
        let tasks = tokio_util::task::TaskTracker::new();
        tasks.spawn(leader_duties::run(node.clone(), duties, shutdown.child_token()));
        let scaler_status =
            scaler::SharedStatus::new(scaler::ScalerStatus { provider: config.scaler.name(), plan: None }.into());
        tasks.spawn(metrics::sample(node.clone(), scaler_status.clone(), shutdown.child_token()));
        let worker_binary = match &config.worker_binary_file {
            Some(path) => Some(Arc::new(worker_routes::ServedBinary::load(path).await?)),
            None => None,
        };
        let served_sha256 = worker_binary.as_ref().map(|b| b.sha256.as_str());
        start_scaler(&config, &node, &tasks, scaler_status.clone(), served_sha256, &shutdown).await?;
        let app = App(Arc::new(AppParts {
            node: node.clone(),
            enqueue: EnqueueBatcher::start(node.clone(), shutdown.child_token()),
            config: Arc::new(config),
            lease_claims: Arc::default(),
            metrics: metrics::handle(),
            voter_probes: Arc::default(),
            scaler: scaler_status,
            worker_binary,
        }));
        Ok(Coordinator { app, tasks, shutdown })
    }

    /// Serve every route on `listener` until the shutdown token is cancelled, then stop the
    /// background tasks and the voter.
    pub async fn serve(self, listener: tokio::net::TcpListener) -> anyhow::Result<()> {
        let Coordinator { app, tasks, shutdown } = self;
        let node = app.node.clone();
        tracing::info!(addr = %listener.local_addr()?, node = node.id(), "coordinator serving");
        // If Raft stops on its own (a storage failure, an internal panic), this voter can only
        // answer 503: stop serving and exit with an error, so that a supervisor restarts it.
        let raft_died = CancellationToken::new();
        let (server_shutdown, stopped, died) = (shutdown.clone(), node.clone(), raft_died.clone());
        let bounds = ServeBounds {
            max_connections: app.config.max_connections,
            header_timeout: Duration::from_millis(app.config.header_timeout_ms),
        };
        let stop = async move {
            tokio::select! {
                _ = server_shutdown.cancelled() => {}
                _ = stopped.stopped() => died.cancel(),
            }
        };
        serve_bounded(listener, router(app), bounds, stop, SHUTDOWN_GRACE).await.context("serving HTTP")?;
        if raft_died.is_cancelled() {
            shutdown.cancel();
            tasks.close();
            anyhow::bail!("Raft stopped on its own (see the error above); exiting so that this voter is restarted");
        }
        tasks.close();
        if tokio::time::timeout(Duration::from_secs(2), tasks.wait()).await.is_err() {
            tracing::warn!("background tasks did not stop within 2 s");
        }
        node.shutdown().await;
        Ok(())
    }
}

/// Start the autoscaler's loop with the provider `config` asks for.
async fn start_scaler(
    config: &Config,
    node: &Node,
    tasks: &tokio_util::task::TaskTracker,
    status: scaler::SharedStatus,
    served_sha256: Option<&str>,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    // Only the EC2 provider launches machines that download the served binary.
    #[cfg(not(feature = "ec2"))]
    let _ = served_sha256;
    let policy = config.scaling.policy();
    let care = witness_care::WitnessCare {
        timeout: Duration::from_millis(config.witness_timeout_ms),
        catch_up: Duration::from_millis(config.scaling.boot_timeout_ms),
    };
    match config.scaler {
        config::ScalerKind::Off => {
            let none: Option<deploy::provider::local::LocalProcesses> = None;
            tasks.spawn(scaler::run(node.clone(), none, policy, status, shutdown.child_token()));
        }
        config::ScalerKind::Local => {
            let binary = match &config.scaler_worker_binary {
                Some(path) => path.clone(),
                None => std::env::current_exe().context("locating this binary")?.with_file_name("worker"),
            };
            let args = vec![
                "--coordinator".to_owned(),
                config.coordinator_urls().join(","),
                "--cores".into(),
                config.scaling.scaler_worker_cores.to_string(),
            ];
            let provider = deploy::provider::local::LocalProcesses::new(
                binary,
                args,
                config.scaler_dir(),
                config.cluster_secret.clone(),
                Duration::from_secs(60),
            )
            .context("the local worker provider")?;
            spawn_leader_machines(tasks, node, provider, policy, care, status, shutdown);
        }
        #[cfg(feature = "ec2")]
        config::ScalerKind::Ec2 => {
            let provider =
                deploy::provider::ec2::Ec2Provider::new(&config.ec2, config.cluster_secret.clone(), served_sha256)
                    .await
                    .context("the EC2 provider")?;
            spawn_leader_machines(tasks, node, provider, policy, care, status, shutdown);
        }
        #[cfg(not(feature = "ec2"))]
        config::ScalerKind::Ec2 => unreachable!("Config::validate refuses --scaler ec2 without the ec2 feature"),
    }
    Ok(())
}

/// The two loops that launch and terminate machines through `provider` while this node leads:
/// the autoscaler and the witness's care.
fn spawn_leader_machines<P: deploy::provider::Provider>(
    tasks: &tokio_util::task::TaskTracker,
    node: &Node,
    provider: P,
    policy: wire::scaler::PolicyConfig,
    care: witness_care::WitnessCare,
    status: scaler::SharedStatus,
    shutdown: &CancellationToken,
) {
    let provider = std::sync::Arc::new(provider);
    tasks.spawn(witness_care::run(node.clone(), provider.clone(), care, shutdown.child_token()));
    tasks.spawn(scaler::run(node.clone(), Some(provider), policy, status, shutdown.child_token()));
}

/// Start the voter and serve everything on `listener` until `shutdown` is cancelled.
pub async fn run(config: Config, listener: tokio::net::TcpListener, shutdown: CancellationToken) -> anyhow::Result<()> {
    Coordinator::start(config, shutdown).await?.serve(listener).await
}
