//! The gateway configurations of docs/gateways.md, checked: every YAML example parses; the
//! Envoy one is read as an `envoy.config.bootstrap.v3.Bootstrap` against the descriptors of
//! Envoy's own protos that the envoy-types crate is built from (every key known, every `@type`
//! resolved, every value of its field's type); the Kubernetes ones name the ext_authz keys
//! assent reads.

#[path = "support/metadata.rs"]
mod metadata;

use std::path::PathBuf;

use prost_reflect::{DescriptorPool, DynamicMessage};

const DOC: &str = include_str!("../docs/gateways.md");

/// The fenced blocks of `language` in the document, in order.
fn blocks(language: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut current: Option<String> = None;
    for line in DOC.lines() {
        match &mut current {
            None if line.trim() == format!("```{language}") => current = Some(String::new()),
            Some(block) if line.trim() == "```" => {
                found.push(std::mem::take(block));
                current = None;
            }
            Some(block) => {
                block.push_str(line);
                block.push('\n');
            }
            None => {}
        }
    }
    found
}

/// Every document of every YAML block, as JSON.
fn yaml_documents() -> Vec<serde_json::Value> {
    blocks("yaml")
        .iter()
        .flat_map(|block| {
            serde_yaml_ng::Deserializer::from_str(block)
                .map(|document| {
                    serde::Deserialize::deserialize(document)
                        .unwrap_or_else(|error| panic!("{error}\n{block}"))
                })
                .collect::<Vec<serde_json::Value>>()
        })
        .collect()
}

/// The descriptors envoy-types was generated from (`src/generated/types.bin` of the crate as
/// cargo fetched it).
fn envoy_descriptors() -> DescriptorPool {
    let metadata = metadata::workspace();
    let manifest = metadata["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|package| package["name"] == "envoy-types")
        .expect("envoy-types is a dependency")["manifest_path"]
        .as_str()
        .unwrap()
        .to_owned();
    let types = PathBuf::from(manifest)
        .parent()
        .unwrap()
        .join("src/generated/types.bin");
    DescriptorPool::decode(std::fs::read(&types).unwrap().as_slice()).unwrap()
}

#[test]
fn the_envoy_configuration_reads_as_an_envoy_bootstrap() {
    let pool = envoy_descriptors();
    let bootstrap = pool
        .get_message_by_name("envoy.config.bootstrap.v3.Bootstrap")
        .unwrap();
    let envoy: Vec<serde_json::Value> = yaml_documents()
        .into_iter()
        .filter(|document| document.get("static_resources").is_some())
        .collect();
    assert_eq!(
        envoy.len(),
        1,
        "one Envoy configuration in docs/gateways.md"
    );
    let message = DynamicMessage::deserialize(bootstrap, &envoy[0])
        .unwrap_or_else(|error| panic!("not an Envoy bootstrap: {error}"));
    // Read back, the ext_authz filter and its per-route settings are there, typed.
    let text = serde_json::to_string(&message).unwrap();
    for expected in [
        "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
        "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute",
        "\"metadataContextNamespaces\":[\"envoy.filters.http.jwt_authn\"]",
        "\"payloadInMetadata\":\"jwt_payload\"",
        "\"purpose\":\"model-training\"",
        "\"conversation_header\":\"x-conversation-id\"",
    ] {
        assert!(text.contains(expected), "{expected} not in {text}");
    }
    // failure_mode_allow is said, and false (read back, a false bool is its default, so it
    // would be written only where true).
    assert!(
        envoy[0]
            .to_string()
            .contains("\"failure_mode_allow\":false")
    );
    assert!(!text.contains("\"failureModeAllow\""));
}

/// A key the schema does not know is refused: the check above can fail.
#[test]
fn a_misspelt_envoy_key_is_refused() {
    let pool = envoy_descriptors();
    let bootstrap = pool
        .get_message_by_name("envoy.config.bootstrap.v3.Bootstrap")
        .unwrap();
    let envoy = yaml_documents()
        .into_iter()
        .find(|document| document.get("static_resources").is_some())
        .unwrap();
    let misspelt: serde_json::Value = serde_json::from_str(
        &envoy
            .to_string()
            .replace("failure_mode_allow", "failure_mode_allows"),
    )
    .unwrap();
    assert!(DynamicMessage::deserialize(bootstrap.clone(), &misspelt).is_err());
    let untyped: serde_json::Value = serde_json::from_str(&envoy.to_string().replace(
        "ext_authz.v3.ExtAuthzPerRoute",
        "ext_authz.v3.ExtAuthzPerRoutes",
    ))
    .unwrap();
    assert!(DynamicMessage::deserialize(bootstrap, &untyped).is_err());
}

#[test]
fn the_kubernetes_policies_name_what_assent_reads() {
    let known = ["purpose", "conversation_header", "source", "require_audit"];
    let policies: Vec<serde_json::Value> = yaml_documents()
        .into_iter()
        .filter(|document| document["kind"] == "SecurityPolicy")
        .collect();
    assert_eq!(policies.len(), 2);
    for policy in &policies {
        assert_eq!(policy["apiVersion"], "gateway.envoyproxy.io/v1alpha1");
        let ext_auth = &policy["spec"]["extAuth"];
        assert_eq!(ext_auth["failOpen"], false);
        assert_eq!(ext_auth["grpc"]["backendRefs"][0]["name"], "assent");
        let extensions = ext_auth["contextExtensions"].as_array().unwrap();
        assert!(
            extensions
                .iter()
                .any(|extension| extension["name"] == "purpose")
        );
        for extension in extensions {
            assert!(known.contains(&extension["name"].as_str().unwrap()));
            assert_eq!(extension["type"], "Value");
        }
        let claim = &policy["spec"]["jwt"]["providers"][0]["claimToHeaders"][0];
        assert_eq!(claim["header"], "x-user-id");
    }
    let routes: Vec<serde_json::Value> = yaml_documents()
        .into_iter()
        .filter(|document| document["kind"] == "AIGatewayRoute")
        .collect();
    assert_eq!(routes.len(), 1);
    // The policy attaches to the HTTPRoute named after the AIGatewayRoute.
    assert!(policies.iter().any(|policy| {
        policy["spec"]["targetRefs"][0]["name"] == routes[0]["metadata"]["name"]
            && policy["metadata"]["namespace"] == routes[0]["metadata"]["namespace"]
    }));
}

#[test]
fn the_assent_settings_of_the_guide_are_settings() {
    for block in blocks("toml") {
        let overrides: assent::config::Overrides = toml::from_str(&block).unwrap();
        assert_eq!(
            overrides.ext_authz_subject_claim.as_deref(),
            Some("jwt_payload.sub")
        );
    }
}
