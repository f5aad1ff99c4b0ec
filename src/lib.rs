//! sp00ky-job-runner executes the outbox jobs that Sp00ky apps write into SurrealDB.
//!
//! # Layout
//!
//! Dependencies point down this list: a module uses the ones below it, never one above.
//!
//! - [`commands`]: what a user starts. `args` (flags as given), `settings` (flags, environment
//!   and file merged once), `service` (`run`: tables, runner, listener, systemd), `check`,
//!   `jobs` (the CLI's job verbs), `dev`, `bench/`, `logging`.
//! - [`ops`]: what an operator sees while it runs: `listener` (health, readiness, metrics and the
//!   admin API over HTTP), `admin` (the verbs behind that API and the `jobs` commands),
//!   `metrics`.
//! - [`schedule`]: recurring jobs, when they fire (`mod.rs`) and creating their rows
//!   (`scheduler`).
//! - [`runner`]: the loop. `mod.rs` claims while there is room; `slots` bounds concurrency;
//!   `watch` turns live-query notifications into wake-ups; `status` is what health and metrics
//!   read.
//! - [`job`]: the life of one job, in the order it happens: `claim` → `row` → `validate` →
//!   `call` → `record`, tied together by `attempt`; with `failure` (the error shape) and
//!   `retry` (the delay formula).
//! - [`config`]: the backends, from `sp00ky.yml` or `SPKY_JOB_CONFIG`, and every default and
//!   range (`limits`).
//! - [`store`]: the only module that speaks SurrealQL: `queue` (the hot path: find, claim,
//!   renew, write back, watch), `jobs` (create, read, list, retry, cancel, count), `schema`
//!   (the table definition, inspection and preparation), `schedules` (the scheduler's ticks).

pub mod commands;
pub mod config;
pub mod job;
pub mod ops;
pub mod runner;
pub mod schedule;
pub mod store;
