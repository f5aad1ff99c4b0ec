//! The life of one job, one step per module, in the order a job meets them:
//!
//! 1. [`claim`]: find due rows and take each one by compare-and-set;
//! 2. [`row`]: read the claimed row, which is untrusted, into a [`row::Job`];
//! 3. [`validate`]: check its path and payload against the backend's OpenAPI spec and build the
//!    request;
//! 4. [`call`]: send it to the backend;
//! 5. [`record`]: decide success, retry or failure, and write it back, fenced by the claim.
//!
//! [`attempt`] runs steps 3 to 5 for one claimed job, renewing the lease while the call runs.
//! [`failure`] is the stable shape of an attempt's error; [`retry`] the delay formula.

pub mod attempt;
pub mod call;
pub mod claim;
pub mod failure;
pub mod record;
pub mod retry;
pub mod row;
pub mod url_guard;
pub mod validate;
