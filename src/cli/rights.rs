//! The `rights` subcommands: file, follow and answer rights requests on a running server.

use serde_json::json;

use super::client::{actor, call_failed, connect, follow_pages, print};
use super::output::{time_text, timestamp};
use super::{ClientArgs, RightsCommand};
use crate::proto;
use crate::proto::rights_client::RightsClient;

pub async fn rights(command: RightsCommand) -> anyhow::Result<()> {
    match command {
        RightsCommand::File {
            subject,
            kind,
            jurisdiction,
            received_at,
            identity_verified,
            purposes,
            actor: actor_args,
            client,
        } => {
            let mut rights = RightsClient::new(connect(&client).await?);
            let answer = rights
                .file_request(proto::FileRightsRequest {
                    subject_id: subject,
                    kind: proto::RightKind::from(kind) as i32,
                    jurisdiction,
                    received_at: received_at.map(prost_types::Timestamp::from),
                    identity_verified,
                    purposes: purposes
                        .into_iter()
                        .map(|purpose| proto::Purpose::from(purpose) as i32)
                        .collect(),
                    actor: actor(&actor_args),
                })
                .await;
            written(&client, answer)
        }
        RightsCommand::Get { request_id, client } => {
            let mut rights = RightsClient::new(connect(&client).await?);
            let request = rights
                .get_request(proto::GetRightsRequest { request_id })
                .await
                .map_err(call_failed)?
                .into_inner();
            show(&client, Some(&request));
            Ok(())
        }
        RightsCommand::List { subject, client } => {
            let mut rights = RightsClient::new(connect(&client).await?);
            let fetch = async |page_token| {
                let request = proto::ListRightsRequests {
                    subject_id: subject.clone(),
                    page_size: 1_000,
                    page_token,
                };
                rights.list_requests(request).await
            };
            let show = |page| show_page(&client, page);
            follow_pages(&client, String::new(), true, fetch, show).await
        }
        RightsCommand::Overdue { at, client } => {
            let mut rights = RightsClient::new(connect(&client).await?);
            let fetch = async |page_token| {
                let request = proto::ListOverdueRights {
                    at: at.map(prost_types::Timestamp::from),
                    page_size: 1_000,
                    page_token,
                };
                rights.list_overdue(request).await
            };
            let show = |page| show_page(&client, page);
            follow_pages(&client, String::new(), true, fetch, show).await
        }
        RightsCommand::Advance {
            request_id,
            state,
            identity_verified,
            refusal_reason,
            actor: actor_args,
            client,
        } => {
            let mut rights = RightsClient::new(connect(&client).await?);
            let answer = rights
                .advance_request(proto::AdvanceRightsRequest {
                    request_id,
                    state: proto::RequestState::from(state) as i32,
                    identity_verified,
                    reason: refusal_reason,
                    actor: actor(&actor_args),
                })
                .await;
            written(&client, answer)
        }
        RightsCommand::Extend {
            request_id,
            delay_reason,
            actor: actor_args,
            client,
        } => {
            let mut rights = RightsClient::new(connect(&client).await?);
            let answer = rights
                .extend_request(proto::ExtendRightsRequest {
                    request_id,
                    reason: delay_reason,
                    actor: actor(&actor_args),
                })
                .await;
            written(&client, answer)
        }
    }
}

/// Prints the request a write answers.
fn written(
    client: &ClientArgs,
    answer: Result<tonic::Response<proto::RightsWriteResponse>, tonic::Status>,
) -> anyhow::Result<()> {
    let response = answer.map_err(call_failed)?.into_inner();
    show(client, response.request.as_ref());
    Ok(())
}

/// Prints a page of requests and answers the next page's token.
fn show_page(client: &ClientArgs, page: proto::ListRightsResponse) -> String {
    for request in &page.requests {
        show(client, Some(request));
    }
    page.next_page_token
}

/// Prints a request: one line of text, or one JSON object.
fn show(client: &ClientArgs, request: Option<&proto::RightsRequest>) {
    let Some(request) = request else { return };
    // JSON carries the wire names, as every client command's does; text the short ones.
    let (kind_name, state_name, regime_name) = (
        request.kind().as_str_name(),
        request.state().as_str_name(),
        request.regime().as_str_name(),
    );
    let kind = kind_name.trim_start_matches("RIGHT_KIND_");
    let state = state_name.trim_start_matches("REQUEST_STATE_");
    let regime = regime_name.trim_start_matches("REGIME_");
    let purposes: Vec<&str> = request
        .purposes()
        .map(|purpose| purpose.as_str_name())
        .collect();
    let due = time_text(request.due_at.as_ref());
    let mut text = format!(
        "{}  {kind:<18} {state:<11} subject {}  {} ({regime})  due {due}",
        request.request_id, request.subject_id, request.jurisdiction
    );
    if request.overdue {
        text.push_str("  OVERDUE");
    }
    if request.extended {
        text.push_str("  extended");
    }
    if request.effect_applied {
        text.push_str("  effect applied");
    }
    if !request.refusal_reason.is_empty() {
        text.push_str(&format!("  refused: {}", request.refusal_reason));
    }
    print(
        client,
        json!({
            "requestId": request.request_id,
            "subjectId": request.subject_id,
            "kind": kind_name,
            "state": state_name,
            "jurisdiction": request.jurisdiction,
            "regime": regime_name,
            "receivedAt": timestamp(request.received_at.as_ref()),
            "identityVerified": request.identity_verified,
            "purposes": purposes,
            "dueAt": timestamp(request.due_at.as_ref()),
            "overdue": request.overdue,
            "extended": request.extended,
            "extensionReason": request.extension_reason,
            "appealed": request.appealed,
            "effectApplied": request.effect_applied,
            "refusalReason": request.refusal_reason,
            "answeredAt": timestamp(request.answered_at.as_ref()),
            "keptUntil": timestamp(request.kept_until.as_ref()),
            "revision": request.revision,
        }),
        text,
    );
}
