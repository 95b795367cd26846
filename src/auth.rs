//! Who is calling, and what it may do.
//!
//! A caller proves who it is with a bearer token (a JWT verified here, against keys from a JWKS
//! file or, for development, an HS256 secret) or with a client certificate (mutual TLS; the
//! identity is the certificate's first URI or DNS subject alternative name). What it may do are
//! its scopes: the token's `scope` claim, or, for a certificate, the scopes configured for its
//! identity. Each RPC requires one scope; `admin` grants them all.
//!
//! Architecture Invariant: the checks here run before any handler (see [`AuthLayer`]), so a
//! refused call reads and writes nothing.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use http::Request;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::named::named_enum;
use crate::rpc::{Body, Call, Caller, Filter, Filtered, Inner, answer_after_request, take_ready};

named_enum! {
    /// What a caller may do. The names are the scope strings of tokens.
    pub enum Scope {
        /// Check, BatchCheck, StreamCheck.
        Check => "decisions:check",
        /// GetSubject, ConsentHistory.
        SubjectsRead => "subjects:read",
        /// Every write of `Subjects`.
        SubjectsWrite => "subjects:write",
        /// ListEvents, ListDecisions, VerifyChain, VerifyState, GetCheckpoint, the proofs,
        /// ExportSubject (SignCheckpoint and ErasePayloads need `admin`).
        AuditRead => "audit:read",
        /// Changes.Watch.
        ChangesWatch => "changes:watch",
        /// ListPolicies, GetPolicy, DiffPolicy (ApplyPolicy needs `admin`).
        PoliciesRead => "policies:read",
        /// GetRequest, ListRequests, ListOverdue.
        RightsRead => "rights:read",
        /// FileRequest, AdvanceRequest, ExtendRequest.
        RightsWrite => "rights:write",
        /// Retention.Query, Retention.Due.
        RetentionRead => "retention:read",
        /// Everything.
        Admin => "admin",
    }
}

impl Scope {
    const fn bit(self) -> u16 {
        1 << self as u16
    }
}

/// A set of scopes.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct Scopes(u16);

impl Scopes {
    /// The known scopes among space-separated names (OAuth 2.0 `scope`); unknown ones are
    /// ignored, as a token may carry scopes of other services.
    pub fn parse<'a>(names: impl IntoIterator<Item = &'a str>) -> Scopes {
        Scopes(
            names
                .into_iter()
                .filter_map(Scope::from_name)
                .fold(0, |bits, scope| bits | scope.bit()),
        )
    }

    pub fn allows(self, needed: Scope) -> bool {
        self.0 & (needed.bit() | Scope::Admin.bit()) != 0
    }

    /// Every scope: what a call has where no authentication is configured (loopback only,
    /// every caller trusted).
    pub const fn everything() -> Scopes {
        Scopes(Scope::Admin.bit())
    }

    /// The scopes of a call, as [`AuthLayer`] recorded them on it; none when it recorded none,
    /// so a handler asking for a second scope fails closed.
    pub fn of<T>(request: &tonic::Request<T>) -> Scopes {
        request
            .extensions()
            .get::<Scopes>()
            .copied()
            .unwrap_or_default()
    }
}

impl fmt::Debug for Scopes {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = Scope::ALL
            .iter()
            .filter(|scope| self.0 & scope.bit() != 0)
            .map(|scope| scope.as_str())
            .collect();
        write!(formatter, "{names:?}")
    }
}

/// What a call needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Requirement {
    /// Anyone (the gRPC health service, for load balancers and probes).
    Nobody,
    /// Any authenticated caller (reflection, and paths no service has, which then get
    /// UNIMPLEMENTED rather than a hint of what exists).
    Authenticated,
    Scope(Scope),
}

/// The requirement of a request path (`/assent.v1.Decisions/Check`).
pub fn requirement(path: &str) -> Requirement {
    let Some((service, method)) = path.trim_start_matches('/').split_once('/') else {
        return Requirement::Authenticated;
    };
    match service {
        // Envoy's ext_authz: a Check by another name.
        "assent.v1.Decisions" | "envoy.service.auth.v3.Authorization" => {
            Requirement::Scope(Scope::Check)
        }
        "assent.v1.Subjects" if matches!(method, "GetSubject" | "ConsentHistory") => {
            Requirement::Scope(Scope::SubjectsRead)
        }
        "assent.v1.Subjects" => Requirement::Scope(Scope::SubjectsWrite),
        "assent.v1.Audit" if matches!(method, "SignCheckpoint" | "ErasePayloads") => {
            Requirement::Scope(Scope::Admin)
        }
        "assent.v1.Audit" => Requirement::Scope(Scope::AuditRead),
        "assent.v1.Changes" => Requirement::Scope(Scope::ChangesWatch),
        "assent.v1.Policies" if method == "ApplyPolicy" => Requirement::Scope(Scope::Admin),
        "assent.v1.Policies" => Requirement::Scope(Scope::PoliciesRead),
        "assent.v1.Rights"
            if matches!(method, "FileRequest" | "AdvanceRequest" | "ExtendRequest") =>
        {
            Requirement::Scope(Scope::RightsWrite)
        }
        "assent.v1.Rights" => Requirement::Scope(Scope::RightsRead),
        "assent.v1.Retention" => Requirement::Scope(Scope::RetentionRead),
        "grpc.health.v1.Health" => Requirement::Nobody,
        _ => Requirement::Authenticated,
    }
}

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The token's `sub`, or the certificate's identity.
    pub name: String,
    pub scopes: Scopes,
}

/// Why a token was refused. Messages say what is wrong without echoing the token.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("the token is malformed")]
    Malformed,
    #[error("the token's algorithm {0} is not accepted")]
    Algorithm(String),
    #[error("no configured key matches the token")]
    UnknownKey,
    #[error("the token's signature is invalid")]
    Signature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token's issuer is not accepted")]
    Issuer,
    #[error("the token's audience is not accepted")]
    Audience,
    #[error("the token lacks the {0} claim")]
    MissingClaim(String),
}

/// How tokens are checked.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenSettings {
    /// A JWKS file (RS256 and ES256 public keys).
    pub jwks_file: Option<std::path::PathBuf>,
    /// A shared HS256 secret: for development, where no key infrastructure exists.
    pub hs256_secret: Option<String>,
    /// The required `iss`.
    pub issuer: String,
    /// The required `aud` (one of the token's audiences).
    pub audience: String,
    /// How far `exp` and `nbf` may be off (clock skew), in seconds.
    pub leeway_seconds: u64,
}

impl fmt::Debug for TokenSettings {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("TokenSettings")
            .field("jwks_file", &self.jwks_file)
            .field("hs256_secret", &self.hs256_secret.as_ref().map(|_| "***"))
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("leeway_seconds", &self.leeway_seconds)
            .finish()
    }
}

struct VerificationKey {
    kid: Option<String>,
    algorithm: Algorithm,
    key: DecodingKey,
}

/// Verifies bearer tokens locally (no call to the issuer per request).
pub struct TokenVerifier {
    keys: Vec<VerificationKey>,
    issuer: String,
    audience: String,
    leeway_seconds: u64,
}

impl fmt::Debug for TokenVerifier {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("TokenVerifier")
            .field("keys", &self.keys.len())
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish()
    }
}

#[derive(Deserialize)]
struct Claims {
    sub: Option<String>,
    scope: Option<ScopeClaim>,
    cnf: Option<Confirmation>,
}

/// RFC 8705 §3.1: the client certificate a token was issued for, by the base64url SHA-256 of
/// its DER.
#[derive(Deserialize)]
struct Confirmation {
    #[serde(rename = "x5t#S256")]
    certificate_thumbprint: Option<String>,
}

/// `scope` as OAuth 2.0 has it (one space-separated string) or as a list.
#[derive(Deserialize)]
#[serde(untagged)]
enum ScopeClaim {
    Text(String),
    List(Vec<String>),
}

impl TokenVerifier {
    /// Loads the keys the settings name.
    pub fn new(settings: &TokenSettings) -> Result<TokenVerifier, String> {
        let mut keys = Vec::new();
        if let Some(path) = &settings.jwks_file {
            keys.extend(load_jwks(path)?);
        }
        if let Some(secret) = &settings.hs256_secret {
            if secret.len() < 32 {
                return Err("jwt_hs256_secret: must be at least 32 characters".into());
            }
            keys.push(VerificationKey {
                kid: None,
                algorithm: Algorithm::HS256,
                key: DecodingKey::from_secret(secret.as_bytes()),
            });
        }
        if keys.is_empty() {
            return Err("jwt_jwks_file: no RS256 or ES256 key found, and no HS256 secret".into());
        }
        Ok(TokenVerifier {
            keys,
            issuer: settings.issuer.clone(),
            audience: settings.audience.clone(),
            leeway_seconds: settings.leeway_seconds,
        })
    }

    /// Verifies a token: signature by a configured key and algorithm, `iss`, `aud`, `exp` and
    /// `nbf` (within the leeway), and a `sub`.
    pub fn verify(&self, token: &str) -> Result<Identity, TokenError> {
        self.verify_bound(token).map(|(identity, _)| identity)
    }

    /// [`TokenVerifier::verify`], with the thumbprint of the certificate the token is bound to
    /// (its `cnf` claim), if it is.
    fn verify_bound(&self, token: &str) -> Result<(Identity, Option<String>), TokenError> {
        // `alg: none`, and algorithms the library does not know, fail here.
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        if !matches!(
            header.alg,
            Algorithm::RS256 | Algorithm::ES256 | Algorithm::HS256
        ) {
            return Err(TokenError::Algorithm(format!("{:?}", header.alg)));
        }
        let candidates = self.keys.iter().filter(|key| {
            key.algorithm == header.alg
                && match (&header.kid, &key.kid) {
                    (Some(wanted), Some(kid)) => wanted == kid,
                    _ => true,
                }
        });
        let mut outcome = Err(TokenError::UnknownKey);
        for candidate in candidates {
            let mut validation = Validation::new(candidate.algorithm);
            validation.set_issuer(&[&self.issuer]);
            validation.set_audience(&[&self.audience]);
            validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
            validation.validate_nbf = true;
            validation.leeway = self.leeway_seconds;
            match jsonwebtoken::decode::<Claims>(token, &candidate.key, &validation) {
                Ok(data) => {
                    outcome = Ok(data.claims);
                    break;
                }
                Err(error) => {
                    let error = token_error(&error);
                    // Another key may have signed it; any other failure is final.
                    let final_failure = error != TokenError::Signature;
                    outcome = Err(error);
                    if final_failure {
                        break;
                    }
                }
            }
        }
        let claims = outcome?;
        let name = claims
            .sub
            .filter(|sub| !sub.is_empty())
            .ok_or_else(|| TokenError::MissingClaim("sub".into()))?;
        let scopes = match &claims.scope {
            Some(ScopeClaim::Text(text)) => Scopes::parse(text.split_ascii_whitespace()),
            Some(ScopeClaim::List(list)) => Scopes::parse(list.iter().map(String::as_str)),
            None => Scopes::default(),
        };
        let bound_to = claims.cnf.and_then(|cnf| cnf.certificate_thumbprint);
        Ok((Identity { name, scopes }, bound_to))
    }
}

/// A certificate's RFC 8705 thumbprint: the SHA-256 of its DER, base64url without padding.
pub fn certificate_thumbprint(der: &[u8]) -> String {
    use base64::Engine as _;
    use sha2::Digest as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(der))
}

/// Under mutual TLS a token counts only from the certificate it was issued for: the one its
/// `cnf` claim names (RFC 8705) or, without one, a certificate whose identity is the token's
/// `sub`; and a token bound to a certificate counts only over a connection that presents it.
fn presented_by_its_holder(
    identity: &Identity,
    bound_to: Option<&str>,
    certificate: Option<&[u8]>,
) -> Result<(), tonic::Status> {
    let holder = match (bound_to, certificate) {
        (None, None) => true,
        (Some(thumbprint), Some(der)) => thumbprint == certificate_thumbprint(der),
        (None, Some(der)) => certificate_identity(der).as_deref() == Some(identity.name.as_str()),
        (Some(_), None) => false,
    };
    if holder {
        Ok(())
    } else {
        Err(tonic::Status::unauthenticated(
            "authorization: the token was not issued to the client certificate it came with",
        ))
    }
}

fn token_error(error: &jsonwebtoken::errors::Error) -> TokenError {
    use jsonwebtoken::errors::ErrorKind;
    match error.kind() {
        ErrorKind::InvalidSignature => TokenError::Signature,
        ErrorKind::ExpiredSignature => TokenError::Expired,
        ErrorKind::ImmatureSignature => TokenError::NotYetValid,
        ErrorKind::InvalidIssuer => TokenError::Issuer,
        ErrorKind::InvalidAudience => TokenError::Audience,
        ErrorKind::MissingRequiredClaim(claim) => TokenError::MissingClaim(claim.clone()),
        ErrorKind::InvalidAlgorithm => TokenError::Algorithm("mismatch".into()),
        _ => TokenError::Malformed,
    }
}

fn load_jwks(path: &Path) -> Result<Vec<VerificationKey>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| format!("jwt_jwks_file: cannot read {}: {error}", path.display()))?;
    let set: JwkSet = serde_json::from_str(&text)
        .map_err(|error| format!("jwt_jwks_file: {} is not a JWKS: {error}", path.display()))?;
    let mut keys = Vec::new();
    for jwk in &set.keys {
        use jsonwebtoken::jwk::AlgorithmParameters;
        let algorithm = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => Algorithm::RS256,
            AlgorithmParameters::EllipticCurve(parameters)
                if parameters.curve == jsonwebtoken::jwk::EllipticCurve::P256 =>
            {
                Algorithm::ES256
            }
            // Other key types are not accepted; they are skipped rather than refused, as a
            // shared JWKS may hold keys for other services.
            _ => continue,
        };
        let key = DecodingKey::from_jwk(jwk).map_err(|error| {
            format!(
                "jwt_jwks_file: key {:?} is invalid: {error}",
                jwk.common.key_id
            )
        })?;
        keys.push(VerificationKey {
            kid: jwk.common.key_id.clone(),
            algorithm,
            key,
        });
    }
    Ok(keys)
}

/// The identity a client certificate (DER) names: its first URI subject alternative name (a
/// SPIFFE id, say), else its first DNS name.
pub fn certificate_identity(der: &[u8]) -> Option<String> {
    use x509_parser::extensions::GeneralName;
    let (_, certificate) = x509_parser::parse_x509_certificate(der).ok()?;
    let names = certificate.subject_alternative_name().ok()??;
    let names = &names.value.general_names;
    names
        .iter()
        .find_map(|name| match name {
            GeneralName::URI(uri) => Some((*uri).to_owned()),
            _ => None,
        })
        .or_else(|| {
            names.iter().find_map(|name| match name {
                GeneralName::DNSName(dns) => Some((*dns).to_owned()),
                _ => None,
            })
        })
}

/// Parses `name=scope,scope;name=scope`: the scopes of callers known by their certificate.
pub fn parse_client_scopes(text: &str) -> Result<HashMap<String, Scopes>, String> {
    let mut map = HashMap::new();
    for entry in text
        .split(';')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
    {
        let (name, scopes) = entry
            .split_once('=')
            .ok_or_else(|| format!("expected NAME=SCOPE[,SCOPE], got {entry:?}"))?;
        let mut parsed = Vec::new();
        for scope in scopes.split(',').map(str::trim) {
            parsed.push(Scope::from_name(scope).ok_or_else(|| {
                format!(
                    "unknown scope {scope:?} for {name}; known: decisions:check, subjects:read, \
                     subjects:write, audit:read, admin"
                )
            })?);
        }
        map.insert(
            name.trim().to_owned(),
            Scopes::parse(parsed.iter().map(|scope| scope.as_str())),
        );
    }
    Ok(map)
}

/// Everything authentication needs at run time.
#[derive(Debug, Default)]
pub struct Authenticator {
    pub tokens: Option<TokenVerifier>,
    /// Scopes of callers identified by a client certificate.
    pub client_scopes: HashMap<String, Scopes>,
    /// Whether client certificates are verified (a client CA is configured).
    pub certificates: bool,
}

impl Authenticator {
    /// Whether any authentication is configured; without, every call is let through as the
    /// anonymous caller (allowed on loopback only).
    pub fn enabled(&self) -> bool {
        self.tokens.is_some() || self.certificates
    }

    /// Authenticates and authorizes a request: the identity to record, or the status to answer.
    pub fn check<B>(&self, request: &http::Request<B>) -> Result<Option<Identity>, tonic::Status> {
        if !self.enabled() {
            return Ok(None);
        }
        let needed = requirement(request.uri().path());
        if needed == Requirement::Nobody {
            return Ok(None);
        }
        let identity = self.identify(request)?;
        if let Requirement::Scope(scope) = needed
            && !identity.scopes.allows(scope)
        {
            return Err(tonic::Status::permission_denied(format!(
                "authorization: the caller {} lacks the scope {}",
                identity.name,
                scope.as_str()
            )));
        }
        Ok(Some(identity))
    }

    fn identify<B>(&self, request: &http::Request<B>) -> Result<Identity, tonic::Status> {
        let certificates = if self.certificates {
            request
                .extensions()
                .get::<tonic::transport::server::TlsConnectInfo<
                    tonic::transport::server::TcpConnectInfo,
                >>()
                .and_then(|info| info.peer_certs())
        } else {
            None
        };
        let certificate = certificates
            .as_deref()
            .and_then(|certificates| certificates.first())
            .map(|certificate| certificate.as_ref());
        if let Some(value) = request.headers().get(http::header::AUTHORIZATION) {
            let Some(verifier) = &self.tokens else {
                return Err(tonic::Status::unauthenticated(
                    "authorization: bearer tokens are not accepted here; use a client certificate",
                ));
            };
            let token = value
                .to_str()
                .ok()
                .and_then(|text| text.strip_prefix("Bearer "))
                .ok_or_else(|| {
                    tonic::Status::unauthenticated("authorization: expected \"Bearer TOKEN\"")
                })?;
            let (identity, bound_to) = verifier.verify_bound(token.trim()).map_err(|error| {
                tonic::Status::unauthenticated(format!("authorization: {error}"))
            })?;
            presented_by_its_holder(&identity, bound_to.as_deref(), certificate)?;
            return Ok(identity);
        }
        if let Some(certificate) = certificate {
            let name = certificate_identity(certificate).ok_or_else(|| {
                tonic::Status::unauthenticated(
                    "authorization: the client certificate names no URI or DNS identity",
                )
            })?;
            let scopes = self.client_scopes.get(&name).copied().unwrap_or_default();
            return Ok(Identity { name, scopes });
        }
        Err(tonic::Status::unauthenticated(
            "authorization: a bearer token (or a client certificate) is required",
        ))
    }
}

/// Authenticates every call before it reaches a service, and records the caller on it.
#[derive(Clone, Debug)]
pub struct AuthLayer {
    authenticator: Arc<Authenticator>,
}

impl AuthLayer {
    pub fn new(authenticator: Arc<Authenticator>) -> AuthLayer {
        AuthLayer { authenticator }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = Filtered<S, AuthLayer>;

    fn layer(&self, inner: S) -> Filtered<S, AuthLayer> {
        let filter = self.clone();
        Filtered { inner, filter }
    }
}

impl Filter for AuthLayer {
    fn call<S: Inner<B>, B: Body>(&self, inner: &mut S, mut request: Request<B>) -> Call<S, B> {
        match self.authenticator.check(&request) {
            Ok(identity) => {
                // The scopes travel with the call: a handler whose effect needs a second scope
                // (see `Scopes::of`) reads them.
                match identity {
                    Some(identity) => {
                        request.extensions_mut().insert(Caller(identity.name));
                        request.extensions_mut().insert(identity.scopes);
                    }
                    None if !self.authenticator.enabled() => {
                        request.extensions_mut().insert(Scopes::everything());
                    }
                    None => {}
                }
                Box::pin(take_ready(inner).call(request))
            }
            Err(status) => Box::pin(async move { Ok(answer_after_request(request, status).await) }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_grant_their_calls_and_admin_grants_all() {
        let gateway = Scopes::parse("decisions:check other:thing".split(' '));
        assert!(gateway.allows(Scope::Check));
        assert!(!gateway.allows(Scope::SubjectsWrite));
        let admin = Scopes::parse(["admin"]);
        assert!(Scope::ALL.iter().all(|scope| admin.allows(*scope)));
        assert!(!Scopes::default().allows(Scope::Check));
    }

    #[test]
    fn every_method_has_its_requirement() {
        assert_eq!(
            requirement("/assent.v1.Decisions/StreamCheck"),
            Requirement::Scope(Scope::Check)
        );
        assert_eq!(
            requirement("/envoy.service.auth.v3.Authorization/Check"),
            Requirement::Scope(Scope::Check)
        );
        assert_eq!(
            requirement("/assent.v1.Subjects/GetSubject"),
            Requirement::Scope(Scope::SubjectsRead)
        );
        assert_eq!(
            requirement("/assent.v1.Subjects/ConsentHistory"),
            Requirement::Scope(Scope::SubjectsRead)
        );
        assert_eq!(
            requirement("/assent.v1.Subjects/SetRestriction"),
            Requirement::Scope(Scope::SubjectsWrite)
        );
        assert_eq!(
            requirement("/assent.v1.Audit/VerifyChain"),
            Requirement::Scope(Scope::AuditRead)
        );
        assert_eq!(
            requirement("/assent.v1.Changes/Watch"),
            Requirement::Scope(Scope::ChangesWatch)
        );
        assert_eq!(
            requirement("/assent.v1.Policies/ApplyPolicy"),
            Requirement::Scope(Scope::Admin)
        );
        assert_eq!(
            requirement("/assent.v1.Policies/DiffPolicy"),
            Requirement::Scope(Scope::PoliciesRead)
        );
        for write in ["FileRequest", "AdvanceRequest", "ExtendRequest"] {
            assert_eq!(
                requirement(&format!("/assent.v1.Rights/{write}")),
                Requirement::Scope(Scope::RightsWrite)
            );
        }
        for read in ["GetRequest", "ListRequests", "ListOverdue"] {
            assert_eq!(
                requirement(&format!("/assent.v1.Rights/{read}")),
                Requirement::Scope(Scope::RightsRead)
            );
        }
        assert_eq!(
            requirement("/assent.v1.Retention/Due"),
            Requirement::Scope(Scope::RetentionRead)
        );
        assert_eq!(
            requirement("/grpc.health.v1.Health/Check"),
            Requirement::Nobody
        );
        assert_eq!(
            requirement("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"),
            Requirement::Authenticated
        );
        assert_eq!(requirement("garbage"), Requirement::Authenticated);
    }

    #[test]
    fn client_scopes_parse_and_name_bad_scopes() {
        let map = parse_client_scopes(
            "gateway.internal=decisions:check; billing=subjects:write,subjects:read",
        )
        .unwrap();
        assert!(map["gateway.internal"].allows(Scope::Check));
        assert!(map["billing"].allows(Scope::SubjectsRead));
        assert!(!map["billing"].allows(Scope::AuditRead));
        let error = parse_client_scopes("x=decisions:write").unwrap_err();
        assert!(error.contains("decisions:write"), "{error}");
        assert!(parse_client_scopes("x").is_err());
    }
}
