//! assent's Check side by side with the framework's limit and with two policy engines, in one
//! run, under the same load generator.
//!
//!     scripts/bench-compare          # installs h2load and the peers, then runs this
//!
//! Targets, each deciding "may this conversation be used for training?":
//! - `tonic constant`: a tonic server whose Check returns a constant answer (the framework's
//!   limit: HTTP/2, gRPC framing, protobuf decoding and encoding, nothing else);
//! - `assent, embedded`: `assent serve` on its embedded store, answering from its cache;
//! - `assent, PostgreSQL + Redis`: the same on PostgreSQL with Redis;
//! - `assent, defaults, bare answer`: the embedded store again, each Check asking for the
//!   decision alone (`bare`);
//! - `assent, defaults, ext_authz` and `tonic constant, ext_authz`: the same question asked as
//!   Envoy's ext_authz filter asks it (`envoy.service.auth.v3.Authorization/Check`: the subject
//!   and conversation in headers, the purpose in the route's context extensions), of assent and
//!   of the constant server answering a constant OK of the shape of assent's ALLOW;
//! - `Cerbos`: CheckResources with a resource policy of the same rule (plan, opt-out, feedback;
//!   the caller passes the attributes), audit off;
//! - `SpiceDB`: CheckPermission on an in-memory SpiceDB (the embedded library, behind a small
//!   tonic front-end that passes the request bytes in), with a schema of the same rule.
//!
//! Load: h2load (one thread, 16 connections × 8 streams) posting one gRPC request body, for
//! BENCH_SECONDS (default 10) after a 1 s warm-up; BENCH_ROUNDS rounds (default 5), the target
//! order rotating. Each round measures with the server pinned to core 1 and h2load to core 0,
//! then unpinned. Server CPU per request comes from /proc. Low-load latency: one call at a time
//! on one connection for 3 s (pinned). Every target's answer is checked before it is measured.
//! The results go to stdout and into docs/benchmarks.md, between the `compare` markers.
//!
//! Environment: CERBOS_BIN (the cerbos binary), SPICEDB_LIB (libspicedb.so); without them
//! those targets are skipped.

#[path = "support.rs"]
mod support;

use std::collections::HashMap;
use std::ffi::{CStr, c_char, c_int};
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use assent::proto::{self, Plan, Purpose};
use assent::store::testing::{Backend, TestDatabase};
use bytes::{Buf, BufMut, Bytes};
use prost::Message;
use support::{ensure_services, env_number, median, process_cpu};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;

// ---------------------------------------------------------------------------------------------
// Raw gRPC: request bytes in, response bytes out, no message types.

#[derive(Clone, Copy, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }

    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Bytes;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, tonic::Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// One unary call with raw bytes.
async fn raw_call(
    channel: Channel,
    path: &'static str,
    body: Bytes,
) -> Result<Bytes, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|error| tonic::Status::unavailable(error.to_string()))?;
    let path = http::uri::PathAndQuery::from_static(path);
    grpc.unary(tonic::Request::new(body), path, RawCodec)
        .await
        .map(tonic::Response::into_inner)
}

/// Envoy's ext_authz answered with a constant OK of the shape of assent's ALLOW (its upstream
/// headers and dynamic metadata): what the protocol costs the framework.
#[derive(Clone)]
struct ConstantAuthorization(envoy_types::ext_authz::v3::pb::CheckResponse);

#[tonic::async_trait]
impl envoy_types::ext_authz::v3::pb::Authorization for ConstantAuthorization {
    async fn check(
        &self,
        request: tonic::Request<envoy_types::ext_authz::v3::pb::CheckRequest>,
    ) -> Result<tonic::Response<envoy_types::ext_authz::v3::pb::CheckResponse>, tonic::Status> {
        std::hint::black_box(request.get_ref());
        Ok(tonic::Response::new(self.0.clone()))
    }
}

fn constant_authorization() -> envoy_types::ext_authz::v3::pb::CheckResponse {
    use envoy_types::ext_authz::v3::pb::{
        CheckResponse, HeaderAppendAction, HeaderValue, HeaderValueOption, HttpResponse,
        OkHttpResponse,
    };
    use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
    #[allow(deprecated)]
    let header = |key: &str, value: &str| HeaderValueOption {
        header: Some(HeaderValue {
            key: key.into(),
            value: value.into(),
            raw_value: Vec::new(),
        }),
        append: None,
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd.into(),
        keep_empty_value: false,
    };
    let text = |value: &str| Value {
        kind: Some(Kind::StringValue(value.into())),
    };
    CheckResponse {
        status: Some(envoy_types::pb::google::rpc::Status::default()),
        http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
            headers: vec![
                header("x-assent-decision", "ALLOW"),
                header("x-assent-rule", "T3"),
                header("x-assent-policy-version", "2026-01-01"),
                header("x-assent-degraded", "false"),
                header("x-assent-revision", "r1.1000"),
                header(
                    "x-assent-decision-id",
                    "019af3b2-0c4e-7d1a-9c4b-2f1e5d6a7b8c",
                ),
            ],
            headers_to_remove: vec!["x-assent-valid-until".into()],
            ..Default::default()
        })),
        dynamic_metadata: Some(Struct {
            fields: HashMap::from([
                ("decision".to_owned(), text("ALLOW")),
                ("reason".to_owned(), text("FEEDBACK_GRANT")),
                ("rule".to_owned(), text("T3")),
                ("lawful_basis".to_owned(), text("CONTRACT")),
                (
                    "policy_section".to_owned(),
                    text("feedback grant, terms of service exception (b)"),
                ),
                ("policy_version".to_owned(), text("2026-01-01")),
                ("revision".to_owned(), text("r1.1000")),
                (
                    "decision_id".to_owned(),
                    text("019af3b2-0c4e-7d1a-9c4b-2f1e5d6a7b8c"),
                ),
                (
                    "degraded".to_owned(),
                    Value {
                        kind: Some(Kind::BoolValue(false)),
                    },
                ),
            ]),
        }),
    }
}

fn run_constant_server() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("listening {}", listener.local_addr().unwrap());
        std::io::stdout().flush().unwrap();
        let answer = proto::CheckResponse {
            subject_id: "user-1".into(),
            purpose: Purpose::ModelTraining as i32,
            decision: proto::Decision::Allow as i32,
            reason: proto::Reason::PlanDefault as i32,
            basis: proto::LawfulBasis::LegitimateInterest as i32,
            rule: "T6".into(),
            policy_version: "2026-01-01".into(),
            revision: "r1".into(),
            explanation: "constant".into(),
            decision_id: "0".into(),
            ..Default::default()
        };
        tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .add_service(proto::decisions_server::DecisionsServer::new(
                support::Constant(answer),
            ))
            .add_service(envoy_types::ext_authz::v3::pb::AuthorizationServer::new(
                ConstantAuthorization(constant_authorization()),
            ))
            .serve_with_incoming(assent::startup::incoming(listener))
            .await
            .unwrap();
    });
}

// ---------------------------------------------------------------------------------------------
// SpiceDB: the embedded library behind a tonic front-end.

mod authzed {
    //! The few messages of `authzed.api.v1` the benchmark writes and reads.

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ObjectReference {
        #[prost(string, tag = "1")]
        pub object_type: String,
        #[prost(string, tag = "2")]
        pub object_id: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct SubjectReference {
        #[prost(message, optional, tag = "1")]
        pub object: Option<ObjectReference>,
        #[prost(string, tag = "2")]
        pub optional_relation: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Relationship {
        #[prost(message, optional, tag = "1")]
        pub resource: Option<ObjectReference>,
        #[prost(string, tag = "2")]
        pub relation: String,
        #[prost(message, optional, tag = "3")]
        pub subject: Option<SubjectReference>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct RelationshipUpdate {
        /// 2: TOUCH.
        #[prost(int32, tag = "1")]
        pub operation: i32,
        #[prost(message, optional, tag = "2")]
        pub relationship: Option<Relationship>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct WriteRelationshipsRequest {
        #[prost(message, repeated, tag = "1")]
        pub updates: Vec<RelationshipUpdate>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct WriteSchemaRequest {
        #[prost(string, tag = "1")]
        pub schema: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct CheckPermissionRequest {
        #[prost(message, optional, tag = "2")]
        pub resource: Option<ObjectReference>,
        #[prost(string, tag = "3")]
        pub permission: String,
        #[prost(message, optional, tag = "4")]
        pub subject: Option<SubjectReference>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct CheckPermissionResponse {
        /// 1: NO_PERMISSION, 2: HAS_PERMISSION.
        #[prost(int32, tag = "2")]
        pub permissionship: i32,
    }

    pub fn object(kind: &str, id: &str) -> ObjectReference {
        ObjectReference {
            object_type: kind.into(),
            object_id: id.into(),
        }
    }

    pub fn relationship(
        resource: (&str, &str),
        relation: &str,
        subject: (&str, &str),
    ) -> Relationship {
        Relationship {
            resource: Some(object(resource.0, resource.1)),
            relation: relation.into(),
            subject: Some(SubjectReference {
                object: Some(object(subject.0, subject.1)),
                optional_relation: String::new(),
            }),
        }
    }
}

const SPICEDB_SCHEMA: &str = "
definition user {}

definition trainingpool {
    relation member: user
}

definition conversation {
    relation owner: user
    relation rater: user
    relation pool: trainingpool
    permission train = rater + (owner & pool->member)
}
";

type StartFn = unsafe extern "C" fn(*const c_char) -> *mut c_char;
type FreeFn = unsafe extern "C" fn(*mut c_char);
type FreeBytesFn = unsafe extern "C" fn(*mut u8);
type RpcFn =
    unsafe extern "C" fn(u64, *const u8, c_int, *mut *mut u8, *mut c_int, *mut *mut c_char);

/// The library's functions, resolved once.
struct SpiceDb {
    _library: libloading::Library,
    handle: u64,
    free: FreeFn,
    free_bytes: FreeBytesFn,
    check: RpcFn,
    write_schema: RpcFn,
    write_relationships: RpcFn,
}

// SAFETY: the library's functions are thread-safe (each call takes the instance by handle).
unsafe impl Send for SpiceDb {}
unsafe impl Sync for SpiceDb {}

impl SpiceDb {
    fn load(path: &str) -> SpiceDb {
        // SAFETY: loading a library runs its initialisers; this one is SpiceDB's Go runtime.
        let library = unsafe { libloading::Library::new(path) }.expect("cannot load libspicedb");
        // SAFETY: the symbols have the signatures of the library's exported functions.
        unsafe {
            let start: StartFn = *library.get::<StartFn>(b"spicedb_start").unwrap();
            let free: FreeFn = *library.get::<FreeFn>(b"spicedb_free").unwrap();
            let free_bytes: FreeBytesFn =
                *library.get::<FreeBytesFn>(b"spicedb_free_bytes").unwrap();
            let check: RpcFn = *library
                .get::<RpcFn>(b"spicedb_permissions_check_permission")
                .unwrap();
            let write_schema: RpcFn = *library
                .get::<RpcFn>(b"spicedb_schema_write_schema")
                .unwrap();
            let write_relationships: RpcFn = *library
                .get::<RpcFn>(b"spicedb_permissions_write_relationships")
                .unwrap();
            let reply = start(std::ptr::null());
            let text = CStr::from_ptr(reply).to_string_lossy().into_owned();
            free(reply);
            let json: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert_eq!(json["success"], true, "spicedb_start: {text}");
            let handle = json["data"]["handle"].as_u64().unwrap();
            SpiceDb {
                _library: library,
                handle,
                free,
                free_bytes,
                check,
                write_schema,
                write_relationships,
            }
        }
    }

    fn call(&self, function: RpcFn, request: &[u8]) -> Result<Vec<u8>, String> {
        let mut response: *mut u8 = std::ptr::null_mut();
        let mut length: c_int = 0;
        let mut error: *mut c_char = std::ptr::null_mut();
        // SAFETY: the pointers are valid for the call; what the library returns is freed with
        // its own functions.
        unsafe {
            function(
                self.handle,
                request.as_ptr(),
                request.len() as c_int,
                &mut response,
                &mut length,
                &mut error,
            );
            if !error.is_null() {
                let message = CStr::from_ptr(error).to_string_lossy().into_owned();
                (self.free)(error);
                return Err(message);
            }
            let bytes = if response.is_null() {
                Vec::new()
            } else {
                let bytes = std::slice::from_raw_parts(response, length as usize).to_vec();
                (self.free_bytes)(response);
                bytes
            };
            Ok(bytes)
        }
    }
}

/// `authzed.api.v1.PermissionsService/CheckPermission` over raw bytes.
#[derive(Clone)]
struct SpiceDbFront(Arc<SpiceDb>);

impl tonic::server::NamedService for SpiceDbFront {
    const NAME: &'static str = "authzed.api.v1.PermissionsService";
}

impl tonic::server::UnaryService<Bytes> for SpiceDbFront {
    type Response = Bytes;
    type Future = std::future::Ready<Result<tonic::Response<Bytes>, tonic::Status>>;

    fn call(&mut self, request: tonic::Request<Bytes>) -> Self::Future {
        let spicedb = &self.0;
        let result = spicedb
            .call(spicedb.check, request.get_ref())
            .map(|bytes| tonic::Response::new(Bytes::from(bytes)))
            .map_err(tonic::Status::internal);
        std::future::ready(result)
    }
}

impl tower::Service<http::Request<tonic::body::Body>> for SpiceDbFront {
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let front = self.clone();
        Box::pin(async move {
            if request.uri().path() != "/authzed.api.v1.PermissionsService/CheckPermission" {
                return Ok(tonic::Status::unimplemented("only CheckPermission").into_http());
            }
            let mut grpc = tonic::server::Grpc::new(RawCodec);
            Ok(grpc.unary(front, request).await)
        })
    }
}

fn run_spicedb_front(library: &str) {
    let spicedb = SpiceDb::load(library);
    let schema = authzed::WriteSchemaRequest {
        schema: SPICEDB_SCHEMA.into(),
    };
    spicedb
        .call(spicedb.write_schema, &schema.encode_to_vec())
        .expect("write schema");
    let mut updates = Vec::new();
    for index in 0..1_000 {
        let user = format!("user-{index}");
        let conversation = format!("conversation-{index}");
        for relationship in [
            authzed::relationship(("trainingpool", "consumer"), "member", ("user", &user)),
            authzed::relationship(("conversation", &conversation), "owner", ("user", &user)),
            authzed::relationship(
                ("conversation", &conversation),
                "pool",
                ("trainingpool", "consumer"),
            ),
        ] {
            updates.push(authzed::RelationshipUpdate {
                operation: 2,
                relationship: Some(relationship),
            });
        }
    }
    for chunk in updates.chunks(900) {
        let request = authzed::WriteRelationshipsRequest {
            updates: chunk.to_vec(),
        };
        spicedb
            .call(spicedb.write_relationships, &request.encode_to_vec())
            .expect("write relationships");
    }
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("listening {}", listener.local_addr().unwrap());
        std::io::stdout().flush().unwrap();
        tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .add_service(SpiceDbFront(Arc::new(spicedb)))
            .serve_with_incoming(assent::startup::incoming(listener))
            .await
            .unwrap();
    });
}

// ---------------------------------------------------------------------------------------------
// Cerbos.

const CERBOS_POLICY: &str = r#"apiVersion: api.cerbos.dev/v1
resourcePolicy:
  version: default
  resource: conversation
  rules:
    - actions: ["train"]
      effect: EFFECT_ALLOW
      roles: ["user"]
      condition:
        match:
          any:
            of:
              - expr: request.resource.attr.rated == true
              - all:
                  of:
                    - expr: request.principal.attr.plan in ["free", "pro", "student"]
                    - expr: request.principal.attr.training_choice != "refused"
"#;

mod cerbos {
    //! The few messages of `cerbos.request.v1` and `cerbos.response.v1` the benchmark uses.
    use std::collections::HashMap;

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Principal {
        #[prost(string, tag = "1")]
        pub id: String,
        #[prost(string, repeated, tag = "3")]
        pub roles: Vec<String>,
        #[prost(map = "string, message", tag = "4")]
        pub attr: HashMap<String, prost_types::Value>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Resource {
        #[prost(string, tag = "1")]
        pub kind: String,
        #[prost(string, tag = "3")]
        pub id: String,
        #[prost(map = "string, message", tag = "4")]
        pub attr: HashMap<String, prost_types::Value>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ResourceEntry {
        #[prost(string, repeated, tag = "1")]
        pub actions: Vec<String>,
        #[prost(message, optional, tag = "2")]
        pub resource: Option<Resource>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct CheckResourcesRequest {
        #[prost(string, tag = "1")]
        pub request_id: String,
        #[prost(message, optional, tag = "3")]
        pub principal: Option<Principal>,
        #[prost(message, repeated, tag = "4")]
        pub resources: Vec<ResourceEntry>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ResultEntry {
        /// Action → effect (1: ALLOW, 2: DENY).
        #[prost(map = "string, int32", tag = "2")]
        pub actions: HashMap<String, i32>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct CheckResourcesResponse {
        #[prost(message, repeated, tag = "2")]
        pub results: Vec<ResultEntry>,
    }

    pub fn text(value: &str) -> prost_types::Value {
        prost_types::Value {
            kind: Some(prost_types::value::Kind::StringValue(value.into())),
        }
    }

    pub fn flag(value: bool) -> prost_types::Value {
        prost_types::Value {
            kind: Some(prost_types::value::Kind::BoolValue(value)),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Targets.

struct Target {
    name: &'static str,
    child: Child,
    address: String,
    path: &'static str,
    body: Bytes,
    /// Whether a response is the expected answer.
    verify: fn(&[u8]) -> bool,
    _keep: Vec<Box<dyn std::any::Any>>,
}

impl Target {
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts this benchmark binary as a server (`constant-server`, `spicedb-front LIB`) and reads
/// the address it prints.
fn spawn_self(args: &[&str]) -> (Child, String) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let address = line
        .trim()
        .strip_prefix("listening ")
        .unwrap_or_else(|| panic!("unexpected: {line:?}"))
        .to_owned();
    (child, address)
}

/// The Check every assent target is sent; `bare` asks for the decision alone.
fn check_body(bare: bool) -> Bytes {
    proto::CheckRequest {
        subject_id: "user-1".into(),
        purpose: Purpose::ModelTraining as i32,
        conversation_id: Some("conversation-1".into()),
        bare,
        ..Default::default()
    }
    .encode_to_vec()
    .into()
}

/// The question of [`check_body`] as Envoy's ext_authz filter asks it: the subject and the
/// conversation in headers, the purpose in the route's context extensions.
fn ext_authz_body() -> Bytes {
    use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, attribute_context};
    envoy_types::ext_authz::v3::pb::CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(attribute_context::Request {
                http: Some(attribute_context::HttpRequest {
                    id: "1".into(),
                    method: "POST".into(),
                    path: "/v1/chat/completions".into(),
                    host: "gateway.example".into(),
                    protocol: "HTTP/2".into(),
                    headers: HashMap::from([
                        (":authority".to_owned(), "gateway.example".to_owned()),
                        (":method".to_owned(), "POST".to_owned()),
                        (":path".to_owned(), "/v1/chat/completions".to_owned()),
                        ("content-type".to_owned(), "application/json".to_owned()),
                        ("x-user-id".to_owned(), "user-1".to_owned()),
                        ("x-conversation-id".to_owned(), "conversation-1".to_owned()),
                    ]),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            context_extensions: HashMap::from([
                ("purpose".to_owned(), "model-training".to_owned()),
                (
                    "conversation_header".to_owned(),
                    "x-conversation-id".to_owned(),
                ),
            ]),
            ..Default::default()
        }),
    }
    .encode_to_vec()
    .into()
}

/// An ext_authz OK (an ALLOW), not degraded.
fn ext_authz_allows(bytes: &[u8]) -> bool {
    use envoy_types::pb::google::protobuf::value::Kind;
    envoy_types::ext_authz::v3::pb::CheckResponse::decode(bytes).is_ok_and(|response| {
        response.status.is_some_and(|status| status.code == 0)
            && response.dynamic_metadata.is_some_and(|metadata| {
                matches!(
                    metadata
                        .fields
                        .get("degraded")
                        .and_then(|value| value.kind.clone()),
                    Some(Kind::BoolValue(false))
                )
            })
    })
}

fn assent_allows(bytes: &[u8]) -> bool {
    proto::CheckResponse::decode(bytes).is_ok_and(|response| {
        response.decision == proto::Decision::Allow as i32 && !response.degraded
    })
}

/// An ALLOW answered bare: the decision alone, without a decision id.
fn assent_allows_bare(bytes: &[u8]) -> bool {
    proto::CheckResponse::decode(bytes).is_ok_and(|response| {
        response.decision == proto::Decision::Allow as i32
            && !response.degraded
            && response.decision_id.is_empty()
    })
}

fn constant_target() -> Target {
    let (child, address) = spawn_self(&["constant-server"]);
    Target {
        name: "tonic constant",
        child,
        address,
        path: "/assent.v1.Decisions/Check",
        body: check_body(false),
        verify: assent_allows,
        _keep: Vec::new(),
    }
}

/// The constant server asked through ext_authz, with assent's ext_authz question.
fn constant_ext_authz_target() -> Target {
    let (child, address) = spawn_self(&["constant-server"]);
    Target {
        name: "tonic constant, ext_authz",
        child,
        address,
        path: "/envoy.service.auth.v3.Authorization/Check",
        body: ext_authz_body(),
        verify: ext_authz_allows,
        _keep: Vec::new(),
    }
}

/// How a target asks assent.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ask {
    /// `Decisions.Check`, for the full answer.
    Full,
    /// `Decisions.Check`, for the decision alone.
    Bare,
    /// Envoy's `Authorization.Check` (ext_authz).
    ExtAuthz,
}

/// `assent serve` with `settings`, asked as `ask` says.
async fn assent_target(
    name: &'static str,
    settings: Vec<(&'static str, String)>,
    ask: Ask,
) -> Target {
    let mut settings = settings;
    settings.push(("ASSENT_ADMIN_LISTEN", "off".to_owned()));
    let server = support::Server::start(&settings);
    let address = server.address.clone();
    let (child, data) = server.into_child();
    let channel = connect(&address).await;
    support::seed_subjects(
        channel,
        "user",
        1_000,
        &[Plan::Free, Plan::Pro, Plan::Student],
    )
    .await;
    Target {
        name,
        child,
        address,
        path: match ask {
            Ask::Full | Ask::Bare => "/assent.v1.Decisions/Check",
            Ask::ExtAuthz => "/envoy.service.auth.v3.Authorization/Check",
        },
        body: match ask {
            Ask::Full | Ask::Bare => check_body(ask == Ask::Bare),
            Ask::ExtAuthz => ext_authz_body(),
        },
        verify: match ask {
            Ask::Full => assent_allows,
            Ask::Bare => assent_allows_bare,
            Ask::ExtAuthz => ext_authz_allows,
        },
        _keep: data
            .into_iter()
            .map(|data| Box::new(data) as Box<dyn std::any::Any>)
            .collect(),
    }
}

fn cerbos_target(binary: &str) -> Target {
    let directory = tempfile::tempdir().unwrap();
    let policies = directory.path().join("policies");
    std::fs::create_dir(&policies).unwrap();
    std::fs::write(policies.join("conversation.yaml"), CERBOS_POLICY).unwrap();
    let grpc_port = free_port();
    let http_port = free_port();
    let child = Command::new(binary)
        .args([
            "server",
            "--log-level=error",
            "--set=storage.driver=disk",
            &format!("--set=storage.disk.directory={}", policies.display()),
            &format!("--set=server.grpcListenAddr=127.0.0.1:{grpc_port}"),
            &format!("--set=server.httpListenAddr=127.0.0.1:{http_port}"),
            "--set=audit.enabled=false",
        ])
        // Cerbos logs every call h2load leaves unfinished at the end of a run.
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let request = cerbos::CheckResourcesRequest {
        request_id: "bench".into(),
        principal: Some(cerbos::Principal {
            id: "user-1".into(),
            roles: vec!["user".into()],
            attr: HashMap::from([
                ("plan".to_owned(), cerbos::text("pro")),
                ("training_choice".to_owned(), cerbos::text("unset")),
            ]),
        }),
        resources: vec![cerbos::ResourceEntry {
            actions: vec!["train".into()],
            resource: Some(cerbos::Resource {
                kind: "conversation".into(),
                id: "conversation-1".into(),
                attr: HashMap::from([("rated".to_owned(), cerbos::flag(false))]),
            }),
        }],
    };
    Target {
        name: "Cerbos",
        child,
        address: format!("127.0.0.1:{grpc_port}"),
        path: "/cerbos.svc.v1.CerbosService/CheckResources",
        body: request.encode_to_vec().into(),
        verify: |bytes| {
            cerbos::CheckResourcesResponse::decode(bytes).is_ok_and(|response| {
                response
                    .results
                    .first()
                    .and_then(|result| result.actions.get("train"))
                    == Some(&1)
            })
        },
        _keep: vec![Box::new(directory)],
    }
}

fn spicedb_target(library: &str) -> Target {
    let (child, address) = spawn_self(&["spicedb-front", library]);
    let request = authzed::CheckPermissionRequest {
        resource: Some(authzed::object("conversation", "conversation-1")),
        permission: "train".into(),
        subject: Some(authzed::SubjectReference {
            object: Some(authzed::object("user", "user-1")),
            optional_relation: String::new(),
        }),
    };
    Target {
        name: "SpiceDB",
        child,
        address,
        path: "/authzed.api.v1.PermissionsService/CheckPermission",
        body: request.encode_to_vec().into(),
        verify: |bytes| {
            authzed::CheckPermissionResponse::decode(bytes)
                .is_ok_and(|response| response.permissionship == 2)
        },
        _keep: Vec::new(),
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn connect(address: &str) -> Channel {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match Channel::from_shared(format!("http://{address}"))
            .unwrap()
            .connect()
            .await
        {
            Ok(channel) => return channel,
            Err(error) if Instant::now() > deadline => panic!("cannot reach {address}: {error}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Waits until the target answers, and checks the answer.
async fn verify(target: &Target) {
    let channel = connect(&target.address).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match raw_call(channel.clone(), target.path, target.body.clone()).await {
            Ok(bytes) => {
                assert!(
                    (target.verify)(&bytes),
                    "{}: unexpected answer {bytes:?}",
                    target.name
                );
                return;
            }
            Err(status) if Instant::now() > deadline => panic!("{}: {status:?}", target.name),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Measurement.

fn pin(pid: u32, cores: &str) {
    let status = Command::new("taskset")
        .args(["-a", "-p", "-c", cores, &pid.to_string()])
        .stdout(Stdio::null())
        .status()
        .expect("taskset (util-linux) is needed");
    assert!(status.success());
}

struct Load {
    requests_per_second: f64,
    cpu_micros_per_request: f64,
}

/// The gRPC request body as h2load sends it: a length-prefixed message.
fn write_body(target: &Target, directory: &std::path::Path) -> std::path::PathBuf {
    let path = directory.join(format!("{}.bin", target.name.replace([' ', ','], "_")));
    let mut framed = Vec::with_capacity(target.body.len() + 5);
    framed.put_u8(0);
    framed.put_u32(target.body.len() as u32);
    framed.extend_from_slice(&target.body);
    std::fs::write(&path, framed).unwrap();
    path
}

fn h2load(target: &Target, body: &std::path::Path, seconds: u64) -> (f64, u64) {
    let output = Command::new("h2load")
        .args([
            "-D",
            &seconds.to_string(),
            "-c",
            "16",
            "-m",
            "8",
            "-t",
            "1",
            "-d",
            body.to_str().unwrap(),
            "-H",
            "content-type: application/grpc",
            "-H",
            "te: trailers",
            &format!("http://{}{}", target.address, target.path),
        ])
        .output()
        .expect("h2load (nghttp2-client) is needed");
    let text = String::from_utf8_lossy(&output.stdout);
    let rate = text
        .lines()
        .find(|line| line.starts_with("finished in"))
        .and_then(|line| line.split(", ").nth(1))
        .and_then(|part| part.strip_suffix(" req/s"))
        .and_then(|number| number.parse().ok())
        .unwrap_or_else(|| panic!("{}: cannot read h2load's output:\n{text}", target.name));
    let requests_line = text
        .lines()
        .find(|line| line.starts_with("requests:"))
        .unwrap();
    let number = |label: &str| -> u64 {
        requests_line
            .split(", ")
            .find(|part| part.ends_with(label))
            .and_then(|part| part.trim_start_matches("requests: ").split(' ').next())
            .and_then(|number| number.parse().ok())
            .unwrap_or(0)
    };
    let succeeded = number("succeeded");
    let failed = number("failed") + number("errored");
    assert!(failed == 0, "{}: h2load saw failures:\n{text}", target.name);
    (rate, succeeded)
}

fn measure(target: &Target, body: &std::path::Path, seconds: u64) -> Load {
    h2load(target, body, 1);
    let cpu_before = process_cpu(target.pid()).unwrap();
    let (rate, requests) = h2load(target, body, seconds);
    let cpu = process_cpu(target.pid()).unwrap() - cpu_before;
    Load {
        requests_per_second: rate,
        cpu_micros_per_request: cpu.as_secs_f64() * 1e6 / requests.max(1) as f64,
    }
}

/// One call at a time on one connection: (p50, p99) in µs.
async fn low_load_latency(target: &Target, seconds: u64) -> (f64, f64) {
    let channel = connect(&target.address).await;
    let mut latencies = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < deadline {
        let started = Instant::now();
        raw_call(channel.clone(), target.path, target.body.clone())
            .await
            .unwrap();
        latencies.push(started.elapsed().as_secs_f64() * 1e6);
    }
    latencies.sort_by(f64::total_cmp);
    let at = |fraction: f64| latencies[((latencies.len() - 1) as f64 * fraction) as usize];
    (at(0.5), at(0.99))
}

/// The p99 latency of calls sent at a steady `rate` per second for `seconds`, each on its own
/// (open loop: a slow answer does not hold back the next call), timed from the instant it was
/// due, so a call the client sent late counts its lateness too.
///
/// The client runs on a thread of its own that never sleeps: it waits for each call's instant
/// by yielding, which also polls for answers. A client that sleeps between calls measures its
/// own wake-ups (tokio's timer fires to the millisecond, in bursts), not the server's latency.
fn latency_at_rate(target: &Target, rate: u64, seconds: u64) -> f64 {
    let (address, path, body) = (target.address.clone(), target.path, target.body.clone());
    let client = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let channel = connect(&address).await;
            let period = Duration::from_nanos(1_000_000_000 / rate);
            let start = Instant::now() + Duration::from_millis(10);
            let mut calls = Vec::new();
            for index in 0..rate * seconds {
                let due = start + period * index as u32;
                while Instant::now() < due {
                    tokio::task::yield_now().await;
                }
                let (channel, body) = (channel.clone(), body.clone());
                calls.push(tokio::spawn(async move {
                    raw_call(channel, path, body).await.unwrap();
                    due.elapsed().as_secs_f64() * 1e6
                }));
            }
            let mut latencies = Vec::new();
            for call in calls {
                latencies.push(call.await.unwrap());
            }
            latencies
        })
    });
    let mut latencies = client.join().unwrap();
    latencies.sort_by(f64::total_cmp);
    latencies[((latencies.len() - 1) as f64 * 0.99) as usize]
}

#[derive(Default)]
struct Figures {
    pinned: Vec<f64>,
    unpinned: Vec<f64>,
    cpu_pinned: Vec<f64>,
    cpu_unpinned: Vec<f64>,
    p50: Vec<f64>,
    p99: Vec<f64>,
    p99_at_rate: Vec<f64>,
}

fn machine() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|line| line.starts_with("model name"))
                .and_then(|line| line.split_once(':'))
                .map(|(_, model)| model.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::fs::read_to_string("/proc/cpuinfo")
        .map(|text| {
            text.lines()
                .filter(|line| line.starts_with("processor"))
                .count()
        })
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned();
    format!("{model}, {cores} cores, Linux {kernel}")
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("constant-server") => return run_constant_server(),
        Some("spicedb-front") => return run_spicedb_front(&args[2]),
        _ => {}
    }
    let rounds = env_number("BENCH_ROUNDS", 5) as usize;
    let seconds = env_number("BENCH_SECONDS", 10);
    ensure_services(true);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    // The load generator (this process and h2load) on core 0.
    pin(std::process::id(), "0");
    let report = runtime.block_on(async {
        let database = TestDatabase::create(Backend::Postgres).await;
        let redis = std::env::var("ASSENT_TEST_REDIS_URL")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        let data = tempfile::tempdir().unwrap();
        let postgres = |log: &str| {
            vec![
                ("ASSENT_DATABASE_URL", database.url()),
                ("ASSENT_REDIS_URL", redis.clone()),
                (
                    "ASSENT_REDIS_ENTRY_KEY",
                    "the redis entry key of the benchmarks (32+ chars)".to_owned(),
                ),
                (
                    "ASSENT_REDIS_PREFIX",
                    format!("bench-{}-{log}", std::process::id()),
                ),
                ("ASSENT_DECISION_LOG", log.to_owned()),
            ]
        };
        let embedded = |name: &str, log: &str| {
            let directory = data.path().join(name);
            std::fs::create_dir_all(&directory).unwrap();
            vec![
                ("ASSENT_DATA_DIR", directory.to_str().unwrap().to_owned()),
                ("ASSENT_DECISION_LOG", log.to_owned()),
            ]
        };
        let wanted = |name: &str| {
            std::env::var("BENCH_TARGETS").map_or(true, |names| {
                name == "tonic constant" || names.split(';').any(|wanted| name == wanted.trim())
            })
        };
        let mut targets = vec![constant_target()];
        // The defaults: the embedded store, every decision logged.
        if wanted("assent, defaults") {
            targets.push(
                assent_target("assent, defaults", embedded("defaults", "all"), Ask::Full).await,
            );
        }
        if wanted("assent, defaults, bare answer") {
            targets.push(
                assent_target(
                    "assent, defaults, bare answer",
                    embedded("bare", "all"),
                    Ask::Bare,
                )
                .await,
            );
        }
        if wanted("tonic constant, ext_authz") {
            targets.push(constant_ext_authz_target());
        }
        if wanted("assent, defaults, ext_authz") {
            targets.push(
                assent_target(
                    "assent, defaults, ext_authz",
                    embedded("ext-authz", "all"),
                    Ask::ExtAuthz,
                )
                .await,
            );
        }
        if wanted("assent, embedded, log off") {
            targets.push(
                assent_target(
                    "assent, embedded, log off",
                    embedded("off", "off"),
                    Ask::Full,
                )
                .await,
            );
        }
        if wanted("assent, PostgreSQL + Redis") {
            targets.push(
                assent_target("assent, PostgreSQL + Redis", postgres("all"), Ask::Full).await,
            );
        }
        if wanted("assent, PostgreSQL + Redis, log off") {
            targets.push(
                assent_target(
                    "assent, PostgreSQL + Redis, log off",
                    postgres("off"),
                    Ask::Full,
                )
                .await,
            );
        }
        if let Ok(binary) = std::env::var("CERBOS_BIN")
            && wanted("Cerbos")
        {
            targets.push(cerbos_target(&binary));
        }
        if let Ok(library) = std::env::var("SPICEDB_LIB")
            && wanted("SpiceDB")
        {
            targets.push(spicedb_target(&library));
        }
        for target in &targets {
            verify(target).await;
        }
        let bodies = tempfile::tempdir().unwrap();
        let paths: Vec<_> = targets
            .iter()
            .map(|target| write_body(target, bodies.path()))
            .collect();
        let mut figures: Vec<Figures> = targets.iter().map(|_| Figures::default()).collect();
        for round in 0..rounds {
            for step in 0..targets.len() {
                let index = (round + step) % targets.len();
                let target = &targets[index];
                pin(target.pid(), "1");
                let pinned = measure(target, &paths[index], seconds);
                let (p50, p99) = low_load_latency(target, 3).await;
                let p99_at_rate = latency_at_rate(target, 1_000, 5);
                pin(target.pid(), "0,1");
                pin(std::process::id(), "0,1");
                let unpinned = measure(target, &paths[index], seconds);
                pin(std::process::id(), "0");
                println!(
                    "round {} {:>28}: pinned {:>8.0} req/s {:>6.1} µs CPU | unpinned {:>8.0} \
                     req/s {:>6.1} µs CPU | low load p50 {:>5.0} µs p99 {:>5.0} µs | p99 at \
                     1,000/s {:>5.0} µs",
                    round + 1,
                    target.name,
                    pinned.requests_per_second,
                    pinned.cpu_micros_per_request,
                    unpinned.requests_per_second,
                    unpinned.cpu_micros_per_request,
                    p50,
                    p99,
                    p99_at_rate
                );
                let entry = &mut figures[index];
                entry.pinned.push(pinned.requests_per_second);
                entry.cpu_pinned.push(pinned.cpu_micros_per_request);
                entry.unpinned.push(unpinned.requests_per_second);
                entry.cpu_unpinned.push(unpinned.cpu_micros_per_request);
                entry.p50.push(p50);
                entry.p99.push(p99);
                entry.p99_at_rate.push(p99_at_rate);
            }
        }
        let names: Vec<&str> = targets.iter().map(|target| target.name).collect();
        drop(targets);
        drop(database);
        report(&names, &figures, rounds, seconds)
    });
    println!("\n{report}");
    write_report(&report);
}

fn report(names: &[&str], figures: &[Figures], rounds: usize, seconds: u64) -> String {
    let medians: Vec<[f64; 7]> = figures
        .iter()
        .map(|entry| {
            [
                median(entry.pinned.clone()),
                median(entry.unpinned.clone()),
                median(entry.cpu_pinned.clone()),
                median(entry.cpu_unpinned.clone()),
                median(entry.p50.clone()),
                median(entry.p99.clone()),
                median(entry.p99_at_rate.clone()),
            ]
        })
        .collect();
    let constant = medians[0];
    let mut text = String::new();
    text.push_str(&format!(
        "Run of {} on {} ({rounds} rounds of {seconds} s, medians; h2load, one thread, 16 \
         connections × 8 streams; pinned: server on core 1, load on core 0).\n\n",
        today(),
        machine()
    ));
    text.push_str(
        "| target | requests/s pinned / unpinned | × constant (pinned) | server CPU µs/request \
         pinned / unpinned | × constant CPU (pinned) | low-load p50 / p99 µs | p99 at 1,000/s \
         µs |\n",
    );
    text.push_str("|---|---|---|---|---|---|---|\n");
    for (name, values) in names.iter().zip(&medians) {
        text.push_str(&format!(
            "| {name} | {:.0} / {:.0} | {:.2} | {:.1} / {:.1} | {:.2} | {:.0} / {:.0} | {:.0} \
             |\n",
            values[0],
            values[1],
            values[0] / constant[0],
            values[2],
            values[3],
            values[2] / constant[2],
            values[4],
            values[5],
            values[6],
        ));
    }
    let find = |name: &str| names.iter().position(|candidate| *candidate == name);
    if let Some(assent) = find("assent, defaults") {
        for peer in ["Cerbos", "SpiceDB"] {
            if let Some(peer_index) = find(peer) {
                text.push_str(&format!(
                    "\nassent (defaults) / {peer}: {:.1}× the requests/s pinned, {:.1}× \
                     unpinned, {:.1}× less CPU per request.",
                    medians[assent][0] / medians[peer_index][0],
                    medians[assent][1] / medians[peer_index][1],
                    medians[peer_index][2] / medians[assent][2],
                ));
            }
        }
        text.push('\n');
    }
    for (all, off) in [
        ("assent, defaults", "assent, embedded, log off"),
        (
            "assent, PostgreSQL + Redis",
            "assent, PostgreSQL + Redis, log off",
        ),
    ] {
        if let (Some(all), Some(off)) = (find(all), find(off)) {
            text.push_str(&format!(
                "\nDecision log `all` / `off` ({}): {:.2}× the requests/s pinned, {:.2}× \
                 unpinned, {:.2}× the CPU per request.",
                names[all],
                medians[all][0] / medians[off][0],
                medians[all][1] / medians[off][1],
                medians[all][2] / medians[off][2],
            ));
        }
    }
    if let (Some(bare), Some(full)) = (
        find("assent, defaults, bare answer"),
        find("assent, defaults"),
    ) {
        text.push_str(&format!(
            "\nBare / full answer (defaults): {:.2}× the requests/s pinned, {:.2}× unpinned, \
             {:.2}× the CPU per request.",
            medians[bare][0] / medians[full][0],
            medians[bare][1] / medians[full][1],
            medians[bare][2] / medians[full][2],
        ));
    }
    for (ext_authz_name, check_name) in [
        ("tonic constant, ext_authz", "tonic constant"),
        ("assent, defaults, ext_authz", "assent, defaults"),
    ] {
        if let (Some(ext_authz), Some(check)) = (find(ext_authz_name), find(check_name)) {
            let (ext_authz, check) = (&medians[ext_authz], &medians[check]);
            text.push_str(&format!(
                "\next_authz / Check ({check_name}): {:.2}× the requests/s pinned, {:.2}× \
                 unpinned, {:.2}× the CPU per request; low-load p50 {:.0} / {:.0} µs, p99 {:.0} \
                 / {:.0} µs.",
                ext_authz[0] / check[0],
                ext_authz[1] / check[1],
                ext_authz[2] / check[2],
                ext_authz[4],
                check[4],
                ext_authz[5],
                check[5],
            ));
        }
    }
    text.push('\n');
    text
}

fn today() -> String {
    let output = Command::new("date").args(["-u", "+%Y-%m-%d"]).output();
    output
        .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// Replaces the text between the markers of docs/benchmarks.md with `report`.
fn write_report(report: &str) {
    const BEGIN: &str = "<!-- compare:begin -->";
    const END: &str = "<!-- compare:end -->";
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/benchmarks.md");
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let replaced = match (text.find(BEGIN), text.find(END)) {
        (Some(begin), Some(end)) if begin < end => {
            format!("{}{BEGIN}\n{report}{}", &text[..begin], &text[end..])
        }
        _ => format!("{text}\n{BEGIN}\n{report}{END}\n"),
    };
    std::fs::write(&path, replaced).unwrap();
    println!("written to {}", path.display());
}
