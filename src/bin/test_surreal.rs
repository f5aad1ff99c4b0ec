//! The official SurrealDB server, built from crates.io's `surrealdb-server` library: this binary
//! *is* `surreal start` (and the rest of the `surreal` CLI). The integration tests run it as a
//! separate process on a random loopback port so they can stop, kill and restart a real server;
//! developers can use it the same way (see the README). Only built with the `test-server` feature.
#![recursion_limit = "256"]

use std::process::ExitCode;

fn main() -> ExitCode {
    surrealdb_server::init(surrealdb_core::CommunityComposer())
}
