//! One integration-test binary (it links SurrealDB once), one module per concern.

mod cli;
mod config;
mod exactly_once;
mod helpers;
mod jobs;
mod schema;
mod security;
