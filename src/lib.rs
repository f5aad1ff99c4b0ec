//! sp00ky-job-runner executes the outbox jobs that Sp00ky apps write into SurrealDB.
//!
//! # Layout
//!
//! The life of one job, in the order it happens:
//!
//! - [`config`]: load the backends from `sp00ky.yml` or `SPKY_JOB_CONFIG`.
//! - [`claim`]: find due rows and take each one by compare-and-set; read the row.
//! - [`validate`]: check the row's path and payload against the OpenAPI spec; build the request.
//! - [`call`]: send it to the backend.
//! - [`record`]: decide success, retry or failure, and write it back, fenced by the claim token.
//!
//! Around them:
//!
//! - [`store`]: the only module that speaks SurrealQL.
//! - [`failure`]: the stable shape of an attempt's error, and retryable vs permanent.
//! - [`retry`]: the delay formula.
//! - [`runner`]: the loop, concurrency, leases and shutdown.
//! - [`serve`]: health, metrics and the admin API over HTTP; [`admin`]: the operator actions
//!   behind that API and the `jobs` commands; [`metrics`]: what `/metrics` shows.
//! - [`schedule`]: recurring jobs and when they fire; [`scheduler`]: creating their rows.
//! - [`bench`]: the benchmark command.
//! - [`dev`]: `dev` mode, the runner plus each backend's dev command.
//! - [`cli`] and [`app`]: arguments, and the commands built from them; [`logging`]: log setup.

pub mod admin;
pub mod app;
pub mod bench;
pub mod call;
pub mod claim;
pub mod cli;
pub mod config;
pub mod dev;
pub mod failure;
pub mod logging;
pub mod metrics;
pub mod record;
pub mod retry;
pub mod runner;
pub mod schedule;
pub mod scheduler;
pub mod serve;
pub mod store;
pub mod validate;
