//! The Helm chart against the binary: the rendered Deployment's ports, probes and environment
//! are the ones `assent serve`, `assent health` and `assent migrate` serve and read.
//!
//! `scripts/chart-check` renders the chart (installing its tools when missing) into
//! `target/chart/rendered.json`. The test then checks the manifests against the binary's own
//! lists, and runs the binary as the pod would: the migration Job's command, the server with the
//! Deployment's environment (its secrets and mounted files replaced by test ones, its ports by
//! free ones), and the Deployment's probe command against it; the server signs an audit
//! checkpoint into the directory where the chart mounts the checkpoint volume.

#[path = "support/database_roles.rs"]
mod database_roles;
#[path = "support/process.rs"]
mod process;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::CommandFactory;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use serde_json::Value;

fn rendered() -> Vec<Value> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let status = Command::new(root.join("scripts/chart-check"))
        .current_dir(root)
        .stdout(Stdio::null())
        .status()
        .expect("cannot run scripts/chart-check");
    assert!(status.success(), "scripts/chart-check failed");
    let text = std::fs::read_to_string(root.join("target/chart/rendered.json")).unwrap();
    serde_json::from_str(&text).unwrap()
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
/// ConfigMaps it loads included.
fn environment(container: &Value, documents: &[Value]) -> Vec<(String, Option<String>)> {
    let mut variables = Vec::new();
    for source in container["envFrom"].as_array().into_iter().flatten() {
        let name = &source["configMapRef"]["name"];
        let map = find(documents, "ConfigMap")
            .into_iter()
            .find(|map| &map["metadata"]["name"] == name)
            .expect("envFrom names a ConfigMap the chart renders");
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

/// The environment variables the client commands read (`assent health` is the probe).
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

#[test]
fn the_manifests_name_what_the_binary_serves_and_reads() {
    let documents = rendered();
    let deployment = find(&documents, "Deployment")[0];
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

    // Every variable is one the server or the probe reads.
    let variables = environment(container, &documents);
    let client = client_environment();
    for (name, _) in &variables {
        assert!(
            assent::config::ENVIRONMENT.contains(&name.as_str()) || client.contains(name),
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
    // The server listens where the ports say, and the probe calls the gRPC one.
    assert_eq!(u64::from(port_of(&value("ASSENT_LISTEN"))), ports["grpc"]);
    assert_eq!(
        u64::from(port_of(&value("ASSENT_ADMIN_LISTEN"))),
        ports["admin"]
    );
    assert_eq!(u64::from(port_of(&value("ASSENT_SERVER"))), ports["grpc"]);
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        assert_eq!(
            strings(&container[probe]["exec"]["command"]),
            ["assent", "health"],
            "{probe}"
        );
    }
    // The Services and the ServiceMonitor point at ports the container has.
    for service in find(&documents, "Service") {
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
    for monitor in find(&documents, "ServiceMonitor") {
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

    run_as_the_pod_would(&documents, container, &variables, &mounts);
}

/// The migration Job's command, then the server with the Deployment's environment, then the
/// probe.
fn run_as_the_pod_would(
    documents: &[Value],
    container: &Value,
    variables: &[(String, Option<String>)],
    mounts: &[&str],
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
    let directory = tempfile::tempdir().unwrap();
    let local = |path: &str| -> PathBuf {
        let mount = mounts
            .iter()
            .find(|mount| path.starts_with(**mount))
            .unwrap();
        let relative = path[mount.len()..].trim_start_matches('/');
        let into = directory.path().join(mount.trim_start_matches('/'));
        std::fs::create_dir_all(&into).unwrap();
        into.join(relative)
    };
    let (grpc, admin) = (free_port(), free_port());
    let redis =
        std::env::var("ASSENT_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let mut env: HashMap<String, String> = HashMap::new();
    for (name, value) in variables {
        let value = match (name.as_str(), value) {
            ("ASSENT_DATABASE_URL", _) => server_url.clone(),
            // The primary itself: no standby, so the probe never lets a read go to it, and the
            // server serves from the primary.
            ("ASSENT_DATABASE_REPLICA_URLS", _) => server_url.clone(),
            ("ASSENT_REDIS_URL", _) => redis.clone(),
            ("ASSENT_SUBJECT_HASH_KEY", _) => "chart-test-subject-hash-key".to_owned(),
            ("ASSENT_REDIS_ENTRY_KEY", _) => {
                "chart-test-redis-entry-key-of-32-characters".to_owned()
            }
            ("ASSENT_REDIS_PREFIX", _) => {
                format!("assent-chart-{}", uuid::Uuid::now_v7().simple())
            }
            // Traces would go to a collector this machine does not have.
            (name, _) if name.starts_with("OTEL_") => continue,
            ("ASSENT_LISTEN", Some(value)) | ("ASSENT_SERVER", Some(value)) => {
                value.replace(&format!(":{}", port_of(value)), &format!(":{grpc}"))
            }
            ("ASSENT_ADMIN_LISTEN", Some(value)) => {
                value.replace(&format!(":{}", port_of(value)), &format!(":{admin}"))
            }
            (_, Some(value)) if value.starts_with('/') => local(value).to_str().unwrap().to_owned(),
            (name, Some(value)) => {
                let _ = name;
                value.clone()
            }
            (name, None) => panic!("a secret reference the test does not provide: {name}"),
        };
        env.insert(name.clone(), value);
    }
    // The mounted secrets: a certificate for the name the probe checks, its CA, a JWKS.
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let issuer = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let certificate = CertificateParams::new(vec![env["ASSENT_TLS_DOMAIN"].clone()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    std::fs::write(&env["ASSENT_TLS_CERT"], certificate.pem()).unwrap();
    std::fs::write(&env["ASSENT_TLS_KEY"], key.serialize_pem()).unwrap();
    std::fs::write(&env["ASSENT_CA_CERT"], issuer.pem()).unwrap();
    if let Some(jwks) = env.get("ASSENT_JWT_JWKS_FILE") {
        let signing = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let point = signing.public_key_raw();
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

    // The migration Job, with its own environment: the owner's URL, and the test's server
    // role in place of the chart's.
    let job_env: HashMap<String, String> = environment(job_container, documents)
        .into_iter()
        .map(|(name, _)| {
            let value = match name.as_str() {
                "ASSENT_DATABASE_URL" => owner_url.clone(),
                _ => env.get(&name).cloned().unwrap_or_else(|| {
                    panic!("the Job sets {name}, which the Deployment does not")
                }),
            };
            (name, value)
        })
        .collect();
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
    let migrated = command(&args, &job_env).output().unwrap();
    assert!(
        migrated.status.success(),
        "assent migrate: {}",
        String::from_utf8_lossy(&migrated.stderr)
    );

    // The server, and the probe.
    let args = strings(&container["args"]);
    let mut server = command(&args, &env)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let probe = strings(&container["readinessProbe"]["exec"]["command"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let answer = loop {
        let answer = command(&probe[1..], &env).output().unwrap();
        if answer.status.success() || Instant::now() > deadline {
            break answer;
        }
        if let Some(status) = server.try_wait().unwrap() {
            panic!("assent serve exited with the chart's environment: {status}");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
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
    let admin = format!("127.0.0.1:{admin}");
    let metrics = runtime.block_on(process::http_get(&admin, "/metrics"));
    let ready = runtime.block_on(process::http_get(&admin, "/readyz"));
    server.kill().unwrap();
    server.wait().unwrap();
    assert!(
        answer.status.success(),
        "the probe failed: {}{}",
        String::from_utf8_lossy(&answer.stdout),
        String::from_utf8_lossy(&answer.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&answer.stdout).trim(), "SERVING");
    assert_eq!(metrics.0, 200);
    assert!(metrics.1.contains("assent_build_info"), "{}", metrics.1);
    assert_eq!(ready.0, 200, "{}", ready.1);
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
