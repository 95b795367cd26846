//! The shared tier: Redis, in front of the store and behind every replica's memory, and the
//! channel replicas announce their changes on.
//!
//! A subject is kept under `PREFIX:subject:ID` as `"REVISION ENCODED"`, written only if no later
//! revision is there (a Lua script compares them), so a slow reader cannot overwrite a newer
//! entry. A replica that commits a change writes a tombstone `"REVISION -"` in its place (which
//! stops every older fill) and then publishes the change's announcement
//! ([`crate::store::ChangeNotice::announcement`]) on `PREFIX:changes`.
//!
//! Redis is an accelerator, never a dependency: every call has a short timeout, a failure makes
//! the replica leave Redis alone for a moment, and the connection is re-established in the
//! background. Answers then come from memory and the store.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::{Deserialize, Serialize};

use super::local::CachedSubject;
use crate::policy::{
    Choice, ConversationFacts, FlagKind, Plan, Purpose, Rating, Status, SubjectState,
};
use crate::revision::Revision;
use crate::store::{ChangeNotice, Changed, DatabaseUrl, SubjectSnapshot};

/// How long Redis is left alone after a failed call.
const BACKOFF: Duration = Duration::from_millis(500);

const GUARDED_SET: &str = r"
local current = redis.call('GET', KEYS[1])
if current then
  local revision = tonumber(string.match(current, '^(%d+)'))
  if revision and revision > tonumber(ARGV[1]) then return 0 end
end
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
return 1
";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SharedSettings {
    /// `redis://[:PASSWORD@]HOST:PORT[/DB]`; never printed with its password.
    pub url: DatabaseUrl,
    /// Namespace of the keys and channel, so several deployments can share one Redis.
    pub prefix: String,
    pub time_to_live: Duration,
    /// The longest a Redis call may take before the replica goes on without it.
    pub timeout: Duration,
}

pub struct SharedCache {
    client: redis::Client,
    connection: Mutex<Option<ConnectionManager>>,
    resting_until: Mutex<Option<Instant>>,
    settings: SharedSettings,
}

impl std::fmt::Debug for SharedCache {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("SharedCache")
            .field("prefix", &self.settings.prefix)
            .finish()
    }
}

/// What a Redis lookup found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SharedLookup {
    Hit(CachedSubject),
    /// Nothing there, a tombstone, or Redis did not answer.
    Miss,
}

impl SharedCache {
    /// Prepares the client; the connection is made on first use and re-made after failures.
    pub fn new(settings: SharedSettings) -> Result<SharedCache, redis::RedisError> {
        Ok(SharedCache {
            client: redis::Client::open(settings.url.expose())?,
            connection: Mutex::new(None),
            resting_until: Mutex::new(None),
            settings,
        })
    }

    pub fn channel(&self) -> String {
        format!("{}:changes", self.settings.prefix)
    }

    pub fn client(&self) -> &redis::Client {
        &self.client
    }

    fn key(&self, subject_id: &str) -> String {
        format!("{}:subject:{subject_id}", self.settings.prefix)
    }

    fn resting(&self) -> bool {
        let resting = self.resting_until.lock().unwrap_or_else(|e| e.into_inner());
        resting.is_some_and(|until| Instant::now() < until)
    }

    fn rest(&self, error: &dyn std::fmt::Display) {
        tracing::warn!(%error, "redis unavailable; going on without it for a moment");
        *self.resting_until.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(Instant::now() + BACKOFF);
        *self.connection.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// A connection, unless Redis is resting after a failure.
    async fn connection(&self) -> Option<ConnectionManager> {
        if self.resting() {
            return None;
        }
        if let Some(connection) = self
            .connection
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
        {
            return Some(connection);
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.settings.timeout))
            .set_response_timeout(Some(self.settings.timeout))
            .set_number_of_retries(1);
        let connecting = self.client.get_connection_manager_with_config(config);
        match tokio::time::timeout(self.settings.timeout * 4, connecting).await {
            Ok(Ok(connection)) => {
                *self.connection.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some(connection.clone());
                Some(connection)
            }
            Ok(Err(error)) => {
                self.rest(&error);
                None
            }
            Err(_) => {
                self.rest(&"connecting timed out");
                None
            }
        }
    }

    /// Runs one command with the timeout; a failure rests Redis.
    async fn call<T: redis::FromRedisValue>(&self, command: &redis::Cmd) -> Option<T> {
        let mut connection = self.connection().await?;
        match tokio::time::timeout(
            self.settings.timeout,
            command.query_async::<T>(&mut connection),
        )
        .await
        {
            Ok(Ok(value)) => Some(value),
            Ok(Err(error)) => {
                self.rest(&error);
                None
            }
            Err(_) => {
                self.rest(&"call timed out");
                None
            }
        }
    }

    /// Sets each `(subject, revision, value)` unless a later revision is there, in one
    /// pipeline. Returns whether Redis took them.
    async fn guarded_set(&self, entries: &[(&str, Revision, String)]) -> bool {
        if entries.is_empty() {
            return true;
        }
        let Some(mut connection) = self.connection().await else {
            return false;
        };
        let ttl = self.settings.time_to_live.as_secs().max(1);
        let mut pipeline = redis::pipe();
        for (subject_id, revision, value) in entries {
            pipeline
                .cmd("EVAL")
                .arg(GUARDED_SET)
                .arg(1)
                .arg(self.key(subject_id))
                .arg(revision.sequence())
                .arg(value)
                .arg(ttl)
                .ignore();
        }
        let timeout = self.settings.timeout * (1 + entries.len() as u32 / 100);
        match tokio::time::timeout(timeout, pipeline.query_async::<()>(&mut connection)).await {
            Ok(Ok(())) => true,
            Ok(Err(error)) => {
                self.rest(&error);
                false
            }
            Err(_) => {
                self.rest(&"call timed out");
                false
            }
        }
    }

    pub async fn get(&self, subject_id: &str) -> SharedLookup {
        let value: Option<Option<String>> =
            self.call(redis::cmd("GET").arg(self.key(subject_id))).await;
        let Some(Some(value)) = value else {
            return SharedLookup::Miss;
        };
        match decode(&value) {
            Some(entry) => SharedLookup::Hit(entry),
            None => SharedLookup::Miss,
        }
    }

    /// Shares an entry read from the store (unless a later revision is already there).
    pub async fn put(&self, subject_id: &str, entry: &CachedSubject) {
        let value = format!("{} {}", entry.revision.sequence(), encode(entry));
        self.guarded_set(&[(subject_id, entry.revision, value)])
            .await;
    }

    /// Puts tombstones in the place of changed subjects, so no replica reads an entry older
    /// than the change. Returns whether Redis took them.
    pub async fn tombstone(&self, changes: &[(&str, Revision)]) -> bool {
        let mut taken = true;
        for chunk in changes.chunks(500) {
            let entries: Vec<(&str, Revision, String)> = chunk
                .iter()
                .map(|(subject_id, revision)| {
                    (*subject_id, *revision, format!("{} -", revision.sequence()))
                })
                .collect();
            taken &= self.guarded_set(&entries).await;
        }
        taken
    }

    /// After a committed change: a tombstone in the subject's place, then the announcement.
    /// Without the tombstone there is no announcement either: the other replicas then learn the
    /// change from the change log, and put the tombstone there themselves.
    pub async fn announce(&self, changed: &Changed, revision: Revision) {
        if let Changed::Subject(subject_id) = changed
            && !self.tombstone(&[(subject_id.as_str(), revision)]).await
        {
            return;
        }
        let message = ChangeNotice {
            revision,
            changed: changed.clone(),
            at_micros: crate::store::now_micros(),
        }
        .announcement();
        let _: Option<i64> = self
            .call(redis::cmd("PUBLISH").arg(self.channel()).arg(message))
            .await;
    }

    pub fn time_to_live(&self) -> Duration {
        self.settings.time_to_live
    }
}

/// The wire form of an entry (names, not positions, so it survives reordering).
#[derive(Serialize, Deserialize)]
struct Wire {
    /// `null` for a subject never seen.
    subject: Option<WireSubject>,
    conversations: Vec<(String, Option<String>, bool, bool)>,
    complete: bool,
}

#[derive(Serialize, Deserialize)]
struct WireSubject {
    plan: Option<String>,
    status: String,
    gpc: bool,
    zero_data_retention: bool,
    choices: Vec<(String, String)>,
    /// When choices expire (purpose, microseconds since the epoch); absent from entries
    /// written before expiries were kept, which had none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    expiries: Vec<(String, i64)>,
}

fn encode(entry: &CachedSubject) -> String {
    let wire = Wire {
        subject: entry.subject.map(|state| WireSubject {
            plan: state.plan.map(|plan| plan.as_str().to_owned()),
            status: state.status.as_str().to_owned(),
            gpc: state.gpc,
            zero_data_retention: state.zero_data_retention,
            choices: state
                .choices
                .iter()
                .map(|(purpose, choice)| (purpose.as_str().to_owned(), choice.as_str().to_owned()))
                .collect(),
            expiries: state
                .expiries
                .iter()
                .map(|(purpose, expires_at)| (purpose.as_str().to_owned(), expires_at))
                .collect(),
        }),
        conversations: entry
            .conversations()
            .map(|(id, facts)| {
                (
                    id.to_string(),
                    facts.feedback.map(|rating| rating.as_str().to_owned()),
                    facts.automated_moderation,
                    facts.user_report,
                )
            })
            .collect(),
        complete: entry.is_complete(),
    };
    serde_json::to_string(&wire).expect("the wire form always serialises")
}

/// Decodes `"REVISION ENCODED"`; `None` for a tombstone or anything unreadable.
fn decode(value: &str) -> Option<CachedSubject> {
    let (revision, body) = value.split_once(' ')?;
    let revision = Revision::new(revision.parse().ok()?);
    if body == "-" {
        return None;
    }
    let wire: Wire = serde_json::from_str(body).ok()?;
    let subject = match wire.subject {
        None => None,
        Some(subject) => {
            let mut state = SubjectState {
                plan: match subject.plan {
                    Some(name) => Some(Plan::from_name(&name)?),
                    None => None,
                },
                status: Status::from_name(&subject.status)?,
                gpc: subject.gpc,
                zero_data_retention: subject.zero_data_retention,
                ..SubjectState::new()
            };
            for (purpose, choice) in subject.choices {
                state.choices.set(
                    Purpose::from_name(&purpose)?,
                    Some(Choice::from_name(&choice)?),
                );
            }
            for (purpose, expires_at) in subject.expiries {
                state
                    .expiries
                    .set(Purpose::from_name(&purpose)?, Some(expires_at));
            }
            Some(state)
        }
    };
    let mut conversations = Vec::with_capacity(wire.conversations.len());
    for (id, feedback, automated_moderation, user_report) in wire.conversations {
        let mut facts = ConversationFacts {
            feedback: match feedback {
                Some(name) => Some(Rating::from_name(&name)?),
                None => None,
            },
            ..Default::default()
        };
        if automated_moderation {
            facts.set_flag(FlagKind::AutomatedModeration);
        }
        if user_report {
            facts.set_flag(FlagKind::UserReport);
        }
        conversations.push((id, facts));
    }
    Some(CachedSubject::from_snapshot(SubjectSnapshot {
        subject,
        revision,
        conversations,
        complete: wire.complete,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_survive_the_wire() {
        let mut state = SubjectState {
            plan: Some(Plan::ApiPaid),
            gpc: true,
            ..SubjectState::new()
        };
        state.choices.set(Purpose::Memory, Some(Choice::Refused));
        state
            .choices
            .set(Purpose::AnalyticsCookies, Some(Choice::Granted));
        state
            .expiries
            .set(Purpose::AnalyticsCookies, Some(1_834_000_000_123_456));
        let facts = ConversationFacts {
            feedback: Some(Rating::ThumbsDown),
            user_report: true,
            ..Default::default()
        };
        let entry = CachedSubject::from_snapshot(SubjectSnapshot {
            subject: Some(state),
            revision: Revision::new(42),
            conversations: vec![("c-1".into(), facts)],
            complete: false,
        });
        let value = format!("42 {}", encode(&entry));
        assert_eq!(decode(&value), Some(entry));
        let unknown = CachedSubject::from_snapshot(SubjectSnapshot {
            subject: None,
            revision: Revision::new(7),
            conversations: vec![],
            complete: true,
        });
        assert_eq!(decode(&format!("7 {}", encode(&unknown))), Some(unknown));
        assert_eq!(decode("43 -"), None);
        assert_eq!(decode("garbage"), None);
    }

    #[test]
    fn entries_written_before_expiries_were_kept_still_decode() {
        let old = r#"9 {"subject":{"plan":"FREE","status":"ACTIVE","gpc":false,"zero_data_retention":false,"choices":[["MEMORY","REFUSED"]]},"conversations":[],"complete":true}"#;
        let entry = decode(old).expect("an entry of the earlier wire form");
        let state = entry.subject.unwrap();
        assert_eq!(state.choices.get(Purpose::Memory), Some(Choice::Refused));
        assert_eq!(state.expiries, Default::default());
        assert_eq!(entry.revision, Revision::new(9));
        // And an entry without expiries is written as before.
        assert!(!encode(&entry).contains("expiries"));
    }
}
