//! The `assent` command line: `serve` runs the server; every other subcommand is a client that
//! calls a running server over gRPC.

mod audit;
mod client;
mod exit;
mod output;
mod policy;
mod retention;
mod rights;

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::Context;
use clap::builder::PossibleValue;
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::json;

pub use self::exit::{CliError, EXIT_STATUS_HELP, ExitStatus, Failure};
use self::output::Output;
use crate::config::{Overrides, Setting, Settings};
use crate::policy::rights::{RequestState, RightKind};
use crate::policy::{ConsentMethod, DataCategory, FlagKind, Plan, Purpose, Rating, Source};
use crate::startup::{Application, shutdown_signal};
use crate::store::{Schema, Store};

#[derive(Debug, Parser)]
#[command(
    name = "assent",
    version,
    about = "The consent authority: may this user's data be processed for this purpose?",
    after_help = EXIT_STATUS_HELP
)]
pub struct Cli {
    /// Print JSON for scripts instead of text.
    ///
    /// An answer of the API is printed as its message in the proto3 JSON mapping, as grpcurl
    /// prints it (lowerCamelCase names, enum values by name, 64-bit integers as strings, RFC 3339
    /// times); a listing one page per line, with its nextPageToken; a failure as one object on
    /// standard error (see the exit statuses below).
    #[arg(long, global = true)]
    pub json: bool,
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
    /// Ask a running server's gRPC health service whether it serves; exits 0 if it does, 2 if
    /// not or if it does not answer (the container's and Kubernetes' probe).
    Health(HealthArgs),
    /// Print a completion script for a shell, such as
    /// `assent completions bash > /etc/bash_completion.d/assent`.
    Completions {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
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
    #[arg(long, env = variable("listen"), help = setting_help("listen", "The gRPC listen address"))]
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

/// Which store, for the commands that open it themselves. Each flag, when not given, is read
/// from its setting's environment variable, as `serve` reads it; the URL's value (a password)
/// is never shown in `--help`: keep it in the environment rather than on the command line.
#[derive(Debug, Args)]
pub struct StoreArgs {
    #[arg(long, env = variable("data_dir"), help = setting_help(
        "data_dir",
        "Where the embedded store keeps its data",
    ))]
    pub data_dir: Option<PathBuf>,
    #[arg(long, env = variable("database_url"), hide_env_values = true, help = setting_help(
        "database_url",
        "postgres://USER:PASSWORD@HOST/DB for PostgreSQL, or sqlite://PATH",
    ))]
    pub database_url: Option<String>,
    /// A TOML file of settings, below the environment and the flags.
    #[arg(long, env = "ASSENT_CONFIG")]
    pub config: Option<PathBuf>,
}

impl StoreArgs {
    /// The settings from the environment, the configuration file and these flags (a variable
    /// set to nothing counts as unset, as `config` reads it).
    fn settings(&self, listen: Option<String>) -> anyhow::Result<Settings> {
        let env: HashMap<String, String> = std::env::vars().collect();
        let given = |value: Option<String>| value.filter(|value| !value.is_empty());
        let flags = Overrides {
            listen: given(listen),
            data_dir: self
                .data_dir
                .clone()
                .filter(|path| !path.as_os_str().is_empty()),
            database_url: given(self.database_url.clone()),
            ..Overrides::default()
        };
        let config = self
            .config
            .as_deref()
            .filter(|path| !path.as_os_str().is_empty());
        Settings::resolve(config, &env, flags)
            .map_err(|error| CliError::Usage(format!("{:#}", anyhow::Error::new(error))).into())
    }
}

/// The environment variable of a declared setting (`config::SETTINGS`), which its flag reads
/// when it is not given.
fn variable(key: &str) -> &'static str {
    let setting = Setting::named(key).unwrap_or_else(|| panic!("no setting {key}"));
    setting.environment[0]
}

/// A settings flag's help: `what`, and the default the declared setting has.
fn setting_help(key: &str, what: &str) -> String {
    let setting = Setting::named(key).unwrap_or_else(|| panic!("no setting {key}"));
    match setting.default {
        Some(default) => {
            format!("{what} [default: the configuration file's {key}, else {default}]")
        }
        None => format!("{what} [default: the configuration file's {key}]"),
    }
}

/// Which page of a listing to ask for, and whether to follow the rest.
#[derive(Debug, Clone, Args)]
pub struct PageArgs {
    /// Items per page (0 for the server's 100; at most 1,000).
    #[arg(long, default_value_t = 100)]
    pub page_size: u32,
    /// Start at this page: the nextPageToken of the page before [default: the first page]
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
    /// PEM file of a client certificate, for a server that requires mutual TLS.
    #[arg(long, env = "ASSENT_CLIENT_CERT", requires = "client_key")]
    pub client_cert: Option<std::path::PathBuf>,
    /// PEM file of the client certificate's private key.
    #[arg(long, env = "ASSENT_CLIENT_KEY", requires = "client_cert")]
    pub client_key: Option<std::path::PathBuf>,
    /// The name the server's certificate is checked against, when it is not the host of
    /// --server (a probe calling 127.0.0.1 inside the server's pod).
    #[arg(long, env = "ASSENT_TLS_DOMAIN")]
    pub tls_domain: Option<String>,
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
    /// The subject (user or organisation) the data is about.
    #[arg(long)]
    pub subject: String,
    /// What the data would be processed for.
    #[arg(long)]
    pub purpose: Purpose,
    /// The conversation the data comes from, for the decisions that depend on it (feedback,
    /// flags).
    #[arg(long)]
    pub conversation: Option<String>,
    /// Where the data comes from [default: unspecified]
    #[arg(long)]
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
        /// The policy file (TOML).
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
        /// The version's name, such as 2026-01-01.
        version: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// A dry run over the stored subjects: how many answers per purpose would change from OLD
    /// to NEW. OLD is a policy file, or `in-force` for the version in force now.
    Diff {
        /// The policy file to compare from, or `in-force`.
        old: String,
        /// The policy file to compare to.
        new: PathBuf,
        /// Examples to show per purpose (0-100).
        #[arg(long, default_value_t = 5)]
        examples: u32,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Run scenario vectors (the format of tests/fixtures/scenarios.json) against a policy
    /// file, without a server; with --json, one line per check. Exits 3 if a check fails.
    Test {
        /// The policy file (TOML).
        file: PathBuf,
        /// The scenario file (JSON).
        scenarios: PathBuf,
    },
    /// Validate a policy file without a server; exits 3 if it is not valid.
    Validate {
        /// The policy file (TOML).
        file: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum RightsCommand {
    /// File a request; prints it with its deadline.
    File {
        /// The subject the request is about.
        #[arg(long)]
        subject: String,
        /// The right exercised.
        #[arg(long)]
        kind: RightKind,
        /// ISO 3166 such as FR or US-CA [default: the subject's]
        #[arg(long, default_value = "")]
        jurisdiction: String,
        /// When the request was received (RFC 3339) [default: now]
        #[arg(long, value_parser = parse_instant)]
        received_at: Option<std::time::SystemTime>,
        /// The requester's identity is verified already.
        #[arg(long)]
        identity_verified: bool,
        /// A purpose the objection or consent withdrawal is about (repeatable).
        #[arg(long = "purpose")]
        purposes: Vec<Purpose>,
        #[command(flatten)]
        actor: ActorArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Print one request.
    Get {
        /// The request's id.
        request_id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// A subject's requests, oldest received first.
    List {
        /// The subject whose requests to list.
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
        /// The request's id.
        request_id: String,
        /// The state to move it to.
        #[arg(long)]
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
        /// The request's id.
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
        #[arg(long = "purpose")]
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
        /// The category of data, as the retention schedule names it.
        #[arg(long)]
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
        /// The category of data, as the retention schedule names it.
        #[arg(long)]
        category: DataCategory,
        /// Due at this instant (RFC 3339, now or later) [default: now]
        #[arg(long, value_parser = parse_instant)]
        before: Option<std::time::SystemTime>,
        /// Subjects per page (1-1000).
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1000))]
        page_size: u32,
        /// Start at this page: the nextPageToken of the page before [default: the first page]
        #[arg(long, default_value = "")]
        page_token: String,
        /// Follow page tokens to the end (one answer with every page's subjects).
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
        /// The subject's id.
        subject: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Create a subject or change the fields given.
    Upsert {
        /// The subject's id.
        subject: String,
        /// The subject's plan.
        #[arg(long)]
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
        /// The subject's id.
        subject: String,
        /// The purpose the choice is about.
        #[arg(long)]
        purpose: Purpose,
        /// The choice; cleared lets the default apply again.
        #[arg(long)]
        choice: ChoiceValue,
        /// How the user gave it [default: unspecified]
        #[arg(long)]
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
        /// The subject's id.
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
        /// The subject's id.
        subject: String,
        /// The conversation rated.
        #[arg(long)]
        conversation: String,
        /// Thumbs up or down.
        #[arg(long)]
        rating: Rating,
        #[command(flatten)]
        actor: ActorArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Flag a conversation (automated moderation or user report).
    Flag {
        /// The subject's id.
        subject: String,
        /// The conversation flagged.
        #[arg(long)]
        conversation: String,
        /// Who flagged it.
        #[arg(long)]
        kind: FlagKind,
        #[command(flatten)]
        actor: ActorArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Restrict all processing of a subject (or lift the restriction with --lift).
    Restrict {
        /// The subject's id.
        subject: String,
        /// Lift the restriction instead.
        #[arg(long)]
        lift: bool,
        #[command(flatten)]
        actor: ActorArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Mark a subject's account deleted (kept as a tombstone).
    Delete {
        /// The subject's id.
        subject: String,
        #[command(flatten)]
        actor: ActorArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// List audit events, oldest first (or newest first).
    List {
        /// Only the events of this subject.
        #[arg(long)]
        subject: Option<String>,
        /// List from the newest event back; each next page holds older events.
        #[arg(long)]
        newest_first: bool,
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
        /// The size of the older tree.
        #[arg(long)]
        old_size: u64,
        /// The size of the newer tree [default: the latest signed checkpoint's size]
        #[arg(long)]
        new_size: Option<u64>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// A subject's events, each with its inclusion proof against a checkpoint signed now, in the
    /// subject export format (docs/audit.md) that verify-offline reads.
    Export {
        /// The subject's id.
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
        /// The deleted subject's id.
        subject: String,
        #[command(flatten)]
        actor: ActorArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Verify an export, a full dump or a consistency proof without any server: exits 0 when
    /// verified, 3 when a check fails (each failure printed), 1 when the input is unusable.
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
    /// The event's id.
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
        /// The export file.
        file: PathBuf,
        /// The verifier key (<name>+<hex key id>+<base64 key>), or a file holding it.
        #[arg(long)]
        key: String,
    },
    /// A full dump (JSON lines, sequence 1 first): the checkpoint's signature, every event's
    /// payload, hash and chain link, and the root of the checkpoint's first events.
    Dump {
        /// The dump file (JSON lines).
        file: PathBuf,
        /// The signed checkpoint note file the dump is checked against.
        #[arg(long)]
        checkpoint: PathBuf,
        /// The verifier key, or a file holding it.
        #[arg(long)]
        key: String,
    },
    /// Two signed checkpoints and the consistency proof (`assent audit consistency --json`)
    /// that the newer one's tree extends the older one's.
    Consistency {
        /// The older signed checkpoint note file.
        old: PathBuf,
        /// The newer signed checkpoint note file.
        new: PathBuf,
        /// The consistency proof file.
        proof: PathBuf,
        /// The verifier key, or a file holding it.
        #[arg(long)]
        key: String,
    },
}

/// Runs a parsed command line. Its error's exit status and report are [`Failure::of`] it.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let output = Output { json: cli.json };
    match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::Migrate(args) => migrate(args, output).await,
        Command::Check(args) => client::check(args, output).await,
        Command::Subject(command) => client::subject(command, output).await,
        Command::Health(args) => client::health(args, output).await,
        Command::Audit(AuditCommand::Prune {
            older_than_days,
            store,
        }) => prune(older_than_days, store, output).await,
        Command::Audit(command) => audit::audit(command, output).await,
        Command::Policy(command) => policy::policy(command, output).await,
        Command::Changes(command) => policy::changes(command, output).await,
        Command::Rights(command) => rights::rights(command, output).await,
        Command::Retention(command) => retention::retention(command, output).await,
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut command, "assent", &mut script);
            output::write_out(format_args!("{}", String::from_utf8_lossy(&script)));
            Ok(())
        }
    }
}

/// Parses the command line, or ends the process: 0 after printing `--help` or `--version`, 1
/// for a command line clap refuses (whose own status would be 2), reported as any failure is.
pub fn parse_or_exit() -> Cli {
    let error = match Cli::try_parse() {
        Ok(cli) => return cli,
        Err(error) => error,
    };
    if !error.use_stderr() {
        // --help, --version: what was asked for, on standard output.
        let _ = error.print();
        std::process::exit(0);
    }
    let json = std::env::args_os().any(|argument| argument == "--json");
    if json {
        // Clap's message up to its first blank line (before the usage and the tips), on one
        // line.
        let rendered = error.render().to_string();
        let message: Vec<&str> = rendered
            .lines()
            .take_while(|line| !line.trim().is_empty())
            .map(str::trim)
            .collect();
        let message = message.join(" ");
        let message = message.strip_prefix("error: ").unwrap_or(&message);
        Failure::usage(message.to_owned()).report(true);
    } else {
        let _ = error.print();
    }
    std::process::exit(i32::from(ExitStatus::Usage as u8));
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

async fn migrate(args: MigrateArgs, output: Output) -> anyhow::Result<()> {
    let settings = args.store.settings(None)?;
    let _telemetry = crate::telemetry::init(settings.log_format, None);
    migrate_one(
        "store",
        &settings.store_location(),
        &settings,
        args.grant_to.as_deref(),
        output,
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
            output,
        )
        .await?;
    }
    Ok(())
}

/// Migrates the database at `location` (`what` it is, in messages) and grants `role` the
/// server's privileges there, or prints them. With `--json`, one object per database:
/// `{"database", "schema_version", "granted_role", "grants"}` (`granted_role` null when the
/// grants are printed for a role `ROLE`, not run).
async fn migrate_one(
    what: &str,
    location: &crate::store::StoreLocation,
    settings: &Settings,
    grant_to: Option<&str>,
    output: Output,
) -> anyhow::Result<()> {
    let store = Store::open_with(location, maintenance_timeouts(settings), Schema::Migrate)
        .await
        .with_context(|| format!("cannot migrate the {what} at {location:?}"))?;
    let version = store.schema_version().await?;
    let granted = grant(&store, grant_to).await;
    store.close().await;
    let mut text = format!("the {what}'s schema is up to date (version {version})");
    let (role, statements) = match granted? {
        Grants::Applied { role, statements } => {
            text.push_str(&format!(
                "\ngranted role {role} the server's privileges ({} statements)",
                statements.len()
            ));
            (Some(role), statements)
        }
        Grants::Expected(statements) => {
            text.push_str(
                "\nthe server's role needs these grants when it does not own the schema (as \
                 assent migrate --grant-to ROLE runs them; run_migrations = false for it):",
            );
            for statement in &statements {
                text.push_str(&format!("\n{statement};"));
            }
            (None, statements)
        }
        Grants::None => (None, Vec::new()),
    };
    let json = json!({
        "database": what,
        "schema_version": version,
        "granted_role": role,
        "grants": statements,
    });
    output.value(json, &text);
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

/// Drops the decision log's days older than the retention window. With `--json`:
/// `{"older_than_days", "partitions_dropped", "rows_deleted"}`.
async fn prune(
    older_than_days: Option<u32>,
    args: StoreArgs,
    output: Output,
) -> anyhow::Result<()> {
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
    let mut text = Vec::new();
    if report.partitions_dropped.is_empty() && report.rows_deleted == 0 {
        text.push(format!(
            "nothing older than {days} days in the decision log"
        ));
    }
    for partition in &report.partitions_dropped {
        text.push(format!("dropped {partition}"));
    }
    if report.rows_deleted > 0 {
        text.push(format!(
            "deleted {} decisions older than {days} days",
            report.rows_deleted
        ));
    }
    let json = json!({
        "older_than_days": days,
        "partitions_dropped": report.partitions_dropped,
        "rows_deleted": report.rows_deleted,
    });
    output.value(json, &text.join("\n"));
    Ok(())
}

/// The choice `subject choice` records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ChoiceValue {
    Granted,
    Refused,
    Cleared,
}

/// The policy's enums as flag values: each by its canonical name in lower case with dashes
/// (`model-training`), also accepted as written on the wire (`MODEL_TRAINING`) or in snake case;
/// `--help` and the shell completions list them. A macro because each impl is the same, of
/// clap's trait for a type of a lower layer, which cannot name clap.
macro_rules! flag_values {
    ($($type:ty),+ $(,)?) => {$(
        impl ValueEnum for $type {
            fn value_variants<'a>() -> &'a [Self] {
                <$type>::ALL
            }

            fn to_possible_value(&self) -> Option<PossibleValue> {
                Some(possible_value(self.as_str()))
            }
        }
    )+};
}

flag_values!(
    Purpose,
    Plan,
    Source,
    ConsentMethod,
    FlagKind,
    DataCategory,
    RightKind,
    RequestState,
);

/// A value named `MODEL_TRAINING` as `model-training`, with its other spellings as aliases.
fn possible_value(name: &'static str) -> PossibleValue {
    let snake = name.to_ascii_lowercase();
    let value = PossibleValue::new(snake.replace('_', "-")).alias(name);
    if snake.contains('_') {
        value.alias(snake)
    } else {
        value
    }
}

/// A rating is `up` or `down` (also `thumbs-up`, `THUMBS_UP`, ...).
impl ValueEnum for Rating {
    fn value_variants<'a>() -> &'a [Self] {
        Rating::ALL
    }

    fn to_possible_value(&self) -> Option<PossibleValue> {
        let short = match self {
            Rating::ThumbsUp => "up",
            Rating::ThumbsDown => "down",
        };
        let full = self.as_str();
        let snake = full.to_ascii_lowercase();
        let aliases = [snake.replace('_', "-"), full.to_owned(), snake];
        Some(PossibleValue::new(short).aliases(aliases))
    }
}

fn parse_instant(text: &str) -> Result<std::time::SystemTime, String> {
    humantime::parse_rfc3339_weak(text)
        .map_err(|error| format!("{error}: expected an RFC 3339 time such as 2026-11-23T15:00:00Z"))
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
        fn parse<T: ValueEnum>(text: &str) -> Result<T, String> {
            T::from_str(text, false)
        }
        assert_eq!(parse("model-training"), Ok(Purpose::ModelTraining));
        assert_eq!(parse("MODEL_TRAINING"), Ok(Purpose::ModelTraining));
        assert_eq!(parse("model_training"), Ok(Purpose::ModelTraining));
        assert_eq!(parse("memory"), Ok(Purpose::Memory));
        assert_eq!(parse("api-free"), Ok(Plan::ApiFree));
        assert_eq!(parse("up"), Ok(Rating::ThumbsUp));
        assert_eq!(parse("thumbs-down"), Ok(Rating::ThumbsDown));
        assert_eq!(parse("cookie-banner"), Ok(ConsentMethod::CookieBanner));
        assert_eq!(parse("api-io"), Ok(DataCategory::ApiIo));
        assert_eq!(parse("ACCOUNT_DATA"), Ok(DataCategory::AccountData));
        assert!(parse::<DataCategory>("cookies").is_err());
        assert_eq!(parse("post-mortem"), Ok(RightKind::PostMortem));
        assert_eq!(parse("in-progress"), Ok(RequestState::InProgress));
        assert!(parse::<Purpose>("training").is_err());
    }

    /// `--help` lists every enum flag's values, and every flag and argument says what it is.
    #[test]
    fn every_argument_has_help_and_every_enum_its_values() {
        fn check(command: &clap::Command, path: &str) {
            for argument in command.get_arguments() {
                let id = argument.get_id().as_str();
                if id == "help" || id == "version" {
                    continue;
                }
                assert!(
                    argument.get_help().is_some() || argument.get_long_help().is_some(),
                    "{path} {id}: no help"
                );
            }
            for subcommand in command.get_subcommands() {
                check(subcommand, &format!("{path} {}", subcommand.get_name()));
            }
        }
        let mut command = <Cli as clap::CommandFactory>::command();
        command.build();
        check(&command, "assent");
        let check_command = command.find_subcommand_mut("check").unwrap();
        let help = check_command.render_help().to_string();
        assert!(
            help.contains("[possible values: model-training, memory,"),
            "{help}"
        );
        let help = command.render_long_help().to_string();
        assert!(help.contains("Exit status:"), "{help}");
    }
}
