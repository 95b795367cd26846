//! A real server per test: bound to port 0 on loopback, with its own data directory, and typed
//! clients for every service.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use assent::config::{LogFormat, Settings};
use assent::proto;
use assent::proto::audit_client::AuditClient;
use assent::proto::decisions_client::DecisionsClient;
use assent::proto::subjects_client::SubjectsClient;
use assent::startup::Application;
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

pub struct TestApp {
    pub address: SocketAddr,
    pub data: Arc<TempDir>,
    channel: Channel,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestApp {
    /// A server on a fresh, empty data directory.
    pub async fn spawn() -> TestApp {
        TestApp::spawn_on(Arc::new(tempfile::tempdir().unwrap())).await
    }

    /// A server on an existing data directory (to test a restart).
    pub async fn spawn_on(data: Arc<TempDir>) -> TestApp {
        let settings = Settings {
            listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: data.path().to_owned(),
            shutdown_grace: Duration::from_secs(10),
            log_format: LogFormat::Text,
        };
        let application = Application::build(settings).await.unwrap();
        let address = application.local_addr();
        let (shutdown, signal) = oneshot::channel::<()>();
        let server = tokio::spawn(application.run_until(async {
            let _ = signal.await;
        }));
        let channel = Channel::from_shared(format!("http://{address}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        TestApp {
            address,
            data,
            channel,
            shutdown: Some(shutdown),
            server: Some(server),
        }
    }

    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    pub fn decisions(&self) -> DecisionsClient<Channel> {
        DecisionsClient::new(self.channel())
    }

    pub fn subjects(&self) -> SubjectsClient<Channel> {
        SubjectsClient::new(self.channel())
    }

    pub fn audit(&self) -> AuditClient<Channel> {
        AuditClient::new(self.channel())
    }

    pub fn database_path(&self) -> PathBuf {
        database_path(self.data.path())
    }

    /// Starts a graceful shutdown without waiting for it.
    pub fn begin_shutdown(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }

    /// Shuts the server down gracefully, waits until its store is closed, and hands back the
    /// data directory.
    pub async fn stop(mut self) -> Arc<TempDir> {
        self.begin_shutdown();
        let server = self.server.take().unwrap();
        tokio::time::timeout(Duration::from_secs(20), server)
            .await
            .expect("the server did not stop within 20 s")
            .unwrap()
            .unwrap();
        self.data.clone()
    }

    /// Creates (or updates) a subject with a plan; returns the revision.
    pub async fn upsert(&self, subject_id: &str, plan: proto::Plan) -> String {
        self.subjects()
            .upsert_subject(proto::UpsertSubjectRequest {
                subject_id: subject_id.into(),
                plan: Some(plan as i32),
                actor: actor(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .revision
    }

    pub async fn set_choice(
        &self,
        subject_id: &str,
        purpose: proto::Purpose,
        choice: proto::Choice,
    ) -> Result<String, tonic::Status> {
        self.subjects()
            .set_choice(proto::SetChoiceRequest {
                subject_id: subject_id.into(),
                purpose: purpose as i32,
                choice: choice as i32,
                actor: actor(),
            })
            .await
            .map(|response| response.into_inner().revision)
    }

    pub async fn check(&self, subject_id: &str, purpose: proto::Purpose) -> proto::CheckResponse {
        self.decisions()
            .check(check_request(subject_id, purpose))
            .await
            .unwrap()
            .into_inner()
    }

    pub async fn all_events(&self, subject_id: Option<&str>) -> Vec<proto::AuditEvent> {
        let mut events = Vec::new();
        let mut page_token = String::new();
        loop {
            let page = self
                .audit()
                .list_events(proto::ListEventsRequest {
                    subject_id: subject_id.map(str::to_owned),
                    page_size: 1_000,
                    page_token,
                })
                .await
                .unwrap()
                .into_inner();
            events.extend(page.events);
            page_token = page.next_page_token;
            if page_token.is_empty() {
                return events;
            }
        }
    }

    pub async fn verify_chain(&self) -> proto::VerifyChainResponse {
        self.audit()
            .verify_chain(proto::VerifyChainRequest {})
            .await
            .unwrap()
            .into_inner()
    }
}

pub fn database_path(data_dir: &Path) -> PathBuf {
    data_dir.join("assent.db")
}

pub fn actor() -> Option<proto::Actor> {
    Some(proto::Actor {
        operator_id: "support:tester".into(),
        reason: "integration test".into(),
    })
}

pub fn check_request(subject_id: &str, purpose: proto::Purpose) -> proto::CheckRequest {
    proto::CheckRequest {
        subject_id: subject_id.into(),
        purpose: purpose as i32,
        ..Default::default()
    }
}

/// Asserts a call failed with `code` and a message starting with `field`.
#[track_caller]
pub fn assert_status<T: std::fmt::Debug>(
    result: Result<T, tonic::Status>,
    code: tonic::Code,
    field: &str,
) {
    let status = result.expect_err("the call should have failed");
    assert_eq!(status.code(), code, "message: {}", status.message());
    assert!(
        status.message().starts_with(field),
        "the message {:?} does not start with {field:?}",
        status.message()
    );
}
