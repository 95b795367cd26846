//! Integration tests over real gRPC: a server per test on loopback, a fresh data directory each.

mod audit;
mod audit_cli;
mod changes;
mod checkpoints;
mod cli;
mod cli_exit;
mod consent;
mod console;
mod decision_log;
mod decisions;
mod durability;
mod error_details;
mod ext_authz;
mod helpers;
mod lifecycle;
mod limits;
mod policies;
#[path = "../support/process.rs"]
mod process;
#[path = "../support/proxy.rs"]
mod proxy;
mod retention;
mod rights;
mod scenarios;
mod subjects;
