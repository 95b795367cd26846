//! The client subcommands: one gRPC call each (ListEvents --all follows pages).

use anyhow::Context;
use assent_client::{BearerToken, Client, Connection};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use super::exit::CliError;
use super::output::{self, Output};
use super::{
    ActorArgs, AuditCommand, CheckArgs, ChoiceValue, ClientArgs, HealthArgs, PageArgs,
    SubjectCommand,
};
use crate::proto;
use crate::proto::audit_client::AuditClient;
use crate::proto::consistency::Requirement;
use crate::proto::subjects_client::SubjectsClient;

const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// One server's endpoint, with TLS when its address is https://.
fn endpoint(client: &ClientArgs, address: &str) -> anyhow::Result<Endpoint> {
    let mut endpoint = Endpoint::from_shared(address.to_owned())
        .map_err(|_| CliError::Usage(format!("--server: invalid address {address:?}")))?
        .connect_timeout(CONNECT_TIMEOUT)
        .initial_stream_window_size(crate::startup::HTTP2_STREAM_WINDOW)
        .initial_connection_window_size(crate::startup::HTTP2_CONNECTION_WINDOW);
    if address.starts_with("https://") {
        let read = |path: &std::path::Path| {
            std::fs::read(path).map_err(|error| {
                CliError::Usage(format!("cannot read {}: {error}", path.display()))
            })
        };
        let ca_cert = client.ca_cert.as_deref().ok_or_else(|| {
            CliError::Usage("--ca-cert: required to verify an https:// server".into())
        })?;
        let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca_cert)?));
        if let (Some(cert), Some(key)) = (&client.client_cert, &client.client_key) {
            tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        if let Some(domain) = &client.tls_domain {
            tls = tls.domain_name(domain.clone());
        }
        endpoint = endpoint.tls_config(tls).context("cannot set up TLS")?;
    }
    Ok(endpoint)
}

/// A connection to the server, or to one of several replicas (`--server a,b,c`): a command
/// makes one call, so it connects to the replicas in turn from one picked at random (spreading
/// invocations over them) and uses the first that accepts.
pub(super) async fn connect(client: &ClientArgs) -> anyhow::Result<Connection> {
    Ok(client_of(client).await?.connection())
}

/// [`connect`], as a typed client (with its retries of calls that change nothing).
async fn client_of(client: &ClientArgs) -> anyhow::Result<Client> {
    let addresses: Vec<&str> = client.server.split(',').map(str::trim).collect();
    let first = std::process::id() as usize % addresses.len();
    let mut refused = Vec::new();
    let mut connected = None;
    for address in addresses.iter().cycle().skip(first).take(addresses.len()) {
        match endpoint(client, address)?.connect().await {
            Ok(channel) => {
                connected = Some(channel);
                break;
            }
            Err(error) => refused.push(format!("{address}: {error}")),
        }
    }
    let channel = connected.ok_or_else(|| {
        CliError::Unreachable(format!(
            "cannot reach the assent server: {}",
            refused.join("; ")
        ))
    })?;
    let token = match &client.token {
        Some(token) => BearerToken::new(token.trim())
            .map_err(|_| CliError::Usage("--token: not a valid header value".into()))?,
        None => BearerToken::none(),
    };
    Ok(Client::new(channel).with_token(token))
}

/// A call the server answered with an error status: its exit status follows from the code.
pub(super) fn call_failed(status: tonic::Status) -> anyhow::Error {
    CliError::Call(Box::new(status)).into()
}

/// Follows a listing from `page_token`: `fetch` asks for one page, printed as its message (JSON)
/// or as `text`; `next` is its next page's token, empty after the last. With `all` it goes on
/// to the last page; otherwise it stops after the first and says how to ask for the next.
pub(super) async fn follow_pages<Page: prost::Message>(
    output: Output,
    page_token: String,
    all: bool,
    mut fetch: impl AsyncFnMut(String) -> Result<tonic::Response<Page>, tonic::Status>,
    next: impl Fn(&Page) -> String,
    text: impl Fn(&Page) -> String,
) -> anyhow::Result<()> {
    let mut token = page_token;
    loop {
        let page = fetch(token).await.map_err(call_failed)?.into_inner();
        output.message(&page, &text)?;
        token = next(&page);
        if token.is_empty() || !all {
            break;
        }
    }
    if !token.is_empty() {
        output.hint(&format!("more: --page-token {token}"));
    }
    Ok(())
}

/// Each item's line of text, one after the other.
pub(super) fn lines<T>(items: &[T], line: impl Fn(&T) -> String) -> String {
    items.iter().map(line).collect::<Vec<_>>().join("\n")
}

pub(super) fn actor(args: &ActorArgs) -> Option<proto::Actor> {
    Some(proto::Actor {
        operator_id: args.operator.clone(),
        reason: args.reason.clone(),
    })
}

pub async fn health(args: HealthArgs, output: Output) -> anyhow::Result<()> {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;

    let timeout = std::time::Duration::from_millis(args.timeout_ms);
    let ask = async {
        let mut health = HealthClient::new(connect(&args.client).await?);
        let request = HealthCheckRequest {
            service: args.service.clone(),
        };
        health
            .check(request)
            .await
            .map_err(call_failed)
            .map(|response| response.into_inner().status())
    };
    let status = tokio::time::timeout(timeout, ask).await.map_err(|_| {
        CliError::Unreachable(format!(
            "no answer from {} within {timeout:?}",
            args.client.server
        ))
    })??;
    let name = status.as_str_name();
    // grpc.health.v1.HealthCheckResponse in the proto3 JSON mapping.
    output.value(serde_json::json!({ "status": name }), name);
    if status != ServingStatus::Serving {
        let message = format!("{} is {name}", args.client.server);
        return Err(CliError::Unreachable(message).into());
    }
    Ok(())
}

pub async fn check(args: CheckArgs, output: Output) -> anyhow::Result<()> {
    let client = client_of(&args.client).await?;
    let requirement = match (&args.at_least_as_fresh, args.fully_consistent) {
        (Some(token), _) => Some(Requirement::AtLeastAsFresh(token.clone())),
        (None, true) => Some(Requirement::FullyConsistent(true)),
        (None, false) => None,
    };
    let request = proto::CheckRequest {
        subject_id: args.subject,
        purpose: proto::Purpose::from(args.purpose) as i32,
        conversation_id: args.conversation,
        source: args
            .source
            .map_or(proto::Source::Unspecified, proto::Source::from) as i32,
        consistency: requirement.map(|requirement| proto::Consistency {
            requirement: Some(requirement),
        }),
        as_of: args.as_of.map(prost_types::Timestamp::from),
        ..Default::default()
    };
    // A check changes nothing: one that a replica left unanswered is tried again.
    let response = client.check(request).await.map_err(call_failed)?;
    output.message(&response, output::check_text)
}

pub async fn subject(command: SubjectCommand, output: Output) -> anyhow::Result<()> {
    if let SubjectCommand::ConsentHistory {
        subject,
        as_of,
        pages,
        client,
    } = command
    {
        return consent_history(subject, as_of, pages, client, output).await;
    }
    if let SubjectCommand::Get { subject, client } = &command {
        let mut subjects = SubjectsClient::new(connect(client).await?);
        let request = proto::GetSubjectRequest {
            subject_id: subject.clone(),
        };
        let response = subjects
            .get_subject(request)
            .await
            .map_err(call_failed)?
            .into_inner();
        return output.message(&response, output::subject_text);
    }
    let (client, call) = write_call(command);
    let mut subjects = SubjectsClient::new(connect(&client).await?);
    let response = match call {
        WriteCall::Upsert(request) => subjects.upsert_subject(request).await,
        WriteCall::Choice(request) => subjects.set_choice(request).await,
        WriteCall::Feedback(request) => subjects.record_feedback(request).await,
        WriteCall::Flag(request) => subjects.flag_conversation(request).await,
        WriteCall::Restrict(request) => subjects.set_restriction(request).await,
        WriteCall::Delete(request) => subjects.delete_subject(request).await,
    }
    .map_err(call_failed)?
    .into_inner();
    output.message(&response, output::write_text)
}

/// Prints a subject's consent records, a page at a time, following pages with `--all`.
async fn consent_history(
    subject: String,
    as_of: Option<std::time::SystemTime>,
    pages: PageArgs,
    client: ClientArgs,
    output: Output,
) -> anyhow::Result<()> {
    let mut subjects = SubjectsClient::new(connect(&client).await?);
    let fetch = async |page_token| {
        let request = proto::ConsentHistoryRequest {
            subject_id: subject.clone(),
            as_of: as_of.map(prost_types::Timestamp::from),
            page_size: pages.page_size,
            page_token,
        };
        subjects.consent_history(request).await
    };
    let text = |page: &proto::ConsentHistoryResponse| {
        if page.records.is_empty() {
            "(no consent records)".to_owned()
        } else {
            lines(&page.records, output::consent_text)
        }
    };
    let next = |page: &proto::ConsentHistoryResponse| page.next_page_token.clone();
    follow_pages(output, pages.page_token, pages.all, fetch, next, text).await
}

enum WriteCall {
    Upsert(proto::UpsertSubjectRequest),
    Choice(proto::SetChoiceRequest),
    Feedback(proto::RecordFeedbackRequest),
    Flag(proto::FlagConversationRequest),
    Restrict(proto::SetRestrictionRequest),
    Delete(proto::DeleteSubjectRequest),
}

fn write_call(command: SubjectCommand) -> (ClientArgs, WriteCall) {
    match command {
        SubjectCommand::Get { .. } | SubjectCommand::ConsentHistory { .. } => {
            unreachable!("GetSubject and ConsentHistory are not writes")
        }
        SubjectCommand::Upsert {
            subject,
            plan,
            jurisdiction,
            gpc,
            zero_data_retention,
            actor: actor_args,
            client,
        } => {
            let request = proto::UpsertSubjectRequest {
                subject_id: subject,
                plan: plan.map(|plan| proto::Plan::from(plan) as i32),
                jurisdiction,
                gpc,
                zero_data_retention,
                actor: actor(&actor_args),
            };
            (client, WriteCall::Upsert(request))
        }
        SubjectCommand::Choice {
            subject,
            purpose,
            choice,
            method,
            notice_version,
            expires_at,
            actor: actor_args,
            client,
        } => {
            let choice = match choice {
                ChoiceValue::Granted => proto::Choice::Granted,
                ChoiceValue::Refused => proto::Choice::Refused,
                ChoiceValue::Cleared => proto::Choice::Cleared,
            };
            let request = proto::SetChoiceRequest {
                subject_id: subject,
                purpose: proto::Purpose::from(purpose) as i32,
                choice: choice as i32,
                actor: actor(&actor_args),
                notice_version,
                method: method.map_or(
                    proto::ConsentMethod::Unspecified,
                    proto::ConsentMethod::from,
                ) as i32,
                expires_at: expires_at.map(prost_types::Timestamp::from),
            };
            (client, WriteCall::Choice(request))
        }
        SubjectCommand::Feedback {
            subject,
            conversation,
            rating,
            actor: actor_args,
            client,
        } => {
            let request = proto::RecordFeedbackRequest {
                subject_id: subject,
                conversation_id: conversation,
                rating: proto::Rating::from(rating) as i32,
                actor: actor(&actor_args),
            };
            (client, WriteCall::Feedback(request))
        }
        SubjectCommand::Flag {
            subject,
            conversation,
            kind,
            actor: actor_args,
            client,
        } => {
            let request = proto::FlagConversationRequest {
                subject_id: subject,
                conversation_id: conversation,
                kind: proto::FlagKind::from(kind) as i32,
                actor: actor(&actor_args),
            };
            (client, WriteCall::Flag(request))
        }
        SubjectCommand::Restrict {
            subject,
            lift,
            actor: actor_args,
            client,
        } => {
            let request = proto::SetRestrictionRequest {
                subject_id: subject,
                restricted: !lift,
                actor: actor(&actor_args),
            };
            (client, WriteCall::Restrict(request))
        }
        SubjectCommand::Delete {
            subject,
            actor: actor_args,
            client,
        } => {
            let request = proto::DeleteSubjectRequest {
                subject_id: subject,
                actor: actor(&actor_args),
            };
            (client, WriteCall::Delete(request))
        }
    }
}

pub async fn audit(command: AuditCommand, output: Output) -> anyhow::Result<()> {
    match command {
        AuditCommand::List {
            subject,
            newest_first,
            pages,
            client,
        } => {
            let mut audit = AuditClient::new(connect(&client).await?);
            let fetch = async |page_token| {
                let request = proto::ListEventsRequest {
                    subject_id: subject.clone(),
                    page_size: pages.page_size,
                    page_token,
                    newest_first,
                };
                audit.list_events(request).await
            };
            let text = |page: &proto::ListEventsResponse| lines(&page.events, output::event_text);
            let next = |page: &proto::ListEventsResponse| page.next_page_token.clone();
            follow_pages(output, pages.page_token, pages.all, fetch, next, text).await
        }
        AuditCommand::Decisions {
            subject,
            decision_id,
            from,
            until,
            pages,
            client,
        } => {
            let mut audit = AuditClient::new(connect(&client).await?);
            let fetch = async |page_token| {
                let request = proto::ListDecisionsRequest {
                    subject_id: subject.clone(),
                    decision_id: decision_id.clone(),
                    start_time: from.map(prost_types::Timestamp::from),
                    end_time: until.map(prost_types::Timestamp::from),
                    page_size: pages.page_size,
                    page_token,
                };
                audit.list_decisions(request).await
            };
            let text =
                |page: &proto::ListDecisionsResponse| lines(&page.decisions, output::recorded_text);
            let next = |page: &proto::ListDecisionsResponse| page.next_page_token.clone();
            follow_pages(output, pages.page_token, pages.all, fetch, next, text).await
        }
        AuditCommand::Verify { client } => {
            let mut audit = AuditClient::new(connect(&client).await?);
            let response = audit
                .verify_chain(proto::VerifyChainRequest {})
                .await
                .map_err(call_failed)?
                .into_inner();
            output.message(&response, output::verify_text)?;
            if response.ok {
                Ok(())
            } else {
                let message = "audit chain verification failed".to_owned();
                Err(CliError::CheckFailed(message).into())
            }
        }
        AuditCommand::VerifyState { client } => {
            let mut audit = AuditClient::new(connect(&client).await?);
            let response = audit
                .verify_state(proto::VerifyStateRequest {})
                .await
                .map_err(call_failed)?
                .into_inner();
            output.message(&response, output::verify_state_text)?;
            if response.ok {
                Ok(())
            } else {
                let message = "the state tables differ from the audit events".to_owned();
                Err(CliError::CheckFailed(message).into())
            }
        }
        _ => unreachable!("the other audit subcommands are in cli::audit"),
    }
}
