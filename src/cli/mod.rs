//! The `assent` command line: `serve` runs the server; every other subcommand is a client that
//! calls a running server over gRPC.

mod audit;
mod client;
mod output;
mod policy;
mod retention;
mod rights;

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use crate::config::{Overrides, Setting, Settings};
use crate::policy::rights::{RequestState, RightKind};
use crate::policy::{ConsentMethod, DataCategory, FlagKind, Plan, Purpose, Rating, Source};
use crate::startup::{Application, shutdown_signal};
use crate::store::{Schema, Store};

#[derive(Debug, Parser)]
#[command(
    name = "assent",
    version,
    about = "The consent authority: may this user's data be processed for this purpose?"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (embedded SQLite store by default).
    Serve(ServeArgs),
    /// Bring the store's schema up to date, then exit (the server also does it on start, unless
    /// run_migrations is false). On PostgreSQL, grant the server's role its privileges with
    /// --grant-to, or print the grants it needs.
    Migrate(MigrateArgs),
    /// Ask for one decision.
    Check(CheckArgs),
    /// Read and change subjects.
    #[command(subcommand)]
    Subject(SubjectCommand),
    /// Read and verify the audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Apply, list, compare and test policy versions.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Follow the change log.
    #[command(subcommand)]
    Changes(ChangesCommand),
    /// File, follow and answer rights requests (access, deletion, objection, ...).
    #[command(subcommand)]
    Rights(RightsCommand),
    /// Ask the retention schedule: how long data may be kept, and what is due for deletion.
    #[command(subcommand)]
    Retention(RetentionCommand),
    /// Ask a running server's gRPC health service whether it serves; exits 0 if it does, 1 if
    /// not (the container's and Kubernetes' probe).
    Health(HealthArgs),
}

#[derive(Debug, Args)]
pub struct HealthArgs {
    /// The service to ask about; empty for the whole server.
    #[arg(long, default_value = "")]
    pub service: String,
    /// How long to wait for the answer, in milliseconds.
    #[arg(long, default_value_t = 2_000)]
    pub timeout_ms: u64,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[arg(long, help = Setting::flag_help("listen", "The gRPC listen address"))]
    pub listen: Option<String>,
    #[command(flatten)]
    pub store: StoreArgs,
}

#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// PostgreSQL: after migrating, give this role exactly the privileges the server needs
    /// (read and append the audit log, never change it; docs/operations.md, "Two database
    /// roles"), taking away any others it has on the schema's objects. Without it, the grants
    /// are printed.
    #[arg(long, value_name = "ROLE")]
    pub grant_to: Option<String>,
    #[command(flatten)]
    pub store: StoreArgs,
}

/// Which store, for the commands that open it themselves.
#[derive(Debug, Args)]
pub struct StoreArgs {
    #[arg(long, help = Setting::flag_help("data_dir", "Where the embedded store keeps its data"))]
    pub data_dir: Option<PathBuf>,
    #[arg(long, help = Setting::flag_help(
        "database_url",
        "postgres://USER:PASSWORD@HOST/DB for PostgreSQL, or sqlite://PATH",
    ))]
    pub database_url: Option<String>,
    /// A TOML file of settings [env: ASSENT_CONFIG]
    #[arg(long)]
    pub config: Option<PathBuf>,
}

impl StoreArgs {
    /// The settings from the environment, the configuration file and these flags.
    fn settings(&self, listen: Option<String>) -> anyhow::Result<Settings> {
        let env: HashMap<String, String> = std::env::vars().collect();
        let flags = Overrides {
            listen,
            data_dir: self.data_dir.clone(),
            database_url: self.database_url.clone(),
            ..Overrides::default()
        };
        Ok(Settings::resolve(self.config.as_deref(), &env, flags)?)
    }
}

/// Which page of a listing to ask for, and whether to follow the rest.
#[derive(Debug, Clone, Args)]
pub struct PageArgs {
    #[arg(long, default_value_t = 100)]
    pub page_size: u32,
    #[arg(long, default_value = "")]
    pub page_token: String,
    /// Follow page tokens to the end.
    #[arg(long)]
    pub all: bool,
}

/// Where the server is and how to print its answers.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// The server to call; several replicas separated by commas: the first of them, from one
    /// picked at random, that accepts a connection.
    #[arg(long, env = "ASSENT_SERVER", default_value = "http://127.0.0.1:50051")]
    pub server: String,
    /// A bearer token (JWT) to present, for a server that requires one.
    #[arg(long, env = "ASSENT_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// PEM file of the CA that signed the server's certificate (for an https:// server).
    #[arg(long, env = "ASSENT_CA_CERT")]
    pub ca_cert: Option<std::path::PathBuf>,
    /// PEM files of a client certificate and its key, for a server that requires mutual TLS.
    #[arg(long, env = "ASSENT_CLIENT_CERT", requires = "client_key")]
    pub client_cert: Option<std::path::PathBuf>,
    #[arg(long, env = "ASSENT_CLIENT_KEY", requires = "client_cert")]
    pub client_key: Option<std::path::PathBuf>,
    /// The name the server's certificate is checked against, when it is not the host of
    /// --server (a probe calling 127.0.0.1 inside the server's pod).
    #[arg(long, env = "ASSENT_TLS_DOMAIN")]
    pub tls_domain: Option<String>,
    /// Print JSON (proto3 JSON names) instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Who makes a write, and why; recorded in the audit event.
#[derive(Debug, Clone, Args)]
pub struct ActorArgs {
    /// The operator or end user on whose behalf the write is made.
    #[arg(long, env = "ASSENT_OPERATOR", default_value = "cli")]
    pub operator: String,
    /// Why the write is made.
    #[arg(long, default_value = "")]
    pub reason: String,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    #[arg(long)]
    pub subject: String,
    /// model-training, memory, sensitive-memory, ip-geolocation, marketing-email,
    /// analytics-cookies, marketing-cookies, abuse-monitoring-retention, product-improvement,
    /// service-delivery
    #[arg(long, value_parser = parse_purpose)]
    pub purpose: Purpose,
    #[arg(long)]
    pub conversation: Option<String>,
    /// conversation or connector
    #[arg(long, value_parser = parse_source)]
    pub source: Option<Source>,
    /// Demand an answer at least as fresh as this revision (returned by a write).
    #[arg(long, conflicts_with = "fully_consistent")]
    pub at_least_as_fresh: Option<String>,
    /// Read the store of record.
    #[arg(long)]
    pub fully_consistent: bool,
    /// Decide as of this past instant (RFC 3339, such as 2026-11-23T15:00:00Z): under the
    /// policy version and the subject's state then.
    #[arg(long, value_parser = parse_instant, conflicts_with_all = ["fully_consistent", "at_least_as_fresh"])]
    pub as_of: Option<std::time::SystemTime>,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Validate a policy file and store it as a new version, in force from its effective date
    /// on every replica.
    Apply {
        file: PathBuf,
        #[command(flatten)]
        actor: ActorArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// The known versions, and the one in force.
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Print one version's policy file.
    Get {
        version: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// A dry run over the stored subjects: how many answers per purpose would change from OLD
    /// to NEW. OLD is a policy file, or `in-force` for the version in force now.
    Diff {
        old: String,
        new: PathBuf,
        /// Examples to show per purpose (0-100).
        #[arg(long, default_value_t = 5)]
        examples: u32,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Run scenario vectors (the format of tests/fixtures/scenarios.json) against a policy
    /// file, without a server. Exits 1 if a check fails.
    Test {
        file: PathBuf,
        scenarios: PathBuf,
        /// Print JSON lines instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Validate a policy file without a server.
    Validate { file: PathBuf },
}

#[derive(Debug, Subcommand)]
pub enum RightsCommand {
    /// File a request; prints it with its deadline.
    File {
        #[arg(long)]
        subject: String,
        /// access, portability, rectification, deletion, objection, consent-withdrawal,
        /// restriction, post-mortem, appeal
        #[arg(long, value_parser = parse_right_kind)]
        kind: RightKind,
        /// ISO 3166 such as FR or US-CA [default: the subject's]
        #[arg(long, default_value = "")]
        jurisdiction: String,
        /// When the request was received (RFC 3339) [default: now]
        #[arg(long, value_parser = parse_instant)]
        received_at: Option<std::time::SystemTime>,
        #[arg(long)]
        identity_verified: bool,
        /// A purpose the objection or consent withdrawal is about (repeatable).
        #[arg(long = "purpose", value_parser = parse_purpose)]
        purposes: Vec<Purpose>,
        #[command(flatten)]
        actor: ActorArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Print one request.
    Get {
        request_id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// A subject's requests, oldest received first.
    List {
        #[arg(long)]
        subject: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// The requests still owed an answer whose deadline has passed.
    Overdue {
        /// Judge at this instant (RFC 3339) [default: now]
        #[arg(long, value_parser = parse_instant)]
        at: Option<std::time::SystemTime>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Move a request to another state.
    Advance {
        request_id: String,
        /// verifying, in-progress, completed, refused, appealed
        #[arg(long, value_parser = parse_request_state)]
        state: RequestState,
        /// The requester's identity was verified.
        #[arg(long)]
        identity_verified: bool,
        /// The reason for a refusal, told to the requester (required to refuse).
        #[arg(long, default_value = "")]
        refusal_reason: String,
        #[command(flatten)]
        actor: ActorArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Extend a request's deadline once (GDPR: by two months; US: by 45 days).
    Extend {
        request_id: String,
        /// The reason for the delay, told to the requester.
        #[arg(long)]
        delay_reason: String,
        #[command(flatten)]
        actor: ActorArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum ChangesCommand {
    /// Print every change after a revision, then new ones as they commit (one line each).
    Watch {
        /// Start after this revision [default: the beginning of the change log]
        #[arg(long, default_value = "")]
        since: String,
        /// Start after the latest revision: only changes still to come.
        #[arg(long, conflicts_with = "since")]
        from_latest: bool,
        /// Only changes that flipped a decision of these purposes (repeatable).
        #[arg(long = "purpose", value_parser = parse_purpose)]
        purposes: Vec<Purpose>,
        /// Print heartbeats too.
        #[arg(long)]
        heartbeats: bool,
        /// Stop after this many changes.
        #[arg(long)]
        limit: Option<u64>,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum RetentionCommand {
    /// How long one category of data may be kept for a subject, or for one record (its own
    /// event given), under the policy version in force.
    Query {
        /// chat-conversation, api-io, agents-api-io, fine-tuning-data, non-essential-cookies,
        /// marketing-contact, lead-contact, civil-identity, account-data, technical-data,
        /// invoices, contracts, dispute-resolution, privacy-requests, support-tickets
        #[arg(long, value_parser = parse_category)]
        category: DataCategory,
        /// The subject, for a category that depends on its state (deletion, consent, zero data
        /// retention).
        #[arg(long, default_value = "")]
        subject: String,
        /// The record's own event (RFC 3339): generation, collection, connection, invoice date,
        /// contract end, appeal period end, request processed.
        #[arg(long, value_parser = parse_instant)]
        event_time: Option<std::time::SystemTime>,
        /// When the user deleted the data themselves (a conversation, fine-tuning data).
        #[arg(long, value_parser = parse_instant)]
        data_deleted_at: Option<std::time::SystemTime>,
        /// Answer as of this instant (RFC 3339) instead of now; a past one on the subject's
        /// state then.
        #[arg(long, value_parser = parse_instant)]
        as_of: Option<std::time::SystemTime>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// What must be deleted: the subjects whose data of a category is due, and the cut-off for
    /// records that run from an event of their own.
    Due {
        #[arg(long, value_parser = parse_category)]
        category: DataCategory,
        /// Due at this instant (RFC 3339, now or later) [default: now]
        #[arg(long, value_parser = parse_instant)]
        before: Option<std::time::SystemTime>,
        /// Subjects per page (1-1000).
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1000))]
        page_size: u32,
        #[arg(long, default_value = "")]
        page_token: String,
        /// Follow page tokens to the end.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum SubjectCommand {
    /// Show a subject, its choices and its effective decisions.
    Get {
        subject: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Create a subject or change the fields given.
    Upsert {
        subject: String,
        /// free, pro, student, team, enterprise, api-free, api-paid
        #[arg(long, value_parser = parse_plan)]
        plan: Option<Plan>,
        /// ISO 3166 code such as FR or US-CA.
        #[arg(long)]
        jurisdiction: Option<String>,
        /// The browser sends Global Privacy Control.
        #[arg(long)]
        gpc: Option<bool>,
        /// The API organisation has zero data retention.
        #[arg(long)]
        zero_data_retention: Option<bool>,
        #[command(flatten)]
        actor: ActorArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Record the user's choice for one purpose.
    Choice {
        subject: String,
        #[arg(long, value_parser = parse_purpose)]
        purpose: Purpose,
        /// granted, refused or cleared
        #[arg(long, value_parser = ["granted", "refused", "cleared"])]
        choice: String,
        /// How the user gave it: settings-page, cookie-banner, gpc-signal, rights-request,
        /// api-import [default: unspecified]
        #[arg(long, value_parser = parse_consent_method)]
        method: Option<ConsentMethod>,
        /// The notice or policy version shown to the user [default: the policy version in
        /// force]
        #[arg(long, default_value = "")]
        notice_version: String,
        /// When the choice stops counting and the default applies again (RFC 3339, in the
        /// future); not with --choice cleared.
        #[arg(long, value_parser = parse_instant)]
        expires_at: Option<std::time::SystemTime>,
        #[command(flatten)]
        actor: ActorArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Every consent record of a subject, oldest first: choices given, cleared, expired or
    /// erased, with how and under what they were given.
    ConsentHistory {
        subject: String,
        /// Only the records committed by this instant (RFC 3339): the last one per purpose is
        /// the consent then.
        #[arg(long, value_parser = parse_instant)]
        as_of: Option<std::time::SystemTime>,
        #[command(flatten)]
        pages: PageArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Record a thumbs up or down on a conversation.
    Feedback {
        subject: String,
        #[arg(long)]
        conversation: String,
        /// up or down
        #[arg(long, value_parser = parse_rating)]
        rating: Rating,
        #[command(flatten)]
        actor: ActorArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Flag a conversation (automated moderation or user report).
    Flag {
        subject: String,
        #[arg(long)]
        conversation: String,
        /// automated-moderation or user-report
        #[arg(long, value_parser = parse_flag_kind)]
        kind: FlagKind,
        #[command(flatten)]
        actor: ActorArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Restrict all processing of a subject (or lift the restriction with --lift).
    Restrict {
        subject: String,
        #[arg(long)]
        lift: bool,
        #[command(flatten)]
        actor: ActorArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Mark a subject's account deleted (kept as a tombstone).
    Delete {
        subject: String,
        #[command(flatten)]
        actor: ActorArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// List audit events, oldest first.
    List {
        /// Only the events of this subject.
        #[arg(long)]
        subject: Option<String>,
        #[command(flatten)]
        pages: PageArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List recorded decisions (the decision log), oldest first: a subject's, one decision's,
    /// or a time range's.
    Decisions {
        /// Only the decisions about this subject.
        #[arg(long)]
        subject: Option<String>,
        /// Only this decision (the decision_id of its answer).
        #[arg(long)]
        decision_id: Option<String>,
        /// Decisions made at or after this instant (RFC 3339) [default: the first]
        #[arg(long, value_parser = parse_instant)]
        from: Option<std::time::SystemTime>,
        /// Decisions made before this instant (RFC 3339) [default: the last]
        #[arg(long, value_parser = parse_instant)]
        until: Option<std::time::SystemTime>,
        #[command(flatten)]
        pages: PageArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Recompute the audit hash chain.
    Verify {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Make a new Ed25519 key to sign checkpoints with (no server). The signer key goes to
    /// --out, created with mode 0600 and never overwritten, or to stdout; the verifier key, the
    /// line auditors keep, is always printed (last).
    Keygen {
        /// The key's name, which is the log's origin: the first line of every checkpoint, such
        /// as consent.example.com/audit.
        #[arg(long)]
        name: String,
        /// The signer key file to create (the server's audit_signing_key_file).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Print the latest signed checkpoint: the signed note as published, or its fields with
    /// --json.
    Checkpoint {
        /// Sign a checkpoint of the whole log now (needs admin) instead of reading the latest.
        #[arg(long)]
        sign: bool,
        /// Write the signed note to this file, byte for byte (for verify-offline).
        #[arg(long)]
        out: Option<PathBuf>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// The inclusion proof of one event: the audit path from its leaf to the root of a tree.
    Proof {
        #[command(flatten)]
        event: EventArgs,
        /// The size of the tree [default: the latest signed checkpoint's]
        #[arg(long)]
        tree_size: Option<u64>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// The consistency proof that the tree of --old-size is a prefix of the tree of --new-size;
    /// with --json, in the proof file format verify-offline reads.
    Consistency {
        #[arg(long)]
        old_size: u64,
        /// [default: the latest signed checkpoint's size]
        #[arg(long)]
        new_size: Option<u64>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// A subject's events, each with its inclusion proof against a checkpoint signed now, in the
    /// subject export format (docs/audit.md) that verify-offline reads.
    Export {
        subject: String,
        /// Write the export to this file instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Every event, oldest first, as JSON lines: the full dump verify-offline checks against a
    /// checkpoint.
    Dump {
        /// Write the dump to this file instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Erase the payloads (details) of a deleted subject's events from the store (needs admin);
    /// the events and their leaves stay, and the erasure is itself an event.
    Erase {
        subject: String,
        #[command(flatten)]
        actor: ActorArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Verify an export, a full dump or a consistency proof without any server: exits 0 when
    /// verified, 1 when a check fails (each failure printed), 2 when the input is unusable.
    #[command(subcommand)]
    VerifyOffline(VerifyOfflineCommand),
    /// Compare the state tables with the state the audit events make (changes nothing).
    VerifyState {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Drop the decision log's days older than the retention window (opens the store itself).
    Prune {
        /// Keep this many days [default: the decision_log_retention_days setting, 400]
        #[arg(long)]
        older_than_days: Option<u32>,
        #[command(flatten)]
        store: StoreArgs,
    },
}

/// One audit event, by its id or by the revision it produced.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct EventArgs {
    #[arg(long)]
    pub event_id: Option<String>,
    /// The event's revision token (r1.<hex>).
    #[arg(long)]
    pub revision: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum VerifyOfflineCommand {
    /// A subject export: the checkpoint's signature, then each event's payload, hash, chain
    /// link and inclusion in the checkpoint's tree.
    Export {
        file: PathBuf,
        /// The verifier key (<name>+<hex key id>+<base64 key>), or a file holding it.
        #[arg(long)]
        key: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// A full dump (JSON lines, sequence 1 first): the checkpoint's signature, every event's
    /// payload, hash and chain link, and the root of the checkpoint's first events.
    Dump {
        file: PathBuf,
        /// The signed checkpoint note file the dump is checked against.
        #[arg(long)]
        checkpoint: PathBuf,
        /// The verifier key, or a file holding it.
        #[arg(long)]
        key: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Two signed checkpoints and the consistency proof (`assent audit consistency --json`)
    /// that the newer one's tree extends the older one's.
    Consistency {
        old: PathBuf,
        new: PathBuf,
        proof: PathBuf,
        /// The verifier key, or a file holding it.
        #[arg(long)]
        key: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// A command line that cannot be acted on (an unreadable file, a malformed key or input):
/// `assent` exits with status 2 for it, as for a usage error, rather than 1 for a failed check.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::Migrate(args) => migrate(args).await,
        Command::Check(args) => client::check(args).await,
        Command::Subject(command) => client::subject(command).await,
        Command::Health(args) => client::health(args).await,
        Command::Audit(AuditCommand::Prune {
            older_than_days,
            store,
        }) => prune(older_than_days, store).await,
        Command::Audit(command) => audit::audit(command).await,
        Command::Policy(command) => policy::policy(command).await,
        Command::Changes(command) => policy::changes(command).await,
        Command::Rights(command) => rights::rights(command).await,
        Command::Retention(command) => retention::retention(command).await,
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let settings = args.store.settings(args.listen)?;
    let telemetry = crate::telemetry::init(settings.log_format, settings.traces.as_ref());
    let served = match Application::build(settings).await {
        Ok(application) => application.run_until(shutdown_signal()).await,
        Err(error) => Err(error),
    };
    // The last spans, of the calls that finished while draining, go out before the exit.
    telemetry.shutdown().await;
    served
}

/// The maintenance commands (migrations, dropping partitions) wait for locks as long as a
/// statement may run, not as briefly as a request's write.
fn maintenance_timeouts(settings: &crate::config::Settings) -> crate::store::StoreTimeouts {
    crate::store::StoreTimeouts {
        write: crate::store::StoreTimeouts::OTHER,
        ..settings.store_timeouts
    }
}

async fn migrate(args: MigrateArgs) -> anyhow::Result<()> {
    let settings = args.store.settings(None)?;
    let _telemetry = crate::telemetry::init(settings.log_format, None);
    migrate_one(
        "store",
        &settings.store_location(),
        &settings,
        args.grant_to.as_deref(),
    )
    .await?;
    // The decision log's own database, when it has one, gets the same schema (it uses only
    // the decision log's tables of it) and the same grants.
    if let Some(location) = settings.decision_log_location() {
        migrate_one(
            "decision log database",
            &location,
            &settings,
            args.grant_to.as_deref(),
        )
        .await?;
    }
    Ok(())
}

/// Migrates the database at `location` (`what` it is, in messages) and grants `role` the
/// server's privileges there, or prints them.
async fn migrate_one(
    what: &str,
    location: &crate::store::StoreLocation,
    settings: &Settings,
    grant_to: Option<&str>,
) -> anyhow::Result<()> {
    let store = Store::open_with(location, maintenance_timeouts(settings), Schema::Migrate)
        .await
        .with_context(|| format!("cannot migrate the {what} at {location:?}"))?;
    let version = store.schema_version().await?;
    let granted = grant(&store, grant_to).await;
    store.close().await;
    println!("the {what}'s schema is up to date (version {version})");
    match granted? {
        Grants::Applied { role, statements } => {
            println!(
                "granted role {role} the server's privileges ({} statements)",
                statements.len()
            );
        }
        Grants::Expected(statements) => {
            println!(
                "the server's role needs these grants when it does not own the schema (as \
                 assent migrate --grant-to ROLE runs them; run_migrations = false for it):"
            );
            for statement in statements {
                println!("{statement};");
            }
        }
        Grants::None => {}
    }
    Ok(())
}

/// What `assent migrate` did about the server's role.
enum Grants {
    Applied {
        role: String,
        statements: Vec<String>,
    },
    /// Not asked: the statements, for a role named `ROLE`.
    Expected(Vec<String>),
    /// The embedded store has no roles.
    None,
}

async fn grant(store: &Store, role: Option<&str>) -> anyhow::Result<Grants> {
    let Store::Postgres(store) = store else {
        anyhow::ensure!(
            role.is_none(),
            "--grant-to: the embedded SQLite store has no roles; grants are for PostgreSQL"
        );
        return Ok(Grants::None);
    };
    Ok(match role {
        Some(role) => Grants::Applied {
            role: role.to_owned(),
            statements: store.grant_runtime(role).await?,
        },
        None => Grants::Expected(store.runtime_grants("ROLE").await?),
    })
}

async fn prune(older_than_days: Option<u32>, args: StoreArgs) -> anyhow::Result<()> {
    let settings = args.settings(None)?;
    let _telemetry = crate::telemetry::init(settings.log_format, None);
    let days = older_than_days.unwrap_or(settings.decision_log_retention_days);
    // The log's own database when it has one: nothing of the log is in the store's then.
    let location = settings
        .decision_log_location()
        .unwrap_or_else(|| settings.store_location());
    let store = Store::open_with(&location, maintenance_timeouts(&settings), settings.schema)
        .await
        .with_context(|| format!("cannot open the decision log's store at {location:?}"))?;
    let cutoff = crate::store::now_micros() - i64::from(days) * crate::calendar::MICROS_PER_DAY;
    let report = store.prune_decision_log(cutoff).await?;
    store.close().await;
    if report.partitions_dropped.is_empty() && report.rows_deleted == 0 {
        println!("nothing older than {days} days in the decision log");
    }
    for partition in &report.partitions_dropped {
        println!("dropped {partition}");
    }
    if report.rows_deleted > 0 {
        println!(
            "deleted {} decisions older than {days} days",
            report.rows_deleted
        );
    }
    Ok(())
}

/// Parses an enum value given as `model-training`, `model_training` or `MODEL_TRAINING`.
fn parse_named<T: Copy>(
    text: &str,
    from_name: fn(&str) -> Option<T>,
    all: &[T],
    as_str: fn(T) -> &'static str,
) -> Result<T, String> {
    from_name(&text.trim().replace('-', "_").to_ascii_uppercase()).ok_or_else(|| {
        let known: Vec<String> = all
            .iter()
            .map(|value| as_str(*value).to_ascii_lowercase().replace('_', "-"))
            .collect();
        format!("expected one of {}", known.join(", "))
    })
}

fn parse_purpose(text: &str) -> Result<Purpose, String> {
    parse_named(text, Purpose::from_name, Purpose::ALL, Purpose::as_str)
}

fn parse_right_kind(text: &str) -> Result<RightKind, String> {
    parse_named(
        text,
        RightKind::from_name,
        RightKind::ALL,
        RightKind::as_str,
    )
}

fn parse_request_state(text: &str) -> Result<RequestState, String> {
    parse_named(
        text,
        RequestState::from_name,
        RequestState::ALL,
        RequestState::as_str,
    )
}

fn parse_category(text: &str) -> Result<DataCategory, String> {
    parse_named(
        text,
        DataCategory::from_name,
        DataCategory::ALL,
        DataCategory::as_str,
    )
}

fn parse_plan(text: &str) -> Result<Plan, String> {
    parse_named(text, Plan::from_name, Plan::ALL, Plan::as_str)
}

fn parse_source(text: &str) -> Result<Source, String> {
    parse_named(text, Source::from_name, Source::ALL, Source::as_str)
}

fn parse_instant(text: &str) -> Result<std::time::SystemTime, String> {
    humantime::parse_rfc3339_weak(text)
        .map_err(|error| format!("{error}: expected an RFC 3339 time such as 2026-11-23T15:00:00Z"))
}

fn parse_consent_method(text: &str) -> Result<ConsentMethod, String> {
    parse_named(
        text,
        ConsentMethod::from_name,
        ConsentMethod::ALL,
        ConsentMethod::as_str,
    )
}

fn parse_flag_kind(text: &str) -> Result<FlagKind, String> {
    parse_named(text, FlagKind::from_name, FlagKind::ALL, FlagKind::as_str)
}

fn parse_rating(text: &str) -> Result<Rating, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "up" => Ok(Rating::ThumbsUp),
        "down" => Ok(Rating::ThumbsDown),
        _ => parse_named(text, Rating::from_name, Rating::ALL, Rating::as_str),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every row of docs/configuration.md's table names declared settings with their variables,
    /// their default and flags `assent` has; every declared setting has a row.
    #[test]
    fn the_documented_settings_are_the_declared_ones() {
        fn flags(command: &clap::Command) -> Vec<String> {
            let own = command
                .get_arguments()
                .filter_map(|argument| argument.get_long());
            let nested = command.get_subcommands().flat_map(flags);
            own.map(|flag| format!("--{flag}")).chain(nested).collect()
        }
        let flags = flags(&<Cli as clap::CommandFactory>::command());
        let quoted = |cell: &str| -> Vec<String> {
            cell.split('`')
                .skip(1)
                .step_by(2)
                .map(str::to_owned)
                .collect()
        };
        let mut documented: Vec<String> = Vec::new();
        let text = include_str!("../../docs/configuration.md");
        for row in text.lines().filter(|line| line.starts_with("| `")) {
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            let keys = quoted(cells[1]);
            let declared: Vec<&crate::config::Setting> = keys
                .iter()
                .map(|key| {
                    crate::config::SETTINGS
                        .iter()
                        .find(|setting| setting.key == key)
                })
                .map(|setting| setting.unwrap_or_else(|| panic!("{row}: no such setting")))
                .collect();
            let variables = quoted(cells[2]);
            let expected: Vec<&str> = declared
                .iter()
                .flat_map(|s| s.environment)
                .copied()
                .collect();
            assert_eq!(variables, expected, "{row}");
            for flag in quoted(cells[3]) {
                assert!(flags.contains(&flag), "{row}: assent has no flag {flag}");
            }
            for setting in declared {
                match setting.default {
                    Some(default) => assert_eq!(cells[4], format!("`{default}`"), "{row}"),
                    None => assert!(!cells[4].starts_with('`'), "{row}: no default"),
                }
            }
            documented.extend(keys);
        }
        let mut declared: Vec<&str> = crate::config::SETTINGS
            .iter()
            .map(|setting| setting.key)
            .collect();
        declared.sort_unstable();
        documented.sort_unstable();
        assert_eq!(documented, declared);
    }

    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn enum_values_parse_in_any_case() {
        assert_eq!(parse_purpose("model-training"), Ok(Purpose::ModelTraining));
        assert_eq!(parse_purpose("MODEL_TRAINING"), Ok(Purpose::ModelTraining));
        assert_eq!(parse_plan("api-free"), Ok(Plan::ApiFree));
        assert_eq!(parse_rating("up"), Ok(Rating::ThumbsUp));
        assert_eq!(parse_rating("thumbs-down"), Ok(Rating::ThumbsDown));
        assert_eq!(
            parse_consent_method("cookie-banner"),
            Ok(ConsentMethod::CookieBanner)
        );
        assert_eq!(parse_category("api-io"), Ok(DataCategory::ApiIo));
        assert_eq!(
            parse_category("ACCOUNT_DATA"),
            Ok(DataCategory::AccountData)
        );
        assert!(
            parse_category("cookies")
                .unwrap_err()
                .contains("non-essential-cookies")
        );
        assert_eq!(parse_right_kind("post-mortem"), Ok(RightKind::PostMortem));
        assert_eq!(
            parse_request_state("in-progress"),
            Ok(RequestState::InProgress)
        );
        let error = parse_purpose("training").unwrap_err();
        assert!(error.contains("model-training"), "{error}");
    }
}
