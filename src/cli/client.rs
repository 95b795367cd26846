//! The client subcommands: one gRPC call each (ListEvents --all follows pages).

use anyhow::{Context, anyhow};
use assent_client::{BearerToken, Client, Connection};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use super::output;
use super::{ActorArgs, AuditCommand, CheckArgs, ClientArgs, HealthArgs, PageArgs, SubjectCommand};
use crate::proto;
use crate::proto::audit_client::AuditClient;
use crate::proto::consistency::Requirement;
use crate::proto::subjects_client::SubjectsClient;

const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// One server's endpoint, with TLS when its address is https://.
fn endpoint(client: &ClientArgs, address: &str) -> anyhow::Result<Endpoint> {
    let mut endpoint = Endpoint::from_shared(address.to_owned())
        .with_context(|| format!("invalid server address {address:?}"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .initial_stream_window_size(crate::startup::HTTP2_STREAM_WINDOW)
        .initial_connection_window_size(crate::startup::HTTP2_CONNECTION_WINDOW);
    if address.starts_with("https://") {
        let read = |path: &std::path::Path| {
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
        };
        let ca_cert = client
            .ca_cert
            .as_deref()
            .context("--ca-cert: required to verify an https:// server")?;
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
    let channel = connected
        .with_context(|| format!("cannot reach the assent server: {}", refused.join("; ")))?;
    let token = match &client.token {
        Some(token) => {
            BearerToken::new(token.trim()).context("--token: not a valid header value")?
        }
        None => BearerToken::none(),
    };
    Ok(Client::new(channel).with_token(token))
}

/// A failed call as one line: "INVALID_ARGUMENT: subject_id: must not be empty".
pub(super) fn call_failed(status: tonic::Status) -> anyhow::Error {
    let code = format!("{:?}", status.code());
    let mut name = String::new();
    for (index, character) in code.chars().enumerate() {
        if character.is_uppercase() && index > 0 {
            name.push('_');
        }
        name.push(character.to_ascii_uppercase());
    }
    anyhow!("{name}: {}", status.message())
}

pub(super) fn print(client: &ClientArgs, json: serde_json::Value, text: String) {
    if client.json {
        println!("{json}");
    } else {
        println!("{text}");
    }
}

/// Follows a listing from `page_token`: `fetch` asks for one page, `show` prints it and answers
/// the next page's token, empty after the last. With `all` it goes on to the last page;
/// otherwise it stops after the first and says how to ask for the next.
pub(super) async fn follow_pages<Page>(
    client: &ClientArgs,
    page_token: String,
    all: bool,
    mut fetch: impl AsyncFnMut(String) -> Result<tonic::Response<Page>, tonic::Status>,
    mut show: impl FnMut(Page) -> String,
) -> anyhow::Result<()> {
    let mut token = page_token;
    loop {
        token = show(fetch(token).await.map_err(call_failed)?.into_inner());
        if token.is_empty() || !all {
            break;
        }
    }
    if !token.is_empty() {
        let more = serde_json::json!({"nextPageToken": token});
        print(client, more, format!("more: --page-token {token}"));
    }
    Ok(())
}

pub(super) fn actor(args: &ActorArgs) -> Option<proto::Actor> {
    Some(proto::Actor {
        operator_id: args.operator.clone(),
        reason: args.reason.clone(),
    })
}

pub async fn health(args: HealthArgs) -> anyhow::Result<()> {
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
    let status = tokio::time::timeout(timeout, ask)
        .await
        .map_err(|_| anyhow!("no answer from {} within {timeout:?}", args.client.server))??;
    let name = status.as_str_name();
    print(
        &args.client,
        serde_json::json!({ "status": name }),
        name.to_owned(),
    );
    if status != ServingStatus::Serving {
        return Err(anyhow!("{} is {name}", args.client.server));
    }
    Ok(())
}

pub async fn check(args: CheckArgs) -> anyhow::Result<()> {
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
    print(
        &args.client,
        output::check_json(&response),
        output::check_text(&response),
    );
    Ok(())
}

pub async fn subject(command: SubjectCommand) -> anyhow::Result<()> {
    if let SubjectCommand::ConsentHistory {
        subject,
        as_of,
        pages,
        client,
    } = command
    {
        return consent_history(subject, as_of, pages, client).await;
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
        print(
            client,
            output::subject_json(&response),
            output::subject_text(&response),
        );
        return Ok(());
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
    print(
        &client,
        output::write_json(&response),
        output::write_text(&response),
    );
    Ok(())
}

/// Prints a subject's consent records, one per line, following pages with `--all`.
async fn consent_history(
    subject: String,
    as_of: Option<std::time::SystemTime>,
    pages: PageArgs,
    client: ClientArgs,
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
    let show = |page: proto::ConsentHistoryResponse| {
        if page.records.is_empty() && !client.json {
            println!("(no consent records)");
        }
        for record in &page.records {
            print(
                &client,
                output::consent_json(record),
                output::consent_text(record),
            );
        }
        page.next_page_token
    };
    follow_pages(&client, pages.page_token, pages.all, fetch, show).await
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
            let choice = match choice.as_str() {
                "granted" => proto::Choice::Granted,
                "refused" => proto::Choice::Refused,
                _ => proto::Choice::Cleared,
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

pub async fn audit(command: AuditCommand) -> anyhow::Result<()> {
    match command {
        AuditCommand::List {
            subject,
            pages,
            client,
        } => {
            let mut audit = AuditClient::new(connect(&client).await?);
            let fetch = async |page_token| {
                let request = proto::ListEventsRequest {
                    subject_id: subject.clone(),
                    page_size: pages.page_size,
                    page_token,
                    newest_first: false,
                };
                audit.list_events(request).await
            };
            let show = |page: proto::ListEventsResponse| {
                for event in &page.events {
                    print(
                        &client,
                        output::event_json(event),
                        output::event_text(event),
                    );
                }
                page.next_page_token
            };
            follow_pages(&client, pages.page_token, pages.all, fetch, show).await
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
            let show = |page: proto::ListDecisionsResponse| {
                for recorded in &page.decisions {
                    print(
                        &client,
                        output::recorded_json(recorded),
                        output::recorded_text(recorded),
                    );
                }
                page.next_page_token
            };
            follow_pages(&client, pages.page_token, pages.all, fetch, show).await
        }
        AuditCommand::Verify { client } => {
            let mut audit = AuditClient::new(connect(&client).await?);
            let response = audit
                .verify_chain(proto::VerifyChainRequest {})
                .await
                .map_err(call_failed)?
                .into_inner();
            print(
                &client,
                output::verify_json(&response),
                output::verify_text(&response),
            );
            if response.ok {
                Ok(())
            } else {
                Err(anyhow!("audit chain verification failed"))
            }
        }
        AuditCommand::VerifyState { client } => {
            let mut audit = AuditClient::new(connect(&client).await?);
            let response = audit
                .verify_state(proto::VerifyStateRequest {})
                .await
                .map_err(call_failed)?
                .into_inner();
            print(
                &client,
                output::verify_state_json(&response),
                output::verify_state_text(&response),
            );
            if response.ok {
                Ok(())
            } else {
                Err(anyhow!("the state tables differ from the audit events"))
            }
        }
        _ => unreachable!("the other audit subcommands are in cli::audit"),
    }
}
