//! The `policy` and `changes` subcommands. `policy test` and `policy validate` work on files
//! alone; the others call a running server.

use serde_json::json;

use super::client::{actor, call_failed, connect, lines};
use super::exit::CliError;
use super::output::{Output, out, time_text};
use super::{ChangesCommand, PolicyCommand};
use crate::policy::CompiledPolicy;
use crate::proto;
use crate::proto::changes_client::ChangesClient;
use crate::proto::policies_client::PoliciesClient;
use crate::scenarios::{ScenarioFile, run_on_policy};

fn read(path: &std::path::Path) -> Result<String, CliError> {
    std::fs::read_to_string(path)
        .map_err(|error| CliError::Usage(format!("cannot read {}: {error}", path.display())))
}

/// A policy file compiled; one that does not compile is a failed check (exit status 3).
fn compile(path: &std::path::Path) -> Result<CompiledPolicy, CliError> {
    CompiledPolicy::compile(&read(path)?).map_err(|error| {
        let error = anyhow::Error::new(error);
        CliError::CheckFailed(format!("{}: {error:#}", path.display()))
    })
}

pub async fn policy(command: PolicyCommand, output: Output) -> anyhow::Result<()> {
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
            output.message(&response, |response| {
                let effective = time_text(response.effective_from.as_ref());
                if response.changed {
                    format!(
                        "applied policy version {}, in force from {effective} (revision {})",
                        response.version, response.revision
                    )
                } else {
                    format!("policy version {} was applied already", response.version)
                }
            })
        }
        PolicyCommand::List { client } => {
            let mut policies = PoliciesClient::new(connect(&client).await?);
            let response = policies
                .list_policies(proto::ListPoliciesRequest {})
                .await
                .map_err(call_failed)?
                .into_inner();
            output.message(&response, |response| {
                lines(&response.versions, |version| {
                    format!(
                        "{:<20} from {}{}{}  {}",
                        version.version,
                        time_text(version.effective_from.as_ref()),
                        if version.builtin { "  built-in" } else { "" },
                        if version.version == response.in_force {
                            "  IN FORCE"
                        } else {
                            ""
                        },
                        version.description
                    )
                })
            })
        }
        PolicyCommand::Get { version, client } => {
            let mut policies = PoliciesClient::new(connect(&client).await?);
            let response = policies
                .get_policy(proto::GetPolicyRequest { version })
                .await
                .map_err(call_failed)?
                .into_inner();
            // The file's text as it was applied.
            output.message(&response, |response| response.source.clone())
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
            output.message(&response, super::output::diff_text)
        }
        PolicyCommand::Test { file, scenarios } => test(&file, &scenarios, output),
        PolicyCommand::Validate { file } => {
            let policy = compile(&file)?;
            let effective = time_text(Some(&crate::api::convert::timestamp(
                policy.effective_from_micros(),
            )));
            let rules = policy.rule_ids().count();
            output.value(
                json!({
                    "file": file,
                    "version": policy.version(),
                    "rules": rules,
                    "effective_from": effective,
                }),
                &format!(
                    "{}: policy version {} is valid ({rules} rules), in force from {effective}",
                    file.display(),
                    policy.version(),
                ),
            );
            Ok(())
        }
    }
}

/// Runs every scenario of a file against a policy file; a failed check (exit status 3) when one
/// of their checks fails. With `--json`, one line per check.
fn test(file: &std::path::Path, scenarios: &std::path::Path, output: Output) -> anyhow::Result<()> {
    let json = output.json;
    let policy = compile(file)?;
    let vectors = ScenarioFile::parse(&read(scenarios)?)
        .map_err(|error| CliError::Usage(format!("{}: {error}", scenarios.display())))?;
    let (mut passed, mut failed) = (0, 0);
    for scenario in &vectors.scenarios {
        let outcomes = run_on_policy(scenario, &policy)
            .map_err(|error| CliError::Usage(format!("scenario {:?}: {error}", scenario.name)))?;
        for outcome in outcomes {
            if outcome.passed() {
                passed += 1;
            } else {
                failed += 1;
            }
            if json {
                out!(
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
                out!(
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
        out!(
            "policy {}: {passed} checks passed, {failed} failed ({} scenarios)",
            policy.version(),
            vectors.scenarios.len()
        );
    }
    if failed > 0 {
        let message = format!("{failed} scenario checks failed");
        return Err(CliError::CheckFailed(message).into());
    }
    Ok(())
}

/// Prints every change (and heartbeat, with `--heartbeats`) as it comes: a line of text, or the
/// `WatchResponse` message.
pub async fn changes(command: ChangesCommand, output: Output) -> anyhow::Result<()> {
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
        match &message.event {
            Some(proto::watch_response::Event::Change(change)) => {
                output.message(&message, |_| super::output::change_text(change))?;
                seen += 1;
                if limit.is_some_and(|limit| seen >= limit) {
                    break;
                }
            }
            Some(proto::watch_response::Event::Heartbeat(heartbeat)) if heartbeats => {
                output.message(&message, |_| {
                    let at = time_text(heartbeat.at.as_ref());
                    format!("heartbeat {} {at}", heartbeat.revision)
                })?;
            }
            _ => {}
        }
    }
    Ok(())
}
