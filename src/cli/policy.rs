//! The `policy` and `changes` subcommands. `policy test` and `policy validate` work on files
//! alone; the others call a running server.

use anyhow::{Context, anyhow};
use serde_json::json;

use super::client::{actor, call_failed, connect, print};
use super::{ChangesCommand, PolicyCommand};
use crate::policy::CompiledPolicy;
use crate::proto;
use crate::proto::changes_client::ChangesClient;
use crate::proto::policies_client::PoliciesClient;
use crate::scenarios::{ScenarioFile, run_on_policy};

fn read(path: &std::path::Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

fn compile(path: &std::path::Path) -> anyhow::Result<CompiledPolicy> {
    CompiledPolicy::compile(&read(path)?).with_context(|| format!("{}", path.display()))
}

pub async fn policy(command: PolicyCommand) -> anyhow::Result<()> {
    match command {
        PolicyCommand::Apply {
            file,
            actor: actor_args,
            client,
        } => {
            let source = read(&file)?;
            let mut policies = PoliciesClient::new(connect(&client).await?);
            let response = policies
                .apply_policy(proto::ApplyPolicyRequest {
                    source,
                    actor: actor(&actor_args),
                })
                .await
                .map_err(call_failed)?
                .into_inner();
            let effective = super::output::time_text(response.effective_from.as_ref());
            let text = if response.changed {
                format!(
                    "applied policy version {}, in force from {effective} (revision {})",
                    response.version, response.revision
                )
            } else {
                format!("policy version {} was applied already", response.version)
            };
            print(
                &client,
                json!({
                    "version": response.version,
                    "effectiveFrom": effective,
                    "revision": response.revision,
                    "changed": response.changed,
                }),
                text,
            );
            Ok(())
        }
        PolicyCommand::List { client } => {
            let mut policies = PoliciesClient::new(connect(&client).await?);
            let response = policies
                .list_policies(proto::ListPoliciesRequest {})
                .await
                .map_err(call_failed)?
                .into_inner();
            for version in &response.versions {
                let in_force = version.version == response.in_force;
                let effective = super::output::time_text(version.effective_from.as_ref());
                print(
                    &client,
                    json!({
                        "version": version.version,
                        "effectiveFrom": effective,
                        "description": version.description,
                        "appliedAt": super::output::timestamp(version.applied_at.as_ref()),
                        "builtin": version.builtin,
                        "inForce": in_force,
                    }),
                    format!(
                        "{:<20} from {effective}{}{}  {}",
                        version.version,
                        if version.builtin { "  built-in" } else { "" },
                        if in_force { "  IN FORCE" } else { "" },
                        version.description
                    ),
                );
            }
            Ok(())
        }
        PolicyCommand::Get { version, client } => {
            let mut policies = PoliciesClient::new(connect(&client).await?);
            let response = policies
                .get_policy(proto::GetPolicyRequest { version })
                .await
                .map_err(call_failed)?
                .into_inner();
            print!("{}", response.source);
            Ok(())
        }
        PolicyCommand::Diff {
            old,
            new,
            examples,
            client,
        } => {
            let old_source = match old.as_str() {
                "in-force" => String::new(),
                path => read(std::path::Path::new(path))?,
            };
            let new_source = read(&new)?;
            let mut policies = PoliciesClient::new(connect(&client).await?);
            let response = policies
                .diff_policy(proto::DiffPolicyRequest {
                    old_source,
                    new_source,
                    max_examples: examples,
                })
                .await
                .map_err(call_failed)?
                .into_inner();
            if client.json {
                println!("{}", super::output::diff_json(&response));
            } else {
                print!("{}", super::output::diff_text(&response));
            }
            Ok(())
        }
        PolicyCommand::Test {
            file,
            scenarios,
            json,
        } => test(&file, &scenarios, json),
        PolicyCommand::Validate { file } => {
            let policy = compile(&file)?;
            println!(
                "{}: policy version {} is valid ({} rules), in force from {}",
                file.display(),
                policy.version(),
                policy.rule_ids().count(),
                super::output::time_text(Some(&crate::api::convert::timestamp(
                    policy.effective_from_micros()
                )))
            );
            Ok(())
        }
    }
}

/// Runs every scenario of a file against a policy file; an error when a check fails.
fn test(file: &std::path::Path, scenarios: &std::path::Path, json: bool) -> anyhow::Result<()> {
    let policy = compile(file)?;
    let vectors = ScenarioFile::parse(&read(scenarios)?)
        .map_err(|error| anyhow!("{}: {error}", scenarios.display()))?;
    let (mut passed, mut failed) = (0, 0);
    for scenario in &vectors.scenarios {
        let outcomes = run_on_policy(scenario, &policy)
            .map_err(|error| anyhow!("scenario {:?}: {error}", scenario.name))?;
        for outcome in outcomes {
            if outcome.passed() {
                passed += 1;
            } else {
                failed += 1;
            }
            if json {
                println!(
                    "{}",
                    json!({
                        "scenario": outcome.scenario,
                        "check": outcome.check_index,
                        "passed": outcome.passed(),
                        "expected": {
                            "decision": outcome.expected.decision,
                            "reason": outcome.expected.reason,
                            "rule": outcome.expected.rule,
                        },
                        "actual": {
                            "decision": outcome.actual.decision,
                            "reason": outcome.actual.reason,
                            "rule": outcome.actual.rule,
                        },
                    })
                );
            } else if !outcome.passed() {
                println!(
                    "FAIL {} (check {}): expected {} {} {}, got {} {} {}",
                    outcome.scenario,
                    outcome.check_index,
                    outcome.expected.decision,
                    outcome.expected.reason,
                    outcome.expected.rule,
                    outcome.actual.decision,
                    outcome.actual.reason,
                    outcome.actual.rule
                );
            }
        }
    }
    if !json {
        println!(
            "policy {}: {passed} checks passed, {failed} failed ({} scenarios)",
            policy.version(),
            vectors.scenarios.len()
        );
    }
    if failed > 0 {
        return Err(anyhow!("{failed} scenario checks failed"));
    }
    Ok(())
}

pub async fn changes(command: ChangesCommand) -> anyhow::Result<()> {
    let ChangesCommand::Watch {
        since,
        from_latest,
        purposes,
        heartbeats,
        limit,
        client,
    } = command;
    let mut changes = ChangesClient::new(connect(&client).await?);
    let mut stream = changes
        .watch(proto::WatchRequest {
            since_revision: since,
            purposes: purposes
                .iter()
                .map(|purpose| proto::Purpose::from(*purpose) as i32)
                .collect(),
            heartbeat_interval_ms: 0,
            from_latest,
        })
        .await
        .map_err(call_failed)?
        .into_inner();
    let mut seen = 0_u64;
    while let Some(message) = stream.message().await.map_err(call_failed)? {
        match message.event {
            Some(proto::watch_response::Event::Change(change)) => {
                print(
                    &client,
                    super::output::change_json(&change),
                    super::output::change_text(&change),
                );
                seen += 1;
                if limit.is_some_and(|limit| seen >= limit) {
                    break;
                }
            }
            Some(proto::watch_response::Event::Heartbeat(heartbeat)) if heartbeats => {
                let at = super::output::time_text(heartbeat.at.as_ref());
                print(
                    &client,
                    json!({"heartbeat": {"revision": heartbeat.revision, "at": at}}),
                    format!("heartbeat {} {at}", heartbeat.revision),
                );
            }
            _ => {}
        }
    }
    Ok(())
}
