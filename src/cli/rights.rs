//! The `rights` subcommands: file, follow and answer rights requests on a running server.

use super::RightsCommand;
use super::client::{actor, call_failed, connect, follow_pages, lines};
use super::output::{Output, time_text};
use crate::proto;
use crate::proto::rights_client::RightsClient;

pub async fn rights(command: RightsCommand, output: Output) -> anyhow::Result<()> {
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
            written(output, answer)
        }
        RightsCommand::Get { request_id, client } => {
            let mut rights = RightsClient::new(connect(&client).await?);
            let request = rights
                .get_request(proto::GetRightsRequest { request_id })
                .await
                .map_err(call_failed)?
                .into_inner();
            output.message(&request, request_text)
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
            follow_pages(output, String::new(), true, fetch, next_page, page_text).await
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
            follow_pages(output, String::new(), true, fetch, next_page, page_text).await
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
            written(output, answer)
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
            written(output, answer)
        }
    }
}

/// Prints the request a write answers (with `--json`, the whole answer).
fn written(
    output: Output,
    answer: Result<tonic::Response<proto::RightsWriteResponse>, tonic::Status>,
) -> anyhow::Result<()> {
    let response = answer.map_err(call_failed)?.into_inner();
    output.message(&response, |response| {
        response
            .request
            .as_ref()
            .map(request_text)
            .unwrap_or_default()
    })
}

fn next_page(page: &proto::ListRightsResponse) -> String {
    page.next_page_token.clone()
}

fn page_text(page: &proto::ListRightsResponse) -> String {
    lines(&page.requests, request_text)
}

/// A request in one line: its id, kind, state, subject, jurisdiction and deadline, then what
/// is out of the ordinary.
fn request_text(request: &proto::RightsRequest) -> String {
    let kind = request
        .kind()
        .as_str_name()
        .trim_start_matches("RIGHT_KIND_");
    let state = request.state().as_str_name();
    let state = state.trim_start_matches("REQUEST_STATE_");
    let regime = request.regime().as_str_name().trim_start_matches("REGIME_");
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
    text
}
