//! Builds the server from its settings and runs it until a shutdown signal.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use envoy_types::ext_authz::v3::pb::AuthorizationServer;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::service::Routes;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic_reflection::server::Builder;

use crate::admin::AdminState;
use crate::api::AppState;
use crate::api::audit::AuditService;
use crate::api::changes::ChangesService;
use crate::api::decisions::DecisionsService;
use crate::api::ext_authz::ExtAuthzService;
use crate::api::policies::PoliciesService;
use crate::api::retention::RetentionService;
use crate::api::rights::RightsService;
use crate::api::subjects::SubjectsService;
use crate::auth::{AuthLayer, Authenticator, TokenVerifier};
use crate::cache::SubjectCache;
use crate::checkpoints::Checkpoints;
use crate::config::{Settings, TlsSettings};
use crate::console::Console;
use crate::decision_log::{DecisionLog, LogStore};
use crate::limits::LimitLayer;
use crate::policies::Policies;
use crate::proto::FILE_DESCRIPTOR_SET;
use crate::proto::audit_server::AuditServer;
use crate::proto::changes_server::ChangesServer;
use crate::proto::decisions_server::DecisionsServer;
use crate::proto::policies_server::PoliciesServer;
use crate::proto::retention_server::RetentionServer;
use crate::proto::rights_server::RightsServer;
use crate::proto::subjects_server::SubjectsServer;
use crate::store::{Changed, Store};
use crate::telemetry::layer::RpcLayer;

/// HTTP/2 flow-control windows (the protocol's default is 64 KiB).
pub const HTTP2_STREAM_WINDOW: u32 = 1 << 20;
pub const HTTP2_CONNECTION_WINDOW: u32 = 4 << 20;

/// Streams a client may reset before the server has accepted them, before the connection is
/// closed (h2's default; the rapid-reset attack, CVE-2023-44487).
const HTTP2_MAX_PENDING_RESETS: usize = 20;

/// The largest header list of a request (a bearer token is a few KiB at most).
const HTTP2_MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;

/// A server whose store is open and whose port is bound, ready to run.
pub struct Application {
    settings: Settings,
    listener: TcpListener,
    admin_listener: Option<TcpListener>,
    console_listener: Option<TcpListener>,
    store: Store,
    /// Where the decision log's rows go: `store`, or a database of the log's own.
    decision_store: LogStore,
    /// Opens the decision log's own database, until it has it.
    open_decision_store: Option<tokio::task::JoinHandle<()>>,
}

impl Application {
    /// Opens the store (running its migrations, or with `run_migrations = false` checking that
    /// they are all applied) and binds the listen address.
    pub async fn build(settings: Settings) -> anyhow::Result<Application> {
        let location = settings.store_location();
        let store = Store::open_with(&location, settings.store_timeouts, settings.schema)
            .await
            .with_context(|| format!("cannot open the store at {location:?}"))?
            .with_read_replicas(&settings.database_replica_urls)
            .await
            .context("cannot set up the read replicas (database_replica_urls)")?;
        let listener = TcpListener::bind(settings.listen)
            .await
            .with_context(|| format!("cannot listen on {}", settings.listen))?;
        let admin_listener = match settings.admin_listen {
            Some(address) => Some(
                TcpListener::bind(address)
                    .await
                    .with_context(|| format!("cannot listen on {address} (admin_listen)"))?,
            ),
            None => None,
        };
        let console_listener = match &settings.console {
            Some(console) => Some(TcpListener::bind(console.listen).await.with_context(|| {
                format!("cannot listen on {} (console_listen)", console.listen)
            })?),
            None => None,
        };
        if let Some(key) = &settings.subject_hash_key {
            key.install();
        }
        // A database of the log's own that does not answer at start is opened in the
        // background: it delays the shipping of decisions, never the serving of checks.
        let (decision_store, open_decision_store) = match settings.decision_log_location() {
            Some(location) => {
                LogStore::open_separate(location, settings.store_timeouts, settings.schema).await
            }
            None => (LogStore::main(store.clone()), None),
        };
        Ok(Application {
            settings,
            listener,
            admin_listener,
            console_listener,
            store,
            decision_store,
            open_decision_store,
        })
    }

    /// The bound address (the real port when the settings asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// The bound admin address, when the admin port is served.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_listener.as_ref().map(|listener| {
            listener
                .local_addr()
                .expect("a bound listener has an address")
        })
    }

    /// The bound console address, when the console is served.
    pub fn console_addr(&self) -> Option<SocketAddr> {
        self.console_listener.as_ref().map(|listener| {
            listener
                .local_addr()
                .expect("a bound listener has an address")
        })
    }

    /// Serves until `shutdown` completes, then lets in-flight calls finish (for at most the
    /// configured grace period) and closes the store.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let address = self.local_addr();
        let admin_address = self.admin_addr();
        let (decision_log, decision_log_writer) = DecisionLog::start(
            self.decision_store.clone(),
            self.settings.decision_log,
            (
                self.settings.decision_log_queue,
                self.settings.decision_log_backlog_bytes,
            ),
            &self.settings.decision_log_dir,
        )
        .context("cannot start the decision log")?;
        let (cache, cache_tasks) =
            SubjectCache::start(self.store.clone(), self.settings.cache.clone())
                .await
                .context("cannot start the cache")?;
        let mut scraped: Vec<Box<dyn crate::metrics::Scraped>> =
            vec![Box::new(cache.clone()), Box::new(decision_log.clone())];
        if let Some(replicas) = self.store.read_replicas() {
            scraped.push(Box::new(replicas.clone()));
        }
        crate::metrics::METRICS.observe_server(scraped);
        let policies = Arc::new(Policies::builtin());
        // Read after the cache learnt the latest revision: the versions read include every one
        // applied up to it.
        let policies_through = *cache.policy_changes().borrow();
        let stored_policies = self
            .store
            .policy_versions()
            .await
            .context("cannot read the stored policy versions")?;
        policies
            .install(&stored_policies)
            .context("cannot load the stored policy versions")?;
        policies.installed_through(policies_through);
        let checkpoints = self
            .settings
            .checkpoints
            .as_ref()
            .map(|settings| Checkpoints::open(self.store.clone(), settings))
            .transpose()
            .context("cannot start signing audit checkpoints")?;
        let (stop_checkpoints, checkpoints_stopped) = tokio::sync::watch::channel(false);
        // Verifies the whole log against the last checkpoint published, then signs every
        // interval; checks are served meanwhile.
        let sign_checkpoints = checkpoints
            .clone()
            .map(|checkpoints| tokio::spawn(checkpoints.run(checkpoints_stopped)));
        let state = AppState {
            store: self.store.clone(),
            cache,
            decision_log,
            policies,
            limits: self.settings.limits,
            checkpoints: checkpoints.clone(),
        };
        let reload_policies = tokio::spawn(reload_policies(state.clone()));
        let sweep_expired_consent = self
            .settings
            .consent_expiry_sweep
            .map(|interval| tokio::spawn(sweep_expired_consent(state.clone(), interval)));
        let check_state = self
            .settings
            .state_check_interval
            .map(|interval| tokio::spawn(check_state(state.store.clone(), interval)));
        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        // The server-wide entry and one per service: all follow the replica's readiness.
        let mut health_entries = vec![""];
        let max_message = self.settings.limits.max_message_bytes;
        // Each service once: its route, with the message limit, and its health status (the
        // reflection services describe them all from one descriptor set). A macro because each
        // generated server is a type of its own, and the limit a method of each.
        macro_rules! services {
            ($($server:ident($service:ident)),+) => {{
                let mut routes = Routes::default();
                $(
                    health_reporter.set_serving::<$server<$service>>().await;
                    health_entries.push(
                        <$server<$service> as tonic::server::NamedService>::NAME,
                    );
                    let server = $server::new($service::new(state.clone()));
                    routes = routes.add_service(server.max_decoding_message_size(max_message));
                )+
                routes
            }};
        }
        let routes = services!(
            DecisionsServer(DecisionsService),
            SubjectsServer(SubjectsService),
            AuditServer(AuditService),
            ChangesServer(ChangesService),
            PoliciesServer(PoliciesService),
            RetentionServer(RetentionService),
            RightsServer(RightsService)
        )
        .add_service({
            // Envoy's ext_authz, beside Decisions (its health entry is the same service name
            // Envoy's own health checks may ask for).
            health_reporter
                .set_serving::<AuthorizationServer<ExtAuthzService>>()
                .await;
            health_entries
                .push(<AuthorizationServer<ExtAuthzService> as tonic::server::NamedService>::NAME);
            AuthorizationServer::new(ExtAuthzService::new(
                state.clone(),
                self.settings.ext_authz.clone(),
            ))
            .max_decoding_message_size(max_message)
        })
        .add_service(health_service)
        .add_service(reflection(Builder::build_v1)?)
        .add_service(reflection(Builder::build_v1alpha)?);

        let authenticator = Arc::new(authenticator(&self.settings)?);
        if !authenticator.enabled() {
            tracing::warn!(
                "no authentication configured: every caller is trusted; serving on loopback only"
            );
        }
        let limits = LimitLayer::new(self.settings.limits);
        let admin_stop = Arc::new(Notify::new());
        let console_stop = Arc::new(Notify::new());
        // Outermost first; a call passes the layers in this order. The gRPC port and the console
        // share them: the console calls the services through these layers, with its viewer's
        // token, so what it may show and do is what that token may ask the API for.
        let layers = tower::ServiceBuilder::new()
            // Telemetry outside everything, so a call refused by a limit or by authentication is
            // still traced and counted with its status.
            .layer(RpcLayer)
            // Shedding before authentication, so a flood is refused before any token is
            // verified; the deadline bounds everything below; the slot is held until the
            // response ends, so a stream holds one for its whole life.
            .layer(limits.clone())
            // Authentication before any service, so a refused call reads and writes nothing; it
            // records the caller the next layer counts writes for.
            .layer(AuthLayer::new(authenticator.clone()))
            // The write rate and the open streams after authentication: they are counted per
            // authenticated caller.
            .layer(limits.per_caller());
        let console = self.console_listener.map(|listener| {
            let grpc = layers.clone().service(routes.clone());
            let console = Console::new(
                crate::console::Grpc::new(
                    tower::ServiceExt::<http::Request<tonic::body::Body>>::map_err(grpc, |error| {
                        crate::console::CallFailed(error.to_string())
                    }),
                ),
                authenticator.clone(),
                self.settings
                    .console
                    .as_ref()
                    .map(|console| console.token_header.clone())
                    .unwrap_or(http::header::AUTHORIZATION),
            );
            let stop = console_stop.clone();
            tokio::spawn(crate::console::serve(listener, console, async move {
                stop.notified().await;
            }))
        });
        let draining = Arc::new(Notify::new());
        let drain_started = draining.clone();
        let not_ready = Arc::new(AtomicBool::new(false));
        let readiness = AdminState {
            store: self.store.clone(),
            draining: not_ready.clone(),
            checkpoints: checkpoints.clone(),
        };
        let (stop_health, health_stopped) = tokio::sync::oneshot::channel();
        let health = tokio::spawn(report_health(
            readiness.clone(),
            health_reporter,
            health_entries,
            health_stopped,
        ));
        let admin = self.admin_listener.map(|listener| {
            let state = readiness;
            let stop = admin_stop.clone();
            tokio::spawn(crate::admin::serve(listener, state, async move {
                stop.notified().await;
            }))
        });
        let announce_shutdown = async move {
            shutdown.await;
            not_ready.store(true, Ordering::Release);
            tracing::info!("shutting down: refusing new calls, finishing in-flight ones");
            // Every health entry NOT_SERVING before the drain starts, and none turned back.
            let _ = stop_health.send(());
            let _ = health.await;
            drain_started.notify_one();
        };

        // HTTP/2 windows large enough that a BatchCheck of 1,000 answers (about 150 KB) goes
        // out without waiting for the client's window updates. A connection may open a bounded
        // number of streams; keepalive pings find a vanished client, whose streams would
        // otherwise hold their slots until the kernel gives up on the connection; a client
        // resetting streams faster than they are accepted (the rapid-reset attack), or sending
        // large header lists, is cut off.
        let limits_settings = self.settings.limits;
        let mut builder = Server::builder()
            .tcp_nodelay(true)
            .initial_stream_window_size(HTTP2_STREAM_WINDOW)
            .initial_connection_window_size(HTTP2_CONNECTION_WINDOW)
            .max_concurrent_streams(limits_settings.http2_max_concurrent_streams)
            .http2_keepalive_interval(limits_settings.http2_keepalive_interval)
            .http2_keepalive_timeout(Some(limits_settings.http2_keepalive_timeout))
            .http2_max_pending_accept_reset_streams(Some(HTTP2_MAX_PENDING_RESETS))
            .http2_max_header_list_size(HTTP2_MAX_HEADER_LIST_BYTES);
        if let Some(tls) = &self.settings.tls {
            builder = builder
                .tls_config(tls_config(tls)?)
                .context("cannot set up TLS")?;
        }
        let forget_idle = {
            let limits = limits.clone();
            tokio::spawn(async move {
                let mut ticks = tokio::time::interval(std::time::Duration::from_secs(60));
                loop {
                    ticks.tick().await;
                    limits.forget_idle_callers();
                }
            })
        };
        let serve = builder
            .layer(layers)
            .add_routes(routes)
            .serve_with_incoming_shutdown(incoming(self.listener), announce_shutdown);
        match admin_address {
            Some(admin) => tracing::info!(%address, %admin, "assent serving"),
            None => tracing::info!(%address, "assent serving"),
        }

        let grace = self.settings.shutdown_grace;
        let grace_expired = async move {
            draining.notified().await;
            tokio::time::sleep(grace).await;
        };
        tokio::select! {
            result = serve => result.context("the gRPC server failed")?,
            () = grace_expired => {
                tracing::warn!(?grace, "shutdown grace period over: dropping the calls still open");
            }
        }
        forget_idle.abort();
        reload_policies.abort();
        if let Some(sweep) = sweep_expired_consent {
            sweep.abort();
        }
        let _ = stop_checkpoints.send(true);
        if let Some(signing) = sign_checkpoints {
            let _ = signing.await;
        }
        if let Some(check) = check_state {
            check.abort();
        }
        cache_tasks.shutdown().await;
        decision_log_writer.shutdown().await;
        if let Some(opening) = self.open_decision_store {
            opening.abort();
        }
        if self.decision_store.is_separate()
            && let Some(decision_store) = self.decision_store.get()
        {
            decision_store.close().await;
        }
        admin_stop.notify_one();
        console_stop.notify_one();
        for (port, task) in [("the admin port", admin), ("the console", console)] {
            let Some(task) = task else { continue };
            match task.await {
                Ok(Err(error)) => tracing::warn!(%error, "{port} failed"),
                Err(error) => tracing::warn!(%error, "{port} failed"),
                Ok(Ok(())) => {}
            }
        }
        self.store.close().await;
        tracing::info!("decision log flushed, store closed; bye");
        Ok(())
    }
}

/// Installs the stored policy versions again whenever the cache learns that one was applied
/// (by this replica or another). A version that cannot be installed is logged and the versions
/// installed before stay in force.
async fn reload_policies(state: AppState) {
    let mut changes = state.cache.policy_changes();
    loop {
        // A version applied between the first load and this subscription is loaded at once.
        let through = *changes.borrow_and_update();
        if state.policies.is_installed_through(through) {
            if changes.changed().await.is_err() {
                return;
            }
            continue;
        }
        match PoliciesService::reload(&state).await {
            Ok(()) => {
                state.policies.installed_through(through);
                tracing::info!(
                    versions = state.policies.all().len(),
                    "policy versions reloaded"
                );
            }
            Err(error) => {
                tracing::error!(error = %crate::telemetry::error_chain(&error), "cannot reload the policy versions");
                if changes.changed().await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Every `interval`, records the expiry of every choice whose expiry has passed
/// (`Store::expire_choices`: one `consent_expired` event each, through the write path) and
/// announces each change like any write. Decisions do not wait for it: they drop expired
/// choices themselves. On PostgreSQL every replica sweeps; an expiry recorded twice is recorded
/// once.
async fn sweep_expired_consent(state: AppState, interval: std::time::Duration) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let now = crate::store::now_micros();
        let context = crate::store::WriteContext {
            caller: crate::store::EXPIRY_CALLER.to_owned(),
            actor: crate::domain::Actor {
                operator_id: crate::store::EXPIRY_OPERATOR.to_owned(),
                reason: "the choice's expiry passed: the policy's default applies again".to_owned(),
            },
            trace_id: String::new(),
            policy_version: state.policies.in_force(now).version().to_owned(),
        };
        match state.store.expire_choices(now, &context).await {
            Ok(recorded) => {
                for (expired, revision) in &recorded {
                    state
                        .cache
                        .committed(Changed::Subject(expired.subject_id.clone()), *revision);
                }
                if !recorded.is_empty() {
                    tracing::info!(expired = recorded.len(), "consent expiries recorded");
                }
            }
            Err(error) => {
                tracing::warn!(error = %crate::telemetry::error_chain(&error), "cannot record consent expiries; retrying");
            }
        }
    }
}

/// Every `interval`, compares the state tables with the audit events
/// (`api::audit::check_state`: each differing subject logged by its hash, the outcome in the
/// `assent_state_*` metrics); the first comparison once the server has started. Reads only, a
/// page of subjects per read transaction; on PostgreSQL every replica compares.
/// How often the gRPC health entries are brought in line with the replica's readiness.
const HEALTH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Keeps every gRPC health entry (the server-wide one and each service's) SERVING while the
/// replica is ready (`admin::readiness`: the store answers, the audit log extends its last
/// checkpoint) and NOT_SERVING while it is not, so a client balancing over the replicas' health
/// moves away from one cut off from its store; on `stop` (shutdown), NOT_SERVING for good.
async fn report_health(
    readiness: AdminState,
    reporter: tonic_health::server::HealthReporter,
    entries: Vec<&'static str>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    use tonic_health::ServingStatus;
    let set = async |status: ServingStatus| {
        for entry in &entries {
            reporter.set_service_status(*entry, status).await;
        }
    };
    let mut ticks = tokio::time::interval(HEALTH_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut serving = true;
    loop {
        let ready = tokio::select! {
            _ = &mut stop => break,
            _ = ticks.tick() => crate::admin::readiness(&readiness).await,
        };
        if ready.is_ok() != serving {
            serving = ready.is_ok();
            match ready {
                Ok(()) => tracing::info!("ready again: health SERVING"),
                Err(why) => tracing::warn!(%why, "not ready: health NOT_SERVING"),
            }
            let status = if serving {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            set(status).await;
        }
    }
    set(ServingStatus::NotServing).await;
}

async fn check_state(store: Store, interval: std::time::Duration) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        // Logged and counted there; the next tick tries again.
        let _ = crate::api::audit::check_state(&store).await;
    }
}

/// A reflection service (`build` picks its version) describing assent's services and health.
fn reflection<S>(
    build: impl FnOnce(Builder<'static>) -> Result<S, tonic_reflection::server::Error>,
) -> anyhow::Result<S> {
    build(
        Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET),
    )
    .context("cannot build the reflection service")
}

/// The accepted connections, with Nagle's algorithm off: a response written in several pieces
/// (headers, a large message, trailers) would otherwise wait for the client's delayed ACK
/// (40 ms on Linux). `Server::tcp_nodelay` applies only to listeners tonic binds itself.
pub fn incoming(
    listener: TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt;
    TcpListenerStream::new(listener).map(|accepted| {
        let stream = accepted?;
        stream.set_nodelay(true)?;
        Ok(stream)
    })
}

/// The TLS configuration of the gRPC port, from PEM files.
fn tls_config(tls: &TlsSettings) -> anyhow::Result<ServerTlsConfig> {
    let read = |path: &std::path::Path, setting: &str| {
        std::fs::read(path).with_context(|| format!("{setting}: cannot read {}", path.display()))
    };
    let identity = Identity::from_pem(read(&tls.cert, "tls_cert")?, read(&tls.key, "tls_key")?);
    let mut config = ServerTlsConfig::new().identity(identity);
    if let Some(client_ca) = &tls.client_ca {
        config = config.client_ca_root(Certificate::from_pem(read(client_ca, "tls_client_ca")?));
    }
    Ok(config)
}

fn authenticator(settings: &Settings) -> anyhow::Result<Authenticator> {
    let tokens = match &settings.tokens {
        Some(tokens) => Some(TokenVerifier::new(tokens).map_err(anyhow::Error::msg)?),
        None => None,
    };
    Ok(Authenticator {
        tokens,
        client_scopes: settings.client_scopes.clone(),
        certificates: settings
            .tls
            .as_ref()
            .is_some_and(|tls| tls.client_ca.is_some()),
    })
}

/// Completes on SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    let interrupt = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
}
