//! One integration-test binary (it links SurrealDB once), one module per concern.

mod browser;
mod chaos;
mod cli;
mod config;
mod dashboard;
mod deploy;
mod exactly_once;
mod helpers;
mod jobs;
mod operator;
mod ops;
mod processes;
mod scheduling;
mod schema;
mod security;
mod startup;
mod upkeep;
mod visible;
