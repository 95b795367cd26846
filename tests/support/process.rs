//! `assent serve` as a separate process, as it runs in production.
#![allow(dead_code)] // Shared by several test binaries, each using part of it.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tonic::transport::Channel;

/// Every gRPC health entry a server reports: the server-wide one and each service's.
pub const HEALTH_ENTRIES: [&str; 9] = [
    "",
    "assent.v1.Decisions",
    "assent.v1.Subjects",
    "assent.v1.Audit",
    "assent.v1.Changes",
    "assent.v1.Policies",
    "assent.v1.Rights",
    "assent.v1.Retention",
    "envoy.service.auth.v3.Authorization",
];

/// An `assent serve` process on a free port of loopback.
pub struct ServerProcess {
    child: Child,
    pub address: String,
    /// The admin HTTP address (`/metrics`, `/healthz`, `/readyz`).
    pub admin_address: String,
    /// The data directory made for it, when it was given none.
    _data: Option<tempfile::TempDir>,
}

impl ServerProcess {
    /// Starts a server with these `ASSENT_*` settings (listening on a free port, JSON logs).
    pub fn start(settings: &[(&str, String)]) -> ServerProcess {
        let mut command = Command::new(env!("CARGO_BIN_EXE_assent"));
        command
            .arg("serve")
            .env("ASSENT_LISTEN", "127.0.0.1:0")
            .env("ASSENT_ADMIN_LISTEN", "127.0.0.1:0")
            // Load generators write as fast as they can, as one caller.
            .env("ASSENT_WRITES_PER_SECOND_PER_CALLER", "0")
            .env("ASSENT_LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
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
        let mut child = command.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (found, address) = std::sync::mpsc::channel();
        // Read the bound address from the log, then keep draining it so the process never
        // blocks on a full pipe.
        std::thread::spawn(move || {
            let mut found = Some(found);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let Ok(entry) = serde_json::from_str::<serde_json::Value>(&line) else {
                    continue;
                };
                if entry["message"] == "assent serving"
                    && let Some(found) = found.take()
                {
                    let addresses = (
                        entry["address"].as_str().unwrap().to_owned(),
                        entry["admin"].as_str().unwrap_or_default().to_owned(),
                    );
                    let _ = found.send(addresses);
                }
            }
        });
        let (address, admin_address) = address
            .recv_timeout(Duration::from_secs(30))
            .expect("the server did not start within 30 s");
        ServerProcess {
            child,
            address,
            admin_address,
            _data: data,
        }
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.address))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    /// The process id (for reading /proc/PID).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory of the process, in bytes (VmRSS of /proc/PID/status).
    pub fn resident_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let line = status
            .lines()
            .find(|line| line.starts_with("VmRSS:"))
            .unwrap();
        let kilobytes: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        kilobytes * 1024
    }

    /// SIGKILL: no shutdown, no flush, nothing.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, then wait for the graceful exit.
    pub fn stop(self) {
        self.stop_with_status();
    }

    /// SIGTERM, then wait for the graceful exit; its exit status.
    pub fn stop_with_status(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "the server ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// GET over a fresh HTTP/1.1 connection (the admin port): (status code, body).
pub async fn http_get(address: &str, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, body.to_owned())
}

/// Every sample of a Prometheus text exposition, by `name{labels}`.
pub fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// The samples of the admin port's `/metrics`.
pub async fn scrape(address: &str) -> HashMap<String, f64> {
    let (status, body) = http_get(address, "/metrics").await;
    assert_eq!(status, 200);
    samples(&body)
}
