//! The shared tier: Redis, in front of the store and behind every replica's memory, and the
//! channel replicas announce their changes on.
//!
//! A subject is kept under `PREFIX:subject:HASH`, HASH a keyed hash of its id (so Redis holds no
//! subject id in clear), as `"REVISION WRITTEN_AT MAC ENCODED"`, written only if no later revision
//! is there (a Lua script compares them), so a slow reader cannot overwrite a newer entry. A
//! replica that commits a change writes a tombstone `"REVISION WRITTEN_AT MAC -"` in its place (which stops every older
//! fill) and then publishes the change's announcement
//! ([`crate::store::ChangeNotice::announcement`]) on `PREFIX:changes`.
//!
//! Whatever is read from Redis is untrusted bytes, parsed like a request ([`SharedCache::get`]).
//! MAC is HMAC-SHA-256 (16 bytes, in hex) under a key derived from `redis_entry_key`, over the
//! prefix, the subject id, the revision, the time written (WRITTEN_AT, microseconds) and the body:
//! a value written by anyone without the key, garbled, or copied from another subject's key (or
//! another deployment's prefix) fails it. A value that fails it, cannot be read, was written
//! longer ago than a value lives here (a genuine one recorded and put back), or claims a revision
//! above the highest this replica has seen the store commit is a [`SharedLookup::Rejected`]: the
//! caller reads the store, and puts its entry in the place of the exact value it rejected
//! ([`SharedCache::replace`]; a forged revision would otherwise stop every later guarded write).
//! A genuine value put back within its lifetime, older than a change of its subject, is refused
//! by the replica's memory of recent changes (`LocalCache::insert`, which remembers them as long
//! as a value here may be used, and is filled at start from the store).
//!
//! Announcements on the channel are hints: they may make a replica look at the store sooner, and
//! nothing more (see [`super::SubjectCache`]).
//!
//! Redis is an accelerator, never a dependency: every call has a short timeout, a failure makes
//! the replica leave Redis alone for a moment, and the connection is re-established in the
//! background. Answers then come from memory and the store.
//!
//! Redis is one node (a primary, perhaps behind an address that moves to its replica on
//! failover), the primary that Redis Sentinel names (a `redis+sentinel://` URL: asked again
//! after each failure), or a Redis Cluster (`redis_cluster`, the URL a comma-separated list of
//! seed nodes).
//! Every command touches one key, so a cluster routes it by that key's slot; a batch of guarded
//! sets is split into one pipeline per slot, sent side by side. Announcements use classic
//! pub/sub, which a cluster delivers to the subscribers of every node, so the listener
//! subscribes on any one node and moves to the next seed when it loses it.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use redis::IntoConnectionInfo;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::Slot;
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::Rejection;
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

/// Sets the key only if it still holds exactly the value that was rejected: a value with a
/// forged revision would stop [`GUARDED_SET`] for good, and a genuine one written meanwhile must
/// not be overwritten.
const COMPARE_AND_SET: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
  return 1
end
return 0
";

/// How many bytes of the HMAC a value carries (in hex, twice as many characters).
const MAC_BYTES: usize = 16;
/// How many bytes of the keyed hash of a subject id its key carries.
const KEY_HASH_BYTES: usize = 16;

/// The key that authenticates what replicas write to Redis, shared by the replicas of one
/// deployment (`redis_entry_key`). A secret: whoever has it can write values every replica
/// accepts, so it never prints.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisEntryKey(String);

impl RedisEntryKey {
    /// The fewest characters a configured key may have.
    pub const MIN_LENGTH: usize = 32;

    pub fn new(key: impl Into<String>) -> RedisEntryKey {
        RedisEntryKey(key.into())
    }

    /// The key used with a Redis on loopback when none is configured: derived from a constant
    /// that is public (it is in this source), so that the replicas of a development machine
    /// agree. It protects against nothing but accidents (a garbled value, a value copied from
    /// another subject's key or another prefix); anyone who can write to that Redis can compute
    /// it.
    pub fn loopback() -> RedisEntryKey {
        RedisEntryKey("assent: an entry key for a Redis on loopback, which protects nothing".into())
    }

    fn derive(&self, purpose: &[u8]) -> Hmac<Sha256> {
        let mut derivation = Hmac::<Sha256>::new_from_slice(self.0.as_bytes())
            .expect("HMAC takes a key of any length");
        derivation.update(purpose);
        let derived = derivation.finalize().into_bytes();
        Hmac::<Sha256>::new_from_slice(&derived).expect("HMAC takes a key of any length")
    }
}

impl std::fmt::Debug for RedisEntryKey {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("RedisEntryKey(***)")
    }
}

/// The two keys derived from the entry key: one for the values' MAC, one for the keyed hash of
/// subject ids in key names (never the span's subject hash key: the hashes in Redis and in
/// traces cannot be matched with each other).
#[derive(Clone)]
struct Sealing {
    mac: Hmac<Sha256>,
    key_hash: Hmac<Sha256>,
}

impl Sealing {
    fn new(key: &RedisEntryKey) -> Sealing {
        Sealing {
            mac: key.derive(b"assent redis entry mac v1"),
            key_hash: key.derive(b"assent redis key hash v1"),
        }
    }

    /// The MAC of a value: over each part with its length, so no two tuples share their bytes.
    fn mac(
        &self,
        prefix: &str,
        subject_id: &str,
        revision: Revision,
        written_at: i64,
        body: &str,
    ) -> Hmac<Sha256> {
        let mut mac = self.mac.clone();
        for part in [prefix.as_bytes(), subject_id.as_bytes()] {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac.update(&revision.sequence().to_be_bytes());
        mac.update(&written_at.to_be_bytes());
        mac.update(body.as_bytes());
        mac
    }

    /// `"REVISION WRITTEN_AT MAC BODY"`, WRITTEN_AT in microseconds since the epoch.
    fn seal(
        &self,
        prefix: &str,
        subject_id: &str,
        revision: Revision,
        written_at: i64,
        body: &str,
    ) -> String {
        let tag = self
            .mac(prefix, subject_id, revision, written_at, body)
            .finalize()
            .into_bytes();
        format!(
            "{} {written_at} {} {body}",
            revision.sequence(),
            hex::encode(&tag[..MAC_BYTES])
        )
    }

    /// The revision, the time written and the body of a value sealed for this subject under
    /// this prefix.
    fn open<'v>(
        &self,
        prefix: &str,
        subject_id: &str,
        value: &'v str,
    ) -> Result<(Revision, i64, &'v str), Rejection> {
        let mut parts = value.splitn(4, ' ');
        let (Some(revision), Some(written_at), Some(tag), Some(body)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(Rejection::Unreadable);
        };
        let written_at = written_at
            .parse::<i64>()
            .ok()
            .filter(|micros| *micros >= 0 && micros.to_string() == written_at)
            .ok_or(Rejection::Unreadable)?;
        // One spelling of each: digits without a leading zero, lower-case hex.
        let revision = revision
            .parse::<u64>()
            .ok()
            .filter(|sequence| sequence.to_string() == revision)
            .map(Revision::new)
            .ok_or(Rejection::Unreadable)?;
        let tag = Some(tag)
            .filter(|tag| {
                tag.bytes()
                    .all(|byte| matches!(byte, b'0'..=b'9' | b'a'..=b'f'))
            })
            .and_then(|tag| hex::decode(tag).ok())
            .filter(|tag| tag.len() == MAC_BYTES)
            .ok_or(Rejection::Unreadable)?;
        self.mac(prefix, subject_id, revision, written_at, body)
            .verify_truncated_left(&tag)
            .map_err(|_| Rejection::Mac)?;
        Ok((revision, written_at, body))
    }

    /// The keyed hash that stands for a subject id in key names: 32 hex characters.
    fn key_hash(&self, subject_id: &str) -> String {
        let mut hash = self.key_hash.clone();
        hash.update(subject_id.as_bytes());
        hex::encode(&hash.finalize().into_bytes()[..KEY_HASH_BYTES])
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SharedSettings {
    /// `redis://[:PASSWORD@]HOST:PORT[/DB]`; never printed with its password. For a cluster,
    /// the seed nodes' URLs separated by commas.
    pub url: DatabaseUrl,
    /// Whether Redis is a Redis Cluster (`redis_cluster`).
    pub cluster: bool,
    /// Namespace of the keys and channel, so several deployments can share one Redis.
    pub prefix: String,
    pub time_to_live: Duration,
    /// The longest a Redis call may take before the replica goes on without it.
    pub timeout: Duration,
    /// What authenticates the values and hashes the subject ids in key names.
    pub entry_key: RedisEntryKey,
}

impl SharedSettings {
    /// How long after it was written a value may be used: its time to live, and the clock skew
    /// between replicas allowed for.
    pub fn longest_use(&self) -> Duration {
        self.time_to_live + CLOCK_SKEW
    }
}

/// The clock skew between replicas that the time a value was written allows for.
const CLOCK_SKEW: Duration = Duration::from_secs(60);

pub struct SharedCache {
    /// The one node, or a cluster's seed nodes (the announcement channel is listened to on
    /// one of them).
    nodes: Vec<redis::Client>,
    /// A cluster's client, which learns the other nodes, and which slots each serves, from the
    /// seeds.
    cluster: Option<ClusterClient>,
    /// The sentinels that name the current primary, when `redis_url` is a sentinel URL.
    sentinel: Option<tokio::sync::Mutex<SentinelClient>>,
    connection: Mutex<Option<Connection>>,
    resting_until: Mutex<Option<Instant>>,
    sealing: Sealing,
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
    /// A value that must not be used: the store is read, and its entry put in this value's
    /// place ([`SharedCache::replace`]).
    Rejected(Rejected),
}

/// A value read from Redis and refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejected {
    pub reason: Rejection,
    /// The revision it claims, when it names one above what this replica has seen committed.
    pub claimed: Option<Revision>,
    /// The value as read, for the compare-and-set that replaces it.
    value: Vec<u8>,
}

impl Rejected {
    /// Whether the value was bad, knowing the subject's revision read from the store after it:
    /// a genuine value is never later than what a later store read sees, so only a revision
    /// claimed beyond that one is a forgery (below it, a change this replica had not applied
    /// yet).
    pub fn forged(&self, store_revision: Revision) -> bool {
        match self.reason {
            Rejection::FutureRevision => {
                self.claimed.is_some_and(|claimed| claimed > store_revision)
            }
            _ => true,
        }
    }
}

/// A connection of either kind; each re-connects on its own, a cluster's follows its slots.
#[derive(Clone)]
enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Connection {
    async fn query<T: redis::FromRedisValue>(
        &mut self,
        command: &redis::Cmd,
    ) -> redis::RedisResult<T> {
        match self {
            Connection::Single(connection) => command.query_async(connection).await,
            Connection::Cluster(connection) => command.query_async(connection).await,
        }
    }

    async fn run(&mut self, pipeline: &redis::Pipeline) -> redis::RedisResult<()> {
        match self {
            Connection::Single(connection) => pipeline.query_async(connection).await,
            Connection::Cluster(connection) => pipeline.query_async(connection).await,
        }
    }
}

/// The seed nodes' URLs of a cluster's `redis_url`.
pub fn seed_urls(url: &str) -> impl Iterator<Item = &str> {
    url.split(',')
        .map(str::trim)
        .filter(|seed| !seed.is_empty())
}

/// A `redis+sentinel://[[USER]:PASSWORD@]HOST:PORT[,HOST:PORT…]/MASTER[/DB]` URL
/// (`rediss+sentinel://` for TLS to the sentinels and the nodes): the sentinels to ask for the
/// current primary of the set named MASTER. The user and password are the nodes'; the sentinels
/// are asked without them.
pub struct SentinelUrl<'u> {
    /// `HOST:PORT` of each sentinel.
    pub sentinels: Vec<&'u str>,
    pub master: &'u str,
    pub tls: bool,
    userinfo: Option<&'u str>,
    database: &'u str,
}

impl<'u> SentinelUrl<'u> {
    pub const SCHEMES: [&'static str; 2] = ["redis+sentinel://", "rediss+sentinel://"];

    /// `None` for a URL of another scheme; an error (never naming the password) for a
    /// malformed one.
    pub fn parse(url: &'u str) -> Option<Result<SentinelUrl<'u>, &'static str>> {
        let (tls, rest) = match url.strip_prefix(Self::SCHEMES[0]) {
            Some(rest) => (false, rest),
            None => (true, url.strip_prefix(Self::SCHEMES[1])?),
        };
        Some(Self::parse_rest(tls, rest))
    }

    fn parse_rest(tls: bool, rest: &'u str) -> Result<SentinelUrl<'u>, &'static str> {
        let expected = "expected redis+sentinel://[:PASSWORD@]HOST:PORT[,HOST:PORT...]/MASTER[/DB]";
        let (authority, path) = rest.split_once('/').ok_or(expected)?;
        let (userinfo, hosts) = match authority.rsplit_once('@') {
            Some((userinfo, hosts)) => (Some(userinfo), hosts),
            None => (None, authority),
        };
        let sentinels: Vec<&str> = hosts.split(',').map(str::trim).collect();
        if sentinels
            .iter()
            .any(|host| host.is_empty() || host.contains(['?', '#']))
        {
            return Err(expected);
        }
        let (master, database) = path.split_once('/').unwrap_or((path, "0"));
        let named = |text: &str| {
            !text.is_empty()
                && text
                    .bytes()
                    .all(|byte| byte.is_ascii_alphanumeric() || b"._-".contains(&byte))
        };
        if !named(master) || database.parse::<u16>().is_err() {
            return Err(expected);
        }
        Ok(SentinelUrl {
            sentinels,
            master,
            tls,
            userinfo,
            database,
        })
    }

    fn client(&self) -> Result<SentinelClient, redis::RedisError> {
        let scheme = if self.tls { "rediss" } else { "redis" };
        let sentinels: Vec<String> = self
            .sentinels
            .iter()
            .map(|host| format!("{scheme}://{host}"))
            .collect();
        // The nodes' user, password and database, decoded by the crate's own URL parser.
        let userinfo = self
            .userinfo
            .map_or(String::new(), |userinfo| format!("{userinfo}@"));
        let node = format!(
            "{scheme}://{userinfo}{}/{}",
            self.sentinels[0], self.database
        )
        .as_str()
        .into_connection_info()?;
        let mut nodes = SentinelNodeConnectionInfo::default()
            .set_redis_connection_info(node.redis_settings().clone());
        if self.tls {
            nodes = nodes.set_tls_mode(redis::TlsMode::Secure);
        }
        SentinelClient::build(
            sentinels,
            self.master,
            Some(nodes),
            SentinelServerType::Master,
        )
    }
}

impl SharedCache {
    /// Prepares the client; the connection is made on first use and re-made after failures.
    pub fn new(settings: SharedSettings) -> Result<SharedCache, redis::RedisError> {
        let sentinel = match SentinelUrl::parse(settings.url.expose()) {
            Some(Ok(url)) => Some(tokio::sync::Mutex::new(url.client()?)),
            Some(Err(message)) => {
                return Err(redis::RedisError::from((
                    redis::ErrorKind::InvalidClientConfig,
                    message,
                )));
            }
            None => None,
        };
        let urls: Vec<&str> = if settings.cluster {
            seed_urls(settings.url.expose()).collect()
        } else if sentinel.is_some() {
            Vec::new()
        } else {
            vec![settings.url.expose()]
        };
        let nodes = urls
            .iter()
            .map(|url| redis::Client::open(*url))
            .collect::<Result<Vec<_>, _>>()?;
        if nodes.is_empty() && sentinel.is_none() {
            return Err(redis::RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "no redis node",
            )));
        }
        let cluster = if settings.cluster {
            let client = ClusterClientBuilder::new(urls)
                .connection_timeout(settings.timeout)
                .response_timeout(settings.timeout)
                // A MOVED answer (a failover, a slot migrated) is followed once or twice; the
                // call's own timeout bounds the whole.
                .retries(2)
                .min_retry_wait(10)
                .max_retry_wait(100)
                .build()?;
            Some(client)
        } else {
            None
        };
        Ok(SharedCache {
            nodes,
            cluster,
            sentinel,
            connection: Mutex::new(None),
            resting_until: Mutex::new(None),
            sealing: Sealing::new(&settings.entry_key),
            settings,
        })
    }

    pub fn channel(&self) -> String {
        format!("{}:changes", self.settings.prefix)
    }

    /// The node to listen to announcements on, after `failures` attempts that failed or
    /// connections lost: the one node, the seeds of a cluster in turn (classic pub/sub reaches
    /// the subscribers of every node of a cluster), or the primary the sentinels name now.
    pub async fn subscriber(&self, failures: usize) -> Result<redis::Client, redis::RedisError> {
        match &self.sentinel {
            Some(sentinel) => sentinel.lock().await.async_get_client().await,
            None => Ok(self.nodes[failures % self.nodes.len()].clone()),
        }
    }

    /// Whether Redis is a cluster.
    pub fn is_cluster(&self) -> bool {
        self.cluster.is_some()
    }

    /// The key a subject is kept under: `PREFIX:subject:HASH`.
    pub fn key(&self, subject_id: &str) -> String {
        format!(
            "{}:subject:{}",
            self.settings.prefix,
            self.sealing.key_hash(subject_id)
        )
    }

    /// `"REVISION WRITTEN_AT MAC BODY"` for this subject, written now.
    pub(super) fn seal(&self, subject_id: &str, revision: Revision, body: &str) -> String {
        self.seal_at(subject_id, revision, crate::store::now_micros(), body)
    }

    pub(super) fn seal_at(
        &self,
        subject_id: &str,
        revision: Revision,
        written_at: i64,
        body: &str,
    ) -> String {
        self.sealing.seal(
            &self.settings.prefix,
            subject_id,
            revision,
            written_at,
            body,
        )
    }

    fn resting(&self) -> bool {
        let resting = self.resting_until.lock().unwrap_or_else(|e| e.into_inner());
        resting.is_some_and(|until| Instant::now() < until)
    }

    fn rest(&self, error: &dyn std::fmt::Display) {
        tracing::warn!(%error, "redis unavailable; going on without it for a moment");
        self.rest_quietly();
    }

    /// A Redis error: a redirection from a single node means `redis_url` names a cluster that
    /// the settings do not say is one; said plainly, since the replica goes on without Redis.
    fn failed(&self, error: &redis::RedisError) {
        if !self.is_cluster() && error.redirect_node().is_some() {
            tracing::error!(
                %error,
                "redis answered with a cluster redirection: it is a Redis Cluster, which needs \
                 redis_cluster = true; going on without it for a moment"
            );
            self.rest_quietly();
        } else {
            self.rest(error);
        }
    }

    fn rest_quietly(&self) {
        *self.resting_until.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(Instant::now() + BACKOFF);
        *self.connection.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// A connection, unless Redis is resting after a failure.
    async fn connection(&self) -> Option<Connection> {
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
        let connecting = async {
            if let Some(cluster) = &self.cluster {
                return Ok(Connection::Cluster(cluster.get_async_connection().await?));
            }
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(self.settings.timeout))
                .set_response_timeout(Some(self.settings.timeout))
                .set_number_of_retries(1);
            // Behind sentinels, the primary they name now; after a failover the connection to
            // the old one fails, and the next is made to the new one.
            let node = match &self.sentinel {
                Some(sentinel) => sentinel.lock().await.async_get_client().await?,
                None => self.nodes[0].clone(),
            };
            let manager = node.get_connection_manager_with_config(config).await?;
            Ok::<_, redis::RedisError>(Connection::Single(manager))
        };
        match tokio::time::timeout(self.settings.timeout * 4, connecting).await {
            Ok(Ok(connection)) => {
                *self.connection.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some(connection.clone());
                Some(connection)
            }
            Ok(Err(error)) => {
                self.failed(&error);
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
        match tokio::time::timeout(self.settings.timeout, connection.query::<T>(command)).await {
            Ok(Ok(value)) => Some(value),
            Ok(Err(error)) => {
                self.failed(&error);
                None
            }
            Err(_) => {
                self.rest(&"call timed out");
                None
            }
        }
    }

    /// Sets each `(subject, revision, value)` unless a later revision is there: in one
    /// pipeline on one node; on a cluster, in one pipeline per hash slot (a pipeline is sent to
    /// one node, and a node answers only for its slots), the pipelines side by side. Returns
    /// whether Redis took them all.
    async fn guarded_set(&self, entries: &[(&str, Revision, String)]) -> bool {
        if entries.is_empty() {
            return true;
        }
        let Some(connection) = self.connection().await else {
            return false;
        };
        let ttl = self.settings.time_to_live.as_secs().max(1);
        let mut pipelines: Vec<(Option<Slot>, redis::Pipeline)> = Vec::new();
        for (subject_id, revision, value) in entries {
            let key = self.key(subject_id);
            let slot = self.is_cluster().then(|| Slot::for_key(&key));
            let index = match pipelines.iter().position(|(of, _)| *of == slot) {
                Some(index) => index,
                None => {
                    pipelines.push((slot, redis::pipe()));
                    pipelines.len() - 1
                }
            };
            pipelines[index]
                .1
                .cmd("EVAL")
                .arg(GUARDED_SET)
                .arg(1)
                .arg(key)
                .arg(revision.sequence())
                .arg(value)
                .arg(ttl)
                .ignore();
        }
        let sending = futures_util::future::join_all(pipelines.iter().map(|(_, pipeline)| {
            let mut connection = connection.clone();
            async move { connection.run(pipeline).await }
        }));
        let timeout = self.settings.timeout * (1 + entries.len() as u32 / 100);
        match tokio::time::timeout(timeout, sending).await {
            Ok(results) => match results.into_iter().find_map(Result::err) {
                None => true,
                Some(error) => {
                    self.failed(&error);
                    false
                }
            },
            Err(_) => {
                self.rest(&"call timed out");
                false
            }
        }
    }

    /// The subject's entry, if Redis has one that is authentic, this subject's, readable, and
    /// no later than `seen`, the highest revision this replica has seen the store commit.
    pub async fn get(&self, subject_id: &str, seen: Revision) -> SharedLookup {
        let value: Option<Option<Vec<u8>>> =
            self.call(redis::cmd("GET").arg(self.key(subject_id))).await;
        let Some(Some(value)) = value else {
            return SharedLookup::Miss;
        };
        match String::from_utf8(value) {
            Ok(value) => self.parse(subject_id, seen, value),
            Err(error) => SharedLookup::Rejected(Rejected {
                reason: Rejection::Unreadable,
                claimed: None,
                value: error.into_bytes(),
            }),
        }
    }

    /// A value read from the subject's key, parsed like a request.
    fn parse(&self, subject_id: &str, seen: Revision, value: String) -> SharedLookup {
        let rejected = |reason, claimed| {
            SharedLookup::Rejected(Rejected {
                reason,
                claimed,
                value: value.clone().into_bytes(),
            })
        };
        let (revision, written_at, body) =
            match self.sealing.open(&self.settings.prefix, subject_id, &value) {
                Ok(opened) => opened,
                Err(reason) => return rejected(reason, None),
            };
        // A genuine value lives no longer than its time to live: an older one (or one from the
        // future) was put back by someone, and may hide a later change.
        let age_micros = crate::store::now_micros().saturating_sub(written_at);
        let longest = i64::try_from(self.longest_use().as_micros()).unwrap_or(i64::MAX);
        let skew = i64::try_from(CLOCK_SKEW.as_micros()).unwrap_or(i64::MAX);
        if age_micros > longest || age_micros < -skew {
            return rejected(Rejection::Stale, None);
        }
        if revision > seen {
            return rejected(Rejection::FutureRevision, Some(revision));
        }
        if body == TOMBSTONE {
            return SharedLookup::Miss;
        }
        match decode(revision, body) {
            Some(entry) => SharedLookup::Hit(entry),
            None => rejected(Rejection::Unreadable, None),
        }
    }

    /// Shares an entry read from the store (unless a later revision is already there).
    pub async fn put(&self, subject_id: &str, entry: &CachedSubject) {
        let value = self.seal(subject_id, entry.revision, &encode(entry));
        self.guarded_set(&[(subject_id, entry.revision, value)])
            .await;
    }

    /// Puts an entry read from the store in the place of a rejected value, if that value is
    /// still there; whether it was.
    pub async fn replace(
        &self,
        subject_id: &str,
        rejected: &Rejected,
        entry: &CachedSubject,
    ) -> bool {
        let value = self.seal(subject_id, entry.revision, &encode(entry));
        let ttl = self.settings.time_to_live.as_secs().max(1);
        let replaced: Option<i64> = self
            .call(
                redis::cmd("EVAL")
                    .arg(COMPARE_AND_SET)
                    .arg(1)
                    .arg(self.key(subject_id))
                    .arg(&rejected.value)
                    .arg(value)
                    .arg(ttl),
            )
            .await;
        replaced == Some(1)
    }

    /// Puts tombstones in the place of changed subjects, so no replica reads an entry older
    /// than the change. Returns whether Redis took them.
    pub async fn tombstone(&self, changes: &[(&str, Revision)]) -> bool {
        let mut taken = true;
        for chunk in changes.chunks(500) {
            let entries: Vec<(&str, Revision, String)> = chunk
                .iter()
                .map(|(subject_id, revision)| {
                    let value = self.seal(subject_id, *revision, TOMBSTONE);
                    (*subject_id, *revision, value)
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

    /// How long after it was written a value may be used: its time to live, and the clock skew
    /// between replicas allowed for.
    pub fn longest_use(&self) -> Duration {
        self.settings.longest_use()
    }
}

/// The body of a tombstone.
const TOMBSTONE: &str = "-";

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

/// Decodes the body of an entry at `revision`; `None` for anything unreadable.
fn decode(revision: Revision, body: &str) -> Option<CachedSubject> {
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

    fn shared(prefix: &str, key: &str) -> SharedCache {
        SharedCache::new(SharedSettings {
            url: DatabaseUrl::new("redis://127.0.0.1:6379".to_owned()),
            cluster: false,
            prefix: prefix.to_owned(),
            time_to_live: Duration::from_secs(60),
            timeout: Duration::from_millis(50),
            entry_key: RedisEntryKey::new(key),
        })
        .unwrap()
    }

    const KEY: &str = "an entry key of the tests, 32 characters at least";

    fn entry(revision: u64) -> CachedSubject {
        let mut state = SubjectState {
            plan: Some(Plan::Free),
            ..SubjectState::new()
        };
        state
            .choices
            .set(Purpose::ModelTraining, Some(Choice::Refused));
        CachedSubject::from_snapshot(SubjectSnapshot {
            subject: Some(state),
            revision: Revision::new(revision),
            conversations: vec![],
            complete: true,
        })
    }

    fn reason(lookup: SharedLookup) -> Option<Rejection> {
        match lookup {
            SharedLookup::Rejected(rejected) => Some(rejected.reason),
            SharedLookup::Hit(_) | SharedLookup::Miss => None,
        }
    }

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
        let seen = Revision::new(100);
        let cache = shared("p", KEY);
        let value = cache.seal("u-1", entry.revision, &encode(&entry));
        assert_eq!(cache.parse("u-1", seen, value), SharedLookup::Hit(entry));
        let unknown = CachedSubject::from_snapshot(SubjectSnapshot {
            subject: None,
            revision: Revision::new(7),
            conversations: vec![],
            complete: true,
        });
        let value = cache.seal("u-2", unknown.revision, &encode(&unknown));
        assert_eq!(cache.parse("u-2", seen, value), SharedLookup::Hit(unknown));
        let tombstone = cache.seal("u-1", Revision::new(43), TOMBSTONE);
        assert_eq!(cache.parse("u-1", seen, tombstone), SharedLookup::Miss);
    }

    #[test]
    fn entries_written_before_expiries_were_kept_still_decode() {
        let old = r#"{"subject":{"plan":"FREE","status":"ACTIVE","gpc":false,"zero_data_retention":false,"choices":[["MEMORY","REFUSED"]]},"conversations":[],"complete":true}"#;
        let entry = decode(Revision::new(9), old).expect("an entry of the earlier wire form");
        let state = entry.subject.unwrap();
        assert_eq!(state.choices.get(Purpose::Memory), Some(Choice::Refused));
        assert_eq!(state.expiries, Default::default());
        assert_eq!(entry.revision, Revision::new(9));
        // And an entry without expiries is written as before.
        assert!(!encode(&entry).contains("expiries"));
    }

    /// Changing one byte of any part the MAC covers — the prefix, the subject id, the revision,
    /// the body, the MAC itself — or the key makes the value a rejected one.
    #[test]
    fn a_value_changed_in_any_covered_part_is_rejected() {
        let seen = Revision::new(1_000);
        let cache = shared("deployment", KEY);
        let value = cache.seal("victim", Revision::new(42), &encode(&entry(42)));
        assert_eq!(
            cache.parse("victim", seen, value.clone()),
            SharedLookup::Hit(entry(42))
        );
        // Another prefix, another subject, another key.
        for (other, subject_id) in [
            (shared("deploymenu", KEY), "victim"),
            (shared("deployment", KEY), "victin"),
            (shared("deployment", &format!("{KEY}!")), "victim"),
        ] {
            assert_eq!(
                reason(other.parse(subject_id, seen, value.clone())),
                Some(Rejection::Mac),
                "{other:?} {subject_id}"
            );
        }
        // Each byte of the value, changed.
        for position in 0..value.len() {
            let mut bytes = value.clone().into_bytes();
            bytes[position] = match bytes[position] {
                b'0' => b'1',
                b'f' => b'e',
                b' ' => b'_',
                byte if byte.is_ascii_digit() => b'0',
                byte if byte.is_ascii_lowercase() || byte.is_ascii_uppercase() => byte ^ 0x20,
                _ => b'x',
            };
            let changed = String::from_utf8(bytes).unwrap();
            let found = reason(cache.parse("victim", seen, changed.clone()));
            assert!(
                matches!(found, Some(Rejection::Mac | Rejection::Unreadable)),
                "byte {position}: {changed:?} gave {found:?}"
            );
        }
        // A tombstone is sealed too.
        let tombstone = cache.seal("victim", Revision::new(43), TOMBSTONE);
        let forged = tombstone.replacen("43 ", "44 ", 1);
        assert_eq!(
            reason(cache.parse("victim", seen, forged)),
            Some(Rejection::Mac)
        );
    }

    #[test]
    fn another_subjects_value_junk_and_future_revisions_are_rejected() {
        let cache = shared("deployment", KEY);
        let seen = Revision::new(50);
        let others = cache.seal("other", Revision::new(42), &encode(&entry(42)));
        assert_eq!(
            reason(cache.parse("victim", seen, others)),
            Some(Rejection::Mac)
        );
        for junk in [
            "",
            "garbage",
            "42",
            "42 -",
            "x y z",
            "99999999999999999999 aa -",
            "-1 00 -",
        ] {
            assert_eq!(
                reason(cache.parse("victim", seen, junk.to_owned())),
                Some(Rejection::Unreadable),
                "{junk:?}"
            );
        }
        // Authentic but not decodable (a newer wire form, say): unreadable.
        let undecodable = cache.seal("victim", Revision::new(42), "{}");
        assert_eq!(
            reason(cache.parse("victim", seen, undecodable)),
            Some(Rejection::Unreadable)
        );
        // Authentic, but later than anything this replica has seen committed.
        for body in [encode(&entry(51)), TOMBSTONE.to_owned()] {
            let future = cache.seal("victim", Revision::new(51), &body);
            let SharedLookup::Rejected(rejected) = cache.parse("victim", seen, future) else {
                panic!("a revision above the one seen was taken");
            };
            assert_eq!(rejected.reason, Rejection::FutureRevision);
            // A forgery if the store, read afterwards, has not reached it; else a change this
            // replica had not applied yet.
            assert!(rejected.forged(Revision::new(50)));
            assert!(!rejected.forged(Revision::new(51)));
        }
    }

    #[test]
    fn values_written_before_their_lifetime_or_in_the_future_are_stale() {
        let cache = shared("deployment", KEY);
        let seen = Revision::new(50);
        let now = crate::store::now_micros();
        let lifetime = i64::try_from(cache.longest_use().as_micros()).unwrap();
        let body = encode(&entry(42));
        let at = |written_at| cache.seal_at("victim", Revision::new(42), written_at, &body);
        assert_eq!(
            cache.parse("victim", seen, at(now - lifetime + 5_000_000)),
            SharedLookup::Hit(entry(42))
        );
        for written_at in [now - lifetime - 1_000_000, now + 3_600_000_000, 0] {
            assert_eq!(
                reason(cache.parse("victim", seen, at(written_at))),
                Some(Rejection::Stale),
                "{written_at}"
            );
        }
    }

    #[test]
    fn keys_carry_a_keyed_hash_of_the_subject_id() {
        let cache = shared("deployment", KEY);
        let key = cache.key("alice@example.com");
        assert!(key.starts_with("deployment:subject:"), "{key}");
        assert!(!key.contains("alice"), "{key}");
        assert_eq!(key.len(), "deployment:subject:".len() + 2 * KEY_HASH_BYTES);
        assert_eq!(key, cache.key("alice@example.com"));
        assert_ne!(key, cache.key("bob@example.com"));
        assert_ne!(
            key,
            shared("deployment", &format!("{KEY}!")).key("alice@example.com")
        );
        assert!(!format!("{:?}", RedisEntryKey::new(KEY)).contains(KEY));
    }
}
