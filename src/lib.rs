//! assent: the authority other backends ask, on every request, whether a user's data may be
//! processed for a purpose. See ARCHITECTURE.md for the map of the modules below.

pub mod admin;
pub mod api;
pub mod audit;
pub mod auth;
pub mod cache;
pub mod calendar;
pub mod checkpoints;
pub mod cli;
pub mod config;
pub mod console;
pub mod decision_log;
pub mod domain;
pub mod error;
pub mod limits;
pub mod metrics;
mod named;
pub mod policies;
pub mod policy;
pub mod proto;
pub mod revision;
pub mod rpc;
pub mod scenarios;
pub mod startup;
pub mod status;
pub mod store;
pub mod telemetry;
