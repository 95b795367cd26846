//! Only the right callers, only the right calls: real TLS on loopback with certificates made
//! here (rcgen), bearer tokens signed here (jsonwebtoken), and a server per test on the
//! embedded store.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use assent::config::{Overrides, Settings};
use assent::proto::audit_client::AuditClient;
use assent::proto::decisions_client::DecisionsClient;
use assent::proto::subjects_client::SubjectsClient;
use assent::proto::{self, Plan, Purpose};
use assent::startup::Application;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use tokio::sync::oneshot;
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

const ISSUER: &str = "https://auth.test";
const AUDIENCE: &str = "assent";
const SECRET: &str = "a-development-secret-of-at-least-32-bytes";

/// A certificate authority, and certificates it signs.
struct Authority {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Authority {
    fn new(name: &str) -> Authority {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        Authority {
            issuer: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A certificate for `name` (its DNS subject alternative name): (certificate, key) PEM.
    fn sign(&self, name: &str) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let params = CertificateParams::new(vec![name.to_owned()]).unwrap();
        let certificate = params.signed_by(&key, &self.issuer).unwrap();
        (certificate.pem(), key.serialize_pem())
    }
}

/// A server on a free loopback port with these `ASSENT_*` settings, TLS with a certificate for
/// `localhost` from `authority`.
struct Server {
    address: SocketAddr,
    ca: String,
    shutdown: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    _directory: tempfile::TempDir,
}

impl Server {
    async fn start(authority: &Authority, extra: &[(&str, String)]) -> Server {
        let directory = tempfile::tempdir().unwrap();
        let (cert, key) = authority.sign("localhost");
        let write = |name: &str, text: &str| {
            let path = directory.path().join(name);
            std::fs::write(&path, text).unwrap();
            path.to_str().unwrap().to_owned()
        };
        let mut env: HashMap<String, String> = [
            ("ASSENT_LISTEN", "127.0.0.1:0".to_owned()),
            ("ASSENT_ADMIN_LISTEN", "off".to_owned()),
            (
                "ASSENT_DATA_DIR",
                directory.path().to_str().unwrap().to_owned(),
            ),
            ("ASSENT_TLS_CERT", write("server.pem", &cert)),
            ("ASSENT_TLS_KEY", write("server.key", &key)),
        ]
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value))
        .collect();
        for (name, value) in extra {
            let value = match *name {
                "ASSENT_TLS_CLIENT_CA" | "ASSENT_JWT_JWKS_FILE" => write(name, value),
                _ => value.clone(),
            };
            env.insert((*name).to_owned(), value);
        }
        let settings = Settings::resolve(None, &env, Overrides::default()).unwrap();
        let application = Application::build(settings).await.unwrap();
        let address = application.local_addr();
        let (shutdown, signal) = oneshot::channel::<()>();
        let task = tokio::spawn(application.run_until(async {
            let _ = signal.await;
        }));
        Server {
            address,
            ca: authority.pem(),
            shutdown: Some(shutdown),
            task,
            _directory: directory,
        }
    }

    fn tls(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca))
            .domain_name("localhost")
    }

    async fn connect_with(&self, tls: ClientTlsConfig) -> Result<Channel, tonic::transport::Error> {
        Channel::from_shared(format!("https://{}", self.address))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
    }

    async fn channel(&self) -> Channel {
        self.connect_with(self.tls()).await.unwrap()
    }

    async fn stop(mut self) {
        let _ = self.shutdown.take().unwrap().send(());
        self.task.await.unwrap().unwrap();
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Claims of a valid token for `sub` with `scope`; tests bend them.
fn claims(sub: &str, scope: &str) -> serde_json::Value {
    serde_json::json!({
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": sub,
        "scope": scope,
        "iat": now(),
        "exp": now() + 300,
    })
}

fn hs256(claims: &serde_json::Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

fn check(subject_id: &str) -> proto::CheckRequest {
    proto::CheckRequest {
        subject_id: subject_id.into(),
        purpose: Purpose::ModelTraining as i32,
        ..Default::default()
    }
}

fn upsert(subject_id: &str) -> proto::UpsertSubjectRequest {
    proto::UpsertSubjectRequest {
        subject_id: subject_id.into(),
        plan: Some(Plan::Free as i32),
        actor: Some(proto::Actor {
            operator_id: "billing:job".into(),
            reason: "plan change".into(),
        }),
        ..Default::default()
    }
}

#[track_caller]
fn assert_refused<T: std::fmt::Debug>(result: Result<T, tonic::Status>, code: Code, says: &str) {
    let status = result.expect_err("the call should be refused");
    assert_eq!(status.code(), code, "{status:?}");
    assert!(
        status.message().starts_with("authorization:") && status.message().contains(says),
        "{status:?} does not say {says:?}"
    );
}

async fn events_of(channel: Channel, subject_id: &str, token: &str) -> Vec<proto::AuditEvent> {
    AuditClient::new(channel)
        .list_events(with_token(
            proto::ListEventsRequest {
                subject_id: Some(subject_id.into()),
                ..Default::default()
            },
            token,
        ))
        .await
        .unwrap()
        .into_inner()
        .events
}

fn token_settings() -> Vec<(&'static str, String)> {
    vec![
        ("ASSENT_JWT_HS256_SECRET", SECRET.to_owned()),
        ("ASSENT_JWT_ISSUER", ISSUER.to_owned()),
        ("ASSENT_JWT_AUDIENCE", AUDIENCE.to_owned()),
    ]
}

#[tokio::test]
async fn each_call_needs_a_valid_token_with_its_scope() {
    let authority = Authority::new("test CA");
    let server = Server::start(&authority, &token_settings()).await;
    let channel = server.channel().await;
    let mut decisions = DecisionsClient::new(channel.clone());
    let mut subjects = SubjectsClient::new(channel.clone());
    let gateway = hs256(&claims("inference-gateway", "decisions:check"), SECRET);
    let billing = hs256(&claims("billing", "subjects:write subjects:read"), SECRET);
    let auditor = hs256(&claims("auditor", "audit:read"), SECRET);

    // No token.
    assert_refused(
        decisions.check(check("u1")).await,
        Code::Unauthenticated,
        "required",
    );
    // Health answers anyone (probes carry no token).
    let health = tonic_health::pb::health_client::HealthClient::new(channel.clone())
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(health.status, 1);
    // The right scope.
    decisions
        .check(with_token(check("u1"), &gateway))
        .await
        .unwrap();

    // The wrong scope: refused, and nothing is written or recorded.
    assert_refused(
        subjects
            .upsert_subject(with_token(upsert("u1"), &gateway))
            .await,
        Code::PermissionDenied,
        "subjects:write",
    );
    assert_refused(
        subjects
            .get_subject(with_token(
                proto::GetSubjectRequest {
                    subject_id: "u1".into(),
                },
                &gateway,
            ))
            .await,
        Code::PermissionDenied,
        "subjects:read",
    );
    let missing = subjects
        .get_subject(with_token(
            proto::GetSubjectRequest {
                subject_id: "u1".into(),
            },
            &billing,
        ))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    assert!(events_of(channel.clone(), "u1", &auditor).await.is_empty());
    assert_refused(
        AuditClient::new(channel.clone())
            .verify_chain(with_token(proto::VerifyChainRequest::default(), &billing))
            .await,
        Code::PermissionDenied,
        "audit:read",
    );

    // The write with its scope: the audit event names the authenticated caller.
    subjects
        .upsert_subject(with_token(upsert("u1"), &billing))
        .await
        .unwrap();
    let events = events_of(channel.clone(), "u1", &auditor).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].caller, "billing");
    // admin grants everything.
    let admin = hs256(&claims("operator", "admin"), SECRET);
    AuditClient::new(channel.clone())
        .verify_chain(with_token(proto::VerifyChainRequest::default(), &admin))
        .await
        .unwrap();
    server.stop().await;
}

#[tokio::test]
async fn bad_tokens_are_rejected() {
    let authority = Authority::new("test CA");
    let server = Server::start(&authority, &token_settings()).await;
    let mut decisions = DecisionsClient::new(server.channel().await);
    let scope = "decisions:check";
    let bent = |change: &dyn Fn(&mut serde_json::Value)| {
        let mut claims = claims("gateway", scope);
        change(&mut claims);
        hs256(&claims, SECRET)
    };
    let cases = [
        (bent(&|c| c["exp"] = (now() - 3_600).into()), "expired"),
        (
            bent(&|c| c["nbf"] = (now() + 3_600).into()),
            "not valid yet",
        ),
        (bent(&|c| c["aud"] = "another-service".into()), "audience"),
        (bent(&|c| c["iss"] = "https://evil.test".into()), "issuer"),
        (
            bent(&|c| {
                c.as_object_mut().unwrap().remove("sub");
            }),
            "sub",
        ),
        (
            bent(&|c| {
                c.as_object_mut().unwrap().remove("exp");
            }),
            "exp",
        ),
        (
            hs256(
                &claims("gateway", scope),
                "another-secret-of-at-least-32-bytes!",
            ),
            "signature",
        ),
        ("not.a.token".to_owned(), "malformed"),
    ];
    for (token, says) in &cases {
        assert_refused(
            decisions.check(with_token(check("u1"), token)).await,
            Code::Unauthenticated,
            says,
        );
    }
    // `alg: none`: an unsigned token with valid claims.
    let encode = |json: &serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json.to_string())
    };
    let unsigned = format!(
        "{}.{}.",
        encode(&serde_json::json!({"alg": "none", "typ": "JWT"})),
        encode(&claims("gateway", scope))
    );
    assert_refused(
        decisions.check(with_token(check("u1"), &unsigned)).await,
        Code::Unauthenticated,
        "malformed",
    );
    // Not a bearer token at all.
    let mut request = tonic::Request::new(check("u1"));
    request
        .metadata_mut()
        .insert("authorization", "Basic dXNlcjpwYXNz".parse().unwrap());
    assert_refused(
        decisions.check(request).await,
        Code::Unauthenticated,
        "Bearer",
    );
    // A clock a little off is tolerated (30 s of leeway).
    let skewed = bent(&|c| c["exp"] = (now() - 10).into());
    decisions
        .check(with_token(check("u1"), &skewed))
        .await
        .unwrap();
    server.stop().await;
}

/// An ES256 key as a JWK: (encoding key, JWK JSON).
fn es256_key(kid: &str) -> (EncodingKey, serde_json::Value) {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let encoding = EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).unwrap();
    let point = key.public_key_raw();
    assert_eq!(point.len(), 65);
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let jwk = serde_json::json!({
        "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": kid,
        "x": b64(&point[1..33]), "y": b64(&point[33..65]),
    });
    (encoding, jwk)
}

#[tokio::test]
async fn es256_tokens_verify_against_the_jwks_and_nothing_else() {
    let authority = Authority::new("test CA");
    let (signing, jwk) = es256_key("key-1");
    let (rogue, _) = es256_key("key-1");
    let jwks = serde_json::json!({ "keys": [jwk] }).to_string();
    let server = Server::start(
        &authority,
        &[
            ("ASSENT_JWT_JWKS_FILE", jwks),
            ("ASSENT_JWT_ISSUER", ISSUER.to_owned()),
            ("ASSENT_JWT_AUDIENCE", AUDIENCE.to_owned()),
        ],
    )
    .await;
    let mut decisions = DecisionsClient::new(server.channel().await);
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("key-1".into());
    let claims = claims("gateway", "decisions:check");
    let good = jsonwebtoken::encode(&header, &claims, &signing).unwrap();
    decisions
        .check(with_token(check("u1"), &good))
        .await
        .unwrap();
    // Same kid, another key.
    let forged = jsonwebtoken::encode(&header, &claims, &rogue).unwrap();
    assert_refused(
        decisions.check(with_token(check("u1"), &forged)).await,
        Code::Unauthenticated,
        "signature",
    );
    // HS256 where no secret is configured (the algorithm-confusion attack): no key for it.
    assert_refused(
        decisions
            .check(with_token(check("u1"), &hs256(&claims, SECRET)))
            .await,
        Code::Unauthenticated,
        "no configured key",
    );
    server.stop().await;
}

#[tokio::test]
async fn client_certificates_identify_callers_and_unknown_cas_are_refused() {
    let authority = Authority::new("test CA");
    let server = Server::start(
        &authority,
        &[
            ("ASSENT_TLS_CLIENT_CA", authority.pem()),
            (
                "ASSENT_CLIENT_SCOPES",
                "gateway.test=decisions:check; billing.test=subjects:write,subjects:read"
                    .to_owned(),
            ),
        ],
    )
    .await;
    let client = |signer: &Authority, name: &str| {
        let (cert, key) = signer.sign(name);
        server.tls().identity(Identity::from_pem(cert, key))
    };

    let gateway = server
        .connect_with(client(&authority, "gateway.test"))
        .await
        .unwrap();
    DecisionsClient::new(gateway.clone())
        .check(check("u1"))
        .await
        .unwrap();
    let status = SubjectsClient::new(gateway)
        .upsert_subject(upsert("u1"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");

    let billing = server
        .connect_with(client(&authority, "billing.test"))
        .await
        .unwrap();
    SubjectsClient::new(billing.clone())
        .upsert_subject(upsert("u1"))
        .await
        .unwrap();

    // A certificate from a CA the server does not trust, and no certificate: no call gets
    // through (the handshake fails, at connect or at the first call).
    let stranger = Authority::new("another CA");
    for tls in [client(&stranger, "gateway.test"), server.tls()] {
        let refused = match server.connect_with(tls).await {
            Err(_) => true,
            Ok(channel) => DecisionsClient::new(channel)
                .check(check("u1"))
                .await
                .is_err(),
        };
        assert!(refused);
    }
    server.stop().await;
}

/// The RFC 8705 thumbprint of a PEM certificate, computed here from its bytes.
fn thumbprint(pem: &str) -> String {
    use base64::Engine as _;
    use sha2::Digest as _;
    let body: String = pem
        .lines()
        .filter(|line| !line.starts_with("-----"))
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(der))
}

#[tokio::test]
async fn under_mutual_tls_a_token_counts_only_from_the_certificate_it_was_issued_for() {
    let authority = Authority::new("test CA");
    let mut settings = token_settings();
    settings.push(("ASSENT_TLS_CLIENT_CA", authority.pem()));
    let server = Server::start(&authority, &settings).await;
    let (gateway_cert, gateway_key) = authority.sign("gateway.test");
    let (billing_cert, billing_key) = authority.sign("billing.test");
    let connect = |cert: &str, key: &str| {
        server.connect_with(server.tls().identity(Identity::from_pem(cert, key)))
    };
    let gateway = connect(&gateway_cert, &gateway_key).await.unwrap();
    let billing = connect(&billing_cert, &billing_key).await.unwrap();
    let check_with = |channel: &Channel, token: &str| {
        let mut decisions = DecisionsClient::new(channel.clone());
        let request = with_token(check("u1"), token);
        async move { decisions.check(request).await }
    };

    // Issued to the certificate's identity (`sub`), without a `cnf`: from that certificate only.
    let gateway_token = hs256(&claims("gateway.test", "decisions:check"), SECRET);
    check_with(&gateway, &gateway_token).await.unwrap();
    assert_refused(
        check_with(&billing, &gateway_token).await,
        Code::Unauthenticated,
        "not issued to the client certificate",
    );

    // Bound by thumbprint (RFC 8705 `cnf`): from that certificate only, whatever its `sub`.
    let mut bound = claims("pipeline", "decisions:check");
    bound["cnf"] = serde_json::json!({ "x5t#S256": thumbprint(&billing_cert) });
    let bound_token = hs256(&bound, SECRET);
    check_with(&billing, &bound_token).await.unwrap();
    assert_refused(
        check_with(&gateway, &bound_token).await,
        Code::Unauthenticated,
        "not issued to the client certificate",
    );
    server.stop().await;
}

#[tokio::test]
async fn a_token_bound_to_a_certificate_is_refused_without_one() {
    let authority = Authority::new("test CA");
    let server = Server::start(&authority, &token_settings()).await;
    let mut bound = claims("pipeline", "decisions:check");
    bound["cnf"] = serde_json::json!({ "x5t#S256": "AAAA" });
    let mut decisions = DecisionsClient::new(server.channel().await);
    assert_refused(
        decisions
            .check(with_token(check("u1"), &hs256(&bound, SECRET)))
            .await,
        Code::Unauthenticated,
        "not issued to the client certificate",
    );
    let plain = hs256(&claims("pipeline", "decisions:check"), SECRET);
    decisions
        .check(with_token(check("u1"), &plain))
        .await
        .unwrap();
    server.stop().await;
}

#[test]
fn serving_beyond_loopback_needs_tls_and_authentication() {
    let env = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect()
    };
    let error = Settings::resolve(
        None,
        &env(&[("ASSENT_LISTEN", "0.0.0.0:50051")]),
        Overrides::default(),
    )
    .unwrap_err();
    assert!(error.to_string().starts_with("listen: refusing"), "{error}");
    let tls_only = env(&[
        ("ASSENT_LISTEN", "0.0.0.0:50051"),
        ("ASSENT_TLS_CERT", "/etc/assent/tls.crt"),
        ("ASSENT_TLS_KEY", "/etc/assent/tls.key"),
    ]);
    assert!(Settings::resolve(None, &tls_only, Overrides::default()).is_err());
    let mut secured = tls_only.clone();
    for (name, value) in token_settings() {
        secured.insert(name.to_owned(), value);
    }
    Settings::resolve(None, &secured, Overrides::default()).unwrap();
    Settings::resolve(
        None,
        &env(&[("ASSENT_LISTEN", "127.0.0.1:50051")]),
        Overrides::default(),
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_client_speaks_tls_and_presents_its_token() {
    let authority = Authority::new("test CA");
    let server = Server::start(&authority, &token_settings()).await;
    let directory = tempfile::tempdir().unwrap();
    let ca = directory.path().join("ca.pem");
    std::fs::write(&ca, authority.pem()).unwrap();
    let token = hs256(&claims("operator", "decisions:check"), SECRET);
    let run = |token: Option<&str>| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_assent"));
        command
            .args(["check", "--subject", "u1", "--purpose", "model-training"])
            .env(
                "ASSENT_SERVER",
                format!("https://localhost:{}", server.address.port()),
            )
            .env("ASSENT_CA_CERT", &ca)
            .env_remove("ASSENT_TOKEN");
        if let Some(token) = token {
            command.env("ASSENT_TOKEN", token);
        }
        command.output().unwrap()
    };
    let refused = tokio::task::block_in_place(|| run(None));
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("UNAUTHENTICATED"), "{stderr}");
    let answered = tokio::task::block_in_place(|| run(Some(&token)));
    let stdout = String::from_utf8_lossy(&answered.stdout);
    assert!(
        answered.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&answered.stderr)
    );
    assert!(stdout.contains("DENY"), "{stdout}");
    server.stop().await;
}

/// `assent health`, the probe of the container image and the Helm chart: it calls the server
/// at 127.0.0.1 inside the pod, checks the certificate against the service's name, needs no
/// token, and presents the pod's certificate where clients must have one.
#[tokio::test(flavor = "multi_thread")]
async fn the_health_probe_speaks_tls_to_the_loopback_address() {
    let authority = Authority::new("test CA");
    let directory = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = directory.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let ca = write("ca.pem", &authority.pem());
    let (client_cert, client_key) = authority.sign("probe.assent.test");
    let client_cert = write("client.pem", &client_cert);
    let client_key = write("client.key", &client_key);
    let probe = |port: u16, domain: Option<&str>, identity: bool| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_assent"));
        command
            .args(["health", "--timeout-ms", "3000"])
            .env("ASSENT_SERVER", format!("https://127.0.0.1:{port}"))
            .env("ASSENT_CA_CERT", &ca)
            .env_remove("ASSENT_TOKEN")
            .env_remove("ASSENT_TLS_DOMAIN")
            .env_remove("ASSENT_CLIENT_CERT")
            .env_remove("ASSENT_CLIENT_KEY");
        if let Some(domain) = domain {
            command.env("ASSENT_TLS_DOMAIN", domain);
        }
        if identity {
            command
                .env("ASSENT_CLIENT_CERT", &client_cert)
                .env("ASSENT_CLIENT_KEY", &client_key);
        }
        let output = command.output().unwrap();
        (
            output.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ),
        )
    };

    let server = Server::start(&authority, &token_settings()).await;
    let port = server.address.port();
    let (serving, said) = tokio::task::block_in_place(|| probe(port, Some("localhost"), false));
    assert!(serving, "{said}");
    assert!(said.contains("SERVING"), "{said}");
    // The certificate names localhost, not 127.0.0.1: without the domain the check fails.
    let (serving, said) = tokio::task::block_in_place(|| probe(port, None, false));
    assert!(!serving, "{said}");
    server.stop().await;
    let (serving, said) = tokio::task::block_in_place(|| probe(port, Some("localhost"), false));
    assert!(!serving, "a stopped server must fail the probe: {said}");

    let mutual = Server::start(&authority, &[("ASSENT_TLS_CLIENT_CA", authority.pem())]).await;
    let port = mutual.address.port();
    let (serving, said) = tokio::task::block_in_place(|| probe(port, Some("localhost"), true));
    assert!(serving, "{said}");
    let (serving, said) = tokio::task::block_in_place(|| probe(port, Some("localhost"), false));
    assert!(!serving, "mutual TLS without a certificate: {said}");
    mutual.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_call_gives_its_admission_slot_back_before_draining_its_request() {
    let authority = Authority::new("test CA");
    let mut settings = token_settings();
    settings.push(("ASSENT_MAX_CONCURRENT_REQUESTS", "2".to_owned()));
    let server = Server::start(&authority, &settings).await;
    let channel = server.channel().await;
    let gateway = hs256(&claims("inference-gateway", "decisions:check"), SECRET);
    // Two StreamChecks without credentials whose requests never end: each is refused by
    // authentication, and its answer waits while its request is drained (up to 100 ms).
    let refused: Vec<_> = (0..2)
        .map(|_| {
            let mut decisions = DecisionsClient::new(channel.clone());
            tokio::spawn(async move {
                decisions
                    .stream_check(futures_util::stream::pending::<proto::CheckRequest>())
                    .await
            })
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    // Meanwhile the two slots are free: the gateway's checks are served, none shed.
    let mut decisions = DecisionsClient::new(channel.clone());
    let started = std::time::Instant::now();
    while started.elapsed() < std::time::Duration::from_millis(80) {
        decisions
            .check(with_token(check("u1"), &gateway))
            .await
            .expect("a check while refused calls drain");
    }
    for call in refused {
        assert_refused(call.await.unwrap(), Code::Unauthenticated, "required");
    }
    server.stop().await;
}
