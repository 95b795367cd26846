//! The Helm chart against the binary: the rendered Deployment's ports, probes and environment
//! are the ones `assent serve`, `assent migrate`, `assent audit prune` and the client commands
//! serve and read.
//!
//! `scripts/chart-check` renders the chart (installing its tools when missing) into
//! `target/chart/rendered.json`. The tests then check the manifests against the binary's own
//! lists, and run the binary as the pods would: the migration Job's command, the server with the
//! Deployment's environment (its secrets and mounted files replaced by test ones, its ports by
//! free ones), the Deployment's HTTP probes against it, the `helm test` Pod's commands and the
//! prune CronJob's; the server signs an audit checkpoint into the directory where the chart
//! mounts the checkpoint volume. Two more ask the probes the chart renders of a server whose
//! PostgreSQL goes away, and of one that never reached it.

#[path = "support/database_roles.rs"]
mod database_roles;
#[path = "support/process.rs"]
mod process;
#[path = "support/proxy.rs"]
mod proxy;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use assent::store::testing::{Backend, TestDatabase};
use clap::CommandFactory;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use serde_json::Value;

/// The documents of the ci-values render, rendered once for every test of this file (they
/// run at once, and would otherwise write the same files together).
fn rendered() -> &'static [Value] {
    static RENDERED: OnceLock<Vec<Value>> = OnceLock::new();
    RENDERED.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let status = Command::new(root.join("scripts/chart-check"))
            .current_dir(root)
            .stdout(Stdio::null())
            .status()
            .expect("cannot run scripts/chart-check");
        assert!(status.success(), "scripts/chart-check failed");
        let text = std::fs::read_to_string(root.join("target/chart/rendered.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    })
}

fn find<'a>(documents: &'a [Value], kind: &str) -> Vec<&'a Value> {
    documents
        .iter()
        .filter(|document| document["kind"] == kind)
        .collect()
}

fn strings(value: &Value) -> Vec<&str> {
    value
        .as_array()
        .map(|items| items.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// A container's environment: (name, literal value or None for a secret reference), the
/// ConfigMaps of the chart it loads included. Its first source is the chart's ConfigMap; the
/// others (`extraEnvFrom`) are the operator's own, which the test does not have.
fn environment(container: &Value, documents: &[Value]) -> Vec<(String, Option<String>)> {
    let mut variables = Vec::new();
    for (index, source) in container["envFrom"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let name = &source["configMapRef"]["name"];
        let map = find(documents, "ConfigMap")
            .into_iter()
            .find(|map| &map["metadata"]["name"] == name);
        let Some(map) = map else {
            assert!(
                index > 0,
                "envFrom names a ConfigMap the chart does not render"
            );
            continue;
        };
        for (key, value) in map["data"].as_object().unwrap() {
            variables.push((key.clone(), value.as_str().map(str::to_owned)));
        }
    }
    for variable in container["env"].as_array().into_iter().flatten() {
        let value = variable["value"].as_str().map(str::to_owned);
        assert!(
            value.is_some() || variable["valueFrom"]["secretKeyRef"].is_object(),
            "{variable}"
        );
        variables.push((variable["name"].as_str().unwrap().to_owned(), value));
    }
    variables
}

/// The environment variables the client commands read (`assent health`, `assent check`: the
/// helm test, and what an operator runs in a pod).
fn client_environment() -> Vec<String> {
    let command = assent::cli::Cli::command();
    let health = command
        .get_subcommands()
        .find(|subcommand| subcommand.get_name() == "health")
        .expect("assent has a health command");
    health
        .get_arguments()
        .filter_map(|argument| argument.get_env())
        .map(|name| name.to_string_lossy().into_owned())
        .collect()
}

fn port_of(address: &str) -> u16 {
    address.rsplit(':').next().unwrap().parse().unwrap()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Variables the chart may set that are neither settings nor client settings: the log filter
/// (`extraEnv` in ci-values.yaml), read by the logging set-up.
const OTHER_ENVIRONMENT: &[&str] = &["RUST_LOG"];

/// An HTTP probe as the chart renders it: GET `path` on the container port `port`, given up
/// after `timeout`.
#[derive(Debug)]
struct HttpProbe {
    path: String,
    port: u64,
    timeout: Duration,
}

impl HttpProbe {
    /// The container's probe of that name; it must be an HTTP GET (the admin port serves plain
    /// HTTP), its port named or numbered among the container's ports.
    fn of(container: &Value, name: &str) -> HttpProbe {
        let probe = &container[name];
        let get = &probe["httpGet"];
        assert!(get.is_object(), "{name} is not an HTTP probe: {probe}");
        assert!(probe["exec"].is_null(), "{name} also execs: {probe}");
        assert_eq!(
            get["scheme"], "HTTP",
            "{name}: the admin port serves plain HTTP"
        );
        let port = match &get["port"] {
            Value::String(named) => container["ports"]
                .as_array()
                .unwrap()
                .iter()
                .find(|port| port["name"] == named.as_str())
                .unwrap_or_else(|| panic!("{name}: the container has no port {named}"))
                ["containerPort"]
                .as_u64()
                .unwrap(),
            number => number.as_u64().unwrap(),
        };
        HttpProbe {
            path: get["path"].as_str().unwrap().to_owned(),
            port,
            // The kubelet's default is 1 s.
            timeout: Duration::from_secs(probe["timeoutSeconds"].as_u64().unwrap_or(1)),
        }
    }

    /// Whether the probe succeeds against `address`, as the kubelet counts it: a status from
    /// 200 to 399 within the timeout; no connection, no answer or another status is a failure.
    fn succeeds(&self, address: SocketAddr) -> bool {
        matches!(self.status(address), Some(200..=399))
    }

    fn status(&self, address: SocketAddr) -> Option<u16> {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect_timeout(&address, self.timeout).ok()?;
        stream.set_read_timeout(Some(self.timeout)).ok()?;
        stream.set_write_timeout(Some(self.timeout)).ok()?;
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n",
            self.path
        );
        stream.write_all(request.as_bytes()).ok()?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).ok()?;
        String::from_utf8_lossy(&response)
            .split(' ')
            .nth(1)?
            .parse()
            .ok()
    }
}

/// Polls `condition` every 100 ms until it holds (true) or `within` has passed (false).
fn eventually(within: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `host:port` of a URL such as `postgres://u:p@127.0.0.1:5432/db`.
fn authority(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, rest)| rest);
    rest.split('/').next().unwrap()
}

#[test]
fn the_manifests_name_what_the_binary_serves_and_reads() {
    let documents = rendered();
    let deployment = find(documents, "Deployment")[0];
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    assert_eq!(strings(&container["args"]), ["serve"]);
    let ports: HashMap<&str, u64> = container["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|port| {
            (
                port["name"].as_str().unwrap(),
                port["containerPort"].as_u64().unwrap(),
            )
        })
        .collect();

    // Every variable is one the server or its client commands read.
    let variables = environment(container, documents);
    let client = client_environment();
    for (name, _) in &variables {
        assert!(
            assent::config::ENVIRONMENT.contains(&name.as_str())
                || client.contains(name)
                || OTHER_ENVIRONMENT.contains(&name.as_str()),
            "the Deployment sets {name}, which assent does not read"
        );
    }
    let value = |name: &str| {
        variables
            .iter()
            .find(|(variable, _)| variable == name)
            .and_then(|(_, value)| value.clone())
            .unwrap_or_else(|| panic!("the Deployment does not set {name}"))
    };
    // The server listens where the ports say; the client commands in the container call the
    // gRPC one; the probes GET the admin port, where the server answers /healthz and /readyz.
    assert_eq!(u64::from(port_of(&value("ASSENT_LISTEN"))), ports["grpc"]);
    assert_eq!(
        u64::from(port_of(&value("ASSENT_ADMIN_LISTEN"))),
        ports["admin"]
    );
    assert_eq!(u64::from(port_of(&value("ASSENT_SERVER"))), ports["grpc"]);
    for (probe, path) in [
        ("startupProbe", "/readyz"),
        ("readinessProbe", "/readyz"),
        ("livenessProbe", "/healthz"),
    ] {
        let probe = HttpProbe::of(container, probe);
        assert_eq!(probe.path, path, "{probe:?}");
        assert_eq!(probe.port, ports["admin"], "{probe:?}");
    }
    // The Services and the ServiceMonitor point at ports the container has.
    for service in find(documents, "Service") {
        for port in service["spec"]["ports"].as_array().unwrap() {
            let target = &port["targetPort"];
            assert!(
                target.as_str().map_or_else(
                    || ports.values().any(|p| Some(*p) == target.as_u64()),
                    |name| { ports.contains_key(name) }
                ),
                "{port}"
            );
        }
    }
    for monitor in find(documents, "ServiceMonitor") {
        let endpoint = &monitor["spec"]["endpoints"][0];
        assert!(ports.contains_key(endpoint["port"].as_str().unwrap()));
        assert_eq!(endpoint["path"], "/metrics");
    }
    // Files named by the environment live on mounted volumes.
    let mounts: Vec<&str> = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|mount| mount["mountPath"].as_str().unwrap())
        .collect();
    for (name, value) in &variables {
        if let Some(path) = value.as_deref().filter(|value| value.starts_with('/')) {
            assert!(
                mounts.iter().any(|mount| path.starts_with(mount)),
                "{name}={path} is on no mounted volume"
            );
        }
    }
    // Audit checkpoints outlive the pod: their directory is the mount point of a claim, which
    // the server writes; the signing key is a Secret's file.
    let volume_at = |path: &str| {
        let mount = container["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|mount| path.starts_with(mount["mountPath"].as_str().unwrap()))
            .unwrap_or_else(|| panic!("{path} is on no mounted volume"));
        let volume = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|volume| volume["name"] == mount["name"])
            .unwrap_or_else(|| panic!("no volume {}", mount["name"]));
        (mount, volume)
    };
    let checkpoint_dir = value("ASSENT_AUDIT_CHECKPOINT_DIR");
    let (mount, volume) = volume_at(&checkpoint_dir);
    assert_eq!(mount["mountPath"], checkpoint_dir.as_str());
    assert_ne!(mount["readOnly"], true, "{mount}");
    assert!(
        volume["persistentVolumeClaim"]["claimName"].is_string(),
        "{volume}"
    );
    let (mount, volume) = volume_at(&value("ASSENT_AUDIT_SIGNING_KEY_FILE"));
    assert_eq!(mount["readOnly"], true, "{mount}");
    assert!(volume["secret"]["secretName"].is_string(), "{volume}");

    run_as_the_pods_would(documents, container, &variables);
}

/// The migration Job's command, then the server with the Deployment's environment and its
/// probes, then the helm test Pod's commands and the prune CronJob's.
fn run_as_the_pods_would(
    documents: &[Value],
    container: &Value,
    variables: &[(String, Option<String>)],
) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    // With two database roles (ci-values.yaml), the Job connects as the owner and the server
    // as its own role; with one, both as the test role, which owns the database.
    let roles = runtime.block_on(database_roles::Roles::create());
    let job = find(documents, "Job")[0];
    let job_container = &job["spec"]["template"]["spec"]["containers"][0];
    let job_args = strings(&job_container["args"]);
    let two_roles = job_args.len() > 1;
    let (owner_url, server_url) = if two_roles {
        (roles.url_as(&roles.owner), roles.url_as(&roles.runtime))
    } else {
        (roles.database().url(), roles.database().url())
    };
    // Every file a container names, under one directory laid out as the pods' file system: a
    // mount point of the Deployment is a directory, as its volume would be.
    let directory = tempfile::tempdir().unwrap();
    let mount_points: Vec<String> = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|mount| mount["mountPath"].as_str().unwrap().to_owned())
        .collect();
    let local = |path: &str| -> PathBuf {
        let into = directory.path().join(path.trim_start_matches('/'));
        if mount_points.iter().any(|mount| mount == path) {
            std::fs::create_dir_all(&into).unwrap();
        } else {
            std::fs::create_dir_all(into.parent().unwrap()).unwrap();
        }
        into
    };
    let (grpc, admin) = (free_port(), free_port());
    let redis =
        std::env::var("ASSENT_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let redis_prefix = format!("assent-chart-{}", uuid::Uuid::now_v7().simple());
    // The mounted secrets: a certificate for the name the clients check, its CA, a JWKS whose
    // key signs the helm test's token, and the helm test's client certificate.
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let issuer = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let token_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    // The helm test's token, for the issuer and audience the server accepts, naming the
    // client certificate the test presents.
    let test_client_identity = "helm-test.chart.test";
    let token = test_token(
        &env_value(variables, "ASSENT_JWT_ISSUER"),
        &env_value(variables, "ASSENT_JWT_AUDIENCE"),
        test_client_identity,
        &token_key,
    );

    // A container's environment as the test runs it: secrets, ports and paths replaced by the
    // test's.
    let resolve = |variables: &[(String, Option<String>)], database_url: &str| {
        let mut env: HashMap<String, String> = HashMap::new();
        for (name, value) in variables {
            let value = match (name.as_str(), value) {
                ("ASSENT_DATABASE_URL", _) => database_url.to_owned(),
                // The primary itself: no standby, so the probe never lets a read go to it, and
                // the server serves from the primary.
                ("ASSENT_DATABASE_REPLICA_URLS", _) => server_url.clone(),
                ("ASSENT_REDIS_URL", _) => redis.clone(),
                ("ASSENT_SUBJECT_HASH_KEY", _) => "chart-test-subject-hash-key".to_owned(),
                ("ASSENT_REDIS_ENTRY_KEY", _) => {
                    "chart-test-redis-entry-key-of-32-characters".to_owned()
                }
                ("ASSENT_REDIS_PREFIX", _) => redis_prefix.clone(),
                // Traces would go to a collector this machine does not have.
                (name, _) if name.starts_with("OTEL_") => continue,
                ("ASSENT_LISTEN", Some(value)) => {
                    value.replace(&format!(":{}", port_of(value)), &format!(":{grpc}"))
                }
                ("ASSENT_ADMIN_LISTEN", Some(value)) => {
                    value.replace(&format!(":{}", port_of(value)), &format!(":{admin}"))
                }
                // The server's own port in its pod, or the Service's name from the test Pod:
                // here, the server the test runs.
                ("ASSENT_SERVER", Some(value)) => {
                    let (scheme, _) = value.split_once("://").unwrap();
                    format!("{scheme}://127.0.0.1:{grpc}")
                }
                ("ASSENT_TOKEN", None) => token.clone(),
                (_, Some(value)) if value.starts_with('/') => {
                    local(value).to_str().unwrap().to_owned()
                }
                (_, Some(value)) => value.clone(),
                (name, None) => panic!("a secret reference the test does not provide: {name}"),
            };
            env.insert(name.clone(), value);
        }
        env
    };
    let env = resolve(variables, &server_url);

    let key = KeyPair::generate().unwrap();
    let certificate = CertificateParams::new(vec![env["ASSENT_TLS_DOMAIN"].clone()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    std::fs::write(&env["ASSENT_TLS_CERT"], certificate.pem()).unwrap();
    std::fs::write(&env["ASSENT_TLS_KEY"], key.serialize_pem()).unwrap();
    std::fs::write(&env["ASSENT_CA_CERT"], issuer.pem()).unwrap();
    if let Some(jwks) = env.get("ASSENT_JWT_JWKS_FILE") {
        let point = token_key.public_key_raw();
        use base64::Engine;
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let set = serde_json::json!({ "keys": [{
            "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": "chart-test",
            "x": b64(&point[1..33]), "y": b64(&point[33..65]),
        }]});
        std::fs::write(jwks, set.to_string()).unwrap();
    }
    // The audit signing key, made as `assent audit keygen` makes it; the checkpoint directory
    // is the claim's mount point, which the server must find and write.
    let key_file = env
        .get("ASSENT_AUDIT_SIGNING_KEY_FILE")
        .expect("ci-values.yaml signs audit checkpoints");
    let (signer, verifier) = assent::audit::note::generate_key("chart.test/assent").unwrap();
    std::fs::write(key_file, signer).unwrap();
    let checkpoint_dir = PathBuf::from(&env["ASSENT_AUDIT_CHECKPOINT_DIR"]);
    let binary = env!("CARGO_BIN_EXE_assent");
    let command = |args: &[&str], env: &HashMap<String, String>| {
        let mut command = Command::new(binary);
        command
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(env);
        command
    };
    let run = |what: &str, args: &[&str], env: &HashMap<String, String>| {
        let output = command(args, env).output().unwrap();
        assert!(
            output.status.success(),
            "{what} (assent {}): {}{}",
            args.join(" "),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    };

    // The migration Job, with its own environment: the owner's URL, and the test's server
    // role in place of the chart's.
    let job_env = resolve(&environment(job_container, documents), &owner_url);
    let args: Vec<&str> = if two_roles {
        assert_eq!(job_args[..2], ["migrate", "--grant-to"]);
        assert_eq!(
            env.get("ASSENT_RUN_MIGRATIONS").map(String::as_str),
            Some("false"),
            "with two roles the server must not migrate"
        );
        vec!["migrate", "--grant-to", &roles.runtime]
    } else {
        assert_eq!(job_args, ["migrate"]);
        job_args
    };
    run("the migrations Job", &args, &job_env);

    // The server, and its probes as the kubelet asks them: startup until it succeeds, then
    // readiness and liveness.
    let args = strings(&container["args"]);
    let mut server = command(&args, &env)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let admin_address: SocketAddr = format!("127.0.0.1:{admin}").parse().unwrap();
    let startup = HttpProbe::of(container, "startupProbe");
    let started = eventually(Duration::from_secs(30), || {
        if let Some(status) = server.try_wait().unwrap() {
            panic!("assent serve exited with the chart's environment: {status}");
        }
        startup.succeeds(admin_address)
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let checkpoint = loop {
        let published = std::fs::read_dir(&checkpoint_dir)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .find(|path| {
                path.extension()
                    .is_some_and(|extension| extension == "checkpoint")
            });
        if published.is_some() || Instant::now() > deadline {
            break published;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let ready = HttpProbe::of(container, "readinessProbe").status(admin_address);
    let live = HttpProbe::of(container, "livenessProbe").status(admin_address);
    let metrics = runtime.block_on(process::http_get(&admin_address.to_string(), "/metrics"));

    // `helm test`: the test Pod's containers in turn, init containers first, each with its
    // own environment (the Service's address, the test's token and client certificate).
    let test_pod = find(documents, "Pod")
        .into_iter()
        .find(|pod| pod["metadata"]["annotations"]["helm.sh/hook"] == "test")
        .expect("ci-values.yaml renders the helm test Pod");
    let test_spec = &test_pod["spec"];
    let service = find(documents, "Service")[0];
    let mut test_outputs = Vec::new();
    for test_container in test_spec["initContainers"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(test_spec["containers"].as_array().unwrap())
    {
        let variables = environment(test_container, documents);
        let server_address = variables
            .iter()
            .find(|(name, _)| name == "ASSENT_SERVER")
            .and_then(|(_, value)| value.clone())
            .unwrap();
        assert_eq!(
            server_address,
            format!(
                "https://{}.{}.svc:{}",
                service["metadata"]["name"].as_str().unwrap(),
                service["metadata"]["namespace"].as_str().unwrap(),
                service["spec"]["ports"][0]["port"]
            ),
            "the helm test calls the release through its Service"
        );
        let test_env = resolve(&variables, &server_url);
        if let (Some(cert), Some(key)) = (
            test_env.get("ASSENT_CLIENT_CERT"),
            test_env.get("ASSENT_CLIENT_KEY"),
        ) && !Path::new(cert).exists()
        {
            let client_key = KeyPair::generate().unwrap();
            let client = CertificateParams::new(vec![test_client_identity.to_owned()])
                .unwrap()
                .signed_by(&client_key, &issuer)
                .unwrap();
            std::fs::write(cert, client.pem()).unwrap();
            std::fs::write(key, client_key.serialize_pem()).unwrap();
        }
        let name = test_container["name"].as_str().unwrap();
        let args = strings(&test_container["args"]);
        test_outputs.push((
            name.to_owned(),
            run(&format!("the helm test's {name}"), &args, &test_env),
        ));
    }

    // The prune CronJob's run, as the owner.
    let prune = find(documents, "CronJob")[0];
    let prune_container =
        &prune["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0];
    let prune_env = resolve(&environment(prune_container, documents), &owner_url);
    let pruned = run(
        "the prune CronJob",
        &strings(&prune_container["args"]),
        &prune_env,
    );

    server.kill().unwrap();
    server.wait().unwrap();
    assert!(started, "the startup probe never succeeded");
    assert_eq!(ready, Some(200), "the readiness probe");
    assert_eq!(live, Some(200), "the liveness probe");
    assert_eq!(metrics.0, 200);
    assert!(metrics.1.contains("assent_build_info"), "{}", metrics.1);
    // Health, then a Check of a subject never created, answered as such.
    let steps: Vec<&str> = test_outputs.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(steps, ["health", "check"]);
    assert_eq!(test_outputs[0].1.trim(), "SERVING");
    assert!(
        test_outputs[1].1.contains("UNKNOWN_SUBJECT"),
        "{}",
        test_outputs[1].1
    );
    assert!(pruned.contains("older than 400 days"), "{pruned}");
    // The server signed the log at start, with the mounted key, into the mounted directory.
    let checkpoint = checkpoint.expect("the server published no checkpoint");
    let note = std::fs::read_to_string(&checkpoint).unwrap();
    let (origin, size, _root) = assent::audit::note::verify_checkpoint(&note, &verifier)
        .unwrap_or_else(|error| panic!("{}: {error}", checkpoint.display()));
    assert_eq!(origin, "chart.test/assent");
    assert_eq!(
        checkpoint.file_name().unwrap().to_str(),
        Some(assent::audit::note::checkpoint_file_name(size).as_str())
    );
    drop(runtime);
}

/// The literal value of `name` among `variables`.
fn env_value(variables: &[(String, Option<String>)], name: &str) -> String {
    variables
        .iter()
        .find(|(variable, _)| variable == name)
        .and_then(|(_, value)| value.clone())
        .unwrap_or_else(|| panic!("{name} is not set"))
}

/// A bearer token of the helm test, from the JWKS's key: `decisions:check` for `subject`, the
/// identity of the client certificate it comes with.
fn test_token(issuer: &str, audience: &str, subject: &str, key: &KeyPair) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = serde_json::json!({
        "iss": issuer, "aud": audience, "sub": subject, "scope": "decisions:check",
        "iat": now, "exp": now + 300,
    });
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some("chart-test".to_owned());
    let key = jsonwebtoken::EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).unwrap();
    jsonwebtoken::encode(&header, &claims, &key).unwrap()
}

/// The chart's readiness probe of a server whose PostgreSQL goes away: it fails within a few
/// seconds, while liveness holds (losing the store is no reason to restart), and succeeds again
/// once the store is back. PostgreSQL is reached through a proxy the test closes.
#[test]
fn the_readiness_probe_fails_while_the_store_is_unreachable() {
    let documents = rendered();
    let container = &find(documents, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0];
    let (startup, readiness, liveness) = (
        HttpProbe::of(container, "startupProbe"),
        HttpProbe::of(container, "readinessProbe"),
        HttpProbe::of(container, "livenessProbe"),
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let database = runtime.block_on(TestDatabase::create(Backend::Postgres));
    let url = database.url();
    let target = runtime
        .block_on(tokio::net::lookup_host(authority(&url)))
        .unwrap()
        .next()
        .unwrap();
    let proxy = runtime.block_on(proxy::FaultProxy::start(target));
    let through_proxy = url.replacen(authority(&url), &proxy.address().to_string(), 1);
    let server = process::ServerProcess::start(&[("ASSENT_DATABASE_URL", through_proxy)]);
    // The probes' port is the admin port (the first test checks the chart's numbers): here the
    // one the server bound.
    let admin: SocketAddr = server.admin_address.parse().unwrap();

    assert!(
        eventually(Duration::from_secs(10), || startup.succeeds(admin)),
        "startup {startup:?}: {:?}",
        startup.status(admin)
    );
    assert_eq!(readiness.status(admin), Some(200), "{readiness:?}");
    assert_eq!(liveness.status(admin), Some(200), "{liveness:?}");

    // The store goes away: open connections are reset, new ones refused.
    proxy.cut();
    let cut = Instant::now();
    assert!(
        eventually(Duration::from_secs(10), || !readiness.succeeds(admin)),
        "{readiness:?} still succeeds 10 s after the store went away"
    );
    let unready_after = cut.elapsed();
    let unready = readiness.status(admin);
    assert!(
        !matches!(unready, Some(200..=399)),
        "{readiness:?}: {unready:?}"
    );
    assert_eq!(
        liveness.status(admin),
        Some(200),
        "{liveness:?} must hold while the store is away"
    );

    // The store is back: ready again, with nothing restarted.
    runtime.block_on(proxy.restore());
    assert!(
        eventually(Duration::from_secs(10), || readiness.succeeds(admin)),
        "{readiness:?} fails 10 s after the store came back: {:?}",
        readiness.status(admin)
    );
    eprintln!("readiness failed {unready_after:?} after the store went away ({unready:?})");
    server.stop();
    drop(proxy);
    drop(database);
}

/// A server whose PostgreSQL does not answer when it starts (a closed port) never answers the
/// startup probe: it cannot migrate or check the schema, and exits; the kubelet would restart
/// it until the store answers.
#[test]
fn a_server_whose_store_is_unreachable_at_start_never_starts() {
    let documents = rendered();
    let container = &find(documents, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0];
    let startup = HttpProbe::of(container, "startupProbe");
    let closed = free_port();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let data = tempfile::tempdir().unwrap();
    let mut server = Command::new(env!("CARGO_BIN_EXE_assent"))
        .arg("serve")
        .env("ASSENT_LISTEN", "127.0.0.1:0")
        .env("ASSENT_ADMIN_LISTEN", admin.to_string())
        .env("ASSENT_DATA_DIR", data.path())
        .env(
            "ASSENT_DATABASE_URL",
            format!("postgres://assent:assent@127.0.0.1:{closed}/assent"),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut succeeded = false;
    let exited = eventually(Duration::from_secs(60), || {
        succeeded |= startup.succeeds(admin);
        server.try_wait().unwrap().is_some()
    });
    let status = server.try_wait().unwrap();
    let _ = server.kill();
    let _ = server.wait();
    assert!(!succeeded, "{startup:?} succeeded without a store");
    assert!(
        exited,
        "assent serve neither started nor exited within 60 s"
    );
    assert!(
        !status.unwrap().success(),
        "assent serve exited 0 without a store"
    );
}
