//! What the benchmarks share: an `assent serve` process, a load generator, CPU from /proc.
#![allow(dead_code)] // Shared by several benchmarks, each using part of it.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use assent::proto;
use assent::proto::decisions_client::DecisionsClient;
use tonic::transport::Channel;

pub fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

/// Starts PostgreSQL (and Redis) when the machine has none running.
pub fn ensure_services(redis: bool) {
    if std::env::var("ASSENT_TEST_DATABASE_URL").is_err() {
        let status = Command::new("scripts/ensure-postgres").status();
        assert!(
            status.is_ok_and(|status| status.success()),
            "PostgreSQL is not available"
        );
    }
    if redis && std::env::var("ASSENT_TEST_REDIS_URL").is_err() {
        let status = Command::new("scripts/ensure-redis").status();
        assert!(
            status.is_ok_and(|status| status.success()),
            "Redis is not available"
        );
    }
}

pub struct Server {
    child: Child,
    pub address: String,
    /// The data directory made for it, when it was given none.
    data: Option<tempfile::TempDir>,
}

impl Server {
    /// Starts this checkout's `assent serve` with `settings` (environment variables).
    pub fn start(settings: &[(&str, String)]) -> Server {
        Server::start_binary(Path::new(env!("CARGO_BIN_EXE_assent")), settings)
    }

    /// Starts `assent serve` from the binary at `binary` (another build, to compare against).
    pub fn start_binary(binary: &Path, settings: &[(&str, String)]) -> Server {
        let mut command = Command::new(binary);
        command
            .arg("serve")
            .env("ASSENT_LISTEN", "127.0.0.1:0")
            .env("ASSENT_ADMIN_LISTEN", "127.0.0.1:0")
            // Load generators write as fast as they can, as one caller.
            .env("ASSENT_WRITES_PER_SECOND_PER_CALLER", "0")
            .env("ASSENT_LOG_FORMAT", "json")
            .env("RUST_LOG", "warn,assent::startup=info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (name, value) in settings {
            command.env(name, value);
        }
        // Without a data directory of its own, a server would use `data` in the working
        // directory, and two at once would contend for its decision log.
        let data = (!settings.iter().any(|(name, _)| *name == "ASSENT_DATA_DIR")).then(|| {
            let data = tempfile::tempdir().unwrap();
            command.env("ASSENT_DATA_DIR", data.path());
            data
        });
        let mut child = command.spawn().expect("cannot start assent serve");
        let stderr = child.stderr.take().unwrap();
        let (found, address) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut found = Some(found);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(entry) = serde_json::from_str::<serde_json::Value>(&line)
                    && entry["message"] == "assent serving"
                    && let Some(found) = found.take()
                {
                    let _ = found.send(entry["address"].as_str().unwrap_or_default().to_owned());
                }
            }
        });
        let address = address
            .recv_timeout(Duration::from_secs(60))
            .expect("the server did not start");
        Server {
            child,
            address,
            data,
        }
    }

    pub async fn channels(&self, count: usize) -> Vec<Channel> {
        let mut channels = Vec::new();
        for _ in 0..count {
            channels.push(
                Channel::from_shared(format!("http://{}", self.address))
                    .unwrap()
                    // As a gateway would: windows large enough for big batches.
                    .initial_stream_window_size(assent::startup::HTTP2_STREAM_WINDOW)
                    .initial_connection_window_size(assent::startup::HTTP2_CONNECTION_WINDOW)
                    .connect()
                    .await
                    .unwrap(),
            );
        }
        channels
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// User + system CPU time of the server process so far.
    pub fn cpu_time(&self) -> Duration {
        process_cpu(self.child.id()).expect("cannot read the server's /proc entry")
    }

    /// The server's process, for a caller that manages it itself.
    /// The process, and the data directory made for it (to keep while it runs).
    pub fn into_child(self) -> (Child, Option<tempfile::TempDir>) {
        (self.child, self.data)
    }

    pub fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

/// User + system CPU time of a process, from /proc/PID/stat (USER_HZ = 100).
pub fn process_cpu(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after_name.split(' ').collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

/// CPU time of every PostgreSQL process of the machine (backends, WAL writer, checkpointer).
pub fn postgres_cpu() -> Duration {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Duration::ZERO;
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|name| name.starts_with("postgres"))
        })
        .filter_map(process_cpu)
        .sum()
}

/// Creates subjects `PREFIX-0` … over gRPC, their plans taken in turn from `plans`.
pub async fn seed_subjects(channel: Channel, prefix: &str, count: usize, plans: &[proto::Plan]) {
    let mut subjects = proto::subjects_client::SubjectsClient::new(channel);
    for index in 0..count {
        subjects
            .upsert_subject(proto::UpsertSubjectRequest {
                subject_id: format!("{prefix}-{index}"),
                plan: Some(plans[index % plans.len()] as i32),
                actor: Some(proto::Actor {
                    operator_id: "bench".into(),
                    reason: String::new(),
                }),
                ..Default::default()
            })
            .await
            .unwrap();
    }
}

pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    if values.len() % 2 == 1 {
        values[middle]
    } else {
        (values[middle - 1] + values[middle]) / 2.0
    }
}

/// What one load run measured.
pub struct Load {
    pub requests_per_second: f64,
    pub p50: Duration,
    pub p99: Duration,
    pub server_cpu_per_request: Duration,
}

/// Unary Checks from `concurrency` tasks spread over `channels`, for `duration` after a second
/// of warm-up. `pace` = Some(rate): an open-loop rate in requests per second over all tasks
/// (for latency at a given load), each task on a connection of its own and the tasks' starts
/// spread over one interval, so calls arrive evenly rather than all tasks at the same instant;
/// None: as fast as answers come (for throughput), the tasks sharing `channels`.
///
/// Why a connection per paced task: tonic's client, when several calls start at the same
/// instant on one connection, was seen to leave some waiting until the connection's next call
/// (latency equal to the pacing interval, whatever the server); a Python gRPC client on one
/// connection showed no such wait against the same server.
pub async fn check_load(
    server: &Server,
    channels: &[Channel],
    concurrency: usize,
    duration: Duration,
    pace: Option<f64>,
    request: impl Fn(usize) -> proto::CheckRequest + Send + Sync + 'static,
) -> Load {
    let request = Arc::new(request);
    let running = Arc::new(AtomicBool::new(true));
    let measuring = Arc::new(AtomicBool::new(false));
    let completed = Arc::new(AtomicU64::new(0));
    let interval = pace.map(|rate| Duration::from_secs_f64(concurrency as f64 / rate));
    let start = tokio::time::Instant::now();
    let mut workers = Vec::new();
    for worker in 0..concurrency {
        let channel = if pace.is_some() {
            server.channels(1).await.remove(0)
        } else {
            channels[worker % channels.len()].clone()
        };
        let mut client = DecisionsClient::new(channel);
        let (running, measuring, completed) =
            (running.clone(), measuring.clone(), completed.clone());
        let request = request.clone();
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut index = worker;
            let mut next =
                start + interval.unwrap_or_default() * worker as u32 / concurrency as u32;
            while running.load(Ordering::Relaxed) {
                if let Some(interval) = interval {
                    next += interval;
                    tokio::time::sleep_until(next).await;
                }
                let started = Instant::now();
                client.check(request(index)).await.expect("a check failed");
                if measuring.load(Ordering::Relaxed) {
                    latencies.push(started.elapsed());
                    completed.fetch_add(1, Ordering::Relaxed);
                }
                index += concurrency;
            }
            latencies
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let cpu_before = server.cpu_time();
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(duration).await;
    measuring.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed();
    let cpu = server.cpu_time() - cpu_before;
    running.store(false, Ordering::Relaxed);
    let mut latencies = Vec::new();
    for worker in workers {
        latencies.extend(worker.await.unwrap());
    }
    latencies.sort_unstable();
    let requests = completed.load(Ordering::Relaxed).max(1);
    let percentile = |fraction: f64| latencies[((latencies.len() - 1) as f64 * fraction) as usize];
    Load {
        requests_per_second: requests as f64 / elapsed.as_secs_f64(),
        p50: percentile(0.50),
        p99: percentile(0.99),
        server_cpu_per_request: cpu / requests as u32,
    }
}

/// The constant server: a tonic Check answering one constant response, the framework's limit
/// on this machine, measured beside assent in the same run.
#[derive(Clone)]
pub struct Constant(pub proto::CheckResponse);

#[tonic::async_trait]
impl proto::decisions_server::Decisions for Constant {
    async fn check(
        &self,
        request: tonic::Request<proto::CheckRequest>,
    ) -> Result<tonic::Response<proto::CheckResponse>, tonic::Status> {
        std::hint::black_box(request.get_ref());
        Ok(tonic::Response::new(self.0.clone()))
    }

    async fn batch_check(
        &self,
        _: tonic::Request<proto::BatchCheckRequest>,
    ) -> Result<tonic::Response<proto::BatchCheckResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("constant"))
    }

    type StreamCheckStream = tokio_stream::Empty<Result<proto::CheckResponse, tonic::Status>>;

    async fn stream_check(
        &self,
        _: tonic::Request<tonic::Streaming<proto::CheckRequest>>,
    ) -> Result<tonic::Response<Self::StreamCheckStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("constant"))
    }
}
