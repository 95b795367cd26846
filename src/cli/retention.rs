//! The `retention` subcommands: the retention schedule of the policy version in force, asked of
//! a running server.

use super::RetentionCommand;
use super::client::{call_failed, connect};
use super::output::{self, Output};
use crate::proto;
use crate::proto::retention_client::RetentionClient;

pub async fn retention(command: RetentionCommand, output: Output) -> anyhow::Result<()> {
    match command {
        RetentionCommand::Query {
            category,
            subject,
            event_time,
            data_deleted_at,
            as_of,
            client,
        } => {
            let mut retention = RetentionClient::new(connect(&client).await?);
            let response = retention
                .query(proto::RetentionQueryRequest {
                    category: proto::DataCategory::from(category).into(),
                    subject_id: subject,
                    event_time: event_time.map(prost_types::Timestamp::from),
                    data_deleted_at: data_deleted_at.map(prost_types::Timestamp::from),
                    as_of: as_of.map(prost_types::Timestamp::from),
                })
                .await
                .map_err(call_failed)?
                .into_inner();
            output.message(&response, output::retention_text)
        }
        RetentionCommand::Due {
            category,
            before,
            page_size,
            page_token,
            all,
            client,
        } => {
            let mut retention = RetentionClient::new(connect(&client).await?);
            let mut request = proto::RetentionDueRequest {
                category: proto::DataCategory::from(category).into(),
                before: before.map(prost_types::Timestamp::from),
                page_size,
                page_token,
            };
            let mut answer = retention
                .due(request.clone())
                .await
                .map_err(call_failed)?
                .into_inner();
            // The token keeps the first page's instant for the others.
            while all && !answer.next_page_token.is_empty() {
                request.page_token = std::mem::take(&mut answer.next_page_token);
                let page = retention
                    .due(request.clone())
                    .await
                    .map_err(call_failed)?
                    .into_inner();
                answer.subjects.extend(page.subjects);
                answer.next_page_token = page.next_page_token;
            }
            output.message(&answer, output::due_text)?;
            if !answer.next_page_token.is_empty() {
                output.hint(&format!("more: --page-token {}", answer.next_page_token));
            }
            Ok(())
        }
    }
}
