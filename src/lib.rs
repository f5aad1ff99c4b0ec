//! sp00ky-job-runner executes the outbox jobs that Sp00ky apps write into SurrealDB.
//!
//! # Layout
//!
//! Folders name the concerns. Each uses those below it in this list, with one exception:
//! `config` and `schedule` use `job::retry` (a retry policy is configuration). No module cycle,
//! and `store` uses nothing else of the crate: `.ci/shape` checks both.
//!
//! - [`commands`]: what a user starts, a file each: `args` (flags as given), `settings` (flags,
//!   environment and file merged once), `service` (`run`: tables, runner, listener, scheduler,
//!   systemd), `check` (`check`, `schema`), `jobs` (`enqueue`, `jobs ...`, `health`), `dev`,
//!   `bench/` (`limit`, `phases`, `report`, `backend`), `logging`, `error` (exit codes).
//! - [`ops`]: what an operator sees while it runs: `listener` (health, readiness, metrics and the
//!   admin API over HTTP), `admin` (the verbs behind that API and the `jobs` commands).
//! - [`schedule`]: recurring jobs and when they fire (`mod.rs`); `scheduler` creates their rows.
//! - [`runner`]: the loop (`mod.rs`: claims while there is room), `slots` (concurrency), `watch`
//!   (live-query wake-ups), `status` (what health and metrics read), `metrics` (the Prometheus
//!   families, which an attempt reports to through `job::attempt::Observer`).
//! - [`job`]: the life of one job, in the order it happens: `claim` → `row` → `validate` (with
//!   `url_guard`) → `call` → `record`, tied together by `attempt`; `failure` (the error shape,
//!   the bounded history) and `retry` (the delay formula).
//! - [`config`]: the backends: `file` (sp00ky.yml), `schedules`, `dev` (dev commands and
//!   `env:`), `env` (`SPKY_JOB_CONFIG`, `${VAR}`, dotenv), `walk` (key-naming readers), `yaml`
//!   (YAML 1.2), and `limits` (every default and range).
//! - [`store`]: the only module that speaks SurrealQL: `queue` (the hot path: find, claim,
//!   renew, write back, watch), `jobs` (create, read, list, retry, cancel, count, delete),
//!   `schema` (the table definition, inspection and preparation), `schedules` (ticks).

pub mod commands;
pub mod config;
pub mod job;
pub mod ops;
pub mod runner;
pub mod schedule;
pub mod store;
