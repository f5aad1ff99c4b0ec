//! What an operator sees and does while the runner runs.
//!
//! - [`listener`]: `/healthz`, `/readyz`, `/metrics` and the `/v1` admin API over HTTP.
//! - [`admin`]: the operator verbs behind that API and the `jobs` commands; [`bulk`]: the
//!   verbs on many jobs at once.
//! - [`dashboard`]: the web pages at `/`, their overview and their live feed.
//!
//! The metrics `/metrics` shows are the runner's own ([`crate::runner::metrics`]).

pub mod admin;
pub mod bulk;
pub mod dashboard;
pub mod listener;
pub mod state;
