//! Builds the server from its settings and runs it until a shutdown signal.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Server;

use crate::api::AppState;
use crate::api::audit::AuditService;
use crate::api::decisions::DecisionsService;
use crate::api::subjects::SubjectsService;
use crate::audit::decision_log::DecisionLog;
use crate::cache::SubjectCache;
use crate::config::Settings;
use crate::proto::FILE_DESCRIPTOR_SET;
use crate::proto::audit_server::AuditServer;
use crate::proto::decisions_server::DecisionsServer;
use crate::proto::subjects_server::SubjectsServer;
use crate::store::Store;

/// A server whose store is open and whose port is bound, ready to run.
pub struct Application {
    settings: Settings,
    listener: TcpListener,
    store: Store,
}

impl Application {
    /// Opens the store (running its migrations) and binds the listen address.
    pub async fn build(settings: Settings) -> anyhow::Result<Application> {
        let location = settings.store_location();
        let store = Store::open(&location)
            .await
            .with_context(|| format!("cannot open the store at {location:?}"))?;
        let listener = TcpListener::bind(settings.listen)
            .await
            .with_context(|| format!("cannot listen on {}", settings.listen))?;
        Ok(Application {
            settings,
            listener,
            store,
        })
    }

    /// The bound address (the real port when the settings asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Serves until `shutdown` completes, then lets in-flight calls finish (for at most the
    /// configured grace period) and closes the store.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let address = self.local_addr();
        let (decision_log, decision_log_writer) = DecisionLog::start(
            self.store.clone(),
            self.settings.decision_log,
            self.settings.decision_log_queue,
        );
        let (cache, cache_tasks) =
            SubjectCache::start(self.store.clone(), self.settings.cache.clone())
                .await
                .context("cannot start the cache")?;
        let state = AppState {
            store: self.store.clone(),
            cache,
            decision_log,
        };
        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        health_reporter
            .set_serving::<DecisionsServer<DecisionsService>>()
            .await;
        health_reporter
            .set_serving::<SubjectsServer<SubjectsService>>()
            .await;
        health_reporter
            .set_serving::<AuditServer<AuditService>>()
            .await;
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .context("cannot build the reflection service")?;
        let reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()
            .context("cannot build the reflection service")?;

        let draining = Arc::new(Notify::new());
        let drain_started = draining.clone();
        let announce_shutdown = async move {
            shutdown.await;
            tracing::info!("shutting down: refusing new calls, finishing in-flight ones");
            health_reporter
                .set_service_status("", tonic_health::ServingStatus::NotServing)
                .await;
            drain_started.notify_one();
        };

        let serve = Server::builder()
            .tcp_nodelay(true)
            .add_service(health_service)
            .add_service(reflection)
            .add_service(reflection_v1alpha)
            .add_service(DecisionsServer::new(DecisionsService::new(state.clone())))
            .add_service(SubjectsServer::new(SubjectsService::new(state.clone())))
            .add_service(AuditServer::new(AuditService::new(state)))
            .serve_with_incoming_shutdown(TcpListenerStream::new(self.listener), announce_shutdown);
        tracing::info!(%address, "assent serving");

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
        cache_tasks.shutdown().await;
        decision_log_writer.shutdown().await;
        self.store.close().await;
        tracing::info!("decision log flushed, store closed; bye");
        Ok(())
    }
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
